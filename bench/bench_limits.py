"""Per-call cost of the limits, compiled vs the pure-Python reference, same run.

Run:  PYTHONPATH=corepy python -m pytest bench/bench_limits.py -s \
          --benchmark-columns=min,median,rounds

Each benchmark times a batch of CALLS calls made from a Python loop and
reports ns per call in the table's `extra_info` and on stdout; the loop's own
cost is measured by the `baseline` case (calling the builtin `len`).  Keys are
32 bytes, as an API key or tenant id would be.  Speed goals live here, never in
unit tests: the goal for `Rate.observe` is at most 100 ns per call, and the
shared one (`scope="server"`) at most 1.5 times the per-process one; the
`scope` cases run interleaved in one session, and `python bench/bench_limits.py`
prints the ratio from alternating rounds of both.
"""

import itertools
import time

import pytest

import sluiceway._limits_py as PY
from sluiceway import limits

C = limits._c
CALLS = 1000
KEY_STR = "k" * 32
KEY_BYTES = b"k" * 32
IMPLS = pytest.mark.parametrize("impl", [C, PY], ids=["compiled", "reference"])
KEYS = pytest.mark.parametrize("key", [KEY_STR, KEY_BYTES], ids=["str32", "bytes32"])


def per_call(benchmark, fn, *args, calls=CALLS):
    """Benchmark `calls` calls of fn(*args); record ns per call."""
    repeat = itertools.repeat

    def batch():
        for _ in repeat(None, calls):
            fn(*args)

    benchmark.extra_info["calls_per_round"] = calls
    benchmark(batch)
    if benchmark.stats is None:  # --benchmark-disable: ran once as a smoke test
        return
    stats = benchmark.stats.stats
    ns, median = stats.min / calls * 1e9, stats.median / calls * 1e9
    benchmark.extra_info["ns_per_call_min"] = round(ns, 1)
    benchmark.extra_info["ns_per_call_median"] = round(median, 1)
    print(f"\n{benchmark.name}: {ns:.1f} ns/call (min), {median:.1f} ns/call (median)")


def test_baseline_loop(benchmark):
    per_call(benchmark, len, KEY_STR)


@IMPLS
@KEYS
def test_rate_observe(benchmark, impl, key):
    r = impl.Rate(1.0)
    calls = CALLS if impl is C else 100
    per_call(benchmark, r.observe, key, calls=calls)


@IMPLS
@KEYS
def test_estimator_incr(benchmark, impl, key):
    e = impl.Estimator()
    calls = CALLS if impl is C else 100
    per_call(benchmark, e.incr, key, calls=calls)


@pytest.mark.parametrize("scope", ["process", "server"])
def test_rate_observe_scope(benchmark, scope):
    r = C.Rate(1.0, scope=scope)
    per_call(benchmark, r.observe, KEY_STR)


@pytest.mark.parametrize("scope", ["process", "server"])
def test_rate_limiter_check_scope(benchmark, scope):
    limiter = limits.RateLimiter(10**12, 60.0, scope=scope)
    per_call(benchmark, limiter.check, KEY_STR)


def test_rate_observe_injected_python_clock(benchmark):
    r = C.Rate(1.0, clock=time.monotonic)
    per_call(benchmark, r.observe, KEY_STR)


def test_rate_with_proportional(benchmark):
    r = C.Rate(1.0)
    r.observe(KEY_STR)
    per_call(benchmark, r.rate_with, KEY_STR, C.proportional)


def test_inflight_incr_release(benchmark):
    inflight = C.Inflight()

    def step(key):
        inflight.incr(key)[0].release()

    per_call(benchmark, step, KEY_STR)


@pytest.mark.parametrize("impl", [limits, PY], ids=["compiled", "reference"])
def test_rate_limiter_check(benchmark, impl):
    limiter = impl.RateLimiter(10**12, 60.0)
    per_call(benchmark, limiter.check, KEY_STR, calls=CALLS if impl is limits else 100)


def test_rate_limiter_check_sliding(benchmark):
    limiter = limits.RateLimiter(10**12, 60.0, sliding=True)
    per_call(benchmark, limiter.check, KEY_STR)


def test_rate_limiter_check_and_headers(benchmark):
    limiter = limits.RateLimiter(10**12, 60.0)

    def step(key):
        limiter.check(key).headers()

    per_call(benchmark, step, KEY_STR)


@pytest.mark.parametrize("impl", [limits, PY], ids=["compiled", "reference"])
def test_concurrency_try_acquire_release(benchmark, impl):
    limiter = impl.ConcurrencyLimiter(100)

    def step(key):
        limiter.try_acquire(key).release()

    per_call(benchmark, step, "10.0.0.1:8080", calls=CALLS if impl is limits else 100)


@pytest.mark.parametrize("impl", [limits, PY], ids=["compiled", "reference"])
def test_breaker_admit_success(benchmark, impl):
    breaker = impl.CircuitBreaker()

    def step(key):
        breaker.admit(key).success()

    per_call(benchmark, step, "10.0.0.1:8080", calls=CALLS if impl is limits else 100)


def interleaved(rounds=30, calls=20000):
    """Shared vs per-process, alternating rounds in one process; ns per call (best round)."""
    repeat = itertools.repeat

    def once(f):
        t0 = time.perf_counter()
        for _ in repeat(None, calls):
            f(KEY_STR)
        return (time.perf_counter() - t0) / calls

    out = {}
    pairs = (("Rate.observe", C.Rate(1.0).observe, C.Rate(1.0, scope="server").observe),
             ("RateLimiter.check", limits.RateLimiter(10**12).check,
              limits.RateLimiter(10**12, scope="server").check))
    for what, local, shared in pairs:
        best = [float("inf"), float("inf")]
        for _ in range(rounds):
            best[0] = min(best[0], once(local))
            best[1] = min(best[1], once(shared))
        out[what] = best
        print(f"{what}: process {best[0] * 1e9:.1f} ns, server {best[1] * 1e9:.1f} ns, "
              f"ratio {best[1] / best[0]:.2f}")
    return out


if __name__ == "__main__":
    interleaved()
