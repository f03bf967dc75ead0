# Included by _engine.pyx: rate limit for repeated log lines.

# ------------------------------------------------------------ log floods --



@cython.final
cdef class _LogKind:
    pass


@cython.final
cdef class _LogGate:
    """Rate limit for log lines that repeat per connection or per request
    (refused connections, timeouts, bad requests, failed requests): of each
    kind, the first LOG_BURST lines of a second are written; the rest are
    counted, and one line a second says how many were dropped, with the
    last of them. A flood of clients then costs a few lines a second."""

    def __cinit__(self, object log):
        self.log = log
        self.kinds = {}

    cdef int emit(self, int level, str kind, str fmt, tuple args, object exc=None) except -1:
        cdef _LogKind k = self.kinds.get(kind)
        cdef double now
        if not self.log.isEnabledFor(level):
            return 0
        now = sw_clock_now()
        if k is None:
            k = _LogKind.__new__(_LogKind)
            k.since = now
            self.kinds[kind] = k
        elif now - k.since >= 1.0:
            self._summary(kind, k)
            k.since = now
            k.written = 0
        if k.written < LOG_BURST:
            k.written += 1
            self.log.log(level, fmt, *args, exc_info=exc)
            return 0
        k.dropped += 1
        if level > k.level:
            k.level = level
        k.fmt = fmt
        k.args = args
        return 0

    cdef int _summary(self, str kind, _LogKind k) except -1:
        cdef long long n = k.dropped
        if n == 0:
            return 0
        k.dropped = 0
        try:
            last = k.fmt % k.args
        except Exception:
            last = k.fmt
        self.log.log(k.level, "sluiceway: %d more lines like this in the last %.1fs (%s): %s",
                     n, sw_clock_now() - k.since, kind, last)
        k.level = 0
        return 0

    cdef int flush(self, double now) except -1:
        """Write the summaries of the windows that are over (the timer)."""
        cdef _LogKind k
        for kind, k in self.kinds.items():
            if k.dropped and now - k.since >= 1.0:
                self._summary(kind, k)
                k.since = now
                k.written = 0
        return 0
