"""Pure-Python reference of ``sluiceway._limits.RedisCounts``,
``RedisState`` and ``resp_sums``: RedisRateLimiter's checks, its syncs'
bookkeeping and the reading of Redis's answers, the same operations in
readable form.  The hypothesis tests drive this and the compiled code with
the same random checks, peeks, clock moves, syncs and answers (whole and
in pieces), and compare every result.  Not used by the proxy.

How the counting works is in ``sluiceway._limits_redis``'s docstring.
"""

from __future__ import annotations

import functools
import operator
import time

from ._limits_py import Rate, RateDecision

_decision = RateDecision._make


def _bulk(b):
    return b"$%d\r\n%s\r\n" % (len(b), b)


class RedisStatePy:
    """See ``sluiceway._limits.RedisState``."""

    def __init__(self, sync_events=64, closed=False):
        self.started = self.down = self.idle = False
        self.closed = closed
        self.waiting = 0
        self.sync_events = sync_events
        self.failed_open = self.failed_closed = 0
        self.wake = None

    def kick(self):
        wake = self.wake
        if wake is not None:
            wake()


class RedisCountsPy:
    """See ``sluiceway._limits.RedisCounts`` (same arguments and methods)."""

    def __init__(self, limit, interval_ns, *, hashes, slots, max_keys, seeds=None, clock=None,
                 attach=None):
        self.limit = limit
        self.max_keys = max_keys
        self.clock = clock or time.time
        self.attach = attach
        self.attached = False
        self.st = None
        self.prefix = b""
        self.ttl_ms = 0
        self.mine = Rate(interval_ns / 1e9, hashes=hashes, slots=slots, seeds=seeds,
                         clock=self.clock)
        self.others = Rate(interval_ns / 1e9, hashes=hashes, slots=slots, seeds=seeds,
                           clock=self.clock)
        self.interval_ns = self.mine._interval_ns   # as the sketches turn windows
        self.w0 = self.w = self._now_ns() // self.interval_ns
        self.start_ns = self.w0 * self.interval_ns
        # The Rates read the instant this object last read, in ns as read
        # (so every reading in one check or one sync is the same), their
        # grid starting at the window's start.
        self._at = [self.start_ns]
        for r in (self.mine, self.others):
            r._now = functools.partial(operator.getitem, self._at, 0)
            r.reset()
        self.touched, self.pushed, self.seen, self.names = {}, {}, {}, {}
        self.batch = []
        self.pruned = -1
        self.untracked = 0

    def _now_ns(self):
        return int(self.clock() * 1e9)

    def _read(self):
        """Read the clock: (its instant in ns, the window index)."""
        now = self._now_ns()
        self._at[0] = now
        elapsed = now - self.start_ns
        if elapsed > 0:
            w = self.w0 + elapsed // self.interval_ns
            if w > self.w:
                self.w = w
        return now, self.w

    def window(self):
        return self._read()[1]

    def decide(self, key, cost, counted):
        if type(cost) is not int:
            if not isinstance(cost, int) or isinstance(cost, bool):
                raise TypeError(f"n must be an int, got {type(cost).__name__}")
        if cost < 0:
            raise ValueError(f"RedisRateLimiter: cost must be >= 0, got {cost}")
        st = self.st
        if st is None or not st.started or not self.attached:
            self.attach()
            st = self.st
        if not isinstance(key, (str, bytes)):
            raise TypeError(f"key must be str or bytes, got {type(key).__name__}")
        _, w = self._read()
        count = self.mine.observe(key, cost if counted else 0) + self.others.sample(key)[1]
        wk = (w, key)
        if wk not in self.touched:
            if len(self.pushed) < self.max_keys or wk in self.pushed:
                self.touched[wk] = None
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
        allowed = count <= self.limit if counted else count + cost <= self.limit
        if st.down:
            if st.closed:
                allowed = False
                st.failed_closed += 1
            else:
                st.failed_open += 1
        return _decision(allowed, self.limit, self.limit - count if count < self.limit else 0,
                         count, self.mine.until_next_window())

    def check(self, key, cost=1):
        return self.decide(key, cost, True)

    def peek(self, key, cost=1):
        return self.decide(key, cost, False)

    def pending(self, out, field):
        _, w = self._read()
        touched, self.touched = self.touched, {}
        batch = []
        replies = 0
        for wk in touched:
            kw, key = wk
            if kw < w - 1:
                continue  # a window that is over: nobody reads it any more
            name = self.names.get(wk)
            if name is None:
                # bytes, as the key's bytes: a str key counts as its UTF-8
                name = self.names[wk] = _bulk(b"%s%d:%s" % (
                    self.prefix, kw, key.encode() if isinstance(key, str) else key))
            prev, curr, _ = self.mine.sample(key)
            mine = curr if kw == w else prev
            was = self.pushed.get(wk, 0)
            if mine != was:
                # this process's count, where Redis does not have it yet
                out += b"*4\r\n$4\r\nHSET\r\n" + name + field + _bulk(b"%d" % mine)
                replies += 1
                if was == 0:
                    # the key's first count from here: it expires in two windows
                    out += b"*3\r\n$7\r\nPEXPIRE\r\n" + name + _bulk(b"%d" % self.ttl_ms)
                    replies += 1
            out += b"*2\r\n$5\r\nHVALS\r\n" + name
            replies += 1
            batch.append((wk, mine))
        if w != self.pruned:
            self.pruned = w
            for stale in [wk for wk in self.names if wk[0] < w - 1]:
                del self.names[stale]
                self.pushed.pop(stale, None)
                self.seen.pop(stale, None)
        self.batch = batch
        return replies

    def synced(self, totals, lo):
        _, w = self._read()
        batch, self.batch = self.batch, []
        for wk, mine in batch:
            sent = mine != self.pushed.get(wk, 0)
            self.pushed[wk] = mine
            total = totals[lo]
            lo += 1
            if wk[0] != w:
                continue
            others = total - mine
            grow = others - self.seen.get(wk, 0)
            if grow > 0:
                self.others.observe(wk[1], grow)
                self.seen[wk] = others
            if sent or grow:
                self.touched[wk] = None
        return lo

    def unsent(self):
        for wk, _ in self.batch:
            self.touched[wk] = None
        self.batch = []

    def forget_pushed(self):
        for wk in self.pushed:
            self.touched[wk] = None
        self.pushed.clear()


_MAX_SUM = 1 << 62


def resp_sums(buf, replies):
    """See ``sluiceway._limits.resp_sums``: the complete answers to a
    sync's commands at the start of ``buf``, ``(end, n, sums, error)``."""
    at, done, sums, error = 0, 0, [], None

    def number(raw):
        digits = raw[1:] if raw[:1] == b"-" else raw
        if not digits or len(digits) > 18 or not all(48 <= c <= 57 for c in digits):
            raise ValueError(f"Redis answered a malformed number: {bytes(digits)!r}")
        return -int(digits) if raw[:1] == b"-" else int(digits)

    for k in range(replies):
        eol = buf.find(b"\r\n", at)
        if eol < 0:
            return done, k, sums, error
        kind = buf[at:at + 1]
        if kind in (b":", b"+"):
            at = eol + 2
        elif kind == b"-":
            if error is None:
                error = bytes(buf[at + 1:eol]).decode("utf-8", "replace")
            at = eol + 2
        elif kind == b"$":
            n = number(buf[at + 1:eol])
            at = eol + 2
            if n >= 0:
                if at + n + 2 > len(buf):
                    return done, k, sums, error
                at += n + 2
        elif kind == b"*":
            n = number(buf[at + 1:eol])
            at = eol + 2
            total = 0
            for _ in range(max(n, 0)):
                eol = buf.find(b"\r\n", at)
                if eol < 0:
                    return done, k, sums, error
                if buf[at:at + 1] != b"$":
                    raise ValueError(f"Redis answered an array of {chr(buf[at])!r} for counts")
                m = number(buf[at + 1:eol])
                at = eol + 2
                if m < 0:
                    continue  # nil: no count
                if at + m + 2 > len(buf):
                    return done, k, sums, error
                total += number(buf[at:at + m])
                at += m + 2
                if not -_MAX_SUM <= total <= _MAX_SUM:
                    raise ValueError("Redis answered counts that add up past 2**62")
            sums.append(total)
        else:
            raise ValueError(f"Redis answered a reply of type {chr(buf[at])!r} where a sync's "
                             f"were expected")
        done = at
    return done, replies, sums, error
