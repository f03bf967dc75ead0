"""RedisRateLimiter's compiled counts (``_limits.RedisCounts``) against their
pure-Python reference (``_limits_redis_py.RedisCountsPy``): the same random
checks, peeks, clock moves, syncs (packed names and counts), Redis answers
(totals that grow, stay or fall, as after a restart), lost answers and
failure policies, every result compared.  No Redis here: the tests that talk
to a real one are in test_limits_redis.py."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluiceway import _limits
from sluiceway._limits_redis_py import RedisCountsPy, RedisStatePy

SEEDS = (11, 22, 33, 44)
KEYS = ["a", "b", "caf\u00e9", b"a", b"\xff\x00", "k" * 40]


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
    return counts, state


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
            bufs = [(bytearray(), bytearray()) for _ in range(2)]
            n = [x.pending(*b) for x, b in zip((c, p), bufs)]
            assert n[0] == n[1] and bufs[0] == bufs[1] and c.batch == p.batch, (o, bufs)
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
    """What a sync sends: each key's name and count as RESP bulk strings, a
    key this process has not counted (only peeked) with an empty count."""
    now = [120.5]
    c, _ = make(_limits.RedisCounts, _limits.RedisState, lambda: now[0], 100, 60_000_000_000,
                10, 64)
    c.check("caf\u00e9", 12)
    c.peek(b"\xff")
    names, counts = bytearray(), bytearray()
    assert c.pending(names, counts) == 2
    assert bytes(names) == b"$13\r\nt:lim:2:caf\xc3\xa9\r\n$9\r\nt:lim:2:\xff\r\n"
    assert bytes(counts) == b"$2\r\n12\r\n$0\r\n\r\n"
    assert c.batch == [((2, "caf\u00e9"), 12), ((2, b"\xff"), 0)]


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
