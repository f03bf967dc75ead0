"""What the limits suites share to hold the compiled limits to their
pure-Python reference (:mod:`sluiceway._limits_py`): a clock the test
moves, the operation strategies, and the loops that replay one list of
operations on both and require the same answers."""

from __future__ import annotations

from hypothesis import strategies as st

from sluiceway.limits import CircuitOpen


class FakeClock:
    """Seconds that move only when a test says so."""

    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


def rate_ops(proportional=False):
    """Operations on a Rate (and ``("proportional", key)``, rate_with the
    proportional estimate, when asked); ticks in intervals."""
    return st.lists(st.one_of(
        st.tuples(st.just("observe"), st.sampled_from(["a", "b", b"c", "é", ""]),
                  st.integers(-3, 9)),
        st.tuples(st.just("rate"), st.sampled_from(["a", "b", b"c"])),
        *([st.tuples(st.just("proportional"), st.sampled_from(["a", b"c"]))]
          if proportional else []),
        st.tuples(st.just("sample"), st.sampled_from(["a", "b", b"c"])),
        st.tuples(st.just("until_next_window")),
        st.tuples(st.just("reset")),
        st.tuples(st.just("tick"), st.floats(-0.5, 3.5, allow_nan=False)),
        st.tuples(st.just("tick"), st.sampled_from([1.0, 2.0, 0.999999999, 1.000000001])),
    ), max_size=50)


# operations on a RateLimiter; ticks in intervals
rate_limiter_ops = st.lists(st.one_of(
    st.tuples(st.just("check"), st.sampled_from(["a", "b", b"a"]), st.integers(0, 4)),
    st.tuples(st.just("peek"), st.sampled_from(["a", "b"]), st.integers(0, 4)),
    st.tuples(st.just("tick"), st.floats(0, 2.5, allow_nan=False)),
), max_size=40)


def decision_fields(d):
    """All a RateLimiter's decision says."""
    return (d.allowed, d.limit, d.remaining, d.reset_after, d.count, d.retry_after, d.headers())


def replay_pair(c, p, clock, interval, ops, view=None, calls=None):
    """Run ``ops`` on the compiled ``c`` and the reference ``p``, which
    share ``clock``: ``("tick", n)`` moves it n intervals, any other
    ``(name, *args)`` calls the method of that name on both (or
    ``calls[name](*args)``, which returns both answers) and requires the
    same answer (seen through ``view``)."""
    view = view or (lambda x: x)
    for op, *args in ops:
        if op == "tick":
            clock.t += args[0] * interval
            continue
        got = calls[op](*args) if calls and op in calls else (
            getattr(c, op)(*args), getattr(p, op)(*args))
        assert view(got[0]) == view(got[1]), (op, args)


def breaker_ops(admit_keys, ticks):
    """Operations on a CircuitBreaker: admit one of ``admit_keys``, the
    outcome of an attempt made so far (by index), a tick of one of ``ticks``
    seconds, reset or stats of "a" or "b"."""
    return st.lists(st.one_of(
        st.tuples(st.just("admit"), st.sampled_from(admit_keys)),
        st.tuples(st.just("success"), st.integers(0, 50)),
        st.tuples(st.just("failure"), st.integers(0, 50)),
        st.tuples(st.just("tick"), st.sampled_from(ticks)),
        st.tuples(st.just("reset"), st.sampled_from(["a", "b"])),
        st.tuples(st.just("stats"), st.sampled_from(["a", "b"])),
    ), max_size=80)


def replay_breakers(breakers, clock, ops, seen):
    """Run breaker ``ops`` (admit, success, failure, reset, stats, tick)
    on the compiled and the reference CircuitBreaker, which share
    ``clock``; after each, ``seen(breaker)`` too must be the same, and so
    must the transitions at the end."""
    attempts = [[], []]
    for op, arg in ops:
        if op == "tick":
            clock.t += arg
            continue
        got = []
        for i, b in enumerate(breakers):
            if op == "admit":
                try:
                    a = b.admit(arg)
                    attempts[i].append(a)
                    got.append(("ok", a.key, a.probe))
                except CircuitOpen as err:
                    got.append(("open", str(err), err.retry_after))
            elif op in ("success", "failure"):
                if attempts[i]:
                    getattr(attempts[i][arg % len(attempts[i])], op)()
            elif op == "reset":
                b.reset(arg)
            else:
                got.append(b.stats(arg))
            got.append(seen(b))
        assert got[:len(got) // 2] == got[len(got) // 2:], (op, arg)
    assert list(breakers[0].transitions) == list(breakers[1].transitions)
