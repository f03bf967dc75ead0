# RateLimiter and RateDecision: N requests per key per window.
# Included by _limits.pyx (one extension module, one concern per file).

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
        scope: ``"process"`` (default: each worker process counts on its own)
            or ``"server"``: one count per key for the whole server, in
            shared memory; make the limiter before the server forks its
            workers (at import of the application module, say).
        name: with ``scope="server"``, share by name with any process on
            this machine (``/dev/shm/sluiceway-<name>``).

    Raises:
        TypeError, ValueError: an argument is invalid.

    Example (in ``request_filter``)::

        d = limiter.check(api_key)
        if not d.allowed:
            ...respond 429 with d.headers()...
    """

    def __cinit__(self, limit, interval=60.0, *, sliding=False, hashes=4, slots=1024,
                  seeds=None, clock=None, scope="process", name=None):
        self.limit = check_limit("RateLimiter", limit)
        self.sliding = bool(sliding)
        self.rate = Rate(interval, hashes=hashes, slots=slots, seeds=seeds, clock=clock,
                         scope=scope, name=name)

    cdef RateDecision decide(self, key, cost, bint counted):
        cdef Py_ssize_t size
        cdef const char *buf = key_bytes(key, &size)
        cdef int64_t c = as_count(cost)
        cdef int64_t prev, curr, elapsed, interval_ns
        cdef double fraction, base, room
        cdef RateDecision d
        if c < 0:
            raise bad_cost(cost)
        self.rate.counts(self.rate.now_ns(), buf, size, c if counted else 0,
                         &prev, &curr, &elapsed)
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
        return (f"<RateLimiter limit={self.limit} interval={self.rate.interval_s!r}s {mode} "
                f"scope={self.rate.scope}>")
