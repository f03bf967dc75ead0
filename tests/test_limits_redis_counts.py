"""RedisRateLimiter's compiled counts (``_limits.RedisCounts``) against their
pure-Python reference (``_limits_redis_py.RedisCountsPy``): the same random
checks, peeks, clock moves, syncs (packed names and counts), Redis answers
(totals that grow, stay or fall, as after a restart), lost answers and
failure policies, every result compared; and the compiled reader of a
sync's answers (``_limits.resp_sums``) against its reference, on random
replies cut at random places.  No Redis here: the tests that talk to a
real one are in test_limits_redis.py."""

import hiredis
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluiceway import _limits
from sluiceway._limits_redis_py import RedisCountsPy, RedisStatePy, resp_sums

SEEDS = (11, 22, 33, 44)
KEYS = ["a", "b", "caf\u00e9", b"a", b"\xff\x00", "k" * 40]
FIELD = b"host:12:ab"
FIELD_BULK = b"$10\r\nhost:12:ab\r\n"


class Wake:
    """A stand-in for the backend's wake-up: counts the calls."""

    def __init__(self):
        self.set = 0

    def __call__(self):
        self.set += 1


def make(cls, state_cls, clock, limit, interval_ns, max_keys, sync_events):
    state = state_cls(sync_events, False)
    state.started = True
    state.wake = Wake()

    def attach():
        counts.st = state
        counts.prefix = b"t:lim:"
        counts.attached = True

    counts = cls(limit, interval_ns, hashes=4, slots=64, max_keys=max_keys, seeds=SEEDS,
                 clock=clock, attach=attach)
    counts.ttl_ms = 2 * interval_ns // 1_000_000
    return counts, state


def commands(out):
    """The commands packed in ``out``, as Redis reads them (hiredis parses
    a command like a reply: an array of bulk strings)."""
    reader = hiredis.Reader()
    reader.feed(bytes(out))
    got = []
    while (cmd := reader.gets()) is not False:
        got.append(cmd)
    return got


def expected_commands(batch, pushed_before, ttl_ms, prefix=b"t:lim:"):
    """What a sync of ``batch`` must send, from the counts Redis had."""
    want = []
    for (w, key), mine in batch:
        name = b"%s%d:%s" % (prefix, w, key.encode() if isinstance(key, str) else key)
        was = pushed_before.get((w, key), 0)
        if mine != was:
            want.append([b"HSET", name, FIELD, b"%d" % mine])
            if was == 0:
                want.append([b"PEXPIRE", name, b"%d" % ttl_ms])
        want.append([b"HVALS", name])
    return want


def decision(d):
    return (bool(d.allowed), d.limit, d.remaining, d.count, d.reset_after)


def state_of(c, s):
    return (list(c.touched), dict(c.pushed), dict(c.seen), c.untracked, c.w, s.waiting,
            s.idle, s.failed_open, s.failed_closed, s.wake.set)


op = st.one_of(
    st.tuples(st.just("check"), st.sampled_from(KEYS), st.integers(0, 3)),
    st.tuples(st.just("peek"), st.sampled_from(KEYS), st.integers(0, 3)),
    st.tuples(st.just("tick"), st.integers(1, 2_500_000_000)),
    st.tuples(st.just("sync"), st.lists(st.integers(-2, 5), min_size=40, max_size=40)),
    st.tuples(st.just("lost"), st.just(0)),
    st.tuples(st.just("forget"), st.just(0)),
    st.tuples(st.just("idle"), st.just(0)),
    st.tuples(st.just("policy"), st.booleans(), st.booleans()),
)


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(op, max_size=80), t0=st.integers(0, 10_000),
       interval_ns=st.sampled_from([1_000_000_000, 3_000_000_000, 250_000_000]),
       limit=st.integers(1, 12), max_keys=st.integers(1, 8), sync_events=st.integers(1, 5))
def test_compiled_counts_match_the_reference(ops, t0, interval_ns, limit, max_keys, sync_events):
    now = [float(t0)]
    clock = lambda: now[0]  # noqa: E731
    c, cs = make(_limits.RedisCounts, _limits.RedisState, clock, limit, interval_ns, max_keys,
                 sync_events)
    p, ps = make(RedisCountsPy, RedisStatePy, clock, limit, interval_ns, max_keys, sync_events)
    for o in ops:
        kind = o[0]
        if kind in ("check", "peek"):
            got = [decision(getattr(x, kind)(o[1], o[2])) for x in (c, p)]
            assert got[0] == got[1], (o, got)
        elif kind == "tick":
            now[0] += o[1] / 1e9
        elif kind in ("sync", "lost"):
            bufs = [bytearray() for _ in range(2)]
            pushed = dict(c.pushed)
            n = [x.pending(b, FIELD_BULK) for x, b in zip((c, p), bufs)]
            assert n[0] == n[1] and bufs[0] == bufs[1] and c.batch == p.batch, (o, bufs)
            cmds = commands(bufs[0])
            assert cmds == expected_commands(c.batch, pushed, c.ttl_ms) and n[0] == len(cmds)
            if kind == "lost":
                c.unsent()
                p.unsent()
            else:
                # Redis's totals: this process's count plus the others'
                # (which may fall: Redis restarted and they have not resent)
                totals = [mine + max(0, extra) if extra >= 0 else max(0, mine + extra)
                          for (_, mine), extra in zip(c.batch, o[1])]
                assert c.synced(totals, 0) == p.synced(totals, 0) == len(totals)
        elif kind == "forget":
            c.forget_pushed()
            p.forget_pushed()
        elif kind == "idle":
            cs.idle = ps.idle = True
        else:
            cs.down, cs.closed = ps.down, ps.closed = o[1], o[2]
        assert state_of(c, cs) == state_of(p, ps), o
    got = [decision(x.peek("a", 1)) for x in (c, p)]   # reset_after: until the window ends
    assert got[0] == got[1]
    assert c.window() == p.window()


def test_packing_is_resp():
    """What a sync sends, in RESP: for a key this process counted, its count
    (HSET), the key's expiry with the first count (PEXPIRE) and the read of
    every process's count (HVALS); a key only peeked is only read.  Once
    Redis has a count, it is sent again only when it changed."""
    now = [120.5]
    c, _ = make(_limits.RedisCounts, _limits.RedisState, lambda: now[0], 100, 60_000_000_000,
                10, 64)
    c.check("caf\u00e9", 12)
    c.peek(b"\xff")
    out = bytearray()
    assert c.pending(out, FIELD_BULK) == 4
    name = b"$13\r\nt:lim:2:caf\xc3\xa9\r\n"
    assert bytes(out) == (b"*4\r\n$4\r\nHSET\r\n" + name + FIELD_BULK + b"$2\r\n12\r\n"
                          + b"*3\r\n$7\r\nPEXPIRE\r\n" + name + b"$6\r\n120000\r\n"
                          + b"*2\r\n$5\r\nHVALS\r\n" + name
                          + b"*2\r\n$5\r\nHVALS\r\n$9\r\nt:lim:2:\xff\r\n")
    assert commands(out) == [[b"HSET", b"t:lim:2:caf\xc3\xa9", FIELD, b"12"],
                             [b"PEXPIRE", b"t:lim:2:caf\xc3\xa9", b"120000"],
                             [b"HVALS", b"t:lim:2:caf\xc3\xa9"], [b"HVALS", b"t:lim:2:\xff"]]
    assert c.batch == [((2, "caf\u00e9"), 12), ((2, b"\xff"), 0)]
    c.synced([12, 5], 0)
    # both keys are read again next time (this one's count was sent, the
    # other's total grew); Redis has this process's 12 now
    out = bytearray()
    assert c.pending(out, FIELD_BULK) == 2
    assert commands(out) == [[b"HVALS", b"t:lim:2:caf\xc3\xa9"], [b"HVALS", b"t:lim:2:\xff"]]
    c.synced([12, 5], 0)
    c.check("caf\u00e9")
    out = bytearray()
    assert c.pending(out, FIELD_BULK) == 2
    assert commands(out) == [[b"HSET", b"t:lim:2:caf\xc3\xa9", FIELD, b"13"],
                             [b"HVALS", b"t:lim:2:caf\xc3\xa9"]]


# A sync's answers: integers (HSET, PEXPIRE), arrays of decimal counts or
# nil (HVALS), errors; now and then a simple string or a bulk one.
count_bulk = st.one_of(st.integers(0, 10**12).map(lambda n: b"%d" % n), st.none())
reply = st.one_of(
    st.tuples(st.just("int"), st.integers(-1, 1)),
    st.tuples(st.just("array"), st.lists(count_bulk, max_size=5)),
    st.tuples(st.just("nilarray"), st.just(0)),
    st.tuples(st.just("error"), st.sampled_from(["ERR x", "WRONGTYPE Operation against a key",
                                                 "OOM command not allowed"])),
    st.tuples(st.just("status"), st.just("OK")),
    st.tuples(st.just("bulk"), st.one_of(st.binary(max_size=8), st.none())),
)


def encode(r):
    kind, v = r
    if kind == "int":
        return b":%d\r\n" % v
    if kind == "array":
        return b"*%d\r\n" % len(v) + b"".join(
            b"$-1\r\n" if x is None else b"$%d\r\n%s\r\n" % (len(x), x) for x in v)
    if kind == "nilarray":
        return b"*-1\r\n"
    if kind == "error":
        return b"-%s\r\n" % v.encode()
    if kind == "status":
        return b"+%s\r\n" % v.encode()
    return b"$-1\r\n" if v is None else b"$%d\r\n%s\r\n" % (len(v), v)


@settings(max_examples=400, deadline=None)
@given(replies=st.lists(reply, min_size=1, max_size=12), extra=st.binary(max_size=6),
       cuts=st.lists(st.integers(0, 10**6), max_size=4))
def test_compiled_answer_reader_matches_the_reference(replies, extra, cuts):
    data = b"".join(encode(r) for r in replies)
    sums = [sum(int(x) for x in v if x is not None) if k == "array" else 0
            for k, v in replies if k in ("array", "nilarray")]
    errors = [v for k, v in replies if k == "error"]
    # hiredis agrees on where the replies end
    r = hiredis.Reader()
    r.feed(data)
    assert [r.gets() is not False for _ in replies] == [True] * len(replies)
    for read in (_limits.resp_sums, resp_sums):
        assert read(bytearray(data + extra), len(replies)) == (
            len(data), len(replies), sums, errors[0] if errors else None)
        # arriving in pieces (cut anywhere), read as _SyncLine reads it:
        # complete replies taken off the front, a cut-short one left
        buf, left, got, error = bytearray(), len(replies), [], None
        at = 0
        for cut in sorted({c % len(data) for c in cuts} | {len(data)}):
            buf += data[at:cut]
            at = cut
            end, n, part, err = read(buf, left)
            assert n <= left and (n == 0) == (end == 0)
            del buf[:end]
            left -= n
            got += part
            error = error if error is not None else err
        assert (left, got, error, bytes(buf)) == (0, sums, errors[0] if errors else None, b"")


@pytest.mark.parametrize("data, why", [
    (b"*1\r\n$1\r\nx\r\n", "malformed number"),
    (b"*1\r\n:5\r\n", "an array of ':'"),
    (b"%1\r\n", "type '%'"),
    (b"*1\r\n$19\r\n1234567890123456789\r\n", "malformed number"),
    (b"*5\r\n" + b"$18\r\n999999999999999999\r\n" * 5, "past 2\\*\\*62"),
    (b"*x\r\n", "malformed number"),
])
def test_answer_reader_refuses_what_is_not_a_sync_answer(data, why):
    for read in (_limits.resp_sums, resp_sums):
        with pytest.raises(ValueError, match=why):
            read(bytearray(data), 1)


def test_bad_arguments_say_what_to_fix():
    c, _ = make(_limits.RedisCounts, _limits.RedisState, lambda: 5.0, 10, 10**9, 10, 64)
    with pytest.raises(TypeError, match="n must be an int, got float"):
        c.check("k", 1.0)
    with pytest.raises(TypeError, match="n must be an int, got bool"):
        c.check("k", True)
    with pytest.raises(ValueError, match="cost must be >= 0, got -1"):
        c.check("k", -1)
    with pytest.raises(TypeError):
        c.check(3)
