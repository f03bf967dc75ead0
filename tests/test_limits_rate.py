"""Rate (two-window estimator): window rollover under an injected clock, both implementations."""

import datetime
import math
import time

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import sluiceway._limits_py as PY
from limits_oracle import FakeClock, decision_fields, rate_limiter_ops, rate_ops, replay_pair
from sluiceway import limits

C = limits._c
IMPLS = pytest.mark.parametrize("impl", [C, PY], ids=["compiled", "reference"])


def make(impl, interval=1.0, **kw):
    clock = FakeClock()
    return impl.Rate(interval, clock=clock, seeds=[1, 2, 3, 4], **kw), clock


@IMPLS
def test_observe_and_rate_across_windows(impl):
    r, clock = make(impl)
    assert r.observe("k", 3) == 3
    assert r.observe("k", 2) == 5
    assert r.rate("k") == 0.0  # no completed window yet
    clock.t += 1.0
    assert r.observe("k", 4) == 4  # new window counts from zero
    assert r.rate("k") == 5.0
    clock.t += 1.0
    assert r.rate("k") == 4.0
    clock.t += 1.0
    assert r.rate("k") == 0.0  # the last completed window saw nothing


@IMPLS
def test_both_windows_zeroed_after_two_idle_intervals(impl):
    r, clock = make(impl)
    r.observe("k", 7)
    clock.t += 1.5
    assert r.sample("k") == (7, 0, 0.5)
    r.observe("k", 2)
    clock.t += 2.0  # skip window 2 entirely: now in window 3
    assert r.sample("k")[:2] == (0, 0)
    assert r.observe("k") == 1


@IMPLS
def test_windows_sit_on_a_fixed_grid(impl):
    r, clock = make(impl, interval=10.0)
    clock.t += 9.0
    r.observe("k")
    clock.t += 2.0  # 11s after start: window 1, one second in
    prev, curr, frac = r.sample("k")
    assert (prev, curr) == (1, 0) and math.isclose(frac, 0.1)
    assert math.isclose(r.until_next_window(), 9.0)


@IMPLS
def test_rate_with_proportional_and_custom_fn(impl):
    r, clock = make(impl)
    r.observe("k", 5)
    assert r.rate_with("k", impl.proportional) == 5.0
    clock.t += 1.0
    r.observe("k", 4)
    assert r.rate_with("k", impl.proportional) == 9.0  # fraction 0: all of prev
    clock.t += 0.75
    assert math.isclose(r.rate_with("k", impl.proportional), 5 * 0.25 + 4)
    seen = []
    r.rate_with("k", lambda *a: seen.append(a))
    assert seen == [(5, 4, 1.0, 0.75)]
    assert r.rate_with("k", lambda p, c, i, f: p * 0.1 + c * 0.9) == pytest.approx(4.1)
    clock.t += 0.25
    assert r.rate_with("k", impl.proportional) == 4.0
    clock.t += 0.5
    assert r.rate_with("k", impl.proportional) == 2.0
    assert r.rate("k") == 4.0


@IMPLS
def test_clock_stepping_back_never_moves_windows_back(impl):
    r, clock = make(impl)
    clock.t += 1.2
    r.observe("k", 3)
    clock.t -= 5.0  # before the start even
    assert r.observe("k") == 4
    assert r.sample("k") == (0, 4, 0.0)


@IMPLS
def test_reset_restarts_the_grid(impl):
    r, clock = make(impl)
    clock.t += 0.5
    r.observe("k", 3)
    r.reset()
    assert r.sample("k") == (0, 0, 0.0)
    clock.t += 0.9
    r.observe("k")
    clock.t += 0.2  # 1.1s after the reset: next window
    assert r.rate("k") == 1.0


@IMPLS
def test_interval_forms_and_properties(impl):
    assert impl.Rate(datetime.timedelta(minutes=1)).interval == 60.0
    assert impl.Rate(2).interval == 2.0
    r = impl.Rate(0.25, hashes=2, slots=16)
    assert (r.hashes, r.slots, len(r.seeds)) == (2, 16, 2)


@IMPLS
@pytest.mark.parametrize("interval, exc", [
    (-1, ValueError), (0, ValueError), (float("nan"), ValueError), (float("inf"), ValueError),
    (1e-12, ValueError), ("1", TypeError), (None, TypeError), (True, TypeError),
])
def test_bad_interval(impl, interval, exc):
    with pytest.raises(exc, match="^Rate: interval must be"):
        impl.Rate(interval)


@IMPLS
def test_bad_clock(impl):
    with pytest.raises(TypeError, match="clock must be None or a callable"):
        impl.Rate(1.0, clock=5)
    clock = FakeClock()
    r = impl.Rate(1.0, clock=clock)
    clock.t = float("nan")
    with pytest.raises(ValueError, match="the clock returned nan"):
        r.observe("k")
    clock.t = 1e300
    with pytest.raises(ValueError, match="finite number"):
        r.rate("k")
    clock.t = "12"
    with pytest.raises(TypeError, match="must be real number, not str"):
        r.observe("k")


@IMPLS
def test_default_clock_is_monotonic(impl):
    r = impl.Rate(3600.0)
    assert r.observe("k") == 1
    left = r.until_next_window()
    assert 3599.0 < left <= 3600.0
    time.sleep(0.01)
    assert r.until_next_window() < left


@settings(max_examples=300, deadline=None)
@given(interval=st.sampled_from([1.0, 0.3, 7, 1e-6, 86400.0]), t0=st.floats(0, 1e6),
       slots=st.integers(1, 8), ops=rate_ops(proportional=True))
@example(interval=1.0, t0=0.0, slots=1, ops=[("observe", "a", 1), ("tick", 1.0), ("rate", "a")])
def test_compiled_matches_reference_exactly(interval, t0, slots, ops):
    clock = FakeClock(t0)
    seeds = [5, 6, 7, 8]
    c = C.Rate(interval, slots=slots, seeds=seeds, clock=clock)
    p = PY.Rate(interval, slots=slots, seeds=seeds, clock=clock)
    replay_pair(c, p, clock, interval, ops, calls={"proportional": lambda key: (
        c.rate_with(key, C.proportional), p.rate_with(key, PY.proportional))})


@settings(max_examples=300, deadline=None)
@given(limit=st.integers(1, 6), interval=st.sampled_from([1.0, 60, 0.25]), slots=st.integers(1, 4),
       sliding=st.booleans(), ops=rate_limiter_ops)
def test_rate_limiter_compiled_matches_reference(limit, interval, slots, sliding, ops):
    clock = FakeClock(3.0)
    kw = dict(sliding=sliding, slots=slots, seeds=[1, 2, 3, 4], clock=clock)
    c = C.RateLimiter(limit, interval, **kw)
    p = PY.RateLimiter(limit, interval, **kw)
    for op, *args in ops:
        if op == "tick":
            clock.t += args[0] * interval
            continue
        dc, dp = getattr(c, op)(*args), getattr(p, op)(*args)
        assert decision_fields(dc) == decision_fields(dp), (op, args)
        if not sliding:
            assert dc.allowed == (dc.count <= limit if op == "check"
                                  else dc.count + args[1] <= limit)


@IMPLS
def test_sliding_limiter_smooths_the_window_boundary(impl):
    clock = FakeClock(0.0)
    fixed = impl.RateLimiter(10, 60.0, clock=clock)
    sliding = impl.RateLimiter(10, 60.0, sliding=True, clock=clock)
    clock.t = 59.0
    for _ in range(10):
        assert fixed.check("k").allowed and sliding.check("k").allowed
    clock.t = 60.0  # next window: the fixed limiter lets 10 more through at once
    assert fixed.check("k").allowed
    d = sliding.check("k")
    assert not d.allowed and d.remaining == 0 and d.count == 1
    # 10 * (1 - f) + 1 (refused, counted) + 1 (the retry) <= 10  =>  f >= 0.2: 12 s
    assert d.reset_after == pytest.approx(12.0) and d.retry_after == 12
    assert d.headers()[-1] == ("Retry-After", "12")
    clock.t = 71.9
    assert not sliding.peek("k").allowed
    clock.t = 72.0 + 1e-6
    p = sliding.peek("k")
    assert p.allowed and p.remaining == 1 and p.count == 1
    assert "sliding" in repr(sliding) and sliding.sliding and not fixed.sliding


check_ops = st.lists(st.one_of(
    st.tuples(st.just("check"), st.sampled_from(["a", "b"]), st.integers(0, 3)),
    st.tuples(st.just("tick"), st.floats(0, 1.5, allow_nan=False)),
), max_size=40)


@IMPLS
@settings(max_examples=150, deadline=None)
@given(limit=st.integers(1, 5), sliding=st.booleans(), ops=check_ops)
def test_reset_after_is_when_a_refused_request_first_fits(impl, limit, sliding, ops):
    """Before reset_after the same request still does not fit; just after, it does."""
    interval = 10.0
    clock = FakeClock(100.0)
    lim = impl.RateLimiter(limit, interval, sliding=sliding, slots=64, clock=clock)
    for op, *args in ops:
        if op == "tick":
            clock.t += args[0] * interval
            continue
        key, cost = args
        d = lim.check(key, cost)
        if d.allowed or cost > limit:
            continue
        t0 = clock.t
        if d.reset_after > 1e-3 * interval:
            clock.t = t0 + d.reset_after * 0.98
            assert not lim.peek(key, cost).allowed
        clock.t = t0 + d.reset_after + 1e-6 * interval
        assert lim.peek(key, cost).allowed
