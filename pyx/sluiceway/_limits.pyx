# distutils: sources = csrc/sw_cms.c csrc/sw_rate.c csrc/sw_clock.c
"""Compiled limits: counting (Estimator, Rate, Inflight, RateLimiter) and
load shedding (ConcurrencyLimiter, CircuitBreaker).

Theory of operation
-------------------
All counting happens in C (csrc/sw_cms.c, csrc/sw_rate.c); this module turns
Python keys into bytes without copying, reads the clock, and shapes results.

* A key is ``str`` (hashed as its UTF-8 bytes, taken from CPython's cached
  UTF-8 form via PyUnicode_AsUTF8AndSize: no copy for ASCII strings) or
  ``bytes`` (hashed in place).  Nothing else is accepted.
* The default clock is C's CLOCK_MONOTONIC (time.monotonic() on Linux), read
  without a Python call.  An injected clock is any callable returning seconds;
  Rate turns its reading into int64 nanoseconds as ``int(seconds * 1e9)``, the
  same conversion the pure-Python reference (``_limits_py``) uses, so both
  count identically under the same clock and seeds.
* Every call runs under the GIL; counting calls finish in constant time,
  release nothing and log nothing.  The load-shedding classes keep their
  per-request paths (try_acquire/release, admit/success/failure) in C and call
  into Python only to wait, to change a breaker's state, and to log that.
* Objects handed to callers per request (InflightGuard, Permit, Attempt,
  RateDecision) come from Cython freelists and refuse ``__init__``.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.math cimport ceil, floor, isfinite
from libc.stdint cimport int64_t, uint32_t, uint64_t

import asyncio
import collections

from sluiceway._limits_common import (
    MAX_CLOCK_SECONDS as _MAX_CLOCK_SECONDS,
    TRANSITIONS,
    BreakerState,
    Transition,
    announce,
    bad_clock_reading,
    bad_cost,
    bad_key,
    check_breaker,
    check_clock,
    check_limit,
    check_shape,
    circuit_refusal,
    concurrency_refusal,
    interval_ns,
    make_seeds,
    positive,
)

__all__ = ["Estimator", "Rate", "Inflight", "InflightGuard", "proportional", "keyhash",
           "RateLimiter", "RateDecision", "ConcurrencyLimiter", "Permit", "CircuitBreaker",
           "Attempt"]

cdef double MAX_CLOCK_SECONDS = _MAX_CLOCK_SECONDS


cdef inline const char *key_bytes(object key, Py_ssize_t *size) except NULL:
    """Borrow the bytes of a str or bytes key; raise TypeError for anything else."""
    if type(key) is str or isinstance(key, str):
        return PyUnicode_AsUTF8AndSize(key, size)
    if type(key) is bytes or isinstance(key, bytes):
        size[0] = PyBytes_GET_SIZE(key)
        return PyBytes_AS_STRING(key)
    raise bad_key(key)


cdef inline int64_t as_count(object n) except? -1:
    """An int64 count; Cython alone would truncate a float silently."""
    if type(n) is int or isinstance(n, int):
        return n  # OverflowError beyond int64
    raise TypeError(f"n must be an int, got {type(n).__name__}")


cdef inline int64_t neg(int64_t n) noexcept nogil:
    # Two's complement negation without signed overflow (-INT64_MIN wraps).
    return <int64_t>(<uint64_t>0 - <uint64_t>n)


cdef int init_cms(sw_cms *c, str owner, hashes, slots, seeds) except -1:
    cdef uint64_t cseeds[SW_CMS_MAX_HASHES]
    cdef int i, rc
    hashes, slots = check_shape(owner, hashes, slots)
    seeds = make_seeds(owner, hashes, seeds)
    for i in range(hashes):
        cseeds[i] = seeds[i]
    rc = sw_cms_init(c, hashes, slots, cseeds)
    if rc == SW_CMS_ENOMEM:
        raise MemoryError(f"{owner}: cannot allocate {hashes} x {slots} counters")
    if rc != SW_CMS_OK:
        raise ValueError(f"{owner}: invalid shape hashes={hashes}, slots={slots}")
    return 0


cdef tuple cms_seeds(const sw_cms *c):
    return tuple([c.seeds[i] for i in range(c.hashes)])


def keyhash(seed, key):
    """Return the 64-bit seeded hash the sketches use for one row.

    Args:
        seed: an int in ``[0, 2**64)``.
        key: ``str`` (hashed as UTF-8) or ``bytes``.

    Returns:
        An int in ``[0, 2**64)``; identical to ``_limits_py.keyhash``.

    Raises:
        TypeError: key is not str or bytes.
        OverflowError: seed is out of range.
    """
    cdef Py_ssize_t size
    cdef const char *buf = key_bytes(key, &size)
    return sw_cms_keyhash(<uint64_t>seed, buf, <size_t>size)


@cython.final
cdef class Estimator:
    """A count-min sketch: approximate counts for many keys in fixed memory.

    ``hashes`` rows of ``slots`` counters; each row hashes a key with its own
    seed (random per instance unless given), so a key's estimate is the smallest
    of its ``hashes`` counters.  While no key's true count goes negative, an
    estimate is never below the true count, and exceeds it by more than
    ``e * total / slots`` with probability at most ``exp(-hashes)``.

    Args:
        hashes: rows (1..32); more rows lower the chance of a bad overcount.
        slots: counters per row (1..2**26); more slots lower the overcount.
        seeds: None (random) or ``hashes`` ints in ``[0, 2**64)``, for tests
            that must be reproducible.

    Raises:
        TypeError, ValueError: a shape or seed is invalid (the message says which).
    """

    def __cinit__(self, hashes=4, slots=1024, *, seeds=None):
        init_cms(&self.c, "Estimator", hashes, slots, seeds)

    def __dealloc__(self):
        sw_cms_free(&self.c)

    def incr(self, key, n=1):
        """Add ``n`` to ``key``'s count.

        Args:
            key: ``str`` or ``bytes``.
            n: amount to add (int64).

        Returns:
            The estimate after the increment.

        Raises:
            TypeError: key is not str or bytes, or n is not an int.
            OverflowError: n does not fit in 64 bits.
        """
        cdef Py_ssize_t size
        cdef const char *buf = key_bytes(key, &size)
        return sw_cms_incr(&self.c, buf, <size_t>size, as_count(n))

    def decr(self, key, n=1):
        """Subtract ``n`` from ``key``'s count (undo an earlier ``incr``).

        Returns:
            The estimate after the decrement.

        Raises:
            TypeError: key is not str or bytes, or n is not an int.
            OverflowError: n does not fit in 64 bits.
        """
        cdef Py_ssize_t size
        cdef const char *buf = key_bytes(key, &size)
        return sw_cms_incr(&self.c, buf, <size_t>size, neg(as_count(n)))

    def get(self, key):
        """Return ``key``'s estimated count (0 for a key never seen, barring collisions).

        Raises:
            TypeError: key is not str or bytes.
        """
        cdef Py_ssize_t size
        cdef const char *buf = key_bytes(key, &size)
        return sw_cms_get(&self.c, buf, <size_t>size)

    def reset(self):
        """Zero every counter; the seeds stay."""
        sw_cms_reset(&self.c)

    @property
    def hashes(self):
        """Number of rows."""
        return self.c.hashes

    @property
    def slots(self):
        """Counters per row."""
        return self.c.slots

    @property
    def seeds(self):
        """The row seeds, a tuple of ints (keep them private: they defeat collision attacks)."""
        return cms_seeds(&self.c)

    def __repr__(self):
        return f"<Estimator hashes={self.c.hashes} slots={self.c.slots}>"


def proportional(prev, curr, interval, fraction):
    """Estimate events per second over the last ``interval``, sliding.

    Weighs the previous window by the part of it still inside the last
    ``interval`` seconds: ``(prev * (1 - fraction) + curr) / interval``.  Pass
    it to ``Rate.rate_with``.

    Args:
        prev: events in the last completed window.
        curr: events so far in the current window.
        interval: window length in seconds.
        fraction: part of the current window elapsed, in [0, 1).

    Returns:
        Events per second, a float.
    """
    return (prev * (1.0 - fraction) + curr) / interval


@cython.final
cdef class Rate:
    """Events per key per window, with the previous window kept for rates.

    Time is cut into windows of ``interval`` seconds on a fixed grid starting at
    construction.  Two count-min sketches count the current and the previous
    window; crossing into the next window zeroes the previous sketch and makes
    it current, and after two or more idle windows both are zeroed.

    Args:
        interval: window length, seconds (int/float) or a timedelta.
        hashes, slots, seeds: shape of each of the two sketches (see Estimator).
        clock: None for the monotonic clock read in C (fast), or a callable
            returning seconds like ``time.monotonic`` (tests inject fakes).

    Raises:
        TypeError, ValueError: an argument is invalid (the message says which).
    """

    def __cinit__(self, interval, *, hashes=4, slots=1024, seeds=None, clock=None):
        cdef uint64_t cseeds[SW_CMS_MAX_HASHES]
        cdef int i, rc
        cdef int64_t ins = interval_ns("Rate", interval)
        hashes, slots = check_shape("Rate", hashes, slots)
        seeds = make_seeds("Rate", hashes, seeds)
        self.clock = check_clock("Rate", clock)
        self.interval_s = ins / 1e9
        for i in range(hashes):
            cseeds[i] = seeds[i]
        rc = sw_rate_init(&self.r, hashes, slots, cseeds, ins, self.now_ns())
        if rc == SW_CMS_ENOMEM:
            raise MemoryError(f"Rate: cannot allocate 2 x {hashes} x {slots} counters")
        if rc != SW_CMS_OK:
            raise ValueError(f"Rate: invalid shape hashes={hashes}, slots={slots}")

    def __dealloc__(self):
        sw_rate_free(&self.r)

    cdef int64_t now_ns(self) except? -1:
        cdef double t
        if self.clock is None:
            return sw_clock_monotonic_ns()
        t = self.clock()
        if not (isfinite(t) and -MAX_CLOCK_SECONDS <= t <= MAX_CLOCK_SECONDS):
            raise bad_clock_reading(t)
        return <int64_t>(t * 1e9)

    def observe(self, key, n=1):
        """Count ``n`` events for ``key`` in the current window.

        Args:
            key: ``str`` or ``bytes``.
            n: number of events (int64).

        Returns:
            The key's count in the current window after adding (an estimate
            that is never below the truth).

        Raises:
            TypeError: key is not str or bytes, or n is not an int.
            OverflowError: n does not fit in 64 bits.
            ValueError: an injected clock returned a non-finite value.
        """
        cdef Py_ssize_t size
        cdef const char *buf = key_bytes(key, &size)
        cdef int64_t count = as_count(n)
        cdef int64_t now = self.now_ns()
        return sw_rate_observe(&self.r, now, buf, <size_t>size, count)

    def rate(self, key):
        """Return ``key``'s events per second in the last completed window.

        0.0 until one window has completed, and again after a whole window
        without events.

        Raises:
            TypeError: key is not str or bytes.
        """
        cdef Py_ssize_t size
        cdef int64_t prev, curr, elapsed
        cdef const char *buf = key_bytes(key, &size)
        sw_rate_sample(&self.r, self.now_ns(), buf, <size_t>size, &prev, &curr, &elapsed)
        return prev / self.interval_s

    def rate_with(self, key, fn):
        """Compute a rate for ``key`` with a function of both windows.

        Args:
            key: ``str`` or ``bytes``.
            fn: called as ``fn(prev, curr, interval, fraction)``: events in the
                last completed window, events so far in the current one, the
                window length in seconds and the fraction of the current
                window elapsed (in [0, 1)).  ``proportional`` is a ready one.

        Returns:
            Whatever ``fn`` returns.

        Raises:
            TypeError: key is not str or bytes; anything ``fn`` raises.
        """
        cdef Py_ssize_t size
        cdef int64_t prev, curr, elapsed
        cdef const char *buf = key_bytes(key, &size)
        cdef double fraction
        sw_rate_sample(&self.r, self.now_ns(), buf, <size_t>size, &prev, &curr, &elapsed)
        fraction = <double>elapsed / <double>self.r.interval_ns
        if fn is proportional:
            return (prev * (1.0 - fraction) + curr) / self.interval_s
        return fn(prev, curr, self.interval_s, fraction)

    def sample(self, key):
        """Return ``(prev, curr, fraction)`` for ``key`` (see ``rate_with``)."""
        cdef Py_ssize_t size
        cdef int64_t prev, curr, elapsed
        cdef const char *buf = key_bytes(key, &size)
        sw_rate_sample(&self.r, self.now_ns(), buf, <size_t>size, &prev, &curr, &elapsed)
        return prev, curr, <double>elapsed / <double>self.r.interval_ns

    def until_next_window(self):
        """Seconds until the current window ends (for Retry-After)."""
        cdef int64_t elapsed = sw_rate_advance(&self.r, self.now_ns())
        return (self.r.interval_ns - elapsed) / 1e9

    def reset(self):
        """Zero both windows and restart the window grid now."""
        sw_rate_reset(&self.r, self.now_ns())

    @property
    def interval(self):
        """Window length in seconds."""
        return self.interval_s

    @property
    def hashes(self):
        return self.r.est[0].hashes

    @property
    def slots(self):
        return self.r.est[0].slots

    @property
    def seeds(self):
        """The row seeds shared by both windows' sketches."""
        return cms_seeds(&self.r.est[0])

    def __repr__(self):
        return (f"<Rate interval={self.interval_s!r}s hashes={self.r.est[0].hashes} "
                f"slots={self.r.est[0].slots}>")


@cython.final
cdef class Inflight:
    """Counts things in progress per key; each ``incr`` hands back a guard that undoes it.

    Backed by a count-min sketch, so the count of a key is never below the
    number of its unreleased guards (and almost always equal to it).

    Args:
        hashes, slots, seeds: shape of the sketch (see Estimator); the defaults
            (4 x 8192) make a false overcount vanishingly rare.

    Raises:
        TypeError, ValueError: an argument is invalid (the message says which).
    """

    def __cinit__(self, hashes=4, slots=8192, *, seeds=None):
        init_cms(&self.c, "Inflight", hashes, slots, seeds)

    def __dealloc__(self):
        sw_cms_free(&self.c)

    def incr(self, key, n=1):
        """Count ``n`` more in progress for ``key``.

        Args:
            key: ``str`` or ``bytes``.
            n: amount (int64), undone when the guard is released.

        Returns:
            ``(guard, estimate)``: an InflightGuard and the key's count after
            the increment.

        Raises:
            TypeError: key is not str or bytes, or n is not an int.
            OverflowError: n does not fit in 64 bits.
        """
        cdef Py_ssize_t size
        cdef const char *buf = key_bytes(key, &size)
        cdef int64_t count = as_count(n)
        cdef InflightGuard guard = InflightGuard.__new__(InflightGuard)
        guard.owner = self
        guard.key = key
        guard.n = count
        return guard, sw_cms_incr(&self.c, buf, <size_t>size, count)

    def get(self, key):
        """Return ``key``'s count in progress.

        Raises:
            TypeError: key is not str or bytes.
        """
        cdef Py_ssize_t size
        cdef const char *buf = key_bytes(key, &size)
        return sw_cms_get(&self.c, buf, <size_t>size)

    @property
    def hashes(self):
        return self.c.hashes

    @property
    def slots(self):
        return self.c.slots

    @property
    def seeds(self):
        return cms_seeds(&self.c)

    def __repr__(self):
        return f"<Inflight hashes={self.c.hashes} slots={self.c.slots}>"


@cython.final
@cython.no_gc_clear
@cython.freelist(64)
cdef class InflightGuard:
    """Holds ``n`` in progress for one key of an Inflight until released.

    Released exactly once: by ``release()``, by leaving a ``with`` block, or when
    garbage collected, whichever comes first.  Made only by ``Inflight.incr``.
    """

    def __init__(self, *args, **kwargs):
        raise TypeError("InflightGuard objects are made by Inflight.incr(key, n)")

    cdef int undo(self) except -1:
        cdef Py_ssize_t size
        cdef const char *buf
        if self.released:
            return 0
        self.released = True
        buf = key_bytes(self.key, &size)
        sw_cms_incr(&self.owner.c, buf, <size_t>size, neg(self.n))
        return 1

    def release(self):
        """Give back what this guard holds.

        Returns:
            True if this call released it, False if it was already released.
        """
        return self.undo() == 1

    def get(self):
        """Return the current in-progress count of this guard's key."""
        cdef Py_ssize_t size
        cdef const char *buf = key_bytes(self.key, &size)
        return sw_cms_get(&self.owner.c, buf, <size_t>size)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.undo()
        return False

    def __dealloc__(self):
        cdef Py_ssize_t size
        cdef const char *buf
        if self.released or self.owner is None:
            return
        # The key was hashed once already, so its UTF-8 form is cached and this
        # cannot fail or allocate.
        if isinstance(self.key, str):
            buf = PyUnicode_AsUTF8AndSize(self.key, &size)
        else:
            size = PyBytes_GET_SIZE(self.key)
            buf = PyBytes_AS_STRING(self.key)
        self.released = True
        sw_cms_incr(&self.owner.c, buf, <size_t>size, neg(self.n))

    def __repr__(self):
        state = "released" if self.released else "held"
        return f"<InflightGuard key={self.key!r} n={self.n} {state}>"


@cython.final
@cython.freelist(32)
cdef class RateDecision:
    """Outcome of ``RateLimiter.check`` or ``peek``.

    Attributes:
        allowed: False when the request does not fit under the limit.
        limit: the configured requests per window.
        remaining: requests that still fit now (never negative); sliding
            limiters count the previous window's weighted share too.
        reset_after: seconds a refused request should wait before it would
            fit (for an allowed one: until the current window ends).
        count: the key's count in the current window (this request included
            for ``check``).
        retry_after: ``reset_after`` rounded up to whole seconds, at least 1.
    """

    def __init__(self, *args, **kwargs):
        raise TypeError("RateDecision objects are made by RateLimiter.check/peek")

    @property
    def retry_after(self):
        """Whole seconds a refused client should wait (at least 1): the Retry-After value."""
        cdef double up = ceil(self.reset_after)
        return <int64_t>up if up > 1 else 1

    def headers(self):
        """Return the rate-limit response headers as ``[(name, value), ...]`` (str).

        X-RateLimit-Limit and X-RateLimit-Remaining always; Retry-After too when
        the request was refused (send it with status 429).
        """
        out = [("X-RateLimit-Limit", str(self.limit)),
               ("X-RateLimit-Remaining", str(self.remaining))]
        if not self.allowed:
            out.append(("Retry-After", str(self.retry_after)))
        return out

    def __eq__(self, other):
        if not isinstance(other, RateDecision):
            return NotImplemented
        cdef RateDecision o = other
        return (self.allowed == o.allowed and self.limit == o.limit
                and self.remaining == o.remaining and self.count == o.count
                and self.reset_after == o.reset_after)

    __hash__ = None

    def __repr__(self):
        return (f"RateDecision(allowed={bool(self.allowed)}, limit={self.limit}, "
                f"remaining={self.remaining}, reset_after={self.reset_after!r}, "
                f"count={self.count})")


cdef double sliding_wait(int64_t limit, int64_t cost, int64_t prev, int64_t curr,
                         double fraction, double interval_s):
    """Seconds until ``cost`` more fits under a sliding limit, nothing else counted.

    The estimate prev * (1 - f) + curr falls as f grows; if it cannot fall far
    enough in this window, the current count becomes the previous one in the
    next.  Mirrored exactly by _limits_py._sliding_wait.
    """
    cdef double room = <double>limit - <double>cost - <double>curr
    cdef double fit = <double>limit - <double>cost
    cdef double wait, g
    if room >= 0.0 and prev > 0:
        wait = (1.0 - room / <double>prev - fraction) * interval_s
    elif fit < 0.0:
        wait = (2.0 - fraction) * interval_s  # never fits: both windows empty by then
    elif curr > 0:
        g = 1.0 - fit / <double>curr
        if g < 0.0:
            g = 0.0
        wait = (1.0 - fraction + g) * interval_s
    else:
        wait = (1.0 - fraction) * interval_s
    return wait if wait > 0.0 else 0.0


@cython.final
cdef class RateLimiter:
    """Allow at most ``limit`` requests per key per window of ``interval`` seconds.

    Fixed window (default): every ``check`` counts, refused requests too (so a
    client hammering past its limit stays refused until the window turns), and
    a key whose count in the current window passes ``limit`` is refused until
    the next window.  A burst straddling a window boundary can get up to twice
    ``limit`` through in a short time.

    Sliding (``sliding=True``): the count compared with ``limit`` is the
    ``proportional`` estimate over the last ``interval`` seconds,
    ``prev * (1 - fraction) + curr``, which smooths the boundary burst away;
    ``reset_after`` is then the time until the request would fit.

    The clock is read once per call.

    Args:
        limit: requests allowed per key per window (int in [1, 2**62]).
        interval: window length in seconds (default 60: "N per minute").
        sliding: use the sliding estimate instead of the fixed window.
        hashes, slots, seeds: sketch shape, see ``Estimator``; raise ``slots``
            when many keys are active in one window.
        clock: None (monotonic, read in C) or a callable returning seconds.

    Raises:
        TypeError, ValueError: an argument is invalid.

    Example (in ``request_filter``)::

        d = limiter.check(api_key)
        if not d.allowed:
            ...respond 429 with d.headers()...
    """

    def __cinit__(self, limit, interval=60.0, *, sliding=False, hashes=4, slots=1024,
                  seeds=None, clock=None):
        self.limit = check_limit("RateLimiter", limit)
        self.sliding = bool(sliding)
        self.rate = Rate(interval, hashes=hashes, slots=slots, seeds=seeds, clock=clock)

    cdef RateDecision decide(self, key, cost, bint counted):
        cdef Py_ssize_t size
        cdef const char *buf = key_bytes(key, &size)
        cdef int64_t c = as_count(cost)
        cdef int64_t prev, curr, elapsed, interval_ns
        cdef double fraction, base, room
        cdef RateDecision d
        if c < 0:
            raise bad_cost(cost)
        sw_rate_sample_add(&self.rate.r, self.rate.now_ns(), buf, <size_t>size,
                           c if counted else 0, &prev, &curr, &elapsed)
        interval_ns = self.rate.r.interval_ns
        d = RateDecision.__new__(RateDecision)
        d.limit = self.limit
        d.count = curr
        d.reset_after = <double>(interval_ns - elapsed) / 1e9
        if not self.sliding:
            d.allowed = curr <= self.limit if counted else curr <= self.limit - c
            d.remaining = self.limit - curr if curr < self.limit else 0
            return d
        fraction = <double>elapsed / <double>interval_ns
        base = <double>prev * (1.0 - fraction) + <double>curr
        d.allowed = (base if counted else base + <double>c) <= <double>self.limit
        room = <double>self.limit - base
        d.remaining = <int64_t>floor(room) if room > 0.0 else 0
        if not d.allowed:
            d.reset_after = sliding_wait(self.limit, c, prev, curr, fraction,
                                         self.rate.interval_s)
        return d

    def check(self, key, cost=1):
        """Count one request (or ``cost``) for ``key`` and decide.

        Args:
            key: str or bytes, e.g. the API key or tenant id.
            cost: how much this request counts (int >= 0).

        Returns:
            A ``RateDecision``.

        Raises:
            TypeError: key is not str or bytes, or cost not an int.
            ValueError: cost is negative.
        """
        return self.decide(key, cost, True)

    def peek(self, key, cost=1):
        """Say what ``check(key, cost)`` would decide now, without counting anything.

        Returns:
            A ``RateDecision`` whose ``count`` is the key's count so far in
            this window and whose ``allowed`` says whether ``cost`` more fits.

        Raises:
            TypeError, ValueError: as ``check``.
        """
        return self.decide(key, cost, False)

    def __repr__(self):
        mode = "sliding" if self.sliding else "fixed"
        return f"<RateLimiter limit={self.limit} interval={self.rate.interval_s!r}s {mode}>"


# ==========================================================================
# Load shedding: concurrency cap and circuit breaker per upstream.
# Mirrors _limits_py step for step (the tests compare them); the rare paths
# (waiting, state changes, logging) call into Python, the per-request paths
# stay in C.
# ==========================================================================

@cython.final
@cython.no_gc_clear
@cython.freelist(32)
cdef class Permit:
    """One request's place under a ``ConcurrencyLimiter`` cap; release it when done.

    Released exactly once: by ``release()``, by leaving a ``with`` /
    ``async with`` block, or when garbage collected.  Releasing wakes the next
    waiter for the same upstream.  Made only by the limiter.
    """

    def __init__(self, *args, **kwargs):
        raise TypeError("Permit objects are made by ConcurrencyLimiter.try_acquire/acquire")

    cdef int give_back(self) except -1:
        cdef Py_ssize_t size
        cdef const char *buf
        if self.released:
            return 0
        self.released = True
        buf = key_bytes(self.key, &size)
        sw_cms_incr(&self.limiter.inflight_.c, buf, <size_t>size, -1)
        if self.limiter.waiters:
            self.limiter.wake(self.key)
        return 1

    def release(self):
        """Give the place back.

        Returns:
            True if this call released it, False if it was already released.
        """
        return self.give_back() == 1

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.give_back()
        return False

    async def __aenter__(self):
        return self

    async def __aexit__(self, exc_type, exc, tb):
        self.give_back()
        return False

    def __dealloc__(self):
        if self.released or self.limiter is None:
            return
        try:
            self.give_back()
        except BaseException:  # interpreter shutdown: nothing left to wake
            pass

    def __repr__(self):
        return f"<Permit key={self.key!r} {'released' if self.released else 'held'}>"


cdef inline object wait_key(key):
    """Queue key: "a" and b"a" count as one upstream, so they queue as one."""
    return (<str>key).encode("utf-8") if isinstance(key, str) else key


class _Expired(Exception):
    pass


def _expire(fut):
    if not fut.done():
        fut.set_exception(_Expired())


@cython.final
cdef class ConcurrencyLimiter:
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
        inflight: the ``Inflight`` to count in (default: a new one).

    Raises:
        TypeError, ValueError: an argument is invalid.
    """

    def __cinit__(self, max_inflight, *, wait=0.0, retryable=True, inflight=None):
        owner = "ConcurrencyLimiter"
        self.max_inflight = positive(owner, "max_inflight", max_inflight, integer=True)
        self.wait = positive(owner, "wait", wait, allow_zero=True)
        self.retryable = retryable
        if inflight is None:
            inflight = Inflight()
        elif not isinstance(inflight, Inflight):
            raise TypeError(f"{owner}: inflight must be None or an Inflight of the same "
                            f"implementation, got {type(inflight).__name__}")
        self.inflight_ = inflight
        self.waiters = {}
        self.shed = 0

    def inflight(self, key):
        """Requests in flight for ``key`` (an estimate never below the truth)."""
        return self.inflight_.get(key)

    def waiting(self, key):
        """Callers queued in ``acquire`` for ``key``."""
        q = self.waiters.get(wait_key(key))
        return sum(1 for f in q if not f.done()) if q else 0

    cdef Permit take(self, key):
        cdef Py_ssize_t size
        cdef const char *buf = key_bytes(key, &size)
        cdef Permit permit
        if sw_cms_incr(&self.inflight_.c, buf, <size_t>size, 1) <= self.max_inflight:
            permit = Permit.__new__(Permit)
            permit.limiter = self
            permit.key = key
            return permit
        sw_cms_incr(&self.inflight_.c, buf, <size_t>size, -1)
        return None

    cdef refuse(self, key, double waited):
        self.shed += 1
        return concurrency_refusal(key, self.max_inflight, waited, self.retryable)

    def try_acquire(self, key):
        """Take a place for ``key`` now or refuse; for sync hooks.

        Returns:
            A ``Permit``.

        Raises:
            ConcurrencyLimitExceeded: ``key`` is at its cap (status 503).
            TypeError: key is not str or bytes.
        """
        cdef Permit permit = self.take(key)
        if permit is None:
            raise self.refuse(key, 0)
        return permit

    async def acquire(self, key, timeout=None):
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
        cdef double limit_s
        if timeout is None:
            limit_s = self.wait
        else:
            limit_s = positive("ConcurrencyLimiter.acquire", "timeout", timeout, allow_zero=True)
        wkey = wait_key(key)
        if not self.waiters.get(wkey):
            permit = self.take(key)
            if permit is not None:
                return permit
        if limit_s <= 0:
            raise self.refuse(key, 0)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit_s
        front = False
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise self.refuse(key, limit_s)
            fut = loop.create_future()
            q = self.waiters.get(wkey)
            if q is None:
                q = self.waiters[wkey] = collections.deque()
            if front:
                q.appendleft(fut)
            else:
                q.append(fut)
            timer = loop.call_later(remaining, _expire, fut)
            try:
                await fut
            except _Expired:
                raise self.refuse(key, limit_s) from None
            except BaseException:
                # Cancelled: if we had just been woken, hand the turn on.
                if fut.done() and not fut.cancelled() and fut.exception() is None:
                    self.wake(key)
                raise
            finally:
                timer.cancel()
                self.forget(key, fut)
            permit = self.take(key)
            if permit is not None:
                return permit
            front = True  # lost the race to a fail-fast caller: keep our turn

    cdef forget(self, key, fut):
        key = wait_key(key)
        q = self.waiters.get(key)
        if q is None:
            return
        try:
            q.remove(fut)
        except ValueError:
            pass
        if not q:
            del self.waiters[key]

    cdef wake(self, key):
        key = wait_key(key)
        q = self.waiters.get(key)
        while q:
            fut = q.popleft()
            if not fut.done():
                fut.set_result(None)
                break
        if q is not None and not q:
            self.waiters.pop(key, None)

    def __repr__(self):
        return f"<ConcurrencyLimiter max_inflight={self.max_inflight} wait={self.wait!r}>"


cdef enum:
    ST_CLOSED = 0
    ST_OPEN = 1
    ST_HALF_OPEN = 2

cdef tuple STATES = (BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN)


@cython.final
cdef class _Circuit:
    def __init__(self, *args, **kwargs):
        raise TypeError("internal")


cdef _Circuit new_circuit():
    cdef _Circuit c = _Circuit.__new__(_Circuit)
    c.state = ST_CLOSED
    return c


@cython.final
@cython.freelist(32)
cdef class Attempt:
    """One admitted request; report its outcome once with ``success()`` or ``failure()``.

    Used as a context manager it reports success on a normal exit and failure
    when an exception escapes.  Outcomes of attempts admitted before the
    circuit last changed state are ignored (they describe the old state).
    Made only by ``CircuitBreaker.admit``.
    """

    def __init__(self, *args, **kwargs):
        raise TypeError("Attempt objects are made by CircuitBreaker.admit")

    @property
    def reported(self):
        return self.done

    def success(self):
        """Report that the request succeeded (no-op if already reported)."""
        if not self.done:
            self.done = True
            self.breaker.record(self.key, True, self.gen, self.probe)

    def failure(self):
        """Report that the request failed (no-op if already reported)."""
        if not self.done:
            self.done = True
            self.breaker.record(self.key, False, self.gen, self.probe)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if not self.done:
            self.done = True
            self.breaker.record(self.key, exc_type is None, self.gen, self.probe)
        return False

    async def __aenter__(self):
        return self

    async def __aexit__(self, exc_type, exc, tb):
        return self.__exit__(exc_type, exc, tb)

    def __repr__(self):
        return f"<Attempt key={self.key!r} probe={bool(self.probe)} reported={bool(self.done)}>"


@cython.final
cdef class CircuitBreaker:
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
        clock: None (monotonic, read in C) or a callable returning seconds.
        on_change: None or a callable taking a ``Transition``.
        history: how many transitions to keep readable.

    Raises:
        TypeError, ValueError: an argument is invalid.
    """

    def __cinit__(self, *, failures=5, error_rate=None, window=10.0, min_requests=20,
                  cooldown=30.0, probes=1, retryable=True, clock=None, on_change=None,
                  history=256):
        check_breaker(failures, error_rate, window, min_requests, cooldown, probes, on_change,
                      history)
        self.use_failures = failures is not None
        self.failures_n = failures if failures is not None else 0
        self.use_error_rate = error_rate is not None
        self.error_rate_ = error_rate if error_rate is not None else 0.0
        self.window = window
        self.min_requests = min_requests
        self.cooldown = cooldown
        self.probes = probes
        self.retryable = retryable
        self.clock = check_clock("CircuitBreaker", clock)
        self.on_change = on_change
        self.transitions = collections.deque(maxlen=history)
        self.circuits = {}
        self.start = self.now()

    @property
    def error_rate(self):
        return self.error_rate_ if self.use_error_rate else None

    @property
    def failures(self):
        return self.failures_n if self.use_failures else None

    cdef double now(self) except? -1.0:
        cdef double t
        if self.clock is None:
            return sw_clock_monotonic_ns() / 1e9
        t = self.clock()
        if not (isfinite(t) and -MAX_CLOCK_SECONDS <= t <= MAX_CLOCK_SECONDS):
            raise bad_clock_reading(t)
        return t

    # -- reading ----------------------------------------------------------
    def state(self, key):
        """Return ``key``'s ``BreakerState`` (OPEN turns HALF_OPEN only on ``admit``)."""
        c = self.circuits.get(key)
        return STATES[ST_CLOSED if c is None else (<_Circuit>c).state]

    def stats(self, key):
        """Return a dict describing ``key``'s circuit (state, counts, error rate)."""
        cdef double total, failed
        c = self.circuits.get(key)
        if c is None:
            return {"state": STATES[ST_CLOSED], "consecutive_failures": 0,
                    "window_requests": 0.0, "window_failures": 0.0, "error_rate": 0.0}
        self.window_counts(<_Circuit>c, self.now(), &total, &failed)
        return {"state": STATES[(<_Circuit>c).state],
                "consecutive_failures": (<_Circuit>c).consecutive,
                "window_requests": total, "window_failures": failed,
                "error_rate": failed / total if total else 0.0}

    # -- admitting ----------------------------------------------------------
    cdef Attempt attempt(self, key, bint probe, int64_t gen):
        cdef Attempt a = Attempt.__new__(Attempt)
        a.breaker = self
        a.key = key
        a.probe = probe
        a.gen = gen
        return a

    def admit(self, key):
        """Let a request to ``key`` through, or refuse it.

        Returns:
            An ``Attempt``; report its outcome with ``success()``/``failure()``.

        Raises:
            CircuitOpen: the circuit is open, or half-open with all probe
                places taken (status 503, ``retry_after`` set).
        """
        cdef _Circuit c
        cdef double now, left
        obj = self.circuits.get(key)
        if obj is None:
            c = new_circuit()
            self.circuits[key] = c
        else:
            c = <_Circuit>obj
        if c.state == ST_CLOSED:
            return self.attempt(key, False, c.gen)
        now = self.now()
        if c.state == ST_OPEN:
            left = c.opened_at + self.cooldown - now
            if left > 0:
                raise circuit_refusal(key, False, self.probes, left, self.retryable)
            self.move(c, key, "cooled", now, f"cool-down of {self.cooldown:g}s elapsed")
        if c.probes >= self.probes and now - c.probe_at >= self.cooldown:
            c.probes = 0  # probes that never reported: free their places
        if c.probes >= self.probes:
            raise circuit_refusal(key, True, self.probes,
                                  max(0.0, c.probe_at + self.cooldown - now), self.retryable)
        c.probes += 1
        c.probe_at = now
        return self.attempt(key, True, c.gen)

    def reset(self, key):
        """Close ``key``'s circuit and clear its counts (an operator's override)."""
        c = self.circuits.get(key)
        if c is not None and (<_Circuit>c).state != ST_CLOSED:
            self.move(<_Circuit>c, key, "reset", self.now(), "reset by the application")

    # -- outcomes -----------------------------------------------------------
    cdef int record(self, key, bint ok, int64_t gen, bint probe) except -1:
        cdef _Circuit c
        cdef double now, total, failed
        obj = self.circuits.get(key)
        if obj is None:
            return 0
        c = <_Circuit>obj
        if gen != c.gen:
            return 0  # admitted under an earlier state: says nothing about this one
        if c.state == ST_HALF_OPEN:
            if probe:
                c.probes -= 1
                now = self.now()
                if ok:
                    self.move(c, key, "probe_ok", now, "probe succeeded")
                else:
                    self.move(c, key, "probe_failed", now, "probe failed")
            return 0
        if c.state != ST_CLOSED:
            return 0
        now = self.now()
        self.roll(c, now)
        c.cur_total += 1
        if ok:
            c.consecutive = 0
            return 0
        c.cur_fail += 1
        c.consecutive += 1
        if self.use_failures and c.consecutive >= self.failures_n:
            self.move(c, key, "trip", now, f"{c.consecutive} consecutive failures")
            return 0
        if self.use_error_rate:
            self.window_counts(c, now, &total, &failed)
            if total >= self.min_requests and failed >= self.error_rate_ * total:
                self.move(c, key, "trip", now,
                          f"error rate {failed / total:.0%} over {total:.0f} requests in the "
                          f"last {self.window:g}s")
        return 0

    cdef double roll(self, _Circuit c, double now):
        cdef double pos = (now - self.start) / self.window
        cdef double fl = floor(pos)
        cdef int64_t w = <int64_t>fl if fl > 0 else 0
        if w == c.window + 1:
            c.prev_total = c.cur_total
            c.prev_fail = c.cur_fail
            c.cur_total = 0
            c.cur_fail = 0
        elif w > c.window + 1:
            c.prev_total = c.prev_fail = c.cur_total = c.cur_fail = 0
        if w > c.window:
            c.window = w
        pos = pos - <double>c.window
        return 0.0 if pos < 0.0 else (1.0 if pos > 1.0 else pos)

    cdef void window_counts(self, _Circuit c, double now, double *total, double *failed):
        cdef double keep = 1.0 - self.roll(c, now)
        total[0] = c.prev_total * keep + c.cur_total
        failed[0] = c.prev_fail * keep + c.cur_fail

    cdef move(self, _Circuit c, key, str event, double now, str reason):
        old = STATES[c.state]
        new = TRANSITIONS[(event, old)]
        c.state = STATES.index(new)
        c.gen += 1
        c.probes = 0
        if c.state == ST_OPEN:
            c.opened_at = now
        if c.state == ST_CLOSED:
            c.consecutive = 0
            c.prev_total = c.prev_fail = c.cur_total = c.cur_fail = 0
        t = Transition(now, key, old, new, reason)
        self.transitions.append(t)
        announce(t, self.on_change)

    def __repr__(self):
        return f"<CircuitBreaker failures={self.failures!r} error_rate={self.error_rate!r}>"
