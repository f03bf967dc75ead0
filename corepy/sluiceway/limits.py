"""Limits: rate estimation, in-flight counting and load shedding.

Counting (compiled, ``sluiceway._limits``; pure-Python twin in ``_limits_py``):

* ``Estimator``: count-min sketch, ``incr/get/decr/reset`` on str or bytes keys.
* ``Rate``: events per key per window, two windows; ``observe``, ``rate``,
  ``rate_with(key, proportional)``.
* ``Inflight``: in-progress counts whose ``incr`` returns a release-once guard.

* ``RateLimiter``: N requests per key per window, with the values of the
  429 headers (Retry-After, X-RateLimit-Limit, X-RateLimit-Remaining).

Built on them, for ``upstream_peer`` (pure Python, about 0.5 to 1 us per
request):

* ``ConcurrencyLimiter``: a cap on requests in flight per upstream; over the
  cap it fails fast or waits (async) up to a timeout.
* ``CircuitBreaker``: per-upstream closed/open/half-open breaker that opens
  after N consecutive failures or an error rate over a window.

Refusals raise ``LoadShedError`` subclasses carrying ``status`` (503) and
``retryable``; the engine turns them into responses.
"""

import asyncio
import collections
import enum
import logging
import time
from typing import NamedTuple

from . import _compiled
from ._limits_args import check_clock
from ._limits_args import positive as _check_positive

_c = _compiled.load("_limits")

Estimator = _c.Estimator
Rate = _c.Rate
Inflight = _c.Inflight
InflightGuard = _c.InflightGuard
proportional = _c.proportional
RateLimiter = _c.RateLimiter
RateDecision = _c.RateDecision

__all__ = [
    "Estimator", "Rate", "Inflight", "InflightGuard", "proportional",
    "RateLimiter", "RateDecision",
    "LoadShedError", "ConcurrencyLimitExceeded", "CircuitOpen",
    "ConcurrencyLimiter", "Permit",
    "CircuitBreaker", "BreakerState", "Attempt", "Transition",
]

logger = logging.getLogger("sluiceway.limits")


# --------------------------------------------------------------------------
# Load shedding errors.
# --------------------------------------------------------------------------

class LoadShedError(Exception):
    """A request refused to protect an upstream; the engine answers ``status``.

    Attributes:
        status: HTTP status to answer with (503).
        retryable: True when trying another upstream (or later) may succeed.
        upstream: the key of the upstream that refused.
        retry_after: seconds after which trying again makes sense, or None.
    """

    status = 503

    def __init__(self, message, *, upstream, retryable=True, retry_after=None):
        super().__init__(message)
        self.upstream = upstream
        self.retryable = retryable
        self.retry_after = retry_after


class ConcurrencyLimitExceeded(LoadShedError):
    """The upstream already has its cap of requests in flight (and waiting timed out)."""


class CircuitOpen(LoadShedError):
    """The upstream's circuit breaker is open (or half-open with its probes in use)."""


# --------------------------------------------------------------------------
# Concurrency cap per upstream.
# --------------------------------------------------------------------------

_DEFAULT = object()


class Permit:
    """One request's place under a ``ConcurrencyLimiter`` cap; release it when done.

    Released exactly once: by ``release()``, by leaving a ``with`` /
    ``async with`` block, or when garbage collected.  Releasing wakes the next
    waiter for the same upstream.
    """

    __slots__ = ("_limiter", "_guard", "key", "__weakref__")

    def __init__(self, limiter, guard, key):
        self._limiter = limiter
        self._guard = guard
        self.key = key

    @property
    def released(self):
        return self._guard.released

    def release(self):
        """Give the place back.

        Returns:
            True if this call released it, False if it was already released.
        """
        if self._guard.release():
            self._limiter._wake(self.key)
            return True
        return False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
        return False

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        self.release()
        return False

    def __del__(self):
        try:
            self.release()
        except Exception:  # interpreter shutdown: nothing left to wake
            pass

    def __repr__(self):
        return f"<Permit key={self.key!r} {'released' if self.released else 'held'}>"


class ConcurrencyLimiter:
    """Cap the requests in flight to each upstream; shed or queue the rest.

    Built on ``Inflight``: the count per upstream key never falls below the
    permits really held (a sketch collision can only make it larger, with odds
    around (1/8192)**4 with the default shape).

    Over the cap, ``try_acquire`` fails fast; ``acquire`` (async) waits in a
    FIFO queue per upstream for up to ``wait`` seconds (``wait=0`` means fail
    fast), then raises.  Waiters are woken one per released permit.

    Args:
        max_inflight: cap per upstream key (int >= 1).
        wait: default seconds ``acquire`` may wait (>= 0; 0 fails fast).
        retryable: the ``retryable`` flag of the refusal (True: the engine may
            try another upstream).
        inflight: the ``Inflight`` to count in (default: a new compiled one).

    Raises:
        TypeError, ValueError: an argument is invalid.
    """

    def __init__(self, max_inflight, *, wait=0.0, retryable=True, inflight=None):
        self.max_inflight = _check_positive("ConcurrencyLimiter", "max_inflight", max_inflight,
                                            integer=True)
        self.wait = _check_positive("ConcurrencyLimiter", "wait", wait, allow_zero=True)
        self.retryable = retryable
        self._inflight = Inflight() if inflight is None else inflight
        self._waiters = {}  # key -> deque of futures, FIFO
        self.shed = 0       # refusals so far, for metrics

    def inflight(self, key):
        """Requests in flight for ``key`` (an estimate never below the truth)."""
        return self._inflight.get(key)

    def waiting(self, key):
        """Callers queued in ``acquire`` for ``key``."""
        q = self._waiters.get(key)
        return sum(1 for f in q if not f.done()) if q else 0

    def _try(self, key):
        guard, count = self._inflight.incr(key, 1)
        if count <= self.max_inflight:
            return Permit(self, guard, key)
        guard.release()
        return None

    def _refuse(self, key, waited):
        self.shed += 1
        how = f"after waiting {waited:g}s" if waited else "(not waiting)"
        return ConcurrencyLimitExceeded(
            f"upstream {key!r} has {self.max_inflight} requests in flight, its cap; refused {how}",
            upstream=key, retryable=self.retryable)

    def try_acquire(self, key):
        """Take a place for ``key`` now or refuse; for sync hooks.

        Returns:
            A ``Permit``.

        Raises:
            ConcurrencyLimitExceeded: ``key`` is at its cap (status 503).
            TypeError: key is not str or bytes.
        """
        permit = self._try(key)
        if permit is None:
            raise self._refuse(key, 0)
        return permit

    async def acquire(self, key, timeout=_DEFAULT):
        """Take a place for ``key``, waiting up to ``timeout`` seconds in FIFO order.

        Args:
            key: the upstream, str or bytes.
            timeout: seconds to wait (default: the limiter's ``wait``); 0 fails fast.

        Returns:
            A ``Permit``.

        Raises:
            ConcurrencyLimitExceeded: still at the cap when the time ran out.
            asyncio.CancelledError: the caller was cancelled while waiting (its
                turn passes to the next waiter).
        """
        if timeout is _DEFAULT:
            timeout = self.wait
        else:
            _check_positive("ConcurrencyLimiter.acquire", "timeout", timeout, allow_zero=True)
        if not self._waiters.get(key):
            permit = self._try(key)
            if permit is not None:
                return permit
        if timeout <= 0:
            raise self._refuse(key, 0)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        front = False
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise self._refuse(key, timeout)
            fut = loop.create_future()
            q = self._waiters.setdefault(key, collections.deque())
            if front:
                q.appendleft(fut)
            else:
                q.append(fut)
            timer = loop.call_later(remaining, _expire, fut)
            try:
                await fut
            except _Expired:
                raise self._refuse(key, timeout) from None
            except BaseException:
                # Cancelled: if we had just been woken, hand the turn on.
                if fut.done() and not fut.cancelled() and fut.exception() is None:
                    self._wake(key)
                raise
            finally:
                timer.cancel()
                self._forget(key, fut)
            permit = self._try(key)
            if permit is not None:
                return permit
            front = True  # lost the race to a fail-fast caller: keep our turn

    def _forget(self, key, fut):
        q = self._waiters.get(key)
        if q is None:
            return
        try:
            q.remove(fut)
        except ValueError:
            pass
        if not q:
            del self._waiters[key]

    def _wake(self, key):
        q = self._waiters.get(key)
        while q:
            fut = q.popleft()
            if not fut.done():
                fut.set_result(None)
                break
        if q is not None and not q:
            self._waiters.pop(key, None)


class _Expired(Exception):
    pass


def _expire(fut):
    if not fut.done():
        fut.set_exception(_Expired())


# --------------------------------------------------------------------------
# Circuit breaker per upstream.
# --------------------------------------------------------------------------

class BreakerState(str, enum.Enum):
    """State of one upstream's circuit."""

    CLOSED = "closed"        # requests flow; failures are counted
    OPEN = "open"            # requests are refused until the cool-down ends
    HALF_OPEN = "half_open"  # a few probe requests decide: close or reopen


class Transition(NamedTuple):
    """A recorded state change of one upstream's circuit."""

    time: float
    key: object
    old: BreakerState
    new: BreakerState
    reason: str


_C, _O, _H = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN

# Theory of operation: the whole state machine, as data.
#   event            from        to
_TRANSITIONS = {
    ("trip", _C): _O,           # N consecutive failures, or error rate over the window
    ("cooled", _O): _H,         # cool-down elapsed: let probes through
    ("probe_ok", _H): _C,       # a probe succeeded: back to normal, counts cleared
    ("probe_failed", _H): _O,   # a probe failed: another cool-down
    ("reset", _O): _C,          # operator reset
    ("reset", _H): _C,
}


class _Circuit:
    __slots__ = ("state", "gen", "consecutive", "opened_at", "probes", "probe_at",
                 "window", "prev_total", "prev_fail", "cur_total", "cur_fail")

    def __init__(self):
        self.state = _C
        self.gen = 0            # bumped on every transition: stale results are ignored
        self.consecutive = 0
        self.opened_at = 0.0
        self.probes = 0         # probes admitted and not yet reported
        self.probe_at = 0.0     # when the last probe was admitted
        self.window = 0
        self.prev_total = self.prev_fail = self.cur_total = self.cur_fail = 0


class Attempt:
    """One admitted request; report its outcome once with ``success()`` or ``failure()``.

    Used as a context manager it reports success on a normal exit and failure
    when an exception escapes.  Outcomes of attempts admitted before the
    circuit last changed state are ignored (they describe the old state).
    """

    __slots__ = ("_breaker", "key", "probe", "_gen", "_done")

    def __init__(self, breaker, key, probe, gen):
        self._breaker = breaker
        self.key = key
        self.probe = probe
        self._gen = gen
        self._done = False

    def success(self):
        """Report that the request succeeded (no-op if already reported)."""
        if not self._done:
            self._done = True
            self._breaker._record(self.key, True, self._gen, self.probe)

    def failure(self):
        """Report that the request failed (no-op if already reported)."""
        if not self._done:
            self._done = True
            self._breaker._record(self.key, False, self._gen, self.probe)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.success()
        else:
            self.failure()
        return False

    async def __aenter__(self):
        return self

    async def __aexit__(self, exc_type, exc, tb):
        return self.__exit__(exc_type, exc, tb)


class CircuitBreaker:
    """A circuit breaker per upstream key.

    CLOSED: requests pass; the circuit opens after ``failures`` consecutive
    failures, or when the error rate over the last ``window`` seconds reaches
    ``error_rate`` with at least ``min_requests`` outcomes (sliding estimate over
    two windows, like ``proportional``).  OPEN: ``admit`` raises ``CircuitOpen``
    until ``cooldown`` seconds have passed.  HALF_OPEN: up to ``probes``
    requests are let through; the first success closes the circuit, a failure
    reopens it.  A probe that never reports frees its place after ``cooldown``.

    State changes are logged on the ``sluiceway.limits`` logger (WARNING when a
    circuit opens, INFO otherwise), kept in ``transitions`` (the last
    ``history``), and passed to ``on_change(transition)`` if given.

    Args:
        failures: consecutive failures that open the circuit (int >= 1, or None
            to disable).
        error_rate: failure ratio in (0, 1] that opens it, or None to disable.
        window: seconds over which the error rate is measured.
        min_requests: outcomes needed in the window before the rate counts.
        cooldown: seconds the circuit stays open before probing.
        probes: requests let through at once while half-open (int >= 1).
        retryable: the ``retryable`` flag of ``CircuitOpen``.
        clock: None (time.monotonic) or a callable returning seconds.
        on_change: None or a callable taking a ``Transition``.
        history: how many transitions to keep readable.

    Raises:
        TypeError, ValueError: an argument is invalid.
    """

    def __init__(self, *, failures=5, error_rate=None, window=10.0, min_requests=20,
                 cooldown=30.0, probes=1, retryable=True, clock=None, on_change=None,
                 history=256):
        owner = "CircuitBreaker"
        if failures is None and error_rate is None:
            raise ValueError(f"{owner}: set failures, error_rate or both, or it can never open")
        if failures is not None:
            _check_positive(owner, "failures", failures, integer=True)
        if error_rate is not None:
            _check_positive(owner, "error_rate", error_rate)
            if error_rate > 1:
                raise ValueError(f"{owner}: error_rate is a ratio in (0, 1], got {error_rate!r}")
        self.failures = failures
        self.error_rate = error_rate
        self.window = _check_positive(owner, "window", window)
        self.min_requests = _check_positive(owner, "min_requests", min_requests, integer=True)
        self.cooldown = _check_positive(owner, "cooldown", cooldown, allow_zero=True)
        self.probes = _check_positive(owner, "probes", probes, integer=True)
        self.retryable = retryable
        self._clock = check_clock(owner, clock) or time.monotonic
        if on_change is not None and not callable(on_change):
            raise TypeError(f"{owner}: on_change must be None or a callable")
        self.on_change = on_change
        self.transitions = collections.deque(
            maxlen=_check_positive(owner, "history", history, integer=True))
        self._start = self._clock()
        self._circuits = {}

    # -- reading ----------------------------------------------------------
    def state(self, key):
        """Return ``key``'s ``BreakerState`` (OPEN turns HALF_OPEN only on ``admit``)."""
        c = self._circuits.get(key)
        return _C if c is None else c.state

    def stats(self, key):
        """Return a dict describing ``key``'s circuit (state, counts, error rate)."""
        c = self._circuits.get(key)
        if c is None:
            return {"state": _C, "consecutive_failures": 0, "window_requests": 0.0,
                    "window_failures": 0.0, "error_rate": 0.0}
        total, failed = self._window_counts(c, self._clock())
        return {"state": c.state, "consecutive_failures": c.consecutive,
                "window_requests": total, "window_failures": failed,
                "error_rate": failed / total if total else 0.0}

    # -- admitting ----------------------------------------------------------
    def admit(self, key):
        """Let a request to ``key`` through, or refuse it.

        Returns:
            An ``Attempt``; report its outcome with ``success()``/``failure()``.

        Raises:
            CircuitOpen: the circuit is open, or half-open with all probe
                places taken (status 503, ``retry_after`` set).
        """
        c = self._circuits.get(key)
        if c is None:
            c = self._circuits[key] = _Circuit()
        if c.state is _C:
            return Attempt(self, key, False, c.gen)
        now = self._clock()
        if c.state is _O:
            left = c.opened_at + self.cooldown - now
            if left > 0:
                raise CircuitOpen(
                    f"circuit for upstream {key!r} is open; next probe in {left:.3g}s",
                    upstream=key, retryable=self.retryable, retry_after=left)
            self._move(c, key, "cooled", now, f"cool-down of {self.cooldown:g}s elapsed")
        # HALF_OPEN
        if c.probes >= self.probes and now - c.probe_at >= self.cooldown:
            c.probes = 0  # probes that never reported: free their places
        if c.probes >= self.probes:
            raise CircuitOpen(
                f"circuit for upstream {key!r} is half-open and its {self.probes} probe(s) "
                "are in flight", upstream=key, retryable=self.retryable,
                retry_after=max(0.0, c.probe_at + self.cooldown - now))
        c.probes += 1
        c.probe_at = now
        return Attempt(self, key, True, c.gen)

    def reset(self, key):
        """Close ``key``'s circuit and clear its counts (an operator's override)."""
        c = self._circuits.get(key)
        if c is not None and c.state is not _C:
            self._move(c, key, "reset", self._clock(), "reset by the application")

    # -- outcomes -----------------------------------------------------------
    def _record(self, key, ok, gen, probe):
        c = self._circuits.get(key)
        if c is None or gen != c.gen:
            return  # admitted under an earlier state: says nothing about this one
        now = self._clock()
        if c.state is _H:
            if probe:
                c.probes -= 1
                if ok:
                    self._move(c, key, "probe_ok", now, "probe succeeded")
                else:
                    self._move(c, key, "probe_failed", now, "probe failed")
            return
        if c.state is not _C:
            return
        self._roll(c, now)
        c.cur_total += 1
        if ok:
            c.consecutive = 0
            return
        c.cur_fail += 1
        c.consecutive += 1
        if self.failures is not None and c.consecutive >= self.failures:
            self._move(c, key, "trip", now, f"{c.consecutive} consecutive failures")
            return
        if self.error_rate is not None:
            total, failed = self._window_counts(c, now)
            if total >= self.min_requests and failed >= self.error_rate * total:
                self._move(c, key, "trip", now,
                           f"error rate {failed / total:.0%} over {total:.0f} requests in the "
                           f"last {self.window:g}s")

    def _roll(self, c, now):
        w = max(0, int((now - self._start) // self.window))
        if w == c.window + 1:
            c.prev_total, c.prev_fail = c.cur_total, c.cur_fail
            c.cur_total = c.cur_fail = 0
        elif w > c.window + 1:
            c.prev_total = c.prev_fail = c.cur_total = c.cur_fail = 0
        if w > c.window:
            c.window = w
        return max(0.0, min(1.0, (now - self._start) / self.window - c.window))

    def _window_counts(self, c, now):
        frac = self._roll(c, now)
        keep = 1.0 - frac
        return c.prev_total * keep + c.cur_total, c.prev_fail * keep + c.cur_fail

    def _move(self, c, key, event, now, reason):
        old = c.state
        new = _TRANSITIONS[(event, old)]
        c.state = new
        c.gen += 1
        c.probes = 0
        if new is _O:
            c.opened_at = now
        if new is _C:
            c.consecutive = 0
            c.prev_total = c.prev_fail = c.cur_total = c.cur_fail = 0
        t = Transition(now, key, old, new, reason)
        self.transitions.append(t)
        level = logging.WARNING if new is _O else logging.INFO
        if logger.isEnabledFor(level):
            logger.log(level, "circuit for upstream %r: %s -> %s (%s)",
                       key, old.value, new.value, reason)
        if self.on_change is not None:
            self.on_change(t)
