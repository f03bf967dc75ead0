# RedisState and RedisCounts: the compiled half of RedisRateLimiter (the
# rest, the connection to Redis and its sync task, is sluiceway._limits_redis).
# Included by _limits.pyx.
#
# A check runs on every request and a sync every few milliseconds while the
# proxy's loop waits, so both are here: a check is the two sketches, a mark
# on the key and a RateDecision; a sync's bookkeeping packs the marked keys'
# names and counts straight into the command's buffers and applies Redis's
# totals.  The pure-Python reference, which the hypothesis test drives with
# the same operations, is sluiceway._limits_redis_py.RedisCountsPy.

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.dict cimport PyDict_Contains, PyDict_SetItem
from libc.stdio cimport snprintf

from time import time as _wall_time


@cython.final
cdef class RedisState:
    """What one RedisBackend's sync task and its limiters' checks share.

    Attributes (read and written by ``sluiceway._limits_redis``):
        started: a sync task runs on this process's loop.
        down: Redis is unreachable, so ``closed`` decides.
        closed: the failure policy is "closed" (refuse while down).
        idle: the task sleeps until a check marks a key.
        waiting: checks counted since the task last woke.
        sync_events: that many waiting checks wake the task early.
        failed_open, failed_closed: checks decided while Redis was down.
        wake: what a check calls to wake the sync (the backend's
            ``_kicked``), or None while a sync is in flight.
    """

    def __cinit__(self, sync_events=64, closed=False):
        self.sync_events = sync_events
        self.closed = closed
        self.wake = None

    cdef int kick(self) except -1:
        """Wake the sync: call ``wake`` (once: it clears it)."""
        wake = self.wake
        if wake is not None:
            wake()
        return 0


cdef inline int append_bulk_int(bytearray out, int64_t n) except -1:
    """Append ``n`` to ``out`` as a RESP bulk string (``$0`` empty for 0)."""
    cdef char digits[24]
    cdef char head[8]
    cdef int nd, nh
    cdef Py_ssize_t at = PyByteArray_GET_SIZE(out)
    cdef char *p
    if n == 0:
        nd = 0
    else:
        nd = snprintf(digits, sizeof(digits), "%lld", <long long>n)
    nh = snprintf(head, sizeof(head), "$%d\r\n", nd)
    PyByteArray_Resize(out, at + nh + nd + 2)
    p = PyByteArray_AS_STRING(out) + at
    memcpy(p, head, nh)
    memcpy(p + nh, digits, nd)
    p[nh + nd] = b'\r'
    p[nh + nd + 1] = b'\n'
    return 0


cdef inline int64_t floor_div(int64_t a, int64_t b) noexcept:
    """Python's a // b (this module divides as C does: toward zero)."""
    cdef int64_t q = a // b
    if a % b != 0 and (a < 0) != (b < 0):
        q -= 1
    return q


@cython.final
cdef class RedisCounts:
    """One RedisRateLimiter's counts: ``mine`` (this process's events) and
    ``others`` (the other processes', as Redis last said), in windows on the
    wall clock, and which keys the next sync sends.

    Args:
        limit: requests per key per window.
        interval_ns: window length in nanoseconds.
        hashes, slots: the shape of each sketch.
        max_keys: keys per window sent to Redis (more: counted locally only).
        seeds: the sketches' seeds (None: random; tests give fixed ones).
        clock: None for the wall clock read in C, or a callable returning
            seconds like ``time.time`` (tests inject fakes).
        attach: called (no arguments) by a check while ``st`` is unset or
            its task not started: it sets ``st``, ``prefix`` and ``attached``.

    ``st`` (a RedisState) and ``prefix`` (the Redis key names' start, bytes)
    are set when the limiter attaches to its backend; until then, and while
    ``st.started`` is false, a check calls ``attach()`` first.
    """

    def __cinit__(self, limit, int64_t interval_ns, *, hashes, slots, max_keys, seeds=None,
                  clock=None, attach=None):
        cdef int64_t now
        self.limit = limit
        self.max_keys = max_keys
        self.clock = clock
        self.attach = attach
        self.attached = False
        self.mine = Rate(interval_ns / 1e9, hashes=hashes, slots=slots, seeds=seeds,
                         clock=clock or _wall_time)
        self.others = Rate(interval_ns / 1e9, hashes=hashes, slots=slots, seeds=seeds,
                           clock=clock or _wall_time)
        self.interval_ns = self.mine.r.interval_ns   # as the sketches turn windows
        # Windows sit on multiples of the interval of the wall clock: window
        # w covers [w * interval, (w + 1) * interval) on every machine.
        self.w0 = self.w = floor_div(self.now_ns(), self.interval_ns)
        self.start_ns = self.w0 * self.interval_ns
        sw_rate_reset(&self.mine.r, self.start_ns)
        sw_rate_reset(&self.others.r, self.start_ns)
        self.touched = {}
        self.pushed = {}
        self.seen = {}
        self.names = {}
        self.batch = []
        self.pruned = -1
        self.untracked = 0
        self.prefix = b""

    cdef int64_t now_ns(self) except? -1:
        cdef double t
        if self.clock is None:
            return sw_clock_wall_ns()
        t = self.clock()
        if not (isfinite(t) and -MAX_CLOCK_SECONDS <= t <= MAX_CLOCK_SECONDS):
            raise bad_clock_reading(t)
        return <int64_t>(t * 1e9)

    cdef int64_t window_at(self, int64_t now) noexcept:
        """The index of the window the sketches count in at ``now`` (their
        own arithmetic; it never goes back, as theirs does not)."""
        cdef int64_t elapsed = now - self.start_ns, w
        if elapsed > 0:
            w = self.w0 + elapsed // self.interval_ns
            if w > self.w:
                self.w = w
        return self.w

    def window(self):
        """Read the clock: the index of the current window."""
        return self.window_at(self.now_ns())

    cdef RateDecision decide(self, key, cost, bint counted):
        """A check (``counted``) or a peek of ``cost`` for ``key``: a RateDecision.

        Raises:
            TypeError: key is not str or bytes, or cost not an int.
            ValueError: cost is negative.
        """
        cdef Py_ssize_t size
        cdef const char *buf
        cdef int64_t c, now, w, prev, curr, elapsed, oprev, ocurr, oelapsed, count
        cdef RedisState st
        cdef RateDecision d
        if type(cost) is not int:
            if not isinstance(cost, int) or isinstance(cost, bool):
                raise TypeError(f"n must be an int, got {type(cost).__name__}")
        c = cost
        if c < 0:
            raise ValueError(f"RedisRateLimiter: cost must be >= 0, got {cost}")
        st = self.st
        if st is None or not st.started or not self.attached:
            self.attach()
            st = self.st
        buf = key_bytes(key, &size)
        now = self.now_ns()
        w = self.window_at(now)
        self.mine.counts(now, buf, size, c if counted else 0, &prev, &curr, &elapsed)
        self.others.counts(now, buf, size, 0, &oprev, &ocurr, &oelapsed)
        count = curr + ocurr
        wk = (w, key)
        if not PyDict_Contains(self.touched, wk):
            if len(self.pushed) < self.max_keys or PyDict_Contains(self.pushed, wk):
                # A peek marks the key too: the next sync asks for its total,
                # so a process that has not counted it learns the others' count.
                PyDict_SetItem(self.touched, wk, None)
                if st.idle:
                    st.idle = False
                    st.kick()
            elif counted:
                self.untracked += 1
        if counted:
            st.waiting += 1
            if st.waiting >= st.sync_events:
                st.waiting = 0
                st.kick()
        d = RateDecision.__new__(RateDecision)
        d.allowed = count <= self.limit if counted else count <= self.limit - c
        if st.down:
            if st.closed:
                d.allowed = False
                st.failed_closed += 1
            else:
                st.failed_open += 1
        d.limit = self.limit
        d.remaining = self.limit - count if count < self.limit else 0
        d.count = count
        d.reset_after = <double>(self.interval_ns - elapsed) / 1e9
        return d

    def check(self, key, cost=1):
        """``decide(key, cost, True)``: RedisRateLimiter.check."""
        return self.decide(key, cost, True)

    def peek(self, key, cost=1):
        """``decide(key, cost, False)``: RedisRateLimiter.peek."""
        return self.decide(key, cost, False)

    def pending(self, bytearray names, bytearray counts):
        """Take the marked keys for a sync: append each one's Redis name and
        this process's count (RESP bulk strings; an empty count for a key
        this process has not counted: Redis only reads it) to ``names`` and
        ``counts``, and keep them in ``batch`` as ``((window, key), count)``
        until ``synced`` or ``unsent``.  Returns how many were taken."""
        cdef Py_ssize_t size
        cdef const char *buf
        cdef int64_t now = self.now_ns()
        cdef int64_t w = self.window_at(now)
        cdef int64_t kw, prev, curr, elapsed, mine
        cdef list batch = []
        cdef dict touched = self.touched
        cdef dict names_ = self.names
        self.touched = {}
        for wk in touched:
            kw = (<tuple>wk)[0]
            if kw < w - 1:
                continue  # a window that is over: nobody reads it any more
            key = (<tuple>wk)[1]
            name = names_.get(wk)
            if name is None:
                bkey = key.encode() if isinstance(key, str) else key
                full = b"%s%d:%s" % (self.prefix, kw, bkey)
                name = b"$%d\r\n%s\r\n" % (len(full), full)
                names_[wk] = name
            buf = key_bytes(key, &size)
            self.mine.counts(now, buf, size, 0, &prev, &curr, &elapsed)
            mine = curr if kw == w else prev
            names += <bytes>name
            append_bulk_int(counts, mine)
            batch.append((wk, mine))
        if w != self.pruned:
            self.pruned = w
            for stale in [wk for wk in names_ if (<tuple>wk)[0] < w - 1]:
                del names_[stale]
                self.pushed.pop(stale, None)
                self.seen.pop(stale, None)
        self.batch = batch
        return len(batch)

    def synced(self, totals, Py_ssize_t lo):
        """Apply Redis's answer to the batch: ``totals[lo + i]`` is the total
        of the batch's i-th key over every process.  Returns ``lo`` plus the
        batch's length (where the next limiter's part starts)."""
        cdef Py_ssize_t size
        cdef const char *buf
        cdef int64_t now = self.now_ns()
        cdef int64_t w = self.window_at(now)
        cdef int64_t mine, others, grow, prev, curr, elapsed
        cdef bint sent
        cdef list batch = self.batch
        cdef dict pushed = self.pushed, seen = self.seen
        self.batch = []
        for item in batch:
            wk = (<tuple>item)[0]
            mine = (<tuple>item)[1]
            sent = mine != pushed.get(wk, 0)
            pushed[wk] = mine
            if (<tuple>wk)[0] != w:
                lo += 1
                continue
            others = totals[lo] - mine
            lo += 1
            grow = others - seen.get(wk, 0)
            if grow > 0:
                buf = key_bytes((<tuple>wk)[1], &size)
                self.others.counts(now, buf, size, grow, &prev, &curr, &elapsed)
                seen[wk] = others
            if sent or grow:
                # Read the key once more at the next sync, until nothing
                # moves: a key that stops being checked still ends with
                # everyone's count, and after a Redis restart (grow < 0: the
                # others have not sent their counts again yet) it catches up.
                self.touched[wk] = None
        return lo

    def unsent(self):
        """The batch was not sent, or got no answer: send it next time."""
        for item in self.batch:
            self.touched[(<tuple>item)[0]] = None
        self.batch = []

    def forget_pushed(self):
        """Redis restarted empty: send the whole counts of the current window again."""
        for wk in self.pushed:
            self.touched[wk] = None
        self.pushed.clear()
