"""Limits shared by several processes (scope="server"): the compiled shared
objects against the pure-Python reference, then real processes counting in
one region while windows roll, and regions opened by name."""

import mmap
import multiprocessing
import os
import struct
import subprocess
import sys
import textwrap

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import sluiceway._limits_py as PY
from conftest import subprocess_env
from limits_oracle import (FakeClock, breaker_ops, decision_fields, rate_limiter_ops, rate_ops,
                           replay_breakers, replay_pair)
from sluiceway import limits
from sluiceway.limits import CircuitOpen, ConcurrencyLimitExceeded

C = limits._c
FORK = multiprocessing.get_context("fork")


@pytest.fixture(autouse=True)
def shm_dir(tmp_path, monkeypatch):
    """Named regions go to a folder of this test, not /dev/shm."""
    monkeypatch.setenv("SLUICEWAY_SHM_DIR", str(tmp_path))
    return tmp_path


# ------------------------------------------------------------------ one cell

MASK64 = (1 << 64) - 1


@settings(max_examples=500, deadline=None)
@given(value=st.one_of(st.integers(0, MASK64),
                       st.builds(lambda t, c: (t << 40) | c, st.integers(0, 2**24 - 1),
                                 st.integers(0, 2**40 - 1))),
       ops=st.lists(st.tuples(st.integers(0, 2**25), st.integers(-2**41, 2**41)), max_size=20),
       near=st.booleans())
@example(value=0, ops=[(2**23, 1), (2**23 + 1, 1)], near=False)        # half the tag space
@example(value=(5 << 40) | 7, ops=[(3, 1), (4, 1), (8, 1)], near=True)  # newer tag absorbs
@example(value=(1 << 40) | (2**39 - 1), ops=[(1, 1)], near=False)        # count wraps
def test_tagged_cell_matches_reference(value, ops, near):
    """sw_tcell_add/get against _limits_py.tcell_add/get, bit for bit."""
    for w, n in ops:
        if near:  # windows close to the cell's own, where the tag rules bite
            w = ((value >> 40) + w % 7 - 3) % 2**24
        assert C._tcell_get(value, w) == PY.tcell_get(value, w)
        got = C._tcell_add(value, w, n)
        assert got == PY.tcell_add(value, w, n), (value, w, n)
        value = got[0]


def test_tagged_cell_rules():
    v, c = PY.tcell_add(0, 10, 3)           # an older (zero) cell: replaced
    assert c == 3 and PY.tcell_get(v, 10) == 3 and PY.tcell_get(v, 11) == 0
    v, c = PY.tcell_add(v, 9, 2)            # a lagging writer: counts in window 10
    assert c == 5 and PY.tcell_get(v, 10) == 5
    v, c = PY.tcell_add(v, 13, 1)           # three windows on: stale, replaced
    assert c == 1 and PY.tcell_get(v, 10) == 0
    v, c = PY.tcell_add(v, 13, -4)          # counts are signed
    assert c == -3


# ------------------------------------------------- shared == per process

@settings(max_examples=300, deadline=None)
@given(interval=st.sampled_from([1.0, 0.3, 7, 1e-6, 86400.0]), t0=st.floats(0, 1e6),
       slots=st.integers(1, 8), ops=rate_ops())
def test_shared_rate_matches_reference(interval, t0, slots, ops):
    """A shared Rate counts exactly what the per-process reference counts."""
    clock = FakeClock(t0)
    seeds = [5, 6, 7, 8]
    c = C.Rate(interval, slots=slots, seeds=seeds, clock=clock, scope="server")
    p = PY.Rate(interval, slots=slots, seeds=seeds, clock=clock, scope="server")
    replay_pair(c, p, clock, interval, ops)


@settings(max_examples=200, deadline=None)
@given(limit=st.integers(1, 6), interval=st.sampled_from([1.0, 60, 0.25]), slots=st.integers(1, 4),
       sliding=st.booleans(), ops=rate_limiter_ops)
def test_shared_rate_limiter_matches_reference(limit, interval, slots, sliding, ops):
    clock = FakeClock(3.0)
    kw = dict(sliding=sliding, slots=slots, seeds=[1, 2, 3, 4], clock=clock, scope="server")
    c = C.RateLimiter(limit, interval, **kw)
    p = PY.RateLimiter(limit, interval, **kw)
    replay_pair(c, p, clock, interval, ops, view=decision_fields)


@settings(max_examples=200, deadline=None)
@given(cls=st.sampled_from(["Estimator", "Inflight"]), slots=st.integers(1, 8),
       ops=st.lists(st.tuples(st.sampled_from(["incr", "get", "reset", "decr"]),
                              st.sampled_from(["a", "b", b"c"]), st.integers(-5, 5)),
                    max_size=40))
def test_shared_sketches_match_reference(cls, slots, ops):
    c = getattr(C, cls)(4, slots, seeds=[1, 2, 3, 4], scope="server")
    p = getattr(PY, cls)(4, slots, seeds=[1, 2, 3, 4], scope="server")
    assert c.memory == p.memory == 512 + 4 * slots * 8
    guards = []
    for op, key, n in ops:
        if cls == "Inflight" and op in ("reset", "decr"):
            op = "release"
        if op == "release":
            if guards:
                gc_, gp = guards.pop(n % len(guards))
                assert gc_.release() == gp.release()
            continue
        if op == "reset":
            c.reset(), p.reset()
            continue
        args = (key,) if op == "get" else (key, n)
        rc, rp = getattr(c, op)(*args), getattr(p, op)(*args)
        if op == "incr" and cls == "Inflight":
            guards.append((rc[0], rp[0]))
            rc, rp = rc[1], rp[1]
        assert rc == rp, (op, key, n)


# Clock ticks and windows in multiples of 1/64 s: whole microseconds, exact in binary,
# so the shared breaker (microseconds, integer nanoseconds) and the reference
# (float seconds) compute the very same times.
shared_breaker_ops = breaker_ops(["a", "b", "c"], [0.125, 0.5, 1.0, 2.0, 3.75])


@settings(max_examples=300, deadline=None)
@given(failures=st.sampled_from([None, 1, 2, 4]),
       error_rate=st.sampled_from([None, 0.25, 0.5, 1.0]),
       window=st.sampled_from([1.0, 0.5, 2.0]), min_requests=st.integers(1, 5),
       cooldown=st.sampled_from([0.0, 0.5, 2.0]), probes=st.integers(1, 2),
       capacity=st.integers(1, 3), ops=shared_breaker_ops)
def test_shared_breaker_matches_reference(failures, error_rate, window, min_requests, cooldown,
                                          probes, capacity, ops):
    if failures is None and error_rate is None:
        failures = 3
    clock = FakeClock(7.0)
    kw = dict(failures=failures, error_rate=error_rate, window=window, min_requests=min_requests,
              cooldown=cooldown, probes=probes, clock=clock, scope="server", capacity=capacity)
    breakers = [limits.CircuitBreaker(**kw), PY.CircuitBreaker(**kw)]
    replay_breakers(breakers, clock, ops, lambda b: (b.state("a"), b.state("b"), b.untracked))


def test_shared_arguments_and_memory():
    for impl in (C, PY):
        with pytest.raises(ValueError, match="scope must be 'process'"):
            impl.Rate(1.0, scope="cluster")
        with pytest.raises(ValueError, match="needs scope='server'"):
            impl.Estimator(name="x")
        with pytest.raises(ValueError, match="name must be"):
            impl.Inflight(scope="server", name="a/b")
        with pytest.raises(ValueError, match="not both"):
            impl.ConcurrencyLimiter(2, inflight=impl.Inflight(), scope="server")
        r = impl.RateLimiter(5, 1.0, slots=64, scope="server")
        assert r.rate.memory == 512 + 2 * 4 * 64 * 8 and r.rate.scope == "server"
        assert impl.Rate(1.0, slots=64).memory == 2 * 4 * 64 * 8
        assert impl.CircuitBreaker(scope="server", capacity=10).memory == 512 + 1280
        assert impl.ConcurrencyLimiter(2, scope="server").scope == "server"


# ------------------------------------------------------------ real processes

def _hammer(rate, keys, events, go, done):
    go.wait()
    for i in range(events):
        rate.observe(keys[i % len(keys)])
    done.wait()


def test_windows_roll_under_concurrent_updates_without_losing_an_event():
    """Four processes count the same keys while the shared clock crosses a
    window boundary; afterwards the two windows hold every event, once."""
    page = mmap.mmap(-1, 8)
    struct.pack_into("d", page, 0, 100.5)

    def clock():
        return struct.unpack_from("d", page, 0)[0]

    rate = C.Rate(1.0, slots=4096, clock=clock, scope="server")
    procs, events, rounds = 4, 6000, 6
    turned = 0
    for r in range(rounds):
        keys = [f"round{r}-{j}" for j in range(3)]
        go, done = FORK.Barrier(procs + 1), FORK.Barrier(procs + 1)
        workers = [FORK.Process(target=_hammer, args=(rate, keys, events, go, done))
                   for _ in range(procs)]
        for w in workers:
            w.start()
        start = clock()
        go.wait()
        os.sched_yield()
        for _ in range(2000):            # let the workers get going
            pass
        struct.pack_into("d", page, 0, start + 1.0)   # the window turns mid-hammer
        done.wait()
        for w in workers:
            w.join(30)
            assert w.exitcode == 0
        per_key = procs * events // len(keys)
        for k in keys:
            prev, curr, _ = rate.sample(k)
            assert prev + curr == per_key, (r, k, prev, curr)
            turned += prev > 0 and curr > 0
        struct.pack_into("d", page, 0, start + 2.0)   # the next round starts a window on
    assert turned, "the window never turned while the workers were counting"


def _check_many(limiter, n, out):
    out.put(sum(limiter.check("k").allowed for _ in range(n)))


def test_limiter_made_before_fork_is_shared_by_the_children():
    limiter = limits.RateLimiter(100, 60.0, scope="server")
    q = FORK.Queue()
    procs = [FORK.Process(target=_check_many, args=(limiter, 200, q)) for _ in range(4)]
    for p in procs:
        p.start()
    allowed = sum(q.get(timeout=30) for _ in procs)
    for p in procs:
        p.join(30)
    assert allowed == 100
    assert limiter.peek("k").count == 800


def _hold_and_release(limiter, rounds, out):
    got = 0
    for _ in range(rounds):
        try:
            permit = limiter.try_acquire("up")
        except ConcurrencyLimitExceeded:
            continue
        got += 1
        permit.release()
    out.put(got)


def test_concurrency_cap_counts_across_processes():
    limiter = limits.ConcurrencyLimiter(3, scope="server")
    held = [limiter.try_acquire("up") for _ in range(2)]
    q = FORK.Queue()
    procs = [FORK.Process(target=_hold_and_release, args=(limiter, 3000, q)) for _ in range(3)]
    for p in procs:
        p.start()
    got = [q.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(30)
    assert all(g > 0 for g in got)      # the one free place went round
    assert limiter.inflight("up") == 2  # every child's permit came back
    held.append(limiter.try_acquire("up"))
    with pytest.raises(ConcurrencyLimitExceeded):
        limiter.try_acquire("up")


def _fail(breaker, n):
    for _ in range(n):
        breaker.admit("up").failure()


def test_breaker_opened_by_one_worker_is_open_for_all():
    page = mmap.mmap(-1, 8)
    struct.pack_into("d", page, 0, 50.0)
    clock = lambda: struct.unpack_from("d", page, 0)[0]  # noqa: E731
    breaker = limits.CircuitBreaker(failures=3, cooldown=5.0, clock=clock, scope="server")
    p = FORK.Process(target=_fail, args=(breaker, 3))
    p.start()
    p.join(30)
    assert p.exitcode == 0
    assert breaker.state("up") == limits.BreakerState.OPEN
    assert list(breaker.transitions) == []          # the child made the change, and logged it
    with pytest.raises(CircuitOpen) as err:
        breaker.admit("up")
    assert err.value.retry_after == 5.0
    struct.pack_into("d", page, 0, 55.0)
    probe = breaker.admit("up")
    assert probe.probe
    q = FORK.Queue()
    c = FORK.Process(target=lambda: q.put(_admit_outcome(breaker)))
    c.start()
    assert q.get(timeout=30) == "busy"               # the one probe place is taken
    c.join(30)
    probe.success()
    assert breaker.state("up") == limits.BreakerState.CLOSED


def _admit_outcome(breaker):
    try:
        breaker.admit("up")
        return "ok"
    except CircuitOpen as err:
        return "busy" if "half-open" in str(err) else "open"


NAMED = textwrap.dedent('''
    import sys
    from sluiceway import limits
    limiter = limits.RateLimiter(10, 60.0, scope="server", name="api")
    print(sum(limiter.check("k").allowed for _ in range(int(sys.argv[1]))))
''')


def test_named_region_is_shared_by_unrelated_processes(shm_dir):
    env = subprocess_env(SLUICEWAY_SHM_DIR=str(shm_dir))
    outs = [subprocess.run([sys.executable, "-c", NAMED, "6"], capture_output=True, text=True,
                           env=env, timeout=60) for _ in range(3)]
    assert [o.returncode for o in outs] == [0, 0, 0], [o.stderr for o in outs]
    assert sum(int(o.stdout) for o in outs) == 10
    assert (shm_dir / "sluiceway-api").exists()
    here = limits.RateLimiter(10, 60.0, scope="server", name="api")
    assert here.peek("k").count == 18 and here.rate.name == "api"
    with pytest.raises(ValueError, match="windows of 60s, not 30s"):
        limits.RateLimiter(10, 30.0, scope="server", name="api")
    with pytest.raises(ValueError, match="another size"):
        limits.RateLimiter(10, 60.0, slots=64, scope="server", name="api")
    with pytest.raises(ValueError, match="another kind"):
        limits.Estimator(4, 2 * 1024 + 0, scope="server", name="api")
    with pytest.raises(ValueError, match="other settings"):
        limits.CircuitBreaker(failures=2, scope="server", name="brk") and \
            limits.CircuitBreaker(failures=3, scope="server", name="brk")
    assert limits.unlink_shared("api") and not limits.unlink_shared("api")
    assert limits.RateLimiter(10, 60.0, scope="server", name="api").peek("k").count == 0
