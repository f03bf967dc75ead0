"""The compiled module, its pure-Python reference and the type stub offer one API."""

import ast
import inspect
import os

import pytest

import sluiceway._limits_py as PY
from sluiceway import limits

C = limits._c
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


CONTEXT = {"__enter__", "__exit__", "__aenter__", "__aexit__"}


def public(obj):
    names = set(dir(obj))
    return {n for n in names if not n.startswith("_")} | (CONTEXT & names)


def instance(impl, name):
    """One object of each public class, made the way users get them."""
    makers = {
        "Estimator": lambda: impl.Estimator(),
        "Rate": lambda: impl.Rate(1.0),
        "Inflight": lambda: impl.Inflight(),
        "InflightGuard": lambda: impl.Inflight().incr("k")[0],
        "RateLimiter": lambda: impl.RateLimiter(1),
        "RateDecision": lambda: impl.RateLimiter(1).check("k"),
        "ConcurrencyLimiter": lambda: impl.ConcurrencyLimiter(1),
        "Permit": lambda: impl.ConcurrencyLimiter(1).try_acquire("k"),
        "CircuitBreaker": lambda: impl.CircuitBreaker(),
        "Attempt": lambda: impl.CircuitBreaker().admit("k"),
    }
    return makers[name]()


def stub_classes():
    with open(os.path.join(ROOT, "corepy", "sluiceway", "_limits.pyi"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    out = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            names = set()
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    names.add(item.name)
                elif isinstance(item, ast.AnnAssign):
                    names.add(item.target.id)
            out[node.name] = {n for n in names if not n.startswith("_") or n in CONTEXT}
    return out


def test_same_names():
    assert set(C.__all__) == set(PY.__all__)
    assert set(C.__all__) - {"keyhash"} <= set(limits.__all__)
    for name in limits.__all__:
        assert getattr(limits, name) is not None


@pytest.mark.parametrize("name", sorted(stub_classes()))
def test_compiled_reference_and_stub_agree(name):
    stub = stub_classes()[name]
    assert public(instance(C, name)) == stub
    assert public(instance(PY, name)) == stub


def stub_init_params(name):
    with open(os.path.join(ROOT, "corepy", "sluiceway", "_limits.pyi"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name)
    init = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    a = init.args
    return [x.arg for x in a.args[1:]], [x.arg for x in a.kwonlyargs]


@pytest.mark.parametrize("name", ["Estimator", "Rate", "Inflight", "RateLimiter",
                                  "ConcurrencyLimiter", "CircuitBreaker"])
def test_constructor_parameters_agree(name):
    """Reference vs stub by signature (compiled __cinit__ has none to inspect);
    compiled vs reference is exercised by the tests building both alike."""
    params = inspect.signature(getattr(PY, name)).parameters.values()
    positional = [p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]
    keyword = [p.name for p in params if p.kind is p.KEYWORD_ONLY]
    assert (positional, keyword) == stub_init_params(name)
