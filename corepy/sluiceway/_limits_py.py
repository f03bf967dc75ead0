"""Pure-Python reference for sluiceway's compiled limits (``sluiceway._limits``).

Same API, same hash, same window arithmetic: given the same seeds and the same
injected clock, every method returns exactly what the compiled one returns.
It exists to pin down behaviour (the tests drive both with the same random
operations) and to read; it is over a hundred times slower (about 12 us per call against 70 ns), so
don't serve traffic with it.
"""

import time

import math

from ._limits_args import (
    bad_clock_reading,
    bad_cost,
    bad_key,
    check_clock,
    check_limit,
    check_shape,
    interval_ns,
    make_seeds,
    MAX_CLOCK_SECONDS,
)

__all__ = ["Estimator", "Rate", "Inflight", "InflightGuard", "proportional", "keyhash",
           "RateLimiter", "RateDecision"]

_M64 = (1 << 64) - 1
_K0 = 0xD5BF06390A2CD4BF
_K1 = 0x890D00C1B579AAF5
_K2 = 0xBF2699110206EE59
_K3 = 0xE7E6C57956EDED17
_K4 = 0x9D7B97B270BFC7E3
_K5 = 0xB5354B390EED9B47
_K6 = 0xCE26F33C40A2C4F9


def _mum(a, b):
    r = a * b
    return (r ^ (r >> 64)) & _M64


def _lane(seed):
    return (((seed << 29) | (seed >> 35)) & _M64) ^ _K4


def _key_bytes(key):
    if isinstance(key, str):
        return key.encode("utf-8")  # 'strict', like PyUnicode_AsUTF8AndSize
    if isinstance(key, bytes):
        return key
    raise bad_key(key)


def _hash(seed, data):
    """The seeded 64-bit hash of csrc/sw_cms.c, on bytes."""
    lane = _lane(seed)
    h = seed ^ _mum(len(data) ^ _K0, _K1)
    full = len(data) - len(data) % 16
    for i in range(0, full, 16):
        a = int.from_bytes(data[i:i + 8], "little")
        b = int.from_bytes(data[i + 8:i + 16], "little")
        h = _mum(a ^ h ^ _K2, b ^ lane ^ _K3)
    tail = data[full:]
    a = int.from_bytes(tail[:8], "little")
    b = int.from_bytes(tail[8:], "little")
    h = _mum(a ^ h ^ _K2, b ^ lane ^ _K3)
    h ^= h >> 31
    h = (h * _K5) & _M64
    h ^= h >> 29
    h = (h * _K6) & _M64
    h ^= h >> 32
    return h


def keyhash(seed, key):
    """Return the 64-bit seeded hash the sketches use for one row.

    Args:
        seed: an int in ``[0, 2**64)``.
        key: ``str`` (hashed as UTF-8) or ``bytes``.

    Returns:
        An int in ``[0, 2**64)``.

    Raises:
        TypeError: key is not str or bytes.
        OverflowError: seed is out of range.
    """
    if not 0 <= seed <= _M64:
        raise OverflowError(f"seed must be in [0, 2**64), got {seed}")
    return _hash(seed, _key_bytes(key))


def _wrap64(v):
    return ((v + (1 << 63)) & _M64) - (1 << 63)


def _check_n(n):
    if not isinstance(n, int):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    if not -(1 << 63) <= n < 1 << 63:
        raise OverflowError(f"n must fit in 64 bits, got {n}")
    return n


class _Sketch:
    """Rows of counters and the hash that picks a key's counter in each row."""

    __slots__ = ("hashes", "slots", "seeds", "cells")

    def __init__(self, hashes, slots, seeds):
        self.hashes = hashes
        self.slots = slots
        self.seeds = tuple(seeds)
        self.cells = [[0] * slots for _ in range(hashes)]

    def index(self, key):
        data = _key_bytes(key)
        return [((_hash(s, data) >> 32) * self.slots) >> 32 for s in self.seeds]

    def add_at(self, idx, n):
        est = None
        for row, col in zip(self.cells, idx):
            row[col] = v = _wrap64(row[col] + n)
            if est is None or v < est:
                est = v
        return est

    def get_at(self, idx):
        return min(row[col] for row, col in zip(self.cells, idx))

    def reset(self):
        for row in self.cells:
            row[:] = [0] * self.slots


class Estimator:
    """A count-min sketch: approximate counts for many keys in fixed memory.

    See ``sluiceway.limits.Estimator``; this is its pure-Python reference.

    Args:
        hashes: rows (1..32).
        slots: counters per row (1..2**26).
        seeds: None (random) or ``hashes`` ints in ``[0, 2**64)``.

    Raises:
        TypeError, ValueError: a shape or seed is invalid.
    """

    def __init__(self, hashes=4, slots=1024, *, seeds=None):
        hashes, slots = check_shape("Estimator", hashes, slots)
        self._s = _Sketch(hashes, slots, make_seeds("Estimator", hashes, seeds))

    def incr(self, key, n=1):
        """Add ``n`` to ``key``'s count; return the estimate after the increment."""
        n = _check_n(n)
        return self._s.add_at(self._s.index(key), n)

    def decr(self, key, n=1):
        """Subtract ``n`` from ``key``'s count; return the estimate after."""
        n = _check_n(n)
        return self._s.add_at(self._s.index(key), _wrap64(-n))

    def get(self, key):
        """Return ``key``'s estimated count."""
        return self._s.get_at(self._s.index(key))

    def reset(self):
        """Zero every counter; the seeds stay."""
        self._s.reset()

    hashes = property(lambda self: self._s.hashes, doc="Number of rows.")
    slots = property(lambda self: self._s.slots, doc="Counters per row.")
    seeds = property(lambda self: self._s.seeds, doc="The row seeds.")

    def __repr__(self):
        return f"<Estimator hashes={self._s.hashes} slots={self._s.slots}>"


def proportional(prev, curr, interval, fraction):
    """Estimate events per second over the last ``interval``, sliding.

    Returns ``(prev * (1 - fraction) + curr) / interval``.

    Args:
        prev: events in the last completed window.
        curr: events so far in the current window.
        interval: window length in seconds.
        fraction: part of the current window elapsed, in [0, 1).

    Returns:
        Events per second, a float.
    """
    return (prev * (1.0 - fraction) + curr) / interval


class Rate:
    """Events per key per window, with the previous window kept for rates.

    See ``sluiceway.limits.Rate``; this is its pure-Python reference.  The window
    arithmetic mirrors csrc/sw_rate.c step for step.

    Args:
        interval: window length, seconds (int/float) or a timedelta.
        hashes, slots, seeds: shape of each of the two sketches.
        clock: None for ``time.monotonic``, or a callable returning seconds.

    Raises:
        TypeError, ValueError: an argument is invalid.
    """

    def __init__(self, interval, *, hashes=4, slots=1024, seeds=None, clock=None):
        self._interval_ns = interval_ns("Rate", interval)
        hashes, slots = check_shape("Rate", hashes, slots)
        seeds = make_seeds("Rate", hashes, seeds)
        self._clock = check_clock("Rate", clock)
        self._interval_s = self._interval_ns / 1e9
        self._est = [_Sketch(hashes, slots, seeds), _Sketch(hashes, slots, seeds)]
        self._cur = 0
        self._start = self._now()
        self._window = 0

    def _now(self):
        if self._clock is None:
            return time.monotonic_ns()
        t = self._clock()
        if isinstance(t, (str, bytes, bytearray)):  # float() would parse them; C refuses
            raise TypeError(f"must be real number, not {type(t).__name__}")
        t = float(t)
        if not -MAX_CLOCK_SECONDS <= t <= MAX_CLOCK_SECONDS:  # also false for nan
            raise bad_clock_reading(t)
        return int(t * 1e9)

    def _advance(self, now=None):
        elapsed = max(0, (self._now() if now is None else now) - self._start)
        w = elapsed // self._interval_ns
        if w > self._window:
            if w == self._window + 1:
                self._cur ^= 1
                self._est[self._cur].reset()
            else:
                self._est[0].reset()
                self._est[1].reset()
            self._window = w
        return max(0, elapsed - self._window * self._interval_ns)

    def _sample(self, key):
        data = _key_bytes(key)
        elapsed = self._advance()
        idx = self._est[0].index(data)
        # float(a) / float(b) is what C computes (int64 -> double, then divide).
        return (self._est[self._cur ^ 1].get_at(idx), self._est[self._cur].get_at(idx),
                float(elapsed) / float(self._interval_ns))

    def observe(self, key, n=1):
        """Count ``n`` events for ``key``; return its count in the current window."""
        data = _key_bytes(key)
        n = _check_n(n)
        self._advance()
        return self._est[self._cur].add_at(self._est[0].index(data), n)

    def rate(self, key):
        """Return ``key``'s events per second in the last completed window."""
        prev, _, _ = self._sample(key)
        return prev / self._interval_s

    def rate_with(self, key, fn):
        """Return ``fn(prev, curr, interval, fraction)`` for ``key``."""
        prev, curr, fraction = self._sample(key)
        return fn(prev, curr, self._interval_s, fraction)

    def sample(self, key):
        """Return ``(prev, curr, fraction)`` for ``key``."""
        return self._sample(key)

    def until_next_window(self):
        """Seconds until the current window ends."""
        return float(self._interval_ns - self._advance()) / 1e9

    def reset(self):
        """Zero both windows and restart the window grid now."""
        self._est[0].reset()
        self._est[1].reset()
        self._cur = 0
        self._start = self._now()
        self._window = 0

    interval = property(lambda self: self._interval_s, doc="Window length in seconds.")
    hashes = property(lambda self: self._est[0].hashes)
    slots = property(lambda self: self._est[0].slots)
    seeds = property(lambda self: self._est[0].seeds)

    def __repr__(self):
        return (f"<Rate interval={self._interval_s!r}s hashes={self._est[0].hashes} "
                f"slots={self._est[0].slots}>")


class Inflight:
    """Counts things in progress per key; each ``incr`` hands back a guard that undoes it.

    See ``sluiceway.limits.Inflight``; this is its pure-Python reference.
    """

    def __init__(self, hashes=4, slots=8192, *, seeds=None):
        hashes, slots = check_shape("Inflight", hashes, slots)
        self._s = _Sketch(hashes, slots, make_seeds("Inflight", hashes, seeds))

    def incr(self, key, n=1):
        """Count ``n`` more for ``key``; return ``(guard, estimate)``."""
        n = _check_n(n)
        idx = self._s.index(key)
        guard = InflightGuard.__new__(InflightGuard)
        guard._owner, guard._idx, guard.key, guard.n, guard._released = self, idx, key, n, False
        return guard, self._s.add_at(idx, n)

    def get(self, key):
        """Return ``key``'s count in progress."""
        return self._s.get_at(self._s.index(key))

    hashes = property(lambda self: self._s.hashes)
    slots = property(lambda self: self._s.slots)
    seeds = property(lambda self: self._s.seeds)

    def __repr__(self):
        return f"<Inflight hashes={self._s.hashes} slots={self._s.slots}>"


class InflightGuard:
    """Holds ``n`` in progress for one key until released, exactly once."""

    __slots__ = ("_owner", "_idx", "key", "n", "_released")

    def __init__(self, *args, **kwargs):
        raise TypeError("InflightGuard objects are made by Inflight.incr(key, n)")

    @property
    def released(self):
        return self._released

    def release(self):
        """Give back what this guard holds; True if this call did it."""
        if self._released:
            return False
        self._released = True
        self._owner._s.add_at(self._idx, _wrap64(-self.n))
        return True

    def get(self):
        """Return the current in-progress count of this guard's key."""
        return self._owner._s.get_at(self._idx)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.release()
        return False

    def __del__(self):
        if not getattr(self, "_released", True):
            self.release()

    def __repr__(self):
        return f"<InflightGuard key={self.key!r} n={self.n} {'released' if self._released else 'held'}>"


class RateDecision:
    """Outcome of ``RateLimiter.check``; see ``sluiceway.limits.RateDecision``."""

    __slots__ = ("allowed", "limit", "remaining", "reset_after", "count")

    def __init__(self, *args, **kwargs):
        raise TypeError("RateDecision objects are made by RateLimiter.check/peek")

    @classmethod
    def _make(cls, allowed, limit, count, reset_after):
        d = cls.__new__(cls)
        d.allowed = allowed
        d.limit = limit
        d.count = count
        d.remaining = max(0, limit - count)
        d.reset_after = reset_after
        return d

    @property
    def retry_after(self):
        """Whole seconds a refused client should wait (at least 1)."""
        return max(1, math.ceil(self.reset_after))

    def headers(self):
        """``[(name, value), ...]``: X-RateLimit-Limit, X-RateLimit-Remaining, and
        Retry-After when refused."""
        out = [("X-RateLimit-Limit", str(self.limit)),
               ("X-RateLimit-Remaining", str(self.remaining))]
        if not self.allowed:
            out.append(("Retry-After", str(self.retry_after)))
        return out

    def __eq__(self, other):
        if not isinstance(other, RateDecision):
            return NotImplemented
        return all(getattr(self, a) == getattr(other, a) for a in self.__slots__)

    def __repr__(self):
        return (f"RateDecision(allowed={self.allowed}, limit={self.limit}, "
                f"remaining={self.remaining}, reset_after={self.reset_after!r}, "
                f"count={self.count})")


class RateLimiter:
    """At most ``limit`` requests per key per window; see ``sluiceway.limits.RateLimiter``."""

    def __init__(self, limit, interval=60.0, *, hashes=4, slots=1024, seeds=None, clock=None):
        self.limit = check_limit("RateLimiter", limit)
        self.rate = Rate(interval, hashes=hashes, slots=slots, seeds=seeds, clock=clock)

    def _decide(self, count, cost, now, counted):
        rate = self.rate
        left = float(rate._interval_ns - rate._advance(now)) / 1e9
        allowed = count <= self.limit if counted else count + cost <= self.limit
        return RateDecision._make(allowed, self.limit, count, left)

    def check(self, key, cost=1):
        """Count ``cost`` for ``key`` and decide; returns a ``RateDecision``."""
        rate = self.rate
        data = _key_bytes(key)
        cost = _check_n(cost)
        if cost < 0:
            raise bad_cost(cost)
        now = rate._now()
        rate._advance(now)
        count = rate._est[rate._cur].add_at(rate._est[0].index(data), cost)
        return self._decide(count, cost, now, True)

    def peek(self, key, cost=1):
        """What ``check(key, cost)`` would decide now, without counting."""
        rate = self.rate
        data = _key_bytes(key)
        cost = _check_n(cost)
        if cost < 0:
            raise bad_cost(cost)
        now = rate._now()
        rate._advance(now)
        count = rate._est[rate._cur].get_at(rate._est[0].index(data))
        return self._decide(count, cost, now, False)

    def __repr__(self):
        return f"<RateLimiter limit={self.limit} interval={self.rate.interval!r}s>"
