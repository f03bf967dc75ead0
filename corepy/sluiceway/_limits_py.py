"""Pure-Python reference for sluiceway's compiled limits (``sluiceway._limits``).

Same API, same hash, same window arithmetic: given the same seeds and the same
injected clock, every method returns exactly what the compiled one returns
(the load-shedding classes too: same states, same refusals, same numbers).
It exists to pin down behaviour (the tests drive both with the same random
operations) and to read; it is 20 to 170 times slower (``Rate.observe``: about
12 us per call against 70 ns), so don't serve traffic with it.

``scope="server"`` is accepted everywhere, and the objects then decide
exactly what the compiled shared ones decide (the same counts, and for the
breaker keys taken as bytes and a fixed table of ``capacity`` circuits), but
in memory of this process only: the reference pins down *what* a shared
limit counts, not how processes share it.  How the compiled one keeps a
window's count in one shared word is modelled bit for bit by ``tcell_add``
and ``tcell_get`` below.
"""

import time

import asyncio
import collections
import math

from ._base.limits import (
    TRANSITIONS,
    BreakerState,
    Transition,
    announce,
    check_breaker,
    circuit_refusal,
    concurrency_refusal,
    positive,
    bad_clock_reading,
    bad_cost,
    bad_key,
    check_clock,
    check_limit,
    check_scope,
    unlink_shared,
    check_shape,
    interval_ns,
    make_seeds,
    MAX_CLOCK_SECONDS,
)

__all__ = ["Estimator", "Rate", "Inflight", "InflightGuard", "proportional", "keyhash",
           "RateLimiter", "RateDecision", "ConcurrencyLimiter", "Permit", "CircuitBreaker",
           "Attempt", "unlink_shared"]

_HDR = 512  # bytes of a shared region's header (csrc/sw_shm.h)

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


# --------------------------------------------------------------------------
# Window-tagged cells of a shared Rate (csrc/sw_scount.c), bit for bit.
# --------------------------------------------------------------------------

_TAG_BITS, _COUNT_BITS, _TAG_AHEAD = 24, 40, 2
_TAG_MASK = (1 << _TAG_BITS) - 1
_CNT_MASK = (1 << _COUNT_BITS) - 1


def _cnt(v):
    c = v & _CNT_MASK
    return c - (1 << _COUNT_BITS) if c >> (_COUNT_BITS - 1) else c


def _ahead(v, w):
    d = ((v >> _COUNT_BITS) - w) & _TAG_MASK
    return d - (1 << _TAG_BITS) if d >= 1 << (_TAG_BITS - 1) else d


def tcell_add(value, w, n):
    """A cell holding ``value`` after adding ``n`` events in window ``w``.

    Returns ``(new value, its count)``.  A cell of window ``w`` or of a window
    at most two ahead (a process that lagged behind a turn) takes the events;
    an older one is replaced by ``(w, n)``.
    """
    d = _ahead(value, w)
    if 0 <= d <= _TAG_AHEAD:
        nv = (value & ~_CNT_MASK) | ((_cnt(value) + n) & _CNT_MASK)
    else:
        nv = ((w & _TAG_MASK) << _COUNT_BITS) | (n & _CNT_MASK)
    return nv, _cnt(nv)


def tcell_get(value, w):
    """The count a cell holding ``value`` has for window ``w`` (0 if older)."""
    d = _ahead(value, w)
    return _cnt(value) if 0 <= d <= _TAG_AHEAD else 0


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

    def __init__(self, hashes=4, slots=1024, *, seeds=None, scope="process", name=None):
        hashes, slots = check_shape("Estimator", hashes, slots)
        self._shared = check_scope("Estimator", scope, name)
        self._name = name
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

    scope = property(lambda self: "server" if self._shared else "process")
    name = property(lambda self: self._name)

    @property
    def memory(self):
        """Bytes of counters (shared: the whole region, header included)."""
        return self._s.hashes * self._s.slots * 8 + (_HDR if self._shared else 0)

    def __repr__(self):
        return f"<Estimator hashes={self._s.hashes} slots={self._s.slots} scope={self.scope}>"


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

    def __init__(self, interval, *, hashes=4, slots=1024, seeds=None, clock=None,
                 scope="process", name=None):
        self._interval_ns = interval_ns("Rate", interval)
        hashes, slots = check_shape("Rate", hashes, slots)
        self._shared = check_scope("Rate", scope, name)
        self._name = name
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

    scope = property(lambda self: "server" if self._shared else "process")
    name = property(lambda self: self._name)

    @property
    def memory(self):
        """Bytes of counters (shared: the whole region, header included)."""
        return 2 * self._est[0].hashes * self._est[0].slots * 8 + (_HDR if self._shared else 0)

    def __repr__(self):
        return (f"<Rate interval={self._interval_s!r}s hashes={self._est[0].hashes} "
                f"slots={self._est[0].slots} scope={self.scope}>")


class Inflight:
    """Counts things in progress per key; each ``incr`` hands back a guard that undoes it.

    See ``sluiceway.limits.Inflight``; this is its pure-Python reference.
    """

    def __init__(self, hashes=4, slots=8192, *, seeds=None, scope="process", name=None):
        hashes, slots = check_shape("Inflight", hashes, slots)
        self._shared = check_scope("Inflight", scope, name)
        self._name = name
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

    scope = property(lambda self: "server" if self._shared else "process")
    name = property(lambda self: self._name)

    @property
    def memory(self):
        """Bytes of counters (shared: the whole region, header included)."""
        return self._s.hashes * self._s.slots * 8 + (_HDR if self._shared else 0)

    def __repr__(self):
        return f"<Inflight hashes={self._s.hashes} slots={self._s.slots} scope={self.scope}>"


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
        state = "released" if self._released else "held"
        return f"<InflightGuard key={self.key!r} n={self.n} {state}>"


class RateDecision:
    """Outcome of ``RateLimiter.check``; see ``sluiceway.limits.RateDecision``."""

    __slots__ = ("allowed", "limit", "remaining", "reset_after", "count")

    def __init__(self, *args, **kwargs):
        raise TypeError("RateDecision objects are made by RateLimiter.check/peek")

    @classmethod
    def _make(cls, allowed, limit, remaining, count, reset_after):
        d = cls.__new__(cls)
        d.allowed = allowed
        d.limit = limit
        d.remaining = remaining
        d.count = count
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

    __hash__ = None

    def __repr__(self):
        return (f"RateDecision(allowed={self.allowed}, limit={self.limit}, "
                f"remaining={self.remaining}, reset_after={self.reset_after!r}, "
                f"count={self.count})")


def _sliding_wait(limit, cost, prev, curr, fraction, interval_s):
    """Seconds until ``cost`` more fits under a sliding limit (mirrors the C code)."""
    room = float(limit) - float(cost) - float(curr)
    fit = float(limit) - float(cost)
    if room >= 0.0 and prev > 0:
        wait = (1.0 - room / float(prev) - fraction) * interval_s
    elif fit < 0.0:
        wait = (2.0 - fraction) * interval_s
    elif curr > 0:
        g = max(0.0, 1.0 - fit / float(curr))
        wait = (1.0 - fraction + g) * interval_s
    else:
        wait = (1.0 - fraction) * interval_s
    return wait if wait > 0.0 else 0.0


class RateLimiter:
    """At most ``limit`` requests per key per window; see ``sluiceway.limits.RateLimiter``."""

    def __init__(self, limit, interval=60.0, *, sliding=False, hashes=4, slots=1024,
                 seeds=None, clock=None, scope="process", name=None):
        self.limit = check_limit("RateLimiter", limit)
        self.sliding = bool(sliding)
        self.rate = Rate(interval, hashes=hashes, slots=slots, seeds=seeds, clock=clock,
                         scope=scope, name=name)

    def _decide(self, key, cost, counted):
        rate = self.rate
        data = _key_bytes(key)
        cost = _check_n(cost)
        if cost < 0:
            raise bad_cost(cost)
        elapsed = rate._advance(rate._now())
        idx = rate._est[0].index(data)
        cur = rate._est[rate._cur]
        curr = cur.add_at(idx, cost if counted else 0)
        prev = rate._est[rate._cur ^ 1].get_at(idx)
        limit = self.limit
        reset_after = float(rate._interval_ns - elapsed) / 1e9
        if not self.sliding:
            allowed = curr <= limit if counted else curr <= limit - cost
            return RateDecision._make(allowed, limit, max(0, limit - curr), curr, reset_after)
        # Float arithmetic exactly as C does it (ints converted to double first).
        fraction = float(elapsed) / float(rate._interval_ns)
        base = float(prev) * (1.0 - fraction) + float(curr)
        allowed = (base if counted else base + float(cost)) <= float(limit)
        room = float(limit) - base
        remaining = math.floor(room) if room > 0.0 else 0
        if not allowed:
            reset_after = _sliding_wait(limit, cost, prev, curr, fraction, rate._interval_s)
        return RateDecision._make(allowed, limit, remaining, curr, reset_after)

    def check(self, key, cost=1):
        """Count ``cost`` for ``key`` and decide; returns a ``RateDecision``."""
        return self._decide(key, cost, True)

    def peek(self, key, cost=1):
        """What ``check(key, cost)`` would decide now, without counting."""
        return self._decide(key, cost, False)

    def __repr__(self):
        mode = "sliding" if self.sliding else "fixed"
        return (f"<RateLimiter limit={self.limit} interval={self.rate.interval!r}s {mode} "
                f"scope={self.rate.scope}>")


# --------------------------------------------------------------------------
# Concurrency cap per upstream.
# --------------------------------------------------------------------------

class Permit:
    """One request's place under a ``ConcurrencyLimiter`` cap; see ``sluiceway.limits.Permit``."""

    __slots__ = ("_limiter", "_guard", "key")

    def __init__(self, *args, **kwargs):
        raise TypeError("Permit objects are made by ConcurrencyLimiter.try_acquire/acquire")

    @classmethod
    def _make(cls, limiter, guard, key):
        p = cls.__new__(cls)
        p._limiter, p._guard, p.key = limiter, guard, key
        return p

    @property
    def released(self):
        return self._guard.released

    def release(self):
        """Give the place back; True if this call did, False if already released."""
        if self._guard.release():
            if self._limiter._waiters:
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
        if not getattr(self, "_guard", None) or self._guard.released:
            return
        try:
            self.release()
        except Exception:  # interpreter shutdown: nothing left to wake
            pass

    def __repr__(self):
        return f"<Permit key={self.key!r} {'released' if self.released else 'held'}>"


def _wait_key(key):
    """Queue key: "a" and b"a" count as one upstream, so they queue as one."""
    return key.encode("utf-8") if isinstance(key, str) else key


class _Expired(Exception):
    pass


def _expire(fut):
    if not fut.done():
        fut.set_exception(_Expired())


class ConcurrencyLimiter:
    """Cap the requests in flight to each upstream; see ``sluiceway.limits.ConcurrencyLimiter``."""

    def __init__(self, max_inflight, *, wait=0.0, retryable=True, inflight=None,
                 scope="process", name=None):
        owner = "ConcurrencyLimiter"
        self.max_inflight = positive(owner, "max_inflight", max_inflight, integer=True)
        self.wait = float(positive(owner, "wait", wait, allow_zero=True))
        self.retryable = retryable
        if inflight is None:
            inflight = Inflight(scope=scope, name=name)
        elif not isinstance(inflight, Inflight):
            raise TypeError(f"{owner}: inflight must be None or an Inflight of the same "
                            f"implementation, got {type(inflight).__name__}")
        elif scope != "process" or name is not None:
            raise ValueError(f"{owner}: give either inflight= or scope=/name=, not both "
                             f"(the Inflight has its own scope)")
        self._inflight = inflight
        self._waiters = {}  # key -> deque of futures, FIFO
        self.shed = 0

    def inflight(self, key):
        """Requests in flight for ``key`` (never below the truth)."""
        return self._inflight.get(key)

    scope = property(lambda self: self._inflight.scope)
    memory = property(lambda self: self._inflight.memory)

    def waiting(self, key):
        """Callers queued in ``acquire`` for ``key``."""
        q = self._waiters.get(_wait_key(key))
        return sum(1 for f in q if not f.done()) if q else 0

    def _take(self, key):
        guard, count = self._inflight.incr(key, 1)
        if count <= self.max_inflight:
            return Permit._make(self, guard, key)
        guard.release()
        return None

    def _refuse(self, key, waited):
        self.shed += 1
        return concurrency_refusal(key, self.max_inflight, waited, self.retryable)

    def try_acquire(self, key):
        """Take a place for ``key`` now or raise ConcurrencyLimitExceeded."""
        permit = self._take(key)
        if permit is None:
            raise self._refuse(key, 0)
        return permit

    async def acquire(self, key, timeout=None):
        """Take a place for ``key``, waiting up to ``timeout`` (default ``wait``) seconds, FIFO."""
        if timeout is None:
            timeout = self.wait
        else:
            timeout = float(positive("ConcurrencyLimiter.acquire", "timeout", timeout,
                                     allow_zero=True))
        wkey = _wait_key(key)
        if not self._waiters.get(wkey):
            permit = self._take(key)
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
            q = self._waiters.get(wkey)
            if q is None:
                q = self._waiters[wkey] = collections.deque()
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
            permit = self._take(key)
            if permit is not None:
                return permit
            front = True  # lost the race to a fail-fast caller: keep our turn

    def _forget(self, key, fut):
        key = _wait_key(key)
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
        key = _wait_key(key)
        q = self._waiters.get(key)
        while q:
            fut = q.popleft()
            if not fut.done():
                fut.set_result(None)
                break
        if q is not None and not q:
            self._waiters.pop(key, None)


# --------------------------------------------------------------------------
# Circuit breaker per upstream.
# --------------------------------------------------------------------------

_C, _O, _H = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


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
    """One admitted request; see ``sluiceway.limits.Attempt``."""

    __slots__ = ("_breaker", "key", "probe", "_gen", "_done")

    def __init__(self, *args, **kwargs):
        raise TypeError("Attempt objects are made by CircuitBreaker.admit")

    @classmethod
    def _make(cls, breaker, key, probe, gen):
        a = cls.__new__(cls)
        a._breaker, a.key, a.probe, a._gen, a._done = breaker, key, probe, gen, False
        return a

    @property
    def reported(self):
        return self._done

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
    """A circuit breaker per upstream key; see ``sluiceway.limits.CircuitBreaker``."""

    def __init__(self, *, failures=5, error_rate=None, window=10.0, min_requests=20,
                 cooldown=30.0, probes=1, retryable=True, clock=None, on_change=None,
                 history=256, scope="process", name=None, capacity=256):
        check_breaker(failures, error_rate, window, min_requests, cooldown, probes, on_change,
                      history)
        self._shared = check_scope("CircuitBreaker", scope, name)
        self._name = name
        self._capacity = capacity
        self.untracked = 0
        if self._shared:
            positive("CircuitBreaker", "capacity", capacity, integer=True)
            if capacity > 1 << 24:
                raise ValueError(f"CircuitBreaker: capacity must be at most {1 << 24}, "
                                 f"got {capacity}")
            if probes > 16383:
                raise ValueError("CircuitBreaker: probes must be at most 16383 with "
                                 "scope='server'")
        self.failures = failures
        self.error_rate = None if error_rate is None else float(error_rate)
        self.window = float(window)
        self.min_requests = min_requests
        self.cooldown = float(cooldown)
        self.probes = probes
        self.retryable = retryable
        self._clock = check_clock("CircuitBreaker", clock) or time.monotonic
        self.on_change = on_change
        self.transitions = collections.deque(maxlen=history)
        self._start = self._now()
        self._circuits = {}

    scope = property(lambda self: "server" if self._shared else "process")

    @property
    def memory(self):
        """Bytes of the shared table, or 0 per process."""
        return _HDR + 128 * self._capacity if self._shared else 0

    def _ckey(self, key, claim=False):
        """The circuit's key: any hashable per process, its bytes when shared.

        Shared, a new key beyond ``capacity`` circuits gets None (untracked).
        """
        if not self._shared:
            return key
        ckey = _key_bytes(key)
        if claim and ckey not in self._circuits and len(self._circuits) >= self._capacity:
            self.untracked += 1
            return None
        return ckey

    def _now(self):
        t = self._clock()
        if isinstance(t, (str, bytes, bytearray)):
            raise TypeError(f"must be real number, not {type(t).__name__}")
        t = float(t)
        if not -MAX_CLOCK_SECONDS <= t <= MAX_CLOCK_SECONDS:
            raise bad_clock_reading(t)
        return t

    def state(self, key):
        """Return ``key``'s ``BreakerState``."""
        c = self._circuits.get(self._ckey(key))
        return _C if c is None else c.state

    def stats(self, key):
        """Return a dict describing ``key``'s circuit."""
        c = self._circuits.get(self._ckey(key))
        if c is None:
            return {"state": _C, "consecutive_failures": 0, "window_requests": 0.0,
                    "window_failures": 0.0, "error_rate": 0.0}
        total, failed = self._window_counts(c, self._now())
        return {"state": c.state, "consecutive_failures": c.consecutive,
                "window_requests": total, "window_failures": failed,
                "error_rate": failed / total if total else 0.0}

    def admit(self, key):
        """Let a request to ``key`` through (an ``Attempt``) or raise ``CircuitOpen``."""
        ckey = self._ckey(key, claim=True)
        if ckey is None:
            return Attempt._make(self, key, False, -1)  # the shared table is full
        c = self._circuits.get(ckey)
        if c is None:
            c = self._circuits[ckey] = _Circuit()
        if c.state is _C:
            return Attempt._make(self, key, False, c.gen)
        now = self._now()
        if c.state is _O:
            left = c.opened_at + self.cooldown - now
            if left > 0:
                raise circuit_refusal(key, False, self.probes, left, self.retryable)
            self._move(c, key, "cooled", now, f"cool-down of {self.cooldown:g}s elapsed")
        if c.probes >= self.probes and now - c.probe_at >= self.cooldown:
            c.probes = 0  # probes that never reported: free their places
        if c.probes >= self.probes:
            raise circuit_refusal(key, True, self.probes,
                                  max(0.0, c.probe_at + self.cooldown - now), self.retryable)
        c.probes += 1
        c.probe_at = now
        return Attempt._make(self, key, True, c.gen)

    def reset(self, key):
        """Close ``key``'s circuit and clear its counts."""
        c = self._circuits.get(self._ckey(key))
        if c is not None and c.state is not _C:
            self._move(c, key, "reset", self._now(), "reset by the application")

    def _record(self, key, ok, gen, probe):
        c = self._circuits.get(self._ckey(key))
        if c is None or gen != c.gen:
            return  # admitted under an earlier state: says nothing about this one
        if c.state is _H:
            if probe:
                c.probes -= 1
                now = self._now()
                if ok:
                    self._move(c, key, "probe_ok", now, "probe succeeded")
                else:
                    self._move(c, key, "probe_failed", now, "probe failed")
            return
        if c.state is not _C:
            return
        now = self._now()
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
        """Move ``c``'s windows to ``now``; return the fraction of the current one elapsed."""
        pos = (now - self._start) / self.window
        w = max(0, math.floor(pos))
        if w == c.window + 1:
            c.prev_total, c.prev_fail = c.cur_total, c.cur_fail
            c.cur_total = c.cur_fail = 0
        elif w > c.window + 1:
            c.prev_total = c.prev_fail = c.cur_total = c.cur_fail = 0
        if w > c.window:
            c.window = w
        return max(0.0, min(1.0, pos - c.window))

    def _window_counts(self, c, now):
        keep = 1.0 - self._roll(c, now)
        return c.prev_total * keep + c.cur_total, c.prev_fail * keep + c.cur_fail

    def _move(self, c, key, event, now, reason):
        old = c.state
        new = TRANSITIONS[(event, old)]
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
        announce(t, self.on_change)
