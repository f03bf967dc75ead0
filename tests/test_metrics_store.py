"""The shared metrics store: the compiled one (csrc/sw_metrics.c through
sluiceway._metrics) against its pure-Python twin (sluiceway._metrics_py),
driven by hypothesis with the same operations; and across real processes."""

import os
import signal
import struct
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluiceway import _metrics, _metrics_py

KINDS = [_metrics_py.COUNTER, _metrics_py.GAUGE, _metrics_py.GAUGE_MAX, _metrics_py.HISTOGRAM,
         _metrics_py.INFO]
BOUNDS = [0.005, 0.1, 1.0]

keys = st.sampled_from([b"a\x00", b"b\x00x", b"b\x00y", b"h\x00", b"\x01a", b"c" * 40])
pids = st.sampled_from([101, 102, 103, 104, 105])
values = st.one_of(st.integers(-3, 1000).map(float),
                   st.sampled_from([0.004, 0.005, 0.0051, 0.1, 1.0, 2.5, float("nan")]))

ops = st.lists(st.one_of(
    st.tuples(st.just("series"), keys, st.binary(max_size=8), st.sampled_from(KINDS + [0, 6]),
              st.integers(0, 6)),
    st.tuples(st.just("claim"), pids),
    st.tuples(st.just("retire"), pids),
    st.tuples(st.just("add"), st.integers(0, 40), values, st.integers(0, 4)),
    st.tuples(st.just("set"), st.integers(0, 40), values, st.integers(0, 4)),
    st.tuples(st.just("observe"), st.integers(0, 40), values, st.integers(0, 4)),
    st.tuples(st.just("read"), st.integers(0, 40), st.integers(0, 6),
              st.sampled_from(KINDS[:4] + [9])),
), max_size=60)


def _same(a, b):
    """Equal, NaN included."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (a != a and b != b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _call(store, op):
    name, *args = op
    try:
        if name == "observe":
            cell, v, slab = args
            return store.observe(cell, BOUNDS, v, slab)
        return getattr(store, name)(*args)
    except (IndexError, ValueError) as exc:
        return type(exc).__name__


@settings(max_examples=300, deadline=None)
@given(ops, st.sampled_from([(4, 48, 8, 64), (2, 16, 4, 24)]))
def test_compiled_store_matches_the_twin(script, shape):
    c = _metrics.Store(*shape)
    p = _metrics_py.Store(*shape)
    for op in script:
        assert _same(_call(c, op), _call(p, op)), op
    assert c.owners() == p.owners()
    assert sorted(c.entries()) == sorted(p.entries())
    assert c.usage() == p.usage()
    for key, _val, kind, first, n in p.entries():
        if kind != _metrics_py.INFO:
            assert _same(c.read(first, n, kind), p.read(first, n, kind)), key


def test_a_full_table_says_enospc_and_keeps_what_it_has():
    s = _metrics.Store(1, 8, 4, 64)
    assert s.series(b"a", b"", _metrics.COUNTER, 1) == (1, 0)
    assert s.series(b"b", b"", _metrics.COUNTER, 1) == (1, 1)
    assert s.series(b"c", b"", _metrics.COUNTER, 1) == (1, 2)
    assert s.series(b"d", b"", _metrics.COUNTER, 1)[0] == -28  # ENOSPC: one entry stays free
    assert s.series(b"b", b"", _metrics.COUNTER, 1) == (0, 1)


def test_impossible_shapes_are_refused():
    with pytest.raises(ValueError, match="power of two"):
        _metrics.Store(4, 64, 12, 64)
    with pytest.raises(ValueError):
        _metrics_py.Store(4, 64, 12, 64)


def _child(store, cell, hist, n, ready_w, stay):
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            assert store.claim(os.getpid()) >= 0
            c = _metrics.make_cell(store, cell)
            h = _metrics.make_cell(store, hist, struct.pack("3d", *BOUNDS))
            g = _metrics.make_cell(store, cell + 1)
            g.set(5.0)
            for i in range(n):
                c.inc()
                h.observe(i / n)
            os.write(ready_w, b"x")
            if stay:
                time.sleep(30)
            code = 0
        finally:
            os._exit(code)
    return pid


def test_processes_count_into_one_total_that_survives_their_end():
    """Two writer processes count; one is killed, one exits: the totals
    stay, the gauges of the ended ones go."""
    s = _metrics.Store(4, 64, 16, 256)
    assert s.series(b"req\x00", b"", _metrics.COUNTER, 1) == (1, 0)
    assert s.series(b"open\x00", b"", _metrics.GAUGE, 1) == (1, 1)
    rc, hist = s.series(b"dur\x00", b"", _metrics.HISTOGRAM, len(BOUNDS) + 2)
    r, w = os.pipe()
    a = _child(s, 0, hist, 20000, w, True)
    b = _child(s, 0, hist, 30000, w, False)
    try:
        got = b""
        deadline = time.monotonic() + 20
        while len(got) < 2 and time.monotonic() < deadline:
            got += os.read(r, 2)
        assert s.read(0, 1, _metrics.COUNTER) == [50000.0]
        assert s.read(1, 1, _metrics.GAUGE) == [10.0]
        os.waitpid(b, 0)
        assert s.retire(b) >= 0
        os.kill(a, signal.SIGKILL)
        os.waitpid(a, 0)
        assert s.read(0, 1, _metrics.COUNTER) == [50000.0]
        assert s.retire(a) >= 0
        assert s.owners() == [0, 0, 0, 0]
        assert s.read(0, 1, _metrics.COUNTER) == [50000.0]
        assert s.read(1, 1, _metrics.GAUGE) == [0.0]
        cells = s.read(hist, len(BOUNDS) + 2, _metrics.HISTOGRAM)
        assert sum(cells[:-1]) == 50000.0
    finally:
        for pid in (a, b):
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        os.close(r)
        os.close(w)
