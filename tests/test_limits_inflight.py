"""Inflight counter and its release-once guards, both implementations."""

import gc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sluiceway._limits_py as PY
from sluiceway import limits

C = limits._c
IMPLS = pytest.mark.parametrize("impl", [C, PY], ids=["compiled", "reference"])


@IMPLS
def test_guards_count_and_release_once(impl):
    inflight = impl.Inflight()
    g1, v = inflight.incr("a")
    assert v == 1
    g2, v = inflight.incr("a", 2)
    assert v == 3 and g2.get() == 3
    assert g1.release() is True
    assert g1.release() is False  # only once
    assert g1.released and inflight.get("a") == 2
    del g1
    gc.collect()
    assert inflight.get("a") == 2  # a released guard does nothing when collected
    with g2 as same:
        assert same is g2
    assert inflight.get("a") == 0
    g2.release()
    assert inflight.get("a") == 0


@IMPLS
def test_garbage_collection_releases(impl):
    inflight = impl.Inflight()
    inflight.incr("a")  # guard dropped at once
    gc.collect()
    assert inflight.get("a") == 0
    guard, _ = inflight.incr(b"b", 4)
    cycle = [guard]
    cycle.append(cycle)
    del guard, cycle
    gc.collect()
    assert inflight.get("b") == 0


@IMPLS
def test_guard_outliving_its_inflight_still_releases(impl):
    inflight = impl.Inflight()
    guard, _ = inflight.incr("a")
    del inflight
    gc.collect()
    assert guard.get() == 1
    assert guard.release() is True


@IMPLS
def test_exception_in_with_block_still_releases(impl):
    inflight = impl.Inflight()
    with pytest.raises(RuntimeError):
        with inflight.incr("a")[0]:
            raise RuntimeError("boom")
    assert inflight.get("a") == 0


@IMPLS
def test_guard_attributes_and_refused_constructor(impl):
    guard, _ = impl.Inflight().incr("k", 3)
    assert (guard.key, guard.n, guard.released) == ("k", 3, False)
    assert "held" in repr(guard)
    with pytest.raises(TypeError, match="made by Inflight.incr"):
        impl.InflightGuard()


@IMPLS
def test_bad_input(impl):
    with pytest.raises(ValueError, match="^Inflight: slots must be between"):
        impl.Inflight(slots=0)
    with pytest.raises(TypeError, match="key must be str or bytes, got int"):
        impl.Inflight().incr(7)


@settings(max_examples=200, deadline=None)
@given(ops=st.lists(st.one_of(
    st.tuples(st.just("incr"), st.sampled_from(["a", "b", b"a", "zz", ""]), st.integers(0, 5)),
    st.tuples(st.just("release"), st.integers(0, 100)),
    st.tuples(st.just("drop"), st.integers(0, 100)),
    st.tuples(st.just("get"), st.sampled_from(["a", "b", "zz"])),
), max_size=60), slots=st.integers(1, 4))
def test_compiled_matches_reference_and_never_undercounts(ops, slots):
    seeds = [9, 8, 7, 6]
    impls = [C.Inflight(4, slots, seeds=seeds), PY.Inflight(4, slots, seeds=seeds)]
    guards = [[], []]
    for op, *args in ops:
        results = []
        for i, inf in enumerate(impls):
            if op == "incr":
                g, v = inf.incr(*args)
                guards[i].append(g)
                results.append(v)
                del g  # the list holds the only reference, so 'drop' really drops it
            elif op in ("release", "drop") and guards[i]:
                j = args[0] % len(guards[i])
                if op == "release":
                    results.append(guards[i][j].release())
                else:
                    del guards[i][j]  # refcount hits zero: released now
            elif op == "get":
                results.append(inf.get(args[0]))
        if results:
            assert results[0] == results[1], (op, args)
        truth = {}
        for held_guard in guards[0]:
            if not held_guard.released:
                k = held_guard.key.encode() if isinstance(held_guard.key, str) else held_guard.key
                truth[k] = truth.get(k, 0) + held_guard.n
        held_guard = None
        for k, n in truth.items():
            assert impls[0].get(k) >= n
