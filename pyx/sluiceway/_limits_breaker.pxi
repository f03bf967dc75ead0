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
        scope: ``"process"`` (default: each worker process has its own
            circuits) or ``"server"``: circuits live in shared memory mapped
            now, so every worker forked afterwards sees one state per
            upstream; failures reported by any worker count, and one worker
            opening a circuit opens it for all.  Keys must then be str or
            bytes (``"a"`` and ``b"a"`` are one circuit); times are kept to
            the microsecond.  ``transitions``, ``on_change`` and the log show
            the changes this process made.
        name: with ``scope="server"``, share by name with any process on
            this machine (``/dev/shm/sluiceway-<name>``; same settings).
        capacity: with ``scope="server"``, how many upstream keys the shared
            table holds (fixed memory, 128 bytes each).  Requests to keys
            beyond it pass untracked (counted in ``untracked``, logged once).

    Raises:
        TypeError, ValueError: an argument is invalid.
        OSError: the shared memory cannot be mapped.
    """

    def __cinit__(self, *, failures=5, error_rate=None, window=10.0, min_requests=20,
                  cooldown=30.0, probes=1, retryable=True, clock=None, on_change=None,
                  history=256, scope="process", name=None, capacity=256):
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
        self.shared = check_scope("CircuitBreaker", scope, name)
        if self.shared:
            self._open_shared(name, capacity)

    def _open_shared(self, name, capacity):
        cdef sw_sbrk_conf conf
        cdef sw_shm_hdr *h
        positive("CircuitBreaker", "capacity", capacity, integer=True)
        if capacity > 1 << 24:
            raise ValueError(f"CircuitBreaker: capacity must be at most {1 << 24}, got {capacity}")
        if self.probes > 16383:
            raise ValueError("CircuitBreaker: probes must be at most 16383 with scope='server'")
        conf.failures = self.failures_n if self.use_failures else 0
        conf.error_rate = self.error_rate_ if self.use_error_rate else 0.0
        conf.min_requests = self.min_requests
        conf.cooldown_us = <int64_t>(self.cooldown * 1e6 + 0.5)
        conf.probes = self.probes
        conf.window_ns = interval_ns("CircuitBreaker", self.window)
        self.region = open_region("CircuitBreaker", SW_SHM_BREAKER, sw_sbrk_size(capacity), name)
        seed = region_sketch("CircuitBreaker", self.region, 1, capacity, None)[0]
        region_params("CircuitBreaker", self.region,
                      (conf.failures, double_bits(conf.error_rate), conf.min_requests,
                       conf.cooldown_us, conf.probes, conf.window_ns),
                      "failures, error_rate, min_requests, cooldown, probes, window")
        h = self.region.hdr()
        if self.region.created:
            h.interval_ns = conf.window_ns
            h.origin_ns = <int64_t>(self.start * 1e9)
            sw_shm_publish(h)
        self.key_seed = seed
        sw_sbrk_attach(&self.sb, h, &conf)

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
        cdef sw_sbrk_entry *e
        if self.shared:
            e = self.entry(key, False)
            return STATES[ST_CLOSED if e == NULL else sw_sbrk_state(e)]
        c = self.circuits.get(key)
        return STATES[ST_CLOSED if c is None else (<_Circuit>c).state]

    def stats(self, key):
        """Return a dict describing ``key``'s circuit (state, counts, error rate)."""
        cdef double total, failed, t
        cdef int64_t consecutive
        cdef sw_sbrk_entry *e
        if self.shared:
            e = self.entry(key, False)
            if e != NULL:
                t = self.now()
                sw_sbrk_stats(&self.sb, e, <int64_t>(t * 1e9), &consecutive, &total, &failed)
                return {"state": STATES[sw_sbrk_state(e)], "consecutive_failures": consecutive,
                        "window_requests": total, "window_failures": failed,
                        "error_rate": failed / total if total else 0.0}
        c = None if self.shared else self.circuits.get(key)
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
        if self.shared:
            return self.shared_admit(key)
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
        cdef sw_sbrk_entry *e
        cdef double t
        cdef int frm = 0, event
        if self.shared:
            e = self.entry(key, False)
            if e != NULL:
                t = self.now()
                event = sw_sbrk_reset(&self.sb, e, <int64_t>(t * 1e9), &frm)
                self.announce_event(event, key, t, 0, 0.0, 0.0, frm)
            return
        c = self.circuits.get(key)
        if c is not None and (<_Circuit>c).state != ST_CLOSED:
            self.move(<_Circuit>c, key, "reset", self.now(), "reset by the application")

    # -- outcomes -----------------------------------------------------------
    cdef int record(self, key, bint ok, int64_t gen, bint probe) except -1:
        cdef _Circuit c
        cdef double now, total, failed
        if self.shared:
            return self.shared_record(key, ok, gen, probe)
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

    # -- shared (scope="server"): the state machine is csrc/sw_sbrk.c's ------
    cdef sw_sbrk_entry *entry(self, key, bint claim) except? NULL:
        cdef Py_ssize_t size
        cdef const char *buf = key_bytes(key, &size)
        cdef sw_sbrk_entry *e = sw_sbrk_find(&self.sb, sw_cms_keyhash(self.key_seed, buf,
                                                                      <size_t>size), claim)
        if e == NULL and claim:
            self.untracked += 1
            if self.untracked == 1:
                logger.warning("CircuitBreaker: the shared table is full (capacity %d); "
                               "requests to %r and other new upstreams pass untracked",
                               self.sb.capacity, key)
        return e

    cdef shared_admit(self, key):
        cdef sw_sbrk_entry *e = self.entry(key, True)
        cdef uint64_t gen = 0
        cdef int64_t retry_us = 0
        cdef int event, rc
        cdef double t
        if e == NULL:
            return self.attempt(key, False, -1)
        t = self.now()
        rc = sw_sbrk_admit(&self.sb, e, <int64_t>(t * 1e9), &gen, &retry_us, &event)
        if event != SW_BRK_EV_NONE:
            self.announce_event(event, key, t, 0, 0.0, 0.0, ST_OPEN)
        if rc == SW_BRK_ADMIT or rc == SW_BRK_PROBE:
            return self.attempt(key, rc == SW_BRK_PROBE, <int64_t>gen)
        raise circuit_refusal(key, rc == SW_BRK_REFUSE_BUSY, self.probes, retry_us / 1e6,
                              self.retryable)

    cdef int shared_record(self, key, bint ok, int64_t gen, bint probe) except -1:
        cdef sw_sbrk_entry *e
        cdef int64_t detail = 0
        cdef double total = 0.0, failed = 0.0, t
        cdef int event
        if gen < 0:
            return 0  # an untracked attempt (the table was full)
        e = self.entry(key, False)
        if e == NULL:
            return 0
        t = self.now()
        event = sw_sbrk_record(&self.sb, e, ok, <uint64_t>gen, probe, <int64_t>(t * 1e9),
                               &detail, &total, &failed)
        if event != SW_BRK_EV_NONE:
            self.announce_event(event, key, t, detail, total, failed,
                                ST_CLOSED if event <= SW_BRK_EV_TRIP_RATE else ST_HALF_OPEN)
        return 0

    cdef announce_event(self, int event, key, double now, int64_t detail, double total,
                        double failed, int frm):
        """Log and record a transition this process made in the shared table."""
        if event == SW_BRK_EV_TRIP_CONSECUTIVE:
            name, reason = "trip", f"{detail} consecutive failures"
        elif event == SW_BRK_EV_TRIP_RATE:
            name, reason = "trip", (f"error rate {failed / total:.0%} over {total:.0f} requests "
                                    f"in the last {self.window:g}s")
        elif event == SW_BRK_EV_COOLED:
            name, reason = "cooled", f"cool-down of {self.cooldown:g}s elapsed"
        elif event == SW_BRK_EV_PROBE_OK:
            name, reason = "probe_ok", "probe succeeded"
        elif event == SW_BRK_EV_PROBE_FAILED:
            name, reason = "probe_failed", "probe failed"
        elif event == SW_BRK_EV_RESET:
            name, reason = "reset", "reset by the application"
        else:
            return
        old = STATES[frm]
        t = Transition(now, key, old, TRANSITIONS[(name, old)], reason)
        self.transitions.append(t)
        announce(t, self.on_change)

    @property
    def scope(self):
        """``"process"`` or ``"server"`` (shared memory)."""
        return scope_of(self.shared)

    @property
    def memory(self):
        """Bytes of the shared table (fixed at creation), or 0 per process."""
        return self.region.size if self.shared else 0

    def __repr__(self):
        return (f"<CircuitBreaker failures={self.failures!r} error_rate={self.error_rate!r} "
                f"scope={scope_of(self.shared)}>")
