"""Benchmark: ``LoadBalancer.select(key)`` per call, compiled vs pure-Python reference.

Run with pytest-benchmark (one benchmark per algorithm x backend count x
implementation)::

    PYTHONPATH=corepy python -m pytest bench/bench_lb.py --benchmark-only

or as a script, which prints the markdown table for docs/performance.md::

    PYTHONPATH=corepy python bench/bench_lb.py

Each timed call selects for one of 1,024 distinct str keys (``"user-<n>"``,
hashed as UTF-8) with all backends healthy.  The figure includes the Python
``for`` loop driving the calls (about 10 ns here, see the ``len(key)``
baseline row); it is what a hook calling ``lb.select(key)`` pays.

Goals on the development machine: at most 150 ns for RoundRobin, FNVHash and
PowerOfTwoChoices, at most 300 ns for Consistent with 1,000 backends, at most
150 ns for LeastConnections with 3 backends (it looks at every backend, as
nginx's least_conn does, so its cost grows with their number).  The load-aware algorithms run with
every load 0 here (no proxy counts them): LeastConnections then breaks the
n-way tie by smooth weighted round robin, its most expensive case.
"""

import os
import platform
import sys
import timeit

import pytest

from sluiceway import _lb, _lb_py
from sluiceway.lb import Backend, LoadBalancer

ALGOS = ["RoundRobin", "FNVHash", "Consistent", "LeastConnections", "PowerOfTwoChoices"]
SIZES = [3, 100, 1000]
KEYS = [f"user-{i}" for i in range(1024)]
GOAL_NS = {"RoundRobin": 150, "FNVHash": 150, "Consistent": 300, "LeastConnections": 150,
           "PowerOfTwoChoices": 150}
GOAL_SIZES = {"Consistent": (1000,), "LeastConnections": (3,)}   # else every size


def backends(n):
    return [Backend(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}:8080") for i in range(n)]


def make_select(impl, algo, n):
    """Return the bound ``select`` of a balancer over n backends."""
    bs = backends(n)
    if impl == "compiled":
        return LoadBalancer.from_iter(bs, getattr(_lb, algo)).select
    core = _lb_py.BalancerCore()
    core._install(getattr(_lb_py, algo)(bs), bs, [True] * n)
    return core.select


def _loop(select, *args):
    for k in KEYS:
        select(k, *args)


@pytest.mark.parametrize("impl", ["compiled", "reference"])
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("algo", ALGOS)
def test_select(benchmark, algo, n, impl):
    select = make_select(impl, algo, n)
    benchmark.group = f"select {algo}"
    benchmark.extra_info["calls_per_round"] = len(KEYS)
    benchmark(_loop, select)
    if benchmark.stats:   # None under --benchmark-disable (a smoke run)
        per_call_ns = benchmark.stats.stats.min / len(KEYS) * 1e9
        benchmark.extra_info["min_ns_per_select"] = round(per_call_ns, 1)


def per_call_ns(fn, *args, repeat=25):
    """Best-of-``repeat`` time of one call of ``fn(key, *args)``, in ns.

    Many short repeats (50 x 1,024 calls each) so the minimum finds a quiet
    moment on a shared machine.
    """
    number = 50
    t = min(timeit.repeat(lambda: _loop(fn, *args), number=number, repeat=repeat))
    return t / (number * len(KEYS)) * 1e9


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main():
    print(f"Python {platform.python_version()}, {cpu_model()}, {os.cpu_count()} CPUs, "
          f"{platform.platform()}")
    print(f"`len(key)` loop baseline: {per_call_ns(len):.0f} ns per call\n")
    print("| algorithm | backends | compiled ns/select | reference ns/select | speed-up | goal |")
    print("|---|---:|---:|---:|---:|---|")
    failed = False
    for algo in ALGOS:
        for n in SIZES:
            c = per_call_ns(make_select("compiled", algo, n))
            p = per_call_ns(make_select("reference", algo, n), repeat=5)
            goal = GOAL_NS[algo]
            applies = n in GOAL_SIZES.get(algo, SIZES)
            ok = c <= goal
            failed |= applies and not ok
            mark = (f"<= {goal} ns: {'met' if ok else 'MISSED'}" if applies else "")
            print(f"| {algo} | {n} | {c:.0f} | {p:.0f} | {p / c:.0f}x | {mark} |")
    print("\nWith every other backend disabled (so about half the selections take "
          "fallbacks), compiled, `select(key, 16)`:\n")
    print("| algorithm | backends | ns/select |")
    print("|---|---:|---:|")
    for algo in ALGOS:
        for n in (100, 1000, 5000):
            bs = backends(n)
            lb = LoadBalancer.from_iter(bs, getattr(_lb, algo))
            for b in bs[::2]:
                lb.set_enable(b, False)
            print(f"| {algo} | {n} | {per_call_ns(lb.select, 16):.0f} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
