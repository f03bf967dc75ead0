"""Load shedding: concurrency cap, circuit breaker and the rate-limit helper.

The network tests drive the components directly against real TCP upstreams on
127.0.0.1 that the test makes slow or failing, under both the stdlib event loop
and uvloop; each is bounded in requests and wrapped in a time limit.
"""

import asyncio
import gc
import logging
import time

import pytest
import uvloop

import sluiceway._limits_py as PY
from limits_oracle import FakeClock, breaker_ops, replay_breakers
from sluiceway import limits
from sluiceway.limits import (
    BreakerState,
    CircuitOpen,
    ConcurrencyLimitExceeded,
    LoadShedError,
)

LOOPS = pytest.mark.parametrize("loop_factory", [asyncio.new_event_loop, uvloop.new_event_loop],
                                ids=["asyncio", "uvloop"])
IMPLS = pytest.mark.parametrize("impl", [limits, PY], ids=["compiled", "reference"])


def run(loop_factory, coro, limit=10.0):
    loop = loop_factory()
    try:
        return loop.run_until_complete(asyncio.wait_for(coro, limit))
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


class Upstream:
    """A one-line-per-connection TCP server on 127.0.0.1: slow (delay) or failing."""

    def __init__(self, delay=0.0, fail=False):
        self.delay = delay
        self.fail = fail
        self.active = 0
        self.peak = 0
        self.served = 0
        self.handlers = set()

    async def _handle(self, reader, writer):
        self.handlers.add(asyncio.current_task())
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            line = await reader.readline()
            if self.delay:
                await asyncio.sleep(self.delay)
            if not self.fail:
                writer.write(b"OK " + line)
                await writer.drain()
                self.served += 1
        except asyncio.CancelledError:
            pass
        finally:
            self.active -= 1
            writer.close()
            self.handlers.discard(asyncio.current_task())

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        self.server.close()
        for task in list(self.handlers):  # e.g. still sleeping for a client that gave up
            task.cancel()
        while self.handlers:
            await asyncio.sleep(0.01)
        await self.server.wait_closed()

    async def call(self, timeout=3.0):
        """One request; raises ConnectionError when the upstream fails."""
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", self.port), timeout)
        try:
            writer.write(b"ping\n")
            line = await asyncio.wait_for(reader.readline(), timeout)
        finally:
            writer.close()
        if not line.startswith(b"OK"):
            raise ConnectionError("upstream closed without answering")
        return line


# ---------------------------------------------------------------- concurrency cap

@LOOPS
@IMPLS
def test_fail_fast_cap_against_slow_upstream(loop_factory, impl):
    limiter = impl.ConcurrencyLimiter(2)

    async def request(up):
        with limiter.try_acquire("up-1"):
            return await up.call()

    async def main():
        async with Upstream(delay=0.3) as up:
            results = await asyncio.gather(*(request(up) for _ in range(6)),
                                           return_exceptions=True)
            return up, results

    up, results = run(loop_factory, main())
    ok = [r for r in results if isinstance(r, bytes)]
    shed = [r for r in results if isinstance(r, ConcurrencyLimitExceeded)]
    assert len(ok) == 2 and len(shed) == 4
    assert up.peak == 2 and up.served == 2
    err = shed[0]
    assert isinstance(err, LoadShedError)
    assert (err.status, err.retryable, err.upstream) == (503, True, "up-1")
    assert "2 requests in flight" in str(err)
    assert limiter.inflight("up-1") == 0 and limiter.shed == 4


@LOOPS
@IMPLS
def test_waiting_cap_queues_fifo_and_never_exceeds(loop_factory, impl):
    limiter = impl.ConcurrencyLimiter(2, wait=5.0)
    order = []

    async def request(up, i):
        async with await limiter.acquire("up-1"):
            order.append(i)
            return await up.call()

    async def main():
        async with Upstream(delay=0.05) as up:
            tasks = []
            for i in range(8):
                tasks.append(asyncio.ensure_future(request(up, i)))
                await asyncio.sleep(0)  # start them in a known order
            results = await asyncio.gather(*tasks)
            return up, results

    up, results = run(loop_factory, main())
    assert len(results) == 8 and up.served == 8
    assert up.peak == 2
    assert order == list(range(8))
    assert limiter.inflight("up-1") == 0 and limiter.waiting("up-1") == 0


@IMPLS
@LOOPS
def test_waiting_times_out(loop_factory, impl):
    limiter = impl.ConcurrencyLimiter(1, wait=0.1)

    async def main():
        async with Upstream(delay=0.6) as up:
            async def first():
                async with limiter.try_acquire("up"):
                    await up.call()

            holder = asyncio.ensure_future(first())
            await asyncio.sleep(0.05)
            t0 = time.monotonic()
            with pytest.raises(ConcurrencyLimitExceeded, match="after waiting 0.1s") as info:
                await limiter.acquire("up")
            waited = time.monotonic() - t0
            with pytest.raises(ConcurrencyLimitExceeded, match="not waiting"):
                await limiter.acquire("up", timeout=0)
            await holder
            return waited, info.value

    waited, err = run(loop_factory, main())
    assert 0.09 <= waited < 0.5
    assert err.status == 503
    assert limiter.waiting("up") == 0 and limiter.inflight("up") == 0


@IMPLS
@LOOPS
def test_cancelled_waiter_passes_its_turn(loop_factory, impl):
    limiter = impl.ConcurrencyLimiter(1, wait=5.0)

    async def main():
        held = limiter.try_acquire("up")
        b = asyncio.ensure_future(limiter.acquire("up"))
        c = asyncio.ensure_future(limiter.acquire("up"))
        await asyncio.sleep(0.01)
        assert limiter.waiting("up") == 2
        held.release()   # wakes b ...
        b.cancel()       # ... which is cancelled before it runs: c must get the place
        permit = await asyncio.wait_for(c, 1.0)
        with pytest.raises(asyncio.CancelledError):
            await b
        assert limiter.inflight("up") == 1
        permit.release()
        assert limiter.inflight("up") == 0 and limiter.waiting("up") == 0

    run(loop_factory, main())


@IMPLS
@LOOPS
def test_dropped_permit_releases_and_wakes(loop_factory, impl):
    limiter = impl.ConcurrencyLimiter(1, wait=5.0)

    async def main():
        permits = [limiter.try_acquire("up")]
        waiter = asyncio.ensure_future(limiter.acquire("up"))
        await asyncio.sleep(0.01)
        permits.clear()  # the only reference: garbage, released, waiter woken
        gc.collect()
        permit = await asyncio.wait_for(waiter, 1.0)
        assert permit.release() is True and permit.release() is False

    run(loop_factory, main())
    assert limiter.inflight("up") == 0


@LOOPS
@IMPLS
def test_str_and_bytes_name_the_same_upstream_when_waiting(loop_factory, impl):
    limiter = impl.ConcurrencyLimiter(1, wait=5.0)

    async def main():
        held = limiter.try_acquire(b"up")
        waiter = asyncio.ensure_future(limiter.acquire("up"))
        await asyncio.sleep(0.01)
        assert limiter.waiting(b"up") == 1
        held.release()  # released under b"up": must wake the waiter queued under "up"
        (await asyncio.wait_for(waiter, 1.0)).release()

    run(loop_factory, main())
    assert limiter.inflight("up") == 0


@IMPLS
def test_caps_are_per_upstream(impl):
    limiter = impl.ConcurrencyLimiter(1)
    a = limiter.try_acquire("a")
    b = limiter.try_acquire(b"b")
    with pytest.raises(ConcurrencyLimitExceeded):
        limiter.try_acquire("a")
    a.release()
    limiter.try_acquire("a").release()
    b.release()


@pytest.mark.parametrize("kwargs, exc, words", [
    (dict(max_inflight=0), ValueError, "max_inflight must be finite and > 0"),
    (dict(max_inflight=2.5), TypeError, "max_inflight must be an int"),
    (dict(max_inflight=1, wait=-1), ValueError, "wait must be finite and >= 0"),
    (dict(max_inflight=1, wait=float("inf")), ValueError, "wait must be finite"),
])
@IMPLS
def test_concurrency_limiter_bad_arguments(kwargs, exc, words, impl):
    with pytest.raises(exc, match="^ConcurrencyLimiter: ") as info:
        impl.ConcurrencyLimiter(**kwargs)
    assert words in str(info.value)


# ---------------------------------------------------------------- circuit breaker

@IMPLS
@LOOPS
def test_breaker_opens_on_failing_upstream_then_probes_and_closes(loop_factory, caplog, impl):
    clock = FakeClock(500.0)
    changes = []
    breaker = impl.CircuitBreaker(failures=3, cooldown=5.0, clock=clock, on_change=changes.append)

    async def request(up):
        with breaker.admit("up-1"):
            return await up.call()

    async def main():
        async with Upstream(fail=True) as up:
            for _ in range(3):
                with pytest.raises(ConnectionError):
                    await request(up)
            assert breaker.state("up-1") is BreakerState.OPEN
            with pytest.raises(CircuitOpen) as info:
                await request(up)
            err = info.value
            assert (err.status, err.retryable, err.retry_after) == (503, True, 5.0)
            served_while_open = up.served
            clock.t += 4.9
            with pytest.raises(CircuitOpen, match="open; next probe in"):
                breaker.admit("up-1")
            up.fail = False      # the upstream recovers
            clock.t += 0.1       # cool-down over
            probe = breaker.admit("up-1")
            assert probe.probe and breaker.state("up-1") is BreakerState.HALF_OPEN
            with pytest.raises(CircuitOpen, match="half-open"):
                breaker.admit("up-1")  # one probe at a time
            with probe:
                await up.call()
            assert breaker.state("up-1") is BreakerState.CLOSED
            assert await request(up) == b"OK ping\n"
            return served_while_open

    with caplog.at_level(logging.INFO, logger="sluiceway.limits"):
        assert run(loop_factory, main()) == 0
    assert [(t.old, t.new) for t in breaker.transitions] == [
        (BreakerState.CLOSED, BreakerState.OPEN),
        (BreakerState.OPEN, BreakerState.HALF_OPEN),
        (BreakerState.HALF_OPEN, BreakerState.CLOSED),
    ]
    assert changes == list(breaker.transitions)
    assert breaker.transitions[0].reason == "3 consecutive failures"
    records = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    assert records[0] == ("sluiceway.limits", logging.WARNING,
                          "circuit for upstream 'up-1': closed -> open (3 consecutive failures)")
    assert [r[1] for r in records[1:]] == [logging.INFO, logging.INFO]


@IMPLS
@LOOPS
def test_breaker_opens_on_error_rate_of_slow_upstream(loop_factory, impl):
    """Timeouts against a slow upstream count as failures; half of them trips it."""
    clock = FakeClock(500.0)
    breaker = impl.CircuitBreaker(failures=None, error_rate=0.5, min_requests=6, window=10.0,
                             cooldown=1.0, clock=clock)

    async def main():
        async with Upstream(delay=0.2) as slow, Upstream() as fast:
            for i in range(6):
                up, timeout = (slow, 0.05) if i % 2 else (fast, 2.0)
                try:
                    with breaker.admit("pool"):
                        await up.call(timeout=timeout)
                except asyncio.TimeoutError:
                    pass
            return breaker.state("pool")

    assert run(loop_factory, main()) is BreakerState.OPEN
    assert breaker.transitions[-1].reason == "error rate 50% over 6 requests in the last 10s"


@IMPLS
def test_error_rate_slides_and_forgets_old_windows(impl):
    clock = FakeClock(0.0)
    breaker = impl.CircuitBreaker(failures=None, error_rate=0.5, min_requests=4, window=10.0,
                             clock=clock)
    for _ in range(3):
        breaker.admit("k").failure()  # 3 failures of 3: not enough requests yet
    assert breaker.state("k") is BreakerState.CLOSED
    clock.t = 25.0  # two windows later: those failures are gone
    for _ in range(3):
        breaker.admit("k").success()
    breaker.admit("k").failure()
    assert breaker.stats("k")["window_requests"] == 4
    assert breaker.state("k") is BreakerState.CLOSED  # 1 failure in 4
    clock.t = 35.0  # half into the next window: previous window weighs 0.5
    s = breaker.stats("k")
    assert (s["window_requests"], s["window_failures"]) == (2.0, 0.5)
    for _ in range(2):
        breaker.admit("k").failure()
    assert breaker.state("k") is BreakerState.OPEN  # 2.5 of 4 failed


@IMPLS
def test_failed_probe_reopens_and_stale_outcomes_are_ignored(impl):
    clock = FakeClock(500.0)
    breaker = impl.CircuitBreaker(failures=2, cooldown=3.0, clock=clock)
    early = breaker.admit("k")  # admitted while closed, reports late
    breaker.admit("k").failure()
    breaker.admit("k").failure()
    assert breaker.state("k") is BreakerState.OPEN
    clock.t += 3.0
    probe = breaker.admit("k")
    early.success()  # belongs to the old closed state: must not close the circuit
    assert breaker.state("k") is BreakerState.HALF_OPEN
    probe.failure()
    assert breaker.state("k") is BreakerState.OPEN
    with pytest.raises(CircuitOpen):
        breaker.admit("k")
    probe.success()  # reported twice: ignored
    assert breaker.state("k") is BreakerState.OPEN


@IMPLS
def test_lost_probe_frees_its_place_after_cooldown(impl):
    clock = FakeClock(500.0)
    breaker = impl.CircuitBreaker(failures=1, cooldown=2.0, clock=clock)
    breaker.admit("k").failure()
    clock.t += 2.0
    breaker.admit("k")  # a probe whose outcome never comes
    clock.t += 1.0
    with pytest.raises(CircuitOpen) as info:
        breaker.admit("k")
    assert info.value.retry_after == 1.0
    clock.t += 1.0
    breaker.admit("k").success()
    assert breaker.state("k") is BreakerState.CLOSED


@IMPLS
def test_failing_on_change_is_logged_not_raised(impl, caplog):
    def broken(transition):
        raise RuntimeError("metrics backend down")

    breaker = impl.CircuitBreaker(failures=1, clock=FakeClock(500.0), on_change=broken)
    with caplog.at_level(logging.WARNING, logger="sluiceway.limits"):
        breaker.admit("k").failure()  # does not raise
    assert breaker.state("k") is BreakerState.OPEN
    failed = [r for r in caplog.records if r.exc_info]
    assert len(failed) == 1 and "on_change callback" in failed[0].getMessage()
    assert isinstance(failed[0].exc_info[1], RuntimeError)


@IMPLS
def test_successes_reset_the_consecutive_count_and_reset_closes(impl):
    breaker = impl.CircuitBreaker(failures=2, cooldown=60.0, clock=FakeClock(500.0))
    for _ in range(5):
        breaker.admit("k").failure()
        breaker.admit("k").success()
    assert breaker.state("k") is BreakerState.CLOSED
    assert breaker.state("never-seen") is BreakerState.CLOSED
    breaker.admit("k").failure()
    breaker.admit("k").failure()
    assert breaker.state("k") is BreakerState.OPEN
    breaker.reset("k")
    assert breaker.state("k") is BreakerState.CLOSED
    assert breaker.transitions[-1].reason == "reset by the application"


@pytest.mark.parametrize("kwargs, words", [
    (dict(failures=None), "set failures, error_rate or both"),
    (dict(failures=0), "failures must be finite and > 0"),
    (dict(error_rate=1.5), "error_rate is a ratio in (0, 1]"),
    (dict(error_rate=0), "error_rate must be finite and > 0"),
    (dict(cooldown=-1), "cooldown must be finite and >= 0"),
    (dict(window=0), "window must be finite and > 0"),
    (dict(probes=0), "probes must be finite and > 0"),
])
@IMPLS
def test_breaker_bad_arguments(kwargs, words, impl):
    with pytest.raises(ValueError, match="^CircuitBreaker: ") as info:
        impl.CircuitBreaker(**kwargs)
    assert words in str(info.value)


# ---------------------------------------------------------------- rate-limit helper

@pytest.mark.parametrize("impl", [limits, PY], ids=["compiled", "reference"])
def test_rate_limiter_decisions_and_headers(impl):
    clock = FakeClock(0.0)
    limiter = impl.RateLimiter(3, 60.0, clock=clock)
    got = [limiter.check("api-key-1") for _ in range(3)]
    assert [d.remaining for d in got] == [2, 1, 0] and all(d.allowed for d in got)
    assert got[0].headers() == [("X-RateLimit-Limit", "3"), ("X-RateLimit-Remaining", "2")]
    clock.t = 59.5
    refused = limiter.check("api-key-1")
    assert not refused.allowed and refused.count == 4 and refused.retry_after == 1
    assert refused.headers() == [("X-RateLimit-Limit", "3"), ("X-RateLimit-Remaining", "0"),
                                 ("Retry-After", "1")]
    assert limiter.check("api-key-2").allowed  # keys are independent
    peeked = limiter.peek("api-key-2")
    assert (peeked.allowed, peeked.limit, peeked.remaining, peeked.reset_after, peeked.count) == (
        True, 3, 2, 0.5, 1)
    assert limiter.peek("api-key-2", cost=2).allowed
    assert not limiter.peek("api-key-2", cost=3).allowed
    assert limiter.peek("api-key-2").count == 1  # peeking counts nothing
    clock.t = 60.0
    fresh = limiter.check("api-key-1")
    assert fresh.allowed and fresh.remaining == 2 and fresh.retry_after == 60
    assert limiter.check("api-key-1", cost=0).count == 1


@pytest.mark.parametrize("impl", [limits, PY], ids=["compiled", "reference"])
def test_rate_limiter_bad_arguments(impl):
    with pytest.raises(ValueError, match="RateLimiter: limit must be finite and > 0"):
        impl.RateLimiter(0)
    with pytest.raises(ValueError, match="RateLimiter: limit must be at most 2\\*\\*62"):
        impl.RateLimiter(2**63)
    with pytest.raises(TypeError, match="RateLimiter: limit must be an int"):
        impl.RateLimiter(1.5)
    with pytest.raises(ValueError, match="Rate: interval must be"):
        impl.RateLimiter(10, -1)
    with pytest.raises(ValueError, match="RateLimiter: cost must be >= 0, got -1"):
        impl.RateLimiter(10).check("k", -1)
    with pytest.raises(TypeError, match="RateDecision objects are made by"):
        impl.RateDecision(True, 1, 1, 1.0)


# ---------------------------------------------------------------- compiled vs reference

from hypothesis import assume, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

local_breaker_ops = breaker_ops(["a", "b"], [0.1, 0.5, 1.0, 2.0, 3.7])


@settings(max_examples=300, deadline=None)
@given(failures=st.sampled_from([None, 1, 2, 4]),
       error_rate=st.sampled_from([None, 0.25, 0.5, 1.0]),
       window=st.sampled_from([1.0, 2.5]), min_requests=st.integers(1, 5),
       cooldown=st.sampled_from([0.0, 0.5, 2.0]), probes=st.integers(1, 2), ops=local_breaker_ops)
@example(failures=1, error_rate=None, window=1.0, min_requests=1, cooldown=0.5, probes=1,
         ops=[("admit", "a"), ("admit", "a"), ("failure", 0), ("tick", 0.5), ("admit", "a"),
              ("admit", "a"), ("success", 1), ("success", 2), ("stats", "a")])  # stale + probe
@example(failures=None, error_rate=0.5, window=2.5, min_requests=2, cooldown=0.0, probes=2,
         ops=[("admit", "b"), ("failure", 0), ("tick", 3.7), ("admit", "b"), ("success", 1),
              ("admit", "b"), ("failure", 2), ("stats", "b")])  # sliding error rate
def test_breaker_compiled_matches_reference(failures, error_rate, window, min_requests, cooldown,
                                            probes, ops):
    assume(failures is not None or error_rate is not None)
    clock = FakeClock(7.0)
    kw = dict(failures=failures, error_rate=error_rate, window=window, min_requests=min_requests,
              cooldown=cooldown, probes=probes, clock=clock)
    breakers = [limits.CircuitBreaker(**kw), PY.CircuitBreaker(**kw)]
    replay_breakers(breakers, clock, ops, lambda b: (b.state("a"), b.state("b")))


limiter_ops = st.lists(st.one_of(
    st.tuples(st.just("try_acquire"), st.sampled_from(["a", "b", b"a"])),
    st.tuples(st.just("release"), st.integers(0, 50)),
    st.tuples(st.just("drop"), st.integers(0, 50)),
), max_size=60)


@settings(max_examples=200, deadline=None)
@given(cap=st.integers(1, 4), ops=limiter_ops)
@example(cap=1, ops=[("try_acquire", "a"), ("try_acquire", b"a"), ("drop", 0),
                     ("try_acquire", "a"), ("release", 0), ("release", 0)])
def test_concurrency_compiled_matches_reference(cap, ops):
    limiters = [limits.ConcurrencyLimiter(cap), PY.ConcurrencyLimiter(cap)]
    permits = [[], []]
    held = {}
    for op, arg in ops:
        got = []
        for i, lim in enumerate(limiters):
            if op == "try_acquire":
                try:
                    permits[i].append(lim.try_acquire(arg))
                    got.append("ok")
                except ConcurrencyLimitExceeded as err:
                    got.append(str(err))
            elif permits[i]:
                j = arg % len(permits[i])
                if op == "release":
                    got.append(permits[i][j].release())
                else:
                    del permits[i][j]  # refcount hits zero: released now
            got.append((lim.inflight("a"), lim.inflight("b"), lim.shed))
        assert got[:len(got) // 2] == got[len(got) // 2:], (op, arg)
        for k in ("a", "b"):
            held[k] = sum(1 for p in permits[0] if not p.released and
                          (p.key.encode() if isinstance(p.key, str) else p.key) == k.encode())
            assert limiters[0].inflight(k) == held[k] <= cap
