"""Rate limits shared through a real Redis (started here on a free port):
counts add up across instances within the stated bound, and Redis going away
and coming back follows the failure policy without failing a request."""

import asyncio
import logging
import os
import time

import pytest

from redis_harness import RedisServer, redis_server_path
from sluiceway import limits
from sluiceway._limits_redis import RedisBackend, RedisRateLimiter

pytestmark = pytest.mark.skipif(redis_server_path() is None,
                                reason="redis-server is not installed (ci/install-deps.sh)")


@pytest.fixture
def redis():
    server = RedisServer(password="s3cret").start()
    yield server
    server.close()


def two_instances(redis, limit, interval, **kw):
    """Two limiters with their own backend each: two sluiceway instances."""
    out = []
    for _ in range(2):
        backend = RedisBackend(redis.url, key_prefix="test:", **kw)
        out.append(RedisRateLimiter(limit, interval, name="api", backend=backend))
    return out


async def hammer(limiters, keys, per_key, spacing):
    allowed = {k: 0 for k in keys}
    for i in range(per_key):
        for k in keys:
            d = limiters[i % len(limiters)].check(k)
            allowed[k] += d.allowed
        await asyncio.sleep(spacing)
    return allowed


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


async def until(cond, timeout=5.0, step=0.0):
    """Let the loop turn (every ``step`` seconds) until ``cond()`` or ``timeout``."""
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        await asyncio.sleep(step)


def test_two_instances_share_one_count(redis):
    async def main():
        lims = two_instances(redis, 100, 3600.0)
        window = int(time.time() // 3600)
        allowed = await hammer(lims, ["a", "b"], 300, 0.001)
        # The other instance's last counts reach this one in two syncs (its
        # own, then this one's): a few 5 ms intervals, longer on a busy
        # machine. A peek marks the key for the next sync.
        deadline = time.monotonic() + 3.0
        while True:
            await asyncio.sleep(0.02)
            totals = [lims[0].peek(k).count for k in ("a", "b")]
            if totals == [300, 300] or time.monotonic() > deadline:
                break
        for lim in lims:
            await lim.backend.stop()
        return window, allowed, totals, lims

    window, allowed, totals, lims = run(main())
    if window != int(time.time() // 3600):
        pytest.skip("the hour turned during the test")
    for k in ("a", "b"):
        # Each instance checks a key about every 2 ms (r = 500/s) and syncs
        # every 5 ms: the bound limit + (P - 1) * r * (sync + rtt) is about 103.
        assert 100 <= allowed[k] <= 105, allowed
    assert totals == [300, 300]        # every check reached Redis once
    assert all(lim.backend.syncs > 0 and not lim.backend.down for lim in lims)


@pytest.mark.parametrize("policy", ["open", "closed"])
def test_redis_killed_and_restarted(redis, policy, caplog):
    caplog.set_level(logging.INFO, "sluiceway.limits")
    async def main():
        lims = two_instances(redis, 1000, 3600.0, on_failure=policy, timeout=0.05,
                             reconnect_delay=0.05, max_reconnect_delay=0.2)
        await hammer(lims, ["k"], 100, 0.001)
        for _ in range(100):   # the other instance's last batch syncs (ms; more on a busy machine)
            await asyncio.sleep(0.02)
            if lims[0].peek("k").count >= 100:
                break
        before = lims[0].peek("k").count
        redis.stop()                                       # a crash
        down = await hammer(lims, ["k"], 100, 0.002)      # no check raises
        await asyncio.sleep(0.3)
        states = [lim.backend.down for lim in lims]
        redis.start()                                      # empty: counts were lost
        await asyncio.sleep(1.0)
        after = [lim.peek("k").count for lim in lims]
        back = [not lim.backend.down for lim in lims]
        for lim in lims:
            await lim.backend.stop()
        return before, down, states, after, back, lims

    before, down, states, after, back, lims = run(main())
    assert before == 100
    assert states == [True, True] and back == [True, True]
    if policy == "open":
        assert down["k"] == 100                            # decided locally
        assert sum(lim.backend.failed_open for lim in lims) > 0
    else:
        assert down["k"] < 100                             # refused while Redis was down
        assert sum(lim.backend.failed_closed for lim in lims) > 0
    assert after == [200, 200]                             # every instance sent its count again
    assert sum(lim.backend.restarts for lim in lims) == 2
    logged = [r.getMessage() for r in caplog.records]
    assert any("failed" in m and "s3cret" not in m for m in logged)   # never the password
    assert any("reachable again" in m for m in logged)


def test_a_process_that_never_counted_a_key_learns_its_total(redis):
    """A process that has never checked a key (a worker the load did not
    reach) answers peek with everyone's count, before and after Redis
    restarts empty, and reading adds no field of its own to Redis."""
    async def main():
        counter, reader = two_instances(redis, 1000, 3600.0, reconnect_delay=0.05,
                                        max_reconnect_delay=0.2)
        window = counter._window()

        async def view(want):
            for _ in range(100):       # a sync is 5 ms; more on a busy machine
                if reader.peek("k").count == want:
                    break
                await asyncio.sleep(0.02)
            return reader.peek("k").count

        for _ in range(50):
            counter.check("k")
        before = await view(50)
        redis.restart()                    # empty; both reconnect
        for _ in range(10):
            counter.check("k")
        after = await view(60)
        for lim in (counter, reader):
            await lim.backend.stop()
        return window, before, after

    window, before, after = run(main())
    assert (before, after) == (50, 60)
    import redis as redis_py
    with redis_py.Redis.from_url(redis.url) as r:
        assert r.hlen(f"test:api:{window}:k") == 1     # the counter's field only


def stored(redis, key):
    """The count hashes hold: the sum of every process's field."""
    import redis as redis_py

    r = redis_py.Redis.from_url(redis.url, decode_responses=True)
    try:
        return sum(int(v) for v in r.hvals(key))
    finally:
        r.close()


def test_a_sync_sent_again_counts_once(redis):
    """A process sets its count in Redis (a field of its own) instead of
    adding to it: a sync whose answer was lost, sent again, changes nothing."""
    async def main():
        backend = RedisBackend(redis.url, key_prefix="t:")
        lim = RedisRateLimiter(1000, 3600.0, name="again", backend=backend)
        for _ in range(10):
            lim.check("k")
        await asyncio.sleep(0.1)
        lim._core.forget_pushed()            # as after an answer that never came
        await backend._sync()
        await backend._sync()
        count = lim.peek("k").count
        await backend.stop()
        return count, lim._window(), backend.process

    count, window, field = run(main())
    assert count == 10 and stored(redis, f"t:again:{window}:k") == 10
    import redis as redis_py
    with redis_py.Redis.from_url(redis.url) as r:
        assert 0 < r.pttl(f"t:again:{window}:k") <= 2 * 3600 * 1000   # expires two windows on
    assert field.split(":")[1].isdigit()     # host:pid:random


def test_an_acl_user_without_scripting_and_limited_to_its_prefix(redis):
    """The sync needs no Lua: an ACL user that may run only the commands
    the sync sends (and INFO, SELECT), and only on keys under the
    backend's prefix, counts as any other; both instances see the shared
    total."""
    import redis as redis_py

    with redis_py.Redis.from_url(redis.url) as r:
        # what docs/limits.md gives as the ACL a limiter needs
        r.execute_command("ACL", "SETUSER", "limits", "on", ">s3cret", "~t:*", "+hset",
                          "+hvals", "+pexpire", "+info", "+select")
    url = f"redis://limits:s3cret@127.0.0.1:{redis.port}/0"

    async def main():
        backends = [RedisBackend(url, key_prefix="t:") for _ in range(2)]
        lims = [RedisRateLimiter(1000, 3600.0, name="acl", backend=b) for b in backends]
        for i in range(30):
            lims[i % 2].check("k")
        await until(lambda: all(b.syncs for b in backends) or any(b.failures for b in backends))
        for b in backends:
            await b._sync()
        for b in backends:
            await b._sync()             # each learns the other's count
        counts = [lim.peek("k").count for lim in lims]
        failures = [b.failures for b in backends]
        for b in backends:
            await b.stop()
        return counts, failures, lims[0]._window()

    counts, failures, window = run(main())
    assert counts == [30, 30] and failures == [0, 0]
    assert stored(redis, f"t:acl:{window}:k") == 30


def test_a_sync_of_many_keys_arrives_in_pieces(redis):
    """5,000 keys in one sync: the commands and the answers span many
    reads and writes; Redis holds every key's exact count, and each
    instance learns exactly the other's count of every key.  (Sketches of
    2**18 slots, so that 5,000 keys hardly ever share all four cells: a
    count-min sketch overestimates a key that does.)"""
    import redis as redis_py

    async def main():
        lims = [RedisRateLimiter(10**6, 3600.0, name="api", slots=1 << 18,
                                 backend=RedisBackend(redis.url, key_prefix="test:"))
                for _ in range(2)]
        keys = [f"key-{i}" for i in range(5000)]
        for i, k in enumerate(keys):
            lims[0].check(k, 1 + i % 7)
            lims[1].check(k, 2)
        backends = [lim.backend for lim in lims]
        for b in backends:
            await until(lambda: b._line is not None or b.failures)
            await b._sync()                  # (after the task's first, if still in flight)
        for lim in lims:
            for k in keys:
                lim.peek(k, 0)               # read every key again: the other's count is in
        for b in backends:
            await b._sync()
        w = lims[0]._window()
        seen = [[lim._core.seen.get((w, k)) for k in keys] for lim in lims]
        failures = [b.failures for b in backends]
        for b in backends:
            await b.stop()
        return keys, w, seen, failures

    keys, w, seen, failures = run(main())
    assert failures == [0, 0]
    assert seen[0] == [2] * len(keys)
    assert seen[1] == [1 + i % 7 for i in range(len(keys))]
    with redis_py.Redis.from_url(redis.url) as r:
        pipe = r.pipeline(transaction=False)
        for k in keys:
            pipe.hvals(f"test:api:{w}:{k}")
        totals = [sum(int(v) for v in vals) for vals in pipe.execute()]
    assert totals == [3 + i % 7 for i in range(len(keys))]


def test_bytes_keys_are_named_by_their_bytes(redis):
    """A str key counts as its UTF-8 bytes, and bytes that are not UTF-8
    name a Redis key of those very bytes."""
    async def main():
        backend = RedisBackend(redis.url, key_prefix="t:")
        lim = RedisRateLimiter(1000, 3600.0, name="b", backend=backend)
        for key in ("caf\u00e9", "caf\u00e9".encode(), b"\xff\xfe"):
            lim.check(key)
        while backend.syncs == 0:
            await asyncio.sleep(0.01)
        await backend.stop()
        return lim._window(), backend

    window, backend = run(main())
    assert backend.failures == 0
    assert stored(redis, f"t:b:{window}:caf\u00e9".encode()) == 2
    assert stored(redis, b"t:b:%d:\xff\xfe" % window) == 1


def test_a_stalled_redis_times_out_and_its_connection_is_not_reused(redis):
    """Redis stops answering (SIGSTOP) while a sync is in flight: the sync
    times out on a free loop, the backend is down and decides "open", and
    that connection is never written again (answers still on their way
    would be read as the next sync's).  Redis resumes: the backend
    reconnects and Redis holds exactly the checks made."""
    import signal

    async def main():
        backend = RedisBackend(redis.url, key_prefix="t:", timeout=0.05, sync_interval=0.005,
                               reconnect_delay=0.05, max_reconnect_delay=0.05)
        lim = RedisRateLimiter(1000, 3600.0, name="stall", backend=backend)
        for _ in range(5):
            lim.check("k")
        await until(lambda: backend.syncs > 0)
        line = backend._line
        os.kill(redis.proc.pid, signal.SIGSTOP)
        try:
            for _ in range(5):
                lim.check("k")
            await until(lambda: backend.down, timeout=5.0)
            down = backend.down
            with pytest.raises(ConnectionError, match="not used again"):
                line.send(b"*1\r\n$4\r\nPING\r\n", 1, lambda answer: None)
        finally:
            os.kill(redis.proc.pid, signal.SIGCONT)
        await until(lambda: not backend.down, timeout=5.0)
        lim.check("k")
        await backend._sync()
        result = down, backend.down, backend.failures, lim.peek("k").count, lim._window()
        await backend.stop()
        return result

    down, still_down, failures, count, window = run(main())
    assert down and not still_down and failures >= 1
    assert count == 11 and stored(redis, f"t:stall:{window}:k") == 11


def test_busy_loop_is_not_taken_for_redis_down(redis):
    """The worker is busy for two timeouts right after a sync went out: when
    the loop turns again the timeout is overdue and the answer waits in the
    socket.  The sync succeeds (one late answer), nothing fails."""
    async def main():
        backend = RedisBackend(redis.url, key_prefix="t:", timeout=0.05)
        lim = RedisRateLimiter(1000, 3600.0, name="busy", backend=backend)
        lim.check("k")
        while backend.syncs == 0:            # connected, first sync done
            await asyncio.sleep(0.01)
        backend._task.cancel()               # the syncs below are the only ones
        outcomes = []
        for _ in range(5):
            lim.check("k")
            sync = asyncio.ensure_future(backend._sync())   # timed by itself
            await asyncio.sleep(0)           # the command is written
            time.sleep(0.1)                  # the loop is busy elsewhere
            try:
                await sync
                outcomes.append("ok")
            except Exception as exc:
                outcomes.append(repr(exc))
        count = lim.peek("k").count
        await backend.stop()
        return outcomes, count, backend

    outcomes, count, backend = run(main())
    assert outcomes == ["ok"] * 5
    assert backend.late_answers == 5 and backend.failures == 0
    assert count == 6


def test_busy_loop_during_a_sync_of_the_cycle(redis):
    """The same with the syncs the callbacks send on their own: the loop is
    busy for two timeouts while one is in flight.  Its answer counts as
    late, nothing fails, and the syncs go on."""
    async def main():
        backend = RedisBackend(redis.url, key_prefix="t:", timeout=0.05, sync_interval=0.002)
        lim = RedisRateLimiter(1000, 3600.0, name="busycycle", backend=backend)
        for _ in range(5):
            lim.check("k")
            await until(lambda: backend._flight is not None)   # the cycle has a sync out
            time.sleep(0.1)                  # the loop is busy elsewhere
            await asyncio.sleep(0.01)
        before = backend.syncs
        lim.check("k")
        await asyncio.sleep(0.1)
        count = lim.peek("k").count
        await backend.stop()
        return count, backend, before

    count, backend, before = run(main())
    assert backend.failures == 0 and backend.late_answers >= 5
    assert backend.syncs > before            # the cycle went on
    assert count == 6


def test_sync_now_beside_the_cycle_and_sync_events(redis):
    """``_sync()`` while the callbacks' sync is in flight waits for it, then
    sends its own; the cycle goes on after.  sync_events checks send a sync
    without waiting for sync_interval (here an hour)."""
    async def main():
        backend = RedisBackend(redis.url, key_prefix="t:", sync_interval=3600.0,
                               sync_events=5)
        lim = RedisRateLimiter(10**6, 3600.0, name="beside", backend=backend)
        lim.check("k")                       # starts the task: its first sync
        await until(lambda: backend.syncs > 0, step=0.01)
        first = backend.syncs
        for _ in range(5):                   # the 5th check wakes the cycle
            lim.check("k")
        await asyncio.sleep(0.1)
        kicked = backend.syncs - first
        for _ in range(20):
            for _ in range(5):
                lim.check("k")
            await asyncio.sleep(0)           # the cycle's sync goes out
            await backend._sync()            # and this one after it
        await asyncio.sleep(0.1)
        for _ in range(5):
            lim.check("k")
        await asyncio.sleep(0.1)
        count = lim.peek("k").count
        await backend.stop()
        return kicked, count, backend

    kicked, count, backend = run(main())
    window = int(time.time() // 3600)
    assert kicked >= 1 and backend.failures == 0
    assert count == 111 and stored(redis, f"t:beside:{window}:k") == 111


def test_command_packing_matches_hiredis():
    """The commands a sync writes are what hiredis packs for the same
    arguments: for a key counted here its count in this process's field
    (HSET), the key's expiry with the first count (PEXPIRE, two windows)
    and the read of every process's count (HVALS); a key only peeked is
    only read."""
    from hiredis import pack_command

    class Line:
        def send(self, data, replies, callback):
            self.data, self.replies = bytes(data), replies

    backend = RedisBackend(key_prefix="t:")              # never connected
    lim = RedisRateLimiter(1000, 3600.0, name="x", backend=backend)
    lim._attach()
    lim.check("caf\u00e9", 12)
    lim.peek(b"\xff")
    backend._line, backend._loop = Line(), asyncio.new_event_loop()
    try:
        assert backend._send()
    finally:
        backend._timer.cancel()
        backend._loop.close()
    w = lim._window()
    name = f"t:x:{w}:caf\u00e9".encode()
    assert backend._line.data == b"".join(pack_command(c) for c in (
        (b"HSET", name, backend.process.encode(), 12), (b"PEXPIRE", name, 7200000),
        (b"HVALS", name), (b"HVALS", b"t:x:%d:\xff" % w)))
    assert backend._line.replies == 4


def test_an_error_answer_fails_the_sync_and_is_logged(redis, caplog):
    """A key of the limiter's that holds something else than a hash (here
    a string another client wrote) makes Redis answer an error to HSET and
    HVALS: the sync fails, the backend logs it with Redis's message, goes
    on deciding from the local counts ("open"), and recovers once the key
    is gone."""
    import logging

    import redis as redis_py

    caplog.set_level(logging.INFO, logger="sluiceway.limits")
    other = redis_py.Redis.from_url(redis.url)

    async def main():
        backend = RedisBackend(redis.url, key_prefix="t:", sync_interval=0.01,
                               reconnect_delay=0.05, max_reconnect_delay=0.05)
        lim = RedisRateLimiter(10, 3600.0, name="bad", backend=backend)
        window = int(time.time() // 3600)
        other.set(f"t:bad:{window}:k", "not a hash")
        assert lim.check("k").allowed
        backend.start()
        await until(lambda: backend.down)
        assert lim.check("k").allowed and backend.failed_open >= 1
        other.delete(f"t:bad:{window}:k")
        await until(lambda: not backend.down)
        lim.check("k")
        await backend._sync()
        await backend.stop()
        return window

    try:
        window = run(main())
    finally:
        other.close()
    assert stored(redis, f"t:bad:{window}:k") == 3
    text = caplog.text
    assert "WRONGTYPE" in text and "ResponseError" in text and "reachable again" in text


@pytest.mark.parametrize("step", range(1, 8))
def test_a_window_turning_during_checks_and_a_sync_batch(monkeypatch, step):
    """The clock moves 20 us between any two readings and a window ends at
    180 s; wherever the turn falls (step), each check counts in one window
    and the batch sends, for each window, exactly the checks made in it."""
    from collections import Counter

    from sluiceway import _limits_redis

    now = [180.0 - step * 0.00002]

    def wall():
        now[0] += 0.00002
        return now[0]

    monkeypatch.setattr(_limits_redis, "_wall", wall)
    lim = RedisRateLimiter(1000, 60.0, name="t", backend=RedisBackend())   # never started
    windows, counts = [], []
    for _ in range(4):
        counts.append(lim.check("k").count)
        windows.append(lim._w)                 # the window that check counted in
    lim._core.pending(bytearray(), b"$1\r\nf\r\n")
    sent = dict(lim._core.batch)
    assert sent == {(w, "k"): n for w, n in Counter(windows).items()}, (step, sent, windows)
    assert counts == [windows[:i + 1].count(w) for i, w in enumerate(windows)], (counts, windows)


def test_backend_arguments():
    with pytest.raises(ValueError, match="on_failure must be 'open' or 'closed'"):
        RedisBackend(on_failure="maybe")
    with pytest.raises(ValueError, match="name= is required"):
        RedisRateLimiter(10, 60.0, name=None, backend=RedisBackend())
    lim = RedisRateLimiter(10, 60.0, name="x", backend=RedisBackend())
    assert "x" in repr(lim) and lim.limit == 10
    assert limits.RedisBackend is RedisBackend and limits.RedisRateLimiter is RedisRateLimiter


def test_yaml_redis_section(tmp_path, redis):
    from sluiceway import _limits_redis
    from sluiceway.config import ConfigError, load_config
    from sluiceway.server import Server

    path = tmp_path / "conf.yaml"
    path.write_text("version: 1\nredis:\n  url: %s\n  key_prefix: 'yaml:'\n"
                    "  on_failure: closed\n  timeout_seconds: 0.2\n" % redis.url)
    conf = load_config(str(path))
    Server(conf)                                      # sets the default backend
    backend = _limits_redis.default_backend()
    assert (backend.key_prefix, backend.on_failure, backend.timeout) == ("yaml:", "closed", 0.2)

    async def main():
        lim = RedisRateLimiter(2, 3600.0, name="yaml")   # backend=None: the YAML's
        got = [lim.check("k").allowed for _ in range(3)]
        await asyncio.sleep(0.05)
        await backend.stop()
        return got, backend.syncs

    got, syncs = run(main())
    assert got == [True, True, False] and syncs > 0
    _limits_redis.configure_default(None)
    path.write_text("redis:\n  passwrd: x\n")
    with pytest.raises(ConfigError, match=r"conf.yaml:1: unknown key redis.passwrd \(did you mean password\?\)"):
        load_config(str(path))
