"""Pure-Python reference of ``sluiceway._limits.RedisCounts`` and
``RedisState``: RedisRateLimiter's checks and its syncs' bookkeeping, the
same operations in readable form.  The hypothesis test drives this and the
compiled classes with the same random checks, peeks, clock moves, syncs and
answers, and compares every result.  Not used by the proxy.

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

    def pending(self, names, counts):
        _, w = self._read()
        touched, self.touched = self.touched, {}
        batch = []
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
            names += name
            counts += _bulk(b"%d" % mine) if mine else b"$0\r\n\r\n"
            batch.append((wk, mine))
        if w != self.pruned:
            self.pruned = w
            for stale in [wk for wk in self.names if wk[0] < w - 1]:
                del self.names[stale]
                self.pushed.pop(stale, None)
                self.seen.pop(stale, None)
        self.batch = batch
        return len(batch)

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
