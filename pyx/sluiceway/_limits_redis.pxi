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

cdef int64_t MAX_SUM = (<int64_t>1) << 62   # a key's total over every process, at most


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
    """Append ``n`` (>= 0) to ``out`` as a RESP bulk string."""
    cdef char digits[24]
    cdef char head[8]
    cdef int nd, nh
    cdef Py_ssize_t at = PyByteArray_GET_SIZE(out)
    cdef char *p
    nd = snprintf(digits, sizeof(digits), "%lld", <long long>n)
    nh = snprintf(head, sizeof(head), "$%d\r\n", nd)
    PyByteArray_Resize(out, at + nh + nd + 2)
    p = PyByteArray_AS_STRING(out) + at
    memcpy(p, head, nh)
    memcpy(p + nh, digits, nd)
    p[nh + nd] = b'\r'
    p[nh + nd + 1] = b'\n'
    return 0


# -- the replies to a sync -----------------------------------------------------

cdef Py_ssize_t resp_line(const char *p, Py_ssize_t at, Py_ssize_t end) noexcept:
    """Where the line starting at ``at`` ends (its \\r), or -1: not all in yet."""
    cdef Py_ssize_t i = at
    while i + 1 < end:
        if p[i] == c'\r' and p[i + 1] == c'\n':
            return i
        i += 1
    return -1


cdef int resp_int(const char *p, Py_ssize_t at, Py_ssize_t stop, int64_t *out) except -1:
    """The decimal integer ``p[at:stop]`` (an optional ``-``, 1 to 18 digits)."""
    cdef int64_t v = 0
    cdef bint neg = False
    if at < stop and p[at] == c'-':
        neg = True
        at += 1
    if at >= stop or stop - at > 18:
        raise ValueError(f"Redis answered a malformed number: {p[at:stop]!r}")
    while at < stop:
        if not (c'0' <= p[at] <= c'9'):
            raise ValueError(f"Redis answered a malformed number: {p[at:stop]!r}")
        v = v * 10 + (p[at] - c'0')
        at += 1
    out[0] = -v if neg else v
    return 0


def resp_sums(bytearray buf, Py_ssize_t replies):
    """Read answers to a sync's commands from the start of ``buf``: up to
    ``replies`` RESP (version 2) replies, as many as are complete.
    Integers and simple strings (the ``HSET`` and ``PEXPIRE`` answers) are
    passed over; each array (an ``HVALS`` answer: bulk strings of decimal
    counts, or nil) gives the sum of its counts.  A reply cut short is left
    for the next call, so a long answer arriving in pieces is read once.

    Returns:
        ``(end, n, sums, error)``: the n complete replies end at ``end``;
        the arrays' sums among them in order, and the text of the first
        error reply among them (None if none).

    Raises:
        ValueError: something that is not such an answer (another type, a
            count that is not a number, a sum past 2**62).
    """
    cdef const char *p = PyByteArray_AS_STRING(buf)
    cdef Py_ssize_t end = PyByteArray_GET_SIZE(buf)
    cdef Py_ssize_t at = 0, done = 0, eol, k
    cdef int64_t n, m, v, total
    cdef list sums = []
    cdef object error = None
    cdef char kind
    for k in range(replies):
        eol = resp_line(p, at, end)
        if eol < 0:
            return done, k, sums, error
        kind = p[at]
        if kind == c':' or kind == c'+':
            at = eol + 2
        elif kind == c'-':
            if error is None:
                error = p[at + 1:eol].decode("utf-8", "replace")
            at = eol + 2
        elif kind == c'$':
            resp_int(p, at + 1, eol, &n)
            at = eol + 2
            if n >= 0:
                if at + n + 2 > end:
                    return done, k, sums, error
                at += n + 2
        elif kind == c'*':
            resp_int(p, at + 1, eol, &n)
            at = eol + 2
            total = 0
            while n > 0:
                n -= 1
                eol = resp_line(p, at, end)
                if eol < 0:
                    return done, k, sums, error
                if p[at] != c'$':
                    raise ValueError(f"Redis answered an array of {chr(<unsigned char>p[at])!r} "
                                     f"for counts")
                resp_int(p, at + 1, eol, &m)
                at = eol + 2
                if m < 0:
                    continue  # nil: no count
                if at + m + 2 > end:
                    return done, k, sums, error
                resp_int(p, at, at + m, &v)
                at += m + 2
                total += v
                if not (-MAX_SUM <= total <= MAX_SUM):
                    raise ValueError("Redis answered counts that add up past 2**62")
            sums.append(total)
        else:
            raise ValueError(f"Redis answered a reply of type {chr(<unsigned char>kind)!r} where "
                             f"a sync's were expected")
        done = at
    return done, replies, sums, error


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

    def pending(self, bytearray out, bytes field):
        """Take the marked keys for a sync and append its commands to
        ``out`` (RESP; ``field`` is this process's field, a packed bulk
        string).  For each key, in order: ``HSET <name> <field> <count>``
        when this process's count differs from the one Redis last
        acknowledged, ``PEXPIRE <name> <ttl_ms>`` as well when Redis has
        none of it yet (the key expires two windows after this process's
        first count), and ``HVALS <name>`` (every process's count, which
        ``resp_sums`` adds up).  The keys stay in ``batch`` as
        ``((window, key), count)`` until ``synced`` or ``unsent``.  Returns
        the number of replies the commands get (0: nothing marked)."""
        cdef Py_ssize_t size
        cdef const char *buf
        cdef int64_t now = self.now_ns()
        cdef int64_t w = self.window_at(now)
        cdef int64_t kw, prev, curr, elapsed, mine, was
        cdef Py_ssize_t replies = 0
        cdef list batch = []
        cdef dict touched = self.touched
        cdef dict names_ = self.names
        cdef dict pushed = self.pushed
        cdef bytes ttl = None
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
            was = pushed.get(wk, 0)
            if mine != was:
                out += b"*4\r\n$4\r\nHSET\r\n"
                out += <bytes>name
                out += field
                append_bulk_int(out, mine)
                replies += 1
                if was == 0:
                    if ttl is None:
                        ttl = b"%d" % self.ttl_ms
                        ttl = b"$%d\r\n%s\r\n" % (len(ttl), ttl)
                    out += b"*3\r\n$7\r\nPEXPIRE\r\n"
                    out += <bytes>name
                    out += ttl
                    replies += 1
            out += b"*2\r\n$5\r\nHVALS\r\n"
            out += <bytes>name
            replies += 1
            batch.append((wk, mine))
        if w != self.pruned:
            self.pruned = w
            for stale in [wk for wk in names_ if (<tuple>wk)[0] < w - 1]:
                del names_[stale]
                pushed.pop(stale, None)
                self.seen.pop(stale, None)
        self.batch = batch
        return replies

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
