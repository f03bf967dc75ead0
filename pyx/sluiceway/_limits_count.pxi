# Counting: Estimator, proportional, Rate, Inflight and its guards.
# Included by _limits.pyx (one extension module, one concern per file).

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
        scope: ``"process"`` (the default: counts live in this process) or
            ``"server"``: counts live in shared memory mapped now, so every
            worker process forked afterwards (``threads: N``) counts in the
            same sketch, lock-free.  Make the object before the server starts
            its workers, e.g. at import of the application module.
        name: with ``scope="server"``, share by name instead: the region is
            the file ``/dev/shm/sluiceway-<name>``, opened by every process
            that asks for that name with the same shape (made by the first).

    Raises:
        TypeError, ValueError: a shape, seed, scope or name is invalid (the
            message says which).
        OSError: the shared memory cannot be mapped.
    """

    def __cinit__(self, hashes=4, slots=1024, *, seeds=None, scope="process", name=None):
        self.shared = check_scope("Estimator", scope, name)
        if self.shared:
            self.region = shared_cms(&self.c, "Estimator", SW_SHM_ESTIMATOR, hashes, slots,
                                     seeds, name)
        else:
            init_cms(&self.c, "Estimator", hashes, slots, seeds)

    def __dealloc__(self):
        if not self.shared:  # shared cells belong to the region
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
        return cms_add(&self.c, self.shared, buf, size, as_count(n))

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
        return cms_add(&self.c, self.shared, buf, size, neg(as_count(n)))

    def get(self, key):
        """Return ``key``'s estimated count (0 for a key never seen, barring collisions).

        Raises:
            TypeError: key is not str or bytes.
        """
        cdef Py_ssize_t size
        cdef const char *buf = key_bytes(key, &size)
        return cms_get(&self.c, self.shared, buf, size)

    def reset(self):
        """Zero every counter; the seeds stay.

        Shared: each counter is zeroed atomically, not all at once, so events
        other processes count meanwhile may survive.
        """
        if self.shared:
            sw_acms_zero(self.c.cells, <size_t>self.c.hashes * self.c.slots)
        else:
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


    @property
    def scope(self):
        """``"process"`` or ``"server"`` (shared memory)."""
        return scope_of(self.shared)

    @property
    def name(self):
        """The name of a named shared region, else None."""
        return None if self.region is None else self.region.name

    @property
    def memory(self):
        """Bytes of counters, fixed at creation (shared: the whole region)."""
        if self.shared:
            return self.region.size
        return <size_t>self.c.hashes * self.c.slots * 8

    def __repr__(self):
        return (f"<Estimator hashes={self.c.hashes} slots={self.c.slots} "
                f"scope={scope_of(self.shared)}>")


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
            Processes sharing a Rate must read the same clock.
        scope: ``"process"`` (default) or ``"server"``: both windows live in
            shared memory mapped now, and every worker forked afterwards
            counts in them, lock-free; windows turn without a lock too (see
            csrc/sw_scount.h).  Counts wrap at +-2**39 per key and window.
        name: with ``scope="server"``, the region is ``/dev/shm/sluiceway-<name>``,
            shared by every process that opens that name (same shape and
            interval; the first one makes it).

    Raises:
        TypeError, ValueError: an argument is invalid (the message says which).
        OSError: the shared memory cannot be mapped.
    """

    def __cinit__(self, interval, *, hashes=4, slots=1024, seeds=None, clock=None,
                  scope="process", name=None):
        cdef uint64_t cseeds[SW_CMS_MAX_HASHES]
        cdef int i, rc
        cdef int64_t ins = interval_ns("Rate", interval)
        cdef sw_shm_hdr *h
        hashes, slots = check_shape("Rate", hashes, slots)
        self.shared = check_scope("Rate", scope, name)
        self.clock = check_clock("Rate", clock)
        self.interval_s = ins / 1e9
        if self.shared:
            self.region = open_region("Rate", SW_SHM_RATE, sw_srate_size(hashes, slots), name)
            region_sketch("Rate", self.region, hashes, slots, seeds)
            h = self.region.hdr()
            if self.region.created:
                h.interval_ns = ins
                h.origin_ns = self.now_ns()
                h.hwm = 0
                sw_shm_publish(h)
            elif h.interval_ns != ins:
                raise ValueError(f"Rate: {self.region.path} counts windows of "
                                 f"{h.interval_ns / 1e9:g}s, not {ins / 1e9:g}s")
            sw_srate_attach(&self.s, h)
            self.r.interval_ns = ins
            return
        seeds = make_seeds("Rate", hashes, seeds)
        for i in range(hashes):
            cseeds[i] = seeds[i]
        rc = sw_rate_init(&self.r, hashes, slots, cseeds, ins, self.now_ns())
        if rc == SW_CMS_ENOMEM:
            raise MemoryError(f"Rate: cannot allocate 2 x {hashes} x {slots} counters")
        if rc != SW_CMS_OK:
            raise ValueError(f"Rate: invalid shape hashes={hashes}, slots={slots}")

    def __dealloc__(self):
        sw_rate_free(&self.r)  # nothing to free when shared (no cells were allocated)

    cdef void counts(self, int64_t now, const char *buf, Py_ssize_t size, int64_t n,
                     int64_t *prev, int64_t *curr, int64_t *elapsed) noexcept:
        """Add n (may be 0) to key's current window and read both windows."""
        if self.shared:
            sw_srate_sample_add(&self.s, now, buf, <size_t>size, n, prev, curr, elapsed)
        elif n == 0:
            sw_rate_sample(&self.r, now, buf, <size_t>size, prev, curr, elapsed)
        else:
            sw_rate_sample_add(&self.r, now, buf, <size_t>size, n, prev, curr, elapsed)

    cdef const sw_cms *shape(self) noexcept:
        return &self.s.shape if self.shared else &self.r.est[0]

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
        if self.shared:
            return sw_srate_observe(&self.s, now, buf, <size_t>size, count)
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
        self.counts(self.now_ns(), buf, size, 0, &prev, &curr, &elapsed)
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
        self.counts(self.now_ns(), buf, size, 0, &prev, &curr, &elapsed)
        fraction = <double>elapsed / <double>self.r.interval_ns
        if fn is proportional:
            return (prev * (1.0 - fraction) + curr) / self.interval_s
        return fn(prev, curr, self.interval_s, fraction)

    def sample(self, key):
        """Return ``(prev, curr, fraction)`` for ``key`` (see ``rate_with``)."""
        cdef Py_ssize_t size
        cdef int64_t prev, curr, elapsed
        cdef const char *buf = key_bytes(key, &size)
        self.counts(self.now_ns(), buf, size, 0, &prev, &curr, &elapsed)
        return prev, curr, <double>elapsed / <double>self.r.interval_ns

    def until_next_window(self):
        """Seconds until the current window ends (for Retry-After)."""
        cdef int64_t elapsed
        if self.shared:
            sw_srate_window(&self.s, self.now_ns(), &elapsed)
        else:
            elapsed = sw_rate_advance(&self.r, self.now_ns())
        return (self.r.interval_ns - elapsed) / 1e9

    def reset(self):
        """Zero both windows and restart the window grid now.

        Shared: each counter is zeroed atomically, not all at once, so events
        other processes count meanwhile may survive.
        """
        if self.shared:
            sw_srate_reset(&self.s, self.now_ns())
        else:
            sw_rate_reset(&self.r, self.now_ns())

    @property
    def interval(self):
        """Window length in seconds."""
        return self.interval_s

    @property
    def hashes(self):
        return self.shape().hashes

    @property
    def slots(self):
        return self.shape().slots

    @property
    def seeds(self):
        """The row seeds shared by both windows' sketches."""
        return cms_seeds(self.shape())

    @property
    def scope(self):
        """``"process"`` or ``"server"`` (shared memory)."""
        return scope_of(self.shared)

    @property
    def name(self):
        """The name of a named shared region, else None."""
        return None if self.region is None else self.region.name

    @property
    def memory(self):
        """Bytes of counters, fixed at creation (shared: the whole region)."""
        if self.shared:
            return self.region.size
        return 2 * <size_t>self.shape().hashes * self.shape().slots * 8

    def __repr__(self):
        return (f"<Rate interval={self.interval_s!r}s hashes={self.shape().hashes} "
                f"slots={self.shape().slots} scope={scope_of(self.shared)}>")


@cython.final
cdef class Inflight:
    """Counts things in progress per key; each ``incr`` hands back a guard that undoes it.

    Backed by a count-min sketch, so the count of a key is never below the
    number of its unreleased guards (and almost always equal to it).

    Args:
        hashes, slots, seeds: shape of the sketch (see Estimator); the defaults
            (4 x 8192) make a false overcount vanishingly rare.
        scope, name: ``"process"`` (default) or ``"server"`` (shared by the
            server's workers, or by name); see Estimator.  A shared count
            stays correct across processes; a process that dies holding
            guards leaves their counts in place.

    Raises:
        TypeError, ValueError: an argument is invalid (the message says which).
        OSError: the shared memory cannot be mapped.
    """

    def __cinit__(self, hashes=4, slots=8192, *, seeds=None, scope="process", name=None):
        self.shared = check_scope("Inflight", scope, name)
        if self.shared:
            self.region = shared_cms(&self.c, "Inflight", SW_SHM_INFLIGHT, hashes, slots,
                                     seeds, name)
        else:
            init_cms(&self.c, "Inflight", hashes, slots, seeds)

    def __dealloc__(self):
        if not self.shared:
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
        return guard, cms_add(&self.c, self.shared, buf, size, count)

    def get(self, key):
        """Return ``key``'s count in progress.

        Raises:
            TypeError: key is not str or bytes.
        """
        cdef Py_ssize_t size
        cdef const char *buf = key_bytes(key, &size)
        return cms_get(&self.c, self.shared, buf, size)

    @property
    def hashes(self):
        return self.c.hashes

    @property
    def slots(self):
        return self.c.slots

    @property
    def seeds(self):
        return cms_seeds(&self.c)


    @property
    def scope(self):
        """``"process"`` or ``"server"`` (shared memory)."""
        return scope_of(self.shared)

    @property
    def name(self):
        """The name of a named shared region, else None."""
        return None if self.region is None else self.region.name

    @property
    def memory(self):
        """Bytes of counters, fixed at creation (shared: the whole region)."""
        if self.shared:
            return self.region.size
        return <size_t>self.c.hashes * self.c.slots * 8

    def __repr__(self):
        return (f"<Inflight hashes={self.c.hashes} slots={self.c.slots} "
                f"scope={scope_of(self.shared)}>")


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
        cms_add(&self.owner.c, self.owner.shared, buf, size, neg(self.n))
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
        return cms_get(&self.owner.c, self.owner.shared, buf, size)

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
        cms_add(&self.owner.c, self.owner.shared, buf, size, neg(self.n))

    def __repr__(self):
        state = "released" if self.released else "held"
        return f"<InflightGuard key={self.key!r} n={self.n} {state}>"
