"""Rate limits shared by several machines through Redis.

Theory of operation
-------------------
A request never waits on Redis.  ``RedisRateLimiter.check`` decides from two
compiled ``Rate`` sketches kept in this process: ``mine`` (every event this
process counted) and ``others`` (what the other processes had counted, as
Redis last said).  The key's total in the window is ``mine + others``.

A check costs the two sketches and a mark on the key (a dict entry), all in
C (``sluiceway._limits.RedisCounts``; its pure-Python reference is
``_limits_redis_py``); the rest is the sync's.  Each event loop has one
backend task (``RedisBackend``; started by the server on each worker's
loop, or by the first ``check`` made on a running loop) that connects and
sends the first sync; from then on callbacks sync, with no task to resume:
a timer every ``sync_interval`` seconds while keys are marked, or sooner
once ``sync_events`` checks wait (with none marked no timer runs until a
check marks one), packs the commands for every key marked since the last
sync and writes them in one write (pipelined); the reader callback applies
the answers and sets the next timer.  A failed sync hands over to the task,
which logs, reconnects with a backoff and starts the callbacks again.

In Redis a key's counts are a hash, ``prefix:name:window:key``, with one
field per process holding that process's count.  A sync sends, for each
marked key: ``HSET <key> <process> <count>`` if the count differs from what
Redis last acknowledged, ``PEXPIRE <key> <two windows>`` with this
process's first count of the key, and ``HVALS <key>``; the sum of the values
is the key's total, and the difference with ``mine`` becomes its
``others``.  A process sets its count rather than adding to it, so sending
a sync again (its answers were lost or late) never counts anything twice.
``peek`` marks its key too: a key this process has not counted is only
read (``HVALS``), so a process learns the total of a key it never checked.
Plain commands, no Lua script: per key they cost Redis about half the
CPU of a script doing the same (see docs/limits.md), an ACL user with no
right to run scripts can send them (``+hset +hvals +pexpire +info
+select`` on ``~<prefix>*`` is enough), and every command names one key.
redis-py opens the connection (TLS, AUTH, SELECT) and reads INFO; the
syncs then go straight on that connection's transport (``_SyncLine``),
one sync's commands at a time, the answers read by the compiled
``resp_sums``.

Windows sit on the wall clock (window w covers ``[w * interval, (w + 1) *
interval)`` of ``time.time()``), so every machine counts the same window in
the same Redis key; clocks that differ by d seconds move a machine's window
edges by d.

Error bound: a process sees the others' events at most one sync period late
(``sync_interval`` plus Redis's answer time), so with P processes each
admitting at most r requests per second for a key, the key's total admitted
in a window is at most ``limit + (P - 1) * r * (sync_interval + rtt)`` (and
also at most ``limit + (P - 1) * sync_events``).  Counts are never lost: a
failed sync is sent again, and after Redis restarts (a new ``run_id``) every
process sends its count of every key of the current window again.

Timeouts and a busy loop.  The sync shares its loop with the proxy; a worker
that is busy for longer than ``timeout`` between two turns of its loop runs
the timeout's timer before it reads an answer that may be waiting in the
socket (timers run before I/O in a loop turn).  So a sync fails on timeout
only when the timer fired on time (at most 2 ms late, so the loop had been
free to read the answer); a late timer waits one more ``timeout``, up to
``max(1 s, 20 * timeout)`` in all.  Redis refusing or
closing the connection fails at once.

While Redis is unreachable (refused, timed out, restarted), ``on_failure``
decides: ``"open"`` (default) keeps deciding from the local counts and the
last totals Redis gave, counted in ``failed_open``; ``"closed"`` refuses
every request (``failed_closed``).  The first failure is logged as a
WARNING on ``sluiceway.limits``, the recovery as INFO; the task reconnects
with a backoff from ``reconnect_delay`` up to ``max_reconnect_delay``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import operator
import os
import socket
import time
import weakref

from . import _compiled
from ._base.limits import check_limit, positive

__all__ = ["RedisBackend", "RedisRateLimiter", "configure_default", "default_backend"]

log = logging.getLogger("sluiceway.limits")
_c = _compiled.load("_limits")

POLICIES = ("open", "closed")
_BACKENDS = weakref.WeakSet()
_LATE = 0.002   # a timeout timer later than this ran on a busy loop: wait once more
_wall = time.time   # the wall clock windows sit on (tests replace it)


def _discard(cores, core):
    # A limiter was collected: its counts are no longer synced.
    try:
        cores.remove(core)
    except ValueError:
        pass


def _bulk(b):
    """One RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(b), b)


class _SyncLine(asyncio.Protocol):
    """The sync's end of the connection once redis-py has opened it (TLS,
    AUTH, SELECT, INFO done): the transport is handed to this protocol,
    which sends one sync's commands at a time and reads their answers as
    they arrive (``_c.resp_sums``, compiled).  redis-py's command path (a
    stream reader, its locks and coroutines) cost more than the rest of a
    sync.

    ``send(data, replies, callback)`` calls ``callback(answer)`` once the
    ``replies`` answers have arrived: the list of the ``HVALS`` sums, or an
    exception (Redis's first error reply, a malformed answer, or the
    connection lost).  One sync is outstanding at a time."""

    def __init__(self, transport):
        self.transport = transport
        self.inner = transport.get_protocol()   # redis-py's: told of the end, so it can close
        self.buf = bytearray()
        self.replies = 0           # answers still to come for the sync in flight
        self.sums = []             # ... its HVALS sums so far
        self.error = None          # ... its first error reply (a ResponseError)
        self.waiter = None
        self.lost = None

    def send(self, data, replies, callback):
        if self.lost is not None:
            raise self.lost
        self.waiter = callback
        self.replies = replies
        self.sums = []
        self.error = None
        self.transport.write(data)

    def drop(self):
        """Nobody waits for the outstanding answers any more (timed out).
        The connection is not used again: answers still on their way would
        be read as the next sync's.  It is closed; a send raises."""
        self.waiter = None
        if self.lost is None:
            self.lost = ConnectionError("a sync timed out; its connection is not used again")
        self.transport.close()

    def data_received(self, data):
        buf = self.buf
        buf += data
        try:
            end, n, sums, error = _c.resp_sums(buf, self.replies)
        except ValueError as exc:
            # Not an answer to our commands: nothing after it can be trusted.
            buf.clear()
            self.replies = 0
            self.transport.close()
            self._answer(ConnectionError(f"bad answer from Redis: {exc}"))
            return
        del buf[:end]                    # (a reply cut short stays for the next read)
        self.replies -= n
        self.sums += sums
        if self.error is None and error is not None:
            from redis.exceptions import ResponseError

            self.error = ResponseError(error)
        if not self.replies:
            self._answer(self.error or self.sums)

    def _answer(self, answer):
        callback, self.waiter = self.waiter, None
        if callback is not None:             # else an answer nobody waits for (timed out)
            callback(answer)

    def connection_lost(self, exc):
        if self.lost is None:
            self.lost = ConnectionError(f"connection to Redis lost ({exc or 'closed by server'})")
        try:
            self.inner.connection_lost(exc)
        except Exception:
            pass
        self._answer(self.lost)

    def eof_received(self):
        return False                          # close our end too


def _process_field():
    """This process's field in the count hashes: readable, and unique even
    for a process that restarts with the same PID."""
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"


def _after_fork():
    # A forked worker inherits the parent's objects but not its event loop:
    # each backend starts its own task and connection there.
    for b in list(_BACKENDS):
        b._task = b._client = b._line = b._loop = b._field = None
        b._timer = b._flight = b._next = b._failed = b._drained = None
        b._cycle = False
        st = b._st
        st.wake = None
        st.started = st.idle = False
        st.waiting = 0
        b.process = _process_field()


os.register_at_fork(after_in_child=_after_fork)


def start_backends(loop):
    """Start the sync task of every backend that has limiters, on ``loop``."""
    for b in list(_BACKENDS):
        if b._cores:
            b.start(loop)


async def stop_backends():
    """Stop every running sync task (sending what is pending first)."""
    await asyncio.gather(*(b.stop() for b in list(_BACKENDS) if b._task is not None),
                         return_exceptions=True)


class RedisBackend:
    """A Redis server that rate limiters share, and the task that syncs them.

    Args:
        url: ``redis://[user:password@]host:port/db`` or ``rediss://...``
            (TLS); overrides host, port, db, username, password and tls.
        host, port, db: where Redis listens (default 127.0.0.1:6379, db 0).
        username, password: an ACL user and its password, or just a password
            (``requirepass``); None for none.
        tls: connect with TLS; ``tls_ca_file`` verifies the server against
            that CA bundle (default: the system's).
        key_prefix: put before every key (default ``"sluiceway:"``).
        sync_interval: seconds between syncs (default 0.005).
        sync_events: checks that trigger a sync before the interval ends
            (default 64).
        timeout: seconds one sync may take before it counts as a failure
            (default 0.05; also the connect timeout).
        on_failure: ``"open"`` (default: keep deciding from local counts) or
            ``"closed"`` (refuse every request) while Redis is unreachable.
        reconnect_delay, max_reconnect_delay: the reconnect backoff, seconds
            (default 0.1 doubling up to 2.0).

    Raises:
        ValueError, TypeError: an argument is invalid.
    """

    def __init__(self, url=None, *, host="127.0.0.1", port=6379, db=0, username=None,
                 password=None, tls=False, tls_ca_file=None, key_prefix="sluiceway:",
                 sync_interval=0.005, sync_events=64, timeout=0.05, on_failure="open",
                 reconnect_delay=0.1, max_reconnect_delay=2.0):
        owner = "RedisBackend"
        if on_failure not in POLICIES:
            raise ValueError(f"{owner}: on_failure must be 'open' or 'closed', got {on_failure!r}")
        positive(owner, "sync_interval", sync_interval)
        positive(owner, "sync_events", sync_events, integer=True)
        positive(owner, "timeout", timeout)
        positive(owner, "reconnect_delay", reconnect_delay)
        positive(owner, "max_reconnect_delay", max_reconnect_delay)
        if not isinstance(key_prefix, str):
            raise TypeError(f"{owner}: key_prefix must be a str, got {type(key_prefix).__name__}")
        self.url = url
        self.host, self.port, self.db = host, port, db
        self.username, self.password = username, password
        self.tls, self.tls_ca_file = tls, tls_ca_file
        self.key_prefix = key_prefix
        self.sync_interval = float(sync_interval)
        self.sync_events = sync_events
        self.timeout = float(timeout)
        self.on_failure = on_failure
        self.reconnect_delay = float(reconnect_delay)
        self.max_reconnect_delay = float(max_reconnect_delay)
        self._cores = []           # its limiters' RedisCounts (each until the limiter is collected)
        # What the checks read and write on every request (down, the
        # policy, the wake-up of this task): a C struct shared with them.
        self._st = _c.RedisState(sync_events, on_failure == "closed")
        self.syncs = 0             # successful syncs
        self.failures = 0          # failed syncs and connects
        self.restarts = 0          # Redis restarts noticed (counts sent again)
        self.late_answers = 0      # answers read after the timeout, the loop being busy
        self.process = _process_field()   # this process's field in Redis
        self._loop = None
        self._task = None
        self._client = None
        self._line = None          # the _SyncLine on the client's connection
        self._timer = None         # the timeout of the sync in flight
        self._late = False         # it fired late once (a busy loop)
        self._flight = None        # (its limiters' counts, when it is due)
        self._next = None          # the next sync's timer (or call_soon)
        self._cycle = False        # callbacks sync (the task waits on _failed)
        self._failed = None
        self._drained = None       # _sync() waits for its answer here
        self._field = None         # this process's field in the count hashes, packed
        self._run_id = None
        _BACKENDS.add(self)

    down = property(lambda self: self._st.down,
                    doc="Redis is unreachable (on_failure decides the checks).")
    failed_open = property(lambda self: self._st.failed_open,
                           doc='Checks decided from local counts while down (policy "open").')
    failed_closed = property(lambda self: self._st.failed_closed,
                             doc='Checks refused while down (policy "closed").')

    def _add(self, lim):
        """Sync ``lim``'s counts from now on (until it is collected)."""
        core = lim._core
        self._cores.append(core)
        weakref.finalize(lim, _discard, self._cores, core)

    # -- lifecycle (a background service: start(loop), async stop()) ---------
    def start(self, loop=None):
        """Start the sync task on ``loop`` (the running loop by default)."""
        loop = loop or asyncio.get_running_loop()
        if self._task is not None and not self._task.done():
            return
        self._loop = loop
        self._client = self._line = None
        st = self._st
        st.wake = None
        st.idle = False
        self._task = loop.create_task(self._run(), name="sluiceway-redis-sync")
        st.started = True

    async def stop(self):
        """Send what is pending once more, then stop the task and disconnect."""
        task, self._task = self._task, None
        if task is None:
            return
        self._st.started = False
        task.cancel()
        try:
            await task
        except (asyncio.CancelledError, Exception):
            pass
        try:
            await self._sync()
        except Exception:
            pass
        await self._close()

    def _ensure_started(self):
        """Called by check(): start on the running loop if no task runs here."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self.start(loop)

    # -- the sync task ---------------------------------------------------------
    async def _connect(self):
        import redis.asyncio as aioredis

        # No timeouts inside redis-py: they would fire on a busy loop before
        # the answer is read.  _answer() times the connection and every sync.
        kw = dict(socket_timeout=None, socket_connect_timeout=None,
                  retry_on_timeout=False, retry=None, health_check_interval=0,
                  single_connection_client=True)
        if self.url:
            client = aioredis.from_url(self.url, ssl_ca_certs=self.tls_ca_file, **kw) \
                if self.url.startswith("rediss:") else aioredis.from_url(self.url, **kw)
        else:
            if self.tls:
                kw.update(ssl=True, ssl_ca_certs=self.tls_ca_file)
            client = aioredis.Redis(host=self.host, port=self.port, db=self.db,
                                    username=self.username, password=self.password, **kw)
        try:
            info = await self._answer(client.info("server"))
            run_id = info.get("run_id")
            if self._run_id is not None and run_id != self._run_id:
                self.restarts += 1
                for core in self._cores:
                    core.forget_pushed()
            self._run_id = run_id
            # The syncs go straight on the connection's transport from here.
            transport = client.connection._writer.transport
            line = _SyncLine(transport)
            transport.set_protocol(line)
        except BaseException:
            await client.aclose()
            raise
        self._client, self._line = client, line

    async def _close(self):
        client, self._client = self._client, None
        line, self._line = self._line, None
        if line is not None:
            line.transport.close()
        if client is not None:
            try:
                await client.aclose()
            except Exception:
                pass

    async def _run(self):
        loop = asyncio.get_running_loop()
        delay = self.reconnect_delay
        st = self._st
        while True:
            try:
                if self._client is None:
                    await self._connect()
                await self._sync()
                if st.down:
                    log.info("Redis at %s is reachable again; rate limits are shared again",
                             self._where())
                st.down = False
                delay = self.reconnect_delay
                # From here callbacks sync (the cycle below) until a sync
                # fails; then this task logs, reconnects and backs off.
                failed = self._failed = loop.create_future()
                self._cycle = True
                self._arm()
                try:
                    await failed
                finally:
                    self._disarm()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures += 1
                if not st.down:
                    log.warning("Redis at %s failed (%s: %s); rate limits decide %s until it "
                                "is back", self._where(), type(exc).__name__, exc,
                                "from local counts" if self.on_failure == "open"
                                else "to refuse every request")
                st.down = True
                await self._close()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_reconnect_delay)

    # -- the sync cycle: timer and reader callbacks, no task ------------------
    # While Redis answers, a sync is a timer callback that packs and writes
    # the command (_fire) and a reader callback that applies the answer and
    # sets the next timer (_answered): each runs once in its loop turn, with
    # no task to resume and no future to resolve.  With no key marked, no
    # timer is set (st.idle): the next check calls _kicked, as does the
    # sync_events-th check since the last sync.

    def _arm(self):
        """Set the next sync's timer, or sleep until a check marks a key."""
        st = self._st
        if self._next is not None:
            self._next.cancel()
            self._next = None
        if any(core.touched for core in self._cores):
            self._next = self._loop.call_later(self.sync_interval, self._fire)
        else:
            st.idle = True
        st.wake = self._kicked

    def _disarm(self):
        """Leave the cycle (a sync failed, or the task stops); a sync in
        flight still gets its answer or its timeout."""
        self._cycle = False
        st = self._st
        st.wake = None
        st.idle = False
        if self._next is not None:
            self._next.cancel()
            self._next = None

    def _kicked(self):
        """A check marked a key while idle, or sync_events checks wait: sync
        in this loop turn's callbacks (never inside the check itself)."""
        self._st.wake = None
        self._st.idle = False
        if self._next is not None:
            self._next.cancel()
        self._next = self._loop.call_soon(self._fire)

    def _fire(self):
        self._next = None
        st = self._st
        st.wake = None
        st.idle = False
        if not self._cycle or self._flight is not None:
            return
        try:
            if not self._send():
                self._arm()                       # nothing to send after all
        except Exception as exc:
            self._fail(exc)

    def _send(self):
        """Pack the marked keys of every limiter into one write of pipelined
        commands and write it; the answers go to _answered.  False when no
        key was marked.

        Raises:
            ConnectionError: the connection is lost.
        """
        line = self._line
        if line is None:
            raise ConnectionError("no connection to Redis")
        # Each limiter appends its marked keys' commands (packed by its
        # RedisCounts: HSET and PEXPIRE where needed, HVALS for each).
        field = self._field
        if field is None:
            field = self._field = _bulk(self.process.encode())
        out, cores, replies = bytearray(), [], 0
        for core in self._cores:
            if core.touched:
                k = core.pending(out, field)
                if k:
                    cores.append(core)
                    replies += k
        if not replies:
            return False
        try:
            line.send(out, replies, self._answered)
        except BaseException:
            for core in cores:
                core.unsent()
            raise
        loop = self._loop
        due = loop.time() + self.timeout
        self._flight = (cores, due)
        self._late = False
        self._timer = loop.call_at(due, self._expire, due,
                                   loop.time() + max(1.0, 20 * self.timeout))
        return True

    def _answered(self, reply):
        """Redis's answer to the sync in flight (or the connection's loss)."""
        if self._flight is None:
            return
        self._timer.cancel()
        (cores, due), self._flight = self._flight, None
        if isinstance(reply, Exception):
            for core in cores:   # no answer: send them next time
                core.unsent()
            self._landed(reply)
            return
        # An answer read after its timeout (the loop was busy meanwhile).
        self.late_answers += self._late or self._loop.time() > due
        self.syncs += 1
        lo = 0
        for core in cores:
            lo = core.synced(reply, lo)
        self._landed(None)

    def _expire(self, due, give_up):
        """The timeout of the sync in flight (see "Timeouts and a busy loop")."""
        if self._flight is None:
            return
        loop = self._loop
        now = loop.time()
        if now - due > _LATE and now < give_up:
            self._late = True                  # a busy loop: the answer may be waiting
            self._timer = loop.call_at(now + self.timeout, self._expire,
                                       now + self.timeout, give_up)
            return
        cores, self._flight = self._flight[0], None
        if self._line is not None:
            self._line.drop()
        for core in cores:
            core.unsent()
        self._landed(TimeoutError(f"no answer within {self.timeout:g} s"))

    def _landed(self, exc):
        """A sync ended (exc None: answered): tell _sync() if it waits, and
        go on with the cycle (or hand a failure to the task)."""
        waiter, self._drained = self._drained, None
        if waiter is not None and not waiter.done():
            if exc is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(exc)
        if not self._cycle:
            return
        if exc is not None:
            self._fail(exc)
        else:
            self._arm()

    def _fail(self, exc):
        """A sync of the cycle failed: the task takes over."""
        self._disarm()
        failed = self._failed
        if failed is not None and not failed.done():
            failed.set_exception(exc)

    async def _sync(self):
        """Send the marked keys' counts now and apply the totals (the first
        sync after connecting, the last at stop, and tests); waits for a
        sync in flight first.

        Raises:
            TimeoutError: no answer within ``timeout`` while the loop was free
                to read it (see "Timeouts and a busy loop" above).
            ConnectionError, redis errors: the connection failed, or Redis
                answered an error.
        """
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop
        if self._flight is not None:
            self._drained = loop.create_future()
            try:
                await self._drained
            except Exception:
                pass                       # that sync's keys are marked again
        if self._line is None:
            return
        self._drained = loop.create_future()
        if not self._send():
            self._drained = None
            return
        await self._drained

    async def _answer(self, coro):
        """Await ``coro`` (one exchange with Redis) in the calling task, under
        a timer that cancels it (no task of its own: this runs every sync).

        Raises:
            TimeoutError: no answer within ``timeout`` while the loop was free
                to read it (see "Timeouts and a busy loop" above).
        """
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        give_up = loop.time() + max(1.0, 20 * self.timeout)
        state = {"late": False, "expired": False}

        def expire(due):
            now = loop.time()
            if now - due > _LATE and now < give_up:
                state["late"] = True          # a busy loop: the answer may be waiting
                state["timer"] = loop.call_at(now + self.timeout, expire, now + self.timeout)
            else:
                state["expired"] = True
                task.cancel()

        due = loop.time() + self.timeout
        state["timer"] = loop.call_at(due, expire, due)
        try:
            result = await coro
        except asyncio.CancelledError:
            uncancel = getattr(task, "uncancel", None)       # Python 3.11+
            if state["expired"] and (uncancel is None or uncancel() == 0):
                raise TimeoutError(f"no answer within {self.timeout:g} s") from None
            raise
        finally:
            state["timer"].cancel()
        self.late_answers += state["late"]
        return result

    def _where(self):
        """Where Redis is, for log lines: never the password."""
        if self.url:
            scheme, sep, rest = self.url.partition("://")
            return scheme + sep + rest.rpartition("@")[2]
        return f"{self.host}:{self.port}"

    def __repr__(self):
        return f"<RedisBackend {self._where()} prefix={self.key_prefix!r} on_failure={self.on_failure}>"


_default = {"backend": None, "conf": None}


def configure_default(conf):
    """Set the backend used by limiters made with ``backend=None``, from a
    mapping of RedisBackend's arguments (the YAML ``redis:`` section)."""
    _default["conf"] = dict(conf) if conf else None
    _default["backend"] = RedisBackend(**conf) if conf else None


def default_backend():
    """The backend configured by ``configure_default`` (the YAML), or None."""
    return _default["backend"]


class RedisRateLimiter:
    """At most ``limit`` requests per key per window, counted across machines.

    The same ``check``/``peek`` and ``RateDecision`` as ``RateLimiter`` (fixed
    windows), but the count of a key is the sum over every process that uses
    the same ``name`` on the same Redis.  Decisions never wait for Redis (see
    this module's docstring for the sync and the error bound).

    Args:
        limit: requests allowed per key per window (int in [1, 2**62]).
        interval: window length in seconds (default 60).
        name: what the limiter is called in Redis (keys are
            ``<key_prefix><name>:<window>:<key>``); limiters with one name
            share counts.  Letters, digits, ``.``, ``_``, ``-``.
        backend: a ``RedisBackend``, or None for the server's (the YAML
            ``redis:`` section); resolved at the first check.
        hashes, slots: shape of the local sketches (see ``Estimator``).
        max_keys: keys per window whose counts are sent to Redis; keys
            beyond it are counted locally only (counted in ``untracked``).

    Raises:
        TypeError, ValueError: an argument is invalid.
    """

    def __init__(self, limit, interval=60.0, *, name, backend=None, hashes=4, slots=1024,
                 max_keys=100_000):
        from ._base.limits import check_scope, interval_ns

        owner = "RedisRateLimiter"
        self.limit = check_limit(owner, limit)
        self.interval = interval_ns(owner, interval) / 1e9
        check_scope(owner, "server", name)
        if name is None:
            raise ValueError(f"{owner}: name= is required (it names the counts in Redis)")
        if backend is not None and not isinstance(backend, RedisBackend):
            raise TypeError(f"{owner}: backend must be a RedisBackend or None")
        self.name = name
        self.interval_ms = max(1, int(self.interval * 1000))
        self.max_keys = positive(owner, "max_keys", max_keys, integer=True)
        self._backend = backend
        # The counts, the checks and the syncs' bookkeeping are compiled
        # (sluiceway._limits.RedisCounts; its reference is _limits_redis_py).
        # The wall clock is read in C unless a test replaced _wall.
        core = self._core = _c.RedisCounts(
            self.limit, interval_ns(owner, self.interval), hashes=hashes, slots=slots,
            max_keys=self.max_keys, clock=None if _wall is time.time else _wall,
            attach=self._attach)
        core.ttl_ms = self.interval_ms * 2   # a window's key is read during the next one too
        # check and peek are the compiled ones, bound here: a request pays
        # no Python frame for them (the methods below say what they do).
        self.check = core.check
        self.peek = core.peek

    @property
    def backend(self):
        if self._backend is None:
            self._backend = default_backend()
            if self._backend is None:
                raise RuntimeError(
                    f"RedisRateLimiter {self.name!r}: no backend= and no redis: section in "
                    f"the configuration")
        return self._backend

    def _attach(self):
        """Called by a check while this limiter is not attached to its
        backend or the backend's task is not running (then it starts it on
        the running loop, if there is one)."""
        core = self._core
        b = self.backend
        if not core.attached:
            core.prefix = f"{b.key_prefix}{self.name}:".encode()
            core.st = b._st
            b._add(self)
            core.attached = True
        if b._task is None:
            b._ensure_started()

    mine = property(lambda self: self._core.mine, doc="This process's counts (a Rate).")
    others = property(lambda self: self._core.others,
                      doc="The other processes' counts, as Redis last said (a Rate).")
    untracked = property(lambda self: self._core.untracked,
                         doc="Checks of keys beyond max_keys: counted locally only.")
    _w = property(lambda self: self._core.w)

    def _window(self):
        """Read the clock: the index of the current window."""
        return self._core.window()

    def check(self, key, cost=1):
        """Count one request (or ``cost``) for ``key`` and decide; a ``RateDecision``.

        Raises:
            TypeError: key is not str or bytes, or cost not an int.
            ValueError: cost is negative.
        """
        return self._core.check(key, cost)

    def peek(self, key, cost=1):
        """What ``check(key, cost)`` would decide now, without counting."""
        return self._core.peek(key, cost)

    def __repr__(self):
        return f"<RedisRateLimiter {self.name!r} limit={self.limit} interval={self.interval:g}s>"
