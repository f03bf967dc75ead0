"""Estimator (count-min sketch): compiled vs pure-Python reference vs exact counts."""

import collections
import gc
import itertools
import math
import random
import tracemalloc

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import sluiceway._limits_py as PY
from sluiceway import limits

C = limits._c
IMPLS = pytest.mark.parametrize("impl", [C, PY], ids=["compiled", "reference"])

seeds4 = st.lists(st.integers(0, 2**64 - 1), min_size=4, max_size=4, unique=True)
keys = st.one_of(
    st.sampled_from(["a", "b", "tenant-1", "é", "", b"a", b"\x00", b"k" * 32]),
    st.text(max_size=40),
    st.binary(max_size=40),
)


def as_bytes(key):
    return key.encode() if isinstance(key, str) else key


@IMPLS
def test_incr_get_decr_reset(impl):
    e = impl.Estimator(seeds=[1, 2, 3, 4])
    assert e.get("a") == 0
    assert e.incr("a") == 1
    assert e.incr("a", 5) == 6
    assert e.get("a") == 6
    assert e.decr("a", 2) == 4
    assert e.get(b"a") == 4  # a str key and its UTF-8 bytes are the same key
    e.reset()
    assert e.get("a") == 0
    assert (e.hashes, e.slots, e.seeds) == (4, 1024, (1, 2, 3, 4))


@IMPLS
def test_random_seeds_differ_per_instance(impl):
    a, b = impl.Estimator(), impl.Estimator()
    assert len(set(a.seeds)) == 4 and a.seeds != b.seeds


@IMPLS
@pytest.mark.parametrize("kwargs, exc, words", [
    (dict(hashes=0), ValueError, "hashes must be between 1 and 32, got 0"),
    (dict(hashes=33), ValueError, "hashes must be between 1 and 32"),
    (dict(slots=0), ValueError, "slots must be between 1"),
    (dict(slots=-5), ValueError, "slots must be between 1"),
    (dict(slots=1.5), TypeError, "slots must be an int"),
    (dict(hashes="4"), TypeError, "hashes must be an int"),
    (dict(seeds=[1, 2]), ValueError, "need exactly one seed per hash (4), got 2"),
    (dict(seeds=[1, 2, 3, -1]), ValueError, "seeds must be in [0, 2**64)"),
    (dict(seeds=5), TypeError, "seeds must be None or a sequence"),
    (dict(seeds=[7, 7, 8, 9]), ValueError, "seeds must be distinct"),
])
def test_bad_arguments_say_what_to_fix(impl, kwargs, exc, words):
    with pytest.raises(exc, match="^Estimator: ") as info:
        impl.Estimator(**kwargs)
    assert words in str(info.value)


@IMPLS
@pytest.mark.parametrize("key", [1, 1.0, None, bytearray(b"x"), ("a",)])
def test_keys_must_be_str_or_bytes(impl, key):
    e = impl.Estimator()
    for op in (e.incr, e.get, e.decr):
        with pytest.raises(TypeError, match="key must be str or bytes, got"):
            op(key)


@IMPLS
@pytest.mark.parametrize("n, exc", [(1.5, TypeError), ("1", TypeError), (2**63, OverflowError),
                                    (-(2**63) - 1, OverflowError)])
def test_counts_must_be_int64(impl, n, exc):
    e = impl.Estimator()
    with pytest.raises(exc):
        e.incr("k", n)
    with pytest.raises(exc):
        impl.Rate(1.0).observe("k", n)
    with pytest.raises(exc):
        impl.Inflight().incr("k", n)
    assert e.get("k") == 0


@IMPLS
def test_unencodable_str_key_raises(impl):
    with pytest.raises(UnicodeEncodeError):
        impl.Estimator().incr("\ud800")


@given(seed=st.integers(0, 2**64 - 1), key=keys)
@example(seed=0, key="")
@example(seed=2**64 - 1, key=b"\xff" * 33)
def test_keyhash_compiled_equals_reference(seed, key):
    assert C.keyhash(seed, key) == PY.keyhash(seed, key)


ops = st.lists(st.one_of(
    st.tuples(st.just("incr"), keys, st.integers(-(2**63), 2**63 - 1)),
    st.tuples(st.just("incr"), keys, st.integers(0, 5)),
    st.tuples(st.just("decr"), keys, st.integers(-(2**63), 2**63 - 1)),
    st.tuples(st.just("get"), keys),
    st.tuples(st.just("reset")),
), max_size=60)


@settings(max_examples=300, deadline=None)
@given(seeds=st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=6, unique=True).flatmap(
    lambda s: st.tuples(st.just(s), st.integers(1, 9))), ops=ops)
@example(seeds=([0], 1), ops=[("incr", "a", 2**63 - 1), ("incr", "b", 1), ("decr", "a", -(2**63))])
def test_compiled_matches_reference_exactly(seeds, ops):
    row_seeds, slots = seeds
    c = C.Estimator(len(row_seeds), slots, seeds=row_seeds)
    p = PY.Estimator(len(row_seeds), slots, seeds=row_seeds)
    for op, *args in ops:
        assert getattr(c, op)(*args) == getattr(p, op)(*args), (op, args)


@settings(max_examples=200, deadline=None)
@given(seeds=seeds4, slots=st.integers(1, 64),
       steps=st.lists(st.tuples(keys, st.integers(-3, 6)), max_size=200))
def test_never_below_the_true_count(seeds, slots, steps):
    """Strict turnstile: decrements only undo earlier increments."""
    e = C.Estimator(4, slots, seeds=seeds)
    truth = collections.Counter()
    for key, n in steps:
        k = as_bytes(key)
        if n < 0:
            n = min(-n, truth[k])
            truth[k] -= n
            e.decr(key, n)
        else:
            truth[k] += n
            assert e.incr(key, n) >= truth[k]
        for k2, true in truth.items():
            assert e.get(k2) >= true


def zipf_stream(rng, n_keys, n_events, s):
    names = [f"tenant-{i:05d}".encode() for i in range(n_keys)]
    weights = [1.0 / (i + 1) ** s for i in range(n_keys)]
    return rng.choices(names, weights, k=n_events)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seeds=seeds4, rng_seed=st.integers(0, 2**32), skew=st.sampled_from([0.0, 0.6, 1.0, 1.3]))
@example(seeds=[5, 33, 105, 256], rng_seed=0, skew=1.0)  # one key 277 > 265: allowed
def test_count_min_bound_100k_events_10k_keys(seeds, rng_seed, skew):
    """Estimate >= true always; estimate <= true + e*N/slots for all but a
    fraction exp(-hashes) of keys (the count-min guarantee, per key).

    Observed (docs/limits.md): 1 key in 1.6 million over the bound across 160
    streams; the guarantee allows 1.8%.  A single key over the bound is
    therefore not a failure (hypothesis found seeds where one key is).
    """
    hashes, slots, n_events, n_keys = 4, 1024, 100_000, 10_000
    stream = zipf_stream(random.Random(rng_seed), n_keys, n_events, skew)
    e = C.Estimator(hashes, slots, seeds=seeds)
    for k in stream:
        e.incr(k)
    truth = collections.Counter(stream)
    bound = math.e * n_events / slots
    errors = []
    for i in range(n_keys):
        k = f"tenant-{i:05d}".encode()
        err = e.get(k) - truth[k]
        assert err >= 0
        errors.append(err)
    over = sum(err > bound for err in errors)
    assert over <= math.exp(-hashes) * n_keys, (over, max(errors), bound)


def test_reference_agrees_on_a_large_stream():
    """The reference is slow, so one 20,000-event stream, compared key by key."""
    seeds = [11, 22, 33, 44]
    stream = zipf_stream(random.Random(7), 2_000, 20_000, 1.0)
    c, p = C.Estimator(4, 256, seeds=seeds), PY.Estimator(4, 256, seeds=seeds)
    for k in stream:
        assert c.incr(k) == p.incr(k)
    for k in set(stream):
        assert c.get(k) == p.get(k)


def _peak_growth(fn, key):
    """Bytes allocated at peak while calling fn(key, 0) 2000 times (tracemalloc on)."""
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    for _ in itertools.repeat(None, 2000):
        fn(key, 0)
    return tracemalloc.get_traced_memory()[1] - base


@pytest.mark.parametrize("make", [
    lambda: C.Estimator().incr,
    lambda: C.Rate(1.0).observe,
    lambda: C.RateLimiter(10**9).check,  # decisions come from a freelist
], ids=["Estimator.incr", "Rate.observe", "RateLimiter.check"])
def test_hot_path_allocates_nothing(make):
    """On str (ASCII, and non-ASCII once its UTF-8 is cached) and bytes keys the
    call allocates no more than calling a no-op builtin the same way does."""
    fn = make()
    keys = ["k" * 32, "ключ-" * 6, b"b" * 32]
    for k in keys:
        fn(k, 0)  # warm: non-ASCII str caches its UTF-8 form once
    gc.collect()
    tracemalloc.start()
    try:
        for _ in range(2):  # first pass warms interpreter caches
            noop = _peak_growth(max, 1)
            grown = {k: _peak_growth(fn, k) for k in keys}
        assert all(g <= noop for g in grown.values()), (noop, grown)
    finally:
        tracemalloc.stop()
