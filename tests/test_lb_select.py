"""Selection algorithms: the compiled core against its pure-Python reference.

Hypothesis builds backend sets and operation sequences and requires the
compiled (`sluiceway._lb`) and reference (`sluiceway._lb_py`) implementations
to make identical choices; further tests pin the weighted shares, the
consistent-hash movement bound and the error messages.
"""

import collections
import functools
import zlib

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sluiceway import _lb, _lb_py
from sluiceway.lb import (Backend, Consistent, FNVHash, LoadBalancer, Random, RoundRobin,
                          SelectionAlgorithm)

IMPLS = {"c": _lb, "py": _lb_py}
ALGOS = ["RoundRobin", "FNVHash", "Consistent", "Random", "LeastConnections",
         "PowerOfTwoChoices"]
SEEDED = ("Random", "PowerOfTwoChoices")


def B(i, w=1):
    return Backend(f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}:80", w)


def build(impl, name, backends, seed=1):
    cls = getattr(IMPLS[impl], name)
    return cls(backends, seed=seed) if name in SEEDED else cls(backends)


# ---------------------------------------------------------------- strategies

addrs = st.one_of(
    st.builds(lambda a, b, p: f"10.0.{a}.{b}:{p}", st.integers(0, 255), st.integers(0, 255),
              st.integers(1, 65535)),
    st.builds(lambda h, p: f"[2001:db8::{h:x}]:{p}", st.integers(0, 0xFFFF), st.integers(1, 65535)),
    st.builds(lambda s: f"unix:/run/{s}.sock", st.text("abcxyz019_-", min_size=1, max_size=12)),
)
backend_lists = st.lists(
    st.tuples(addrs, st.one_of(st.just(1), st.integers(1, 5), st.integers(1, 40))),
    max_size=24, unique_by=lambda t: t[0],
).map(lambda items: [Backend(a, w) for a, w in items])
keys = st.one_of(st.text(max_size=30), st.binary(max_size=30), st.none())
ops = st.lists(st.one_of(
    st.tuples(st.just("select"), keys, st.integers(0, 30)),
    st.tuples(st.just("select_with"), keys, st.integers(0, 30), st.integers(0, 3)),
    st.tuples(st.just("usable"), st.integers(0, 1000), st.booleans()),
    st.tuples(st.just("iter"), keys),
    st.tuples(st.just("next"), keys),
    # a request starts / ends on backend i (what the proxy counts)
    st.tuples(st.just("begin"), st.integers(0, 1000)),
    st.tuples(st.just("end"), st.integers(0, 1000)),
), max_size=40)


def _apply(core, algo, op):
    kind = op[0]
    if kind == "select":
        b = core.select(op[1], op[2])
        return b and b.addr
    if kind == "select_with":
        modulo = op[3] + 2
        seen = []

        def accept(backend, usable):
            seen.append((backend.addr, usable))
            return usable and backend.port is not None and backend.port % modulo == 0
        b = core.select_with(op[1], op[2], accept)
        return (b and b.addr, seen)
    if kind == "usable":
        n = len(core._selection[1])
        if n:
            core._set_usable(op[1] % n, op[2])
        return None
    if kind in ("begin", "end"):
        loads = core._loads
        if loads:
            cell = loads[op[1] % len(loads)]
            cell._acquire() if kind == "begin" else cell._release()
        return None
    if kind == "iter":
        return list(algo.iter(op[1]))
    if n := len(algo):
        return algo.next(op[1])
    with pytest.raises(LookupError):
        algo.next(op[1])
    return "empty"


@pytest.mark.parametrize("name", ALGOS)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(backends=backend_lists, operations=ops, seed=st.integers(0, 2**64 - 1))
@example(backends=[Backend("10.0.0.0:1"), Backend("unix:/run/0.sock")],  # max_iterations=0
         operations=[("select", None, 0), ("select", None, 1)], seed=0)  # must not advance RR
@example(backends=[], operations=[("select", "k", 5), ("iter", "k"), ("next", b"")], seed=0)
@example(backends=[Backend("10.0.0.1:80")], operations=[("usable", 0, False), ("select", None, 3),
                                                       ("iter", "x")], seed=0)
@example(backends=[Backend("10.0.0.1:80"), Backend("10.0.0.2:80", 2)],
         operations=[("usable", 0, False), ("select", "a", 2), ("select", "a", 1)], seed=2**64 - 1)
@example(backends=[Backend(f"10.0.0.{i}:80") for i in range(1, 7)],  # stride must be coprime with 6
         operations=[("iter", str(k)) for k in range(8)], seed=3)
@example(backends=[Backend("unix:/run/a.sock"), Backend("[::1]:80", 7)],
         operations=[("select", "\udcff", 2)], seed=0)  # lone surrogate: both must reject
@example(backends=[Backend(f"10.0.0.{i}:80", w) for i, w in enumerate([1, 2, 3, 2], 1)],
         operations=[("begin", 2), ("begin", 2), ("begin", 1), ("usable", 0, False),
                     ("select", None, 4), ("select_with", None, 4, 1), ("end", 2),
                     ("select", None, 4), ("end", 3), ("end", 3), ("select", None, 1),
                     ("iter", None)], seed=5)  # loads, a down backend, a negative count
def test_compiled_matches_reference(name, backends, operations, seed):
    results = {}
    for impl in IMPLS:
        algo = build(impl, name, backends, seed)
        core = IMPLS[impl].BalancerCore()
        core._install(algo, backends, [True] * len(backends))
        out = []
        for op in operations:
            try:
                out.append(_apply(core, algo, op))
            except UnicodeEncodeError:
                out.append("UnicodeEncodeError")
        results[impl] = out
    assert results["c"] == results["py"]


@settings(max_examples=80, deadline=None)
@given(weights=st.lists(st.integers(1, 200), min_size=1, max_size=8))
@example(weights=[65535 // 3 * 3, 65535 // 3])   # gcd reduction of large weights
@example(weights=[7, 7, 7])
def test_weighted_table_matches_reference(weights):
    backends = [B(i, w) for i, w in enumerate(weights)]
    table = _lb_py.weighted_table(weights)
    rr = _lb.RoundRobin(backends)
    assert [rr.next() for _ in range(2 * len(table))] == table * 2


@settings(max_examples=40, deadline=None)
@given(backends=backend_lists)
def test_ring_points_match_reference(backends):
    assert _lb.Consistent(backends).points() == _lb_py.Consistent(backends).points()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", ALGOS)
@settings(max_examples=60, deadline=None)
@given(backends=backend_lists, key=keys)
def test_iter_yields_each_backend_once(impl, name, backends, key):
    algo = build(impl, name, backends)
    got = list(algo.iter(key))
    assert len(got) == len(set(got))
    # Weighted walks cover every backend; the ring does too unless points
    # collide away a whole backend, which needs far more backends than here.
    assert sorted(got) == list(range(len(backends)))
    if backends and name in ("FNVHash", "Consistent"):
        assert algo.next(key) == got[0] == algo.next(key)


@pytest.mark.parametrize("impl", IMPLS)
def test_consistent_ring_matches_nginx_formula(impl):
    # Point j of a server is crc32(host \0 port prev_le32); computed here
    # independently of both implementations.
    algo = build(impl, "Consistent", [Backend("127.0.0.1:8080"), Backend("unix:/tmp/s", 2)])
    expected = []
    for i, (host, port, w) in enumerate([(b"127.0.0.1", b"8080", 1), (b"/tmp/s", b"", 2)]):
        prev = 0
        for _ in range(160 * w):
            prev = zlib.crc32(host + b"\0" + port + prev.to_bytes(4, "little"))
            expected.append((prev, i))
    assert algo.points() == sorted(expected)
    assert len(algo.points()) == 480


@pytest.mark.parametrize("impl", IMPLS)
def test_colliding_ring_points_go_to_the_earlier_backend(impl):
    # Same server text twice: every point collides; like nginx (stable sort,
    # keep the first) the earlier backend keeps them all.
    same = [Backend("10.0.0.1:80"), Backend("10.0.0.2:80", 2)]
    twin = type("Twin", (), {"addr": "10.0.0.1:80", "weight": 1})()
    algo = build(impl, "Consistent", [same[1], same[0], twin])
    owners = collections.Counter(b for _, b in algo.points())
    assert owners == {0: 320, 1: 160}
    assert 2 not in set(algo.iter("k"))     # the twin has no point left


# ------------------------------------------------------------ weighted shares

WEIGHTS = [1, 2, 3, 10, 4]


@pytest.mark.parametrize("impl", IMPLS)
def test_round_robin_shares_are_exact_and_spread(impl):
    backends = [B(i, w) for i, w in enumerate(WEIGHTS)]
    rr = build(impl, "RoundRobin", backends)
    seq = [rr.next() for _ in range(sum(WEIGHTS) * 50)]
    assert collections.Counter(seq) == {i: w * 50 for i, w in enumerate(WEIGHTS)}
    # Interleaved: the heaviest backend (10 of 20) never gets more than 2 in a row.
    run = best = 0
    for prev, cur in zip(seq, seq[1:]):
        run = run + 1 if prev == cur else 0
        best = max(best, run)
    assert best <= 1, f"a backend got {best + 1} consecutive requests"


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", ["FNVHash", "Random"])
def test_hashed_shares_follow_weights(impl, name):
    """Over 20,000 keys each backend's share is within 3 percentage points of
    weight/total (about 6 standard deviations of the sampling noise)."""
    backends = [B(i, w) for i, w in enumerate(WEIGHTS)]
    algo = build(impl, name, backends, seed=99)
    n = 20_000
    counts = collections.Counter(algo.next(f"key-{k}") for k in range(n))
    total = sum(WEIGHTS)
    for i, w in enumerate(WEIGHTS):
        assert abs(counts[i] / n - w / total) <= 0.03, (i, counts[i] / n, w / total)


@pytest.mark.parametrize("impl", IMPLS)
def test_consistent_shares_follow_weights(impl):
    """The ring's exact arc share per backend is within 25% (relative) of
    weight/total: 160 points per weight unit leave that much variance; sampled
    key shares then match the arcs within sampling noise."""
    backends = [B(i, w) for i, w in enumerate(WEIGHTS)]
    ring = build(impl, "Consistent", backends)
    pts = ring.points()
    arcs = collections.Counter()
    prev = pts[-1][0] - 2**32
    for h, b in pts:          # a point owns the keys hashing into (prev, h]
        arcs[b] += h - prev
        prev = h
    total = sum(WEIGHTS)
    n = 20_000
    counts = collections.Counter(ring.next(f"key-{k}") for k in range(n))
    for i, w in enumerate(WEIGHTS):
        arc = arcs[i] / 2**32
        assert abs(arc - w / total) <= 0.25 * w / total, (i, arc, w / total)
        sigma = (arc * (1 - arc) / n) ** 0.5
        assert abs(counts[i] / n - arc) <= 5 * sigma, (i, counts[i] / n, arc)


# ------------------------------------------------------------ consistent moves

def _moved(before, after, keys):
    return [k for k in keys if before(k) != after(k)]


@pytest.mark.parametrize("n", [5, 20, 50])
def test_consistent_moves_about_one_nth_of_keys(n, record_property):
    keys = [f"object-{k}" for k in range(20_000)]
    base = [B(i) for i in range(n)]
    ring = Consistent(base)
    pick = lambda algo, bs: (lambda k: bs[algo.next(k)].addr)  # noqa: E731

    # Add one backend: only keys that now go to the new backend move.
    grown = base + [B(n)]
    ring_grown = Consistent(grown)
    moved = _moved(pick(ring, base), pick(ring_grown, grown), keys)
    assert all(grown[ring_grown.next(k)].addr == grown[-1].addr for k in moved)
    add_frac = len(moved) / len(keys)

    # Remove one backend: only keys that were on it move.
    gone = base[n // 2]
    shrunk = [b for b in base if b is not gone]
    ring_shrunk = Consistent(shrunk)
    moved = _moved(pick(ring, base), pick(ring_shrunk, shrunk), keys)
    assert all(base[ring.next(k)] is gone for k in moved)
    remove_frac = len(moved) / len(keys)

    record_property("moved_on_add", add_frac)
    record_property("moved_on_remove", remove_frac)
    # "About 1/n": the expected share is 1/(n+1) and 1/n; ring variance with
    # 160 points per backend stays well inside a factor of 1.6.
    assert add_frac <= 1.6 / (n + 1), add_frac
    assert remove_frac <= 1.6 / n, remove_frac
    assert add_frac >= 0.4 / (n + 1) and remove_frac >= 0.4 / n


def test_hash_based_algorithms_reshuffle_but_ring_does_not():
    # Contrast that documents why Consistent exists: FNVHash moves most keys.
    keys = [f"k{k}" for k in range(5000)]
    base, grown = [B(i) for i in range(10)], [B(i) for i in range(11)]
    f0, f1 = FNVHash(base), FNVHash(grown)
    moved = sum(base[f0.next(k)] != grown[f1.next(k)] for k in keys) / len(keys)
    assert moved > 0.5


# ---------------------------------------------------------------- select API

@pytest.mark.parametrize("impl", IMPLS)
def test_select_skips_unusable_and_respects_max_iterations(impl):
    backends = [B(i) for i in range(4)]
    core = IMPLS[impl].BalancerCore()
    core._install(build(impl, "FNVHash", backends), backends, [True] * 4)
    first = core.select("k")
    order = [backends[i] for i in build(impl, "FNVHash", backends).iter("k")]
    assert first is order[0]
    core._set_usable(backends.index(order[0]), False)
    assert core.select("k") is order[1]
    assert core.select("k", 1) is None
    assert core.select("k", 0) is None
    for b in order[1:]:
        core._set_usable(backends.index(b), False)
    assert core.select("k", 100) is None
    offered = []
    assert core.select_with("k", 3, lambda b, ok: offered.append((b, ok)) or b is order[2]) \
        is order[2]
    assert offered == [(order[0], False), (order[1], False), (order[2], False)]


@pytest.mark.parametrize("impl", IMPLS)
def test_select_with_propagates_predicate_errors(impl):
    backends = [B(i) for i in range(3)]
    core = IMPLS[impl].BalancerCore()
    core._install(build(impl, "Consistent", backends), backends, [True] * 3)

    def boom(b, ok):
        raise KeyError("from predicate")
    with pytest.raises(KeyError, match="from predicate"):
        core.select_with("k", 3, boom)
    with pytest.raises(TypeError, match="accept must be callable"):
        core.select_with("k", 3, None)


@pytest.mark.parametrize("impl", IMPLS)
def test_bad_input_is_rejected_with_a_clear_message(impl):
    mod = IMPLS[impl]
    backends = [B(0), B(1)]
    core = mod.BalancerCore()
    core._install(mod.FNVHash(backends), backends, [True, True])
    with pytest.raises(TypeError, match="selection key must be str, bytes or None, not int"):
        core.select(42)
    with pytest.raises(TypeError, match="not bytearray"):
        mod.FNVHash(backends).next(bytearray(b"x"))
    with pytest.raises(ValueError, match="max_iterations must be >= 0, not -1"):
        core.select("k", -1)
    with pytest.raises(ValueError, match="weight 0"):
        mod.RoundRobin([Backend("10.0.0.1:80"), type("X", (), {"weight": 0})()])
    with pytest.raises(TypeError, match="has weight '3'"):
        mod.FNVHash([type("X", (), {"weight": "3"})()])
    with pytest.raises(TypeError, match="has no 'weight'"):
        mod.Consistent([object()])
    with pytest.raises(TypeError, match="Consistent needs a str addr"):
        mod.Consistent([type("X", (), {"weight": 1, "addr": None})()])
    with pytest.raises(ValueError, match="more than 16777216 entries"):
        mod.Consistent([type("X", (), {"weight": 65535, "addr": f"h{i}"})() for i in range(2)])
    with pytest.raises(ValueError, match="built for 2 backends, not 3"):
        core._install(mod.FNVHash(backends), backends + [B(2)], [True] * 3)
    with pytest.raises(TypeError, match="seed must be an int"):
        mod.Random(backends, seed="x")


@pytest.mark.parametrize("name", ["RoundRobin", "Consistent"])
def test_compiled_algorithms_refuse_reinitialisation(name):
    algo = getattr(_lb, name)([B(0), B(1)])
    it = algo.iter("k")
    with pytest.raises(TypeError, match="already initialised; build a new one"):
        algo.__init__([B(i) for i in range(3000)])
    assert sorted(it) == [0, 1] and len(algo) == 2


def test_weights_reduce_by_gcd_and_random_is_reproducible():
    backends = [B(0, 200), B(1, 400)]
    rr, small = RoundRobin(backends), RoundRobin([B(0, 1), B(1, 2)])
    # Only the ratio matters: the table is [1, 0, 1] (stride scheduling), not 600 slots.
    assert [rr.next() for _ in range(6)] == [small.next() for _ in range(6)] == [1, 0, 1] * 2
    assert _lb_py.weighted_table([200, 400]) == [1, 0, 1]
    r1, r2 = Random(backends, seed=5), Random(backends, seed=5)
    assert [r1.next() for _ in range(50)] == [r2.next() for _ in range(50)]
    assert len({tuple(Random(backends).next() for _ in range(64)) for _ in range(3)}) > 1


def test_str_and_bytes_keys_hash_the_same_utf8():
    ring = Consistent([B(i) for i in range(30)])
    for k in ["", "ascii", "héllo wörld", "日本語のキー", "emoji 🎉"]:
        assert ring.next(k) == ring.next(k.encode())
        assert FNVHash([B(i) for i in range(30)]).next(k) == \
            FNVHash([B(i) for i in range(30)]).next(k.encode())


# ---------------------------------------------------------- custom algorithms

class FirstHealthy(SelectionAlgorithm):
    """Always prefer the lowest index: a primary/backup policy."""

    def next(self, key):
        return 0


class Broken(SelectionAlgorithm):
    def iter(self, key):
        yield 99


def test_custom_python_algorithm_plugs_in():
    lb = LoadBalancer.from_iter(["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"], FirstHealthy)
    assert lb.select("x").addr == "10.0.0.1:80"
    lb.set_enable("10.0.0.1:80", False)
    assert lb.select("x").addr == "10.0.0.2:80"
    assert lb.select_with("x", 3, lambda b, ok: b.addr.endswith(".3:80")).addr == "10.0.0.3:80"
    assert lb.select("x", 1) is None


def test_custom_algorithm_bad_index_names_the_algorithm():
    lb = LoadBalancer.from_iter(["10.0.0.1:80"], Broken)
    with pytest.raises(IndexError, match="yielded index 99 but there are 1 backends"):
        lb.select("x")


@pytest.mark.parametrize("name", ALGOS)
def test_reference_classes_work_as_load_balancer_selection(name):
    cls = getattr(_lb_py, name)
    if name == "Random":
        cls = functools.partial(cls, seed=3)
    lb = LoadBalancer.from_iter([B(i) for i in range(5)], cls)
    assert lb.select("k") in lb.backends()


# ---------------------------------------------------------------- allocations

@pytest.mark.parametrize("name", ["RoundRobin", "FNVHash", "Random", "Consistent",
                                  "LeastConnections", "PowerOfTwoChoices"])
@pytest.mark.parametrize("n", [3, 3000])   # 3000 > 2048: the ring walk mallocs its bitmap
def test_compiled_select_allocates_no_python_objects(name, n):
    import sys
    backends = [B(i) for i in range(n)]
    lb = LoadBalancer.from_iter(backends, getattr(_lb, name))
    # Half the backends are down so many selections take fallbacks.
    for b in backends[::2]:
        lb.set_enable(b, False)
    keys = [f"key-{i}" for i in range(64)] + [f"kéy-{i}".encode() for i in range(64)]
    select = lb.select
    for k in keys:
        select(k)
    before = sys.getallocatedblocks()
    for _ in range(50):
        for k in keys:
            select(k, 16)
    assert sys.getallocatedblocks() - before <= 2
