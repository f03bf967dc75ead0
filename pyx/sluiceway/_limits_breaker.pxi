# CircuitBreaker and Attempt: closed / open / half-open per upstream.
# Included by _limits.pyx (one extension module, one concern per file).

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
