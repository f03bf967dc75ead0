"""The engine's write path (``_Conn``, pyx/sluiceway/engine/io.pyx) against its pure-Python
reference (``sluiceway._io_py.WriteQueue``): hypothesis drives both with the
same writes (plain, vectored, head + slice), the same partial reads by the
peer, and a close or an abort; each writes to its own Unix socket pair with
small buffers, so partial writes and the queue are the common case."""

import asyncio
import random
import select
import socket
import time

import pytest
import uvloop
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sluiceway import _engine, _io_probe
from sluiceway._io_py import HIGH_WATER, LOW_WATER, WriteQueue

BUF = 4096


@pytest.fixture(scope="module")
def loop():
    lp = uvloop.new_event_loop()
    yield lp
    _engine.forget_pool(lp)
    lp.close()


def _pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUF)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUF)
    a.setblocking(False)
    b.setblocking(False)
    return a, b


def _read(sock, k, out):
    """Read up to k bytes that are there; True at EOF."""
    while k > 0:
        try:
            got = sock.recv(min(k, 65536))
        except BlockingIOError:
            return False
        if not got:
            return True
        out += got
        k -= len(got)
    return False


def _check_marks(events, queued):
    """Pause and resume alternate, pause first; a pause is called above
    HIGH_WATER, a resume at LOW_WATER or below; above HIGH_WATER queued
    bytes the writer is paused."""
    marks = [e for e in events if e[0] in ("pause", "resume")]
    for i, e in enumerate(marks):
        assert e[0] == ("pause" if i % 2 == 0 else "resume"), marks
        if e[0] == "pause":
            assert e[1] > HIGH_WATER
        else:
            assert e[1] <= LOW_WATER
    if queued > HIGH_WATER:
        assert marks and marks[-1][0] == "pause"


sizes = st.integers(0, 90_000)
ops = st.lists(st.one_of(
    st.tuples(st.just("write"), sizes),
    st.tuples(st.just("writev"), st.lists(st.integers(0, 30_000), min_size=1, max_size=10)),
    st.tuples(st.just("send"), st.integers(0, 300), st.integers(0, 60_000), st.floats(0, 1), st.floats(0, 1)),
    st.tuples(st.just("read"), st.integers(0, 200_000)),
    st.tuples(st.just("tick")),
), max_size=25)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=ops, end=st.sampled_from(["close", "abort"]), seed=st.integers(0, 2 ** 32 - 1))
def test_write_path_matches_reference(loop, ops, end, seed):
    rnd = random.Random(seed)
    a, b = _pair()
    c, d = _pair()
    probe = _io_probe.IoProbe()
    probe.attach(loop, a.detach())
    ref_events = []
    ref = WriteQueue(c, on_pause=lambda: ref_events.append(("pause", ref.size)),
                     on_resume=lambda: ref_events.append(("resume", ref.size)),
                     on_lost=lambda exc: ref_events.append(("lost", exc)))
    want = bytearray()
    out_c, out_r = bytearray(), bytearray()

    def tick():
        for _ in range(2):
            loop.run_until_complete(asyncio.sleep(0))
        if ref.queue and select.select([], [c], [], 0)[1]:
            ref.writable()

    try:
        for op in ops:
            if op[0] == "write":
                data = rnd.randbytes(op[1])
                want += data
                probe.write(data)
                ref.write(data)
            elif op[0] == "writev":
                parts = [rnd.randbytes(n) for n in op[1]]
                want += b"".join(parts)
                probe.writev(parts)
                ref.writev(parts)
            elif op[0] == "send":
                head = rnd.randbytes(op[1]) if op[1] else None
                owner = rnd.randbytes(op[2])
                off = int(op[3] * len(owner))
                n = int(op[4] * (len(owner) - off))
                want += (head or b"") + owner[off:off + n]
                probe.send(head, owner, off, n)
                ref.send(head, owner, off, n)
            elif op[0] == "read":
                # the peer reads about k bytes, the writers flushing as it goes
                kc = kr = op[1]
                for _ in range(40):
                    if kc <= 0 and kr <= 0:
                        break
                    tick()
                    n0, n1 = len(out_c), len(out_r)
                    _read(b, kc, out_c)
                    _read(d, kr, out_r)
                    kc -= len(out_c) - n0
                    kr -= len(out_r) - n1
            else:
                tick()
            assert bytes(out_c) == bytes(want[:len(out_c)])
            assert bytes(out_r) == bytes(want[:len(out_r)])
            _check_marks(probe.events, probe.queued)
            _check_marks(ref_events, ref.size)
            if probe.queued:
                event("compiled: bytes queued")
            if ref.size:
                event("reference: bytes queued")
        if any(e[0] == "pause" for e in probe.events):
            event("compiled: paused")
        if any(e[0] == "resume" for e in probe.events):
            event("compiled: resumed")
        if any(e[0] == "resume" for e in ref_events):
            event("reference: resumed")
        if end == "close":
            probe.close()
            ref.close()
        else:
            probe.abort()
            ref.abort()
        eof_c = eof_r = False
        deadline = time.monotonic() + 10
        while not (eof_c and eof_r):
            assert time.monotonic() < deadline, "the writer did not finish"
            tick()
            eof_c = eof_c or _read(b, 1 << 20, out_c)
            eof_r = eof_r or _read(d, 1 << 20, out_r)
        tick()
        if end == "close":
            assert bytes(out_c) == bytes(want)
            assert bytes(out_r) == bytes(want)
        else:
            assert bytes(out_c) == bytes(want[:len(out_c)])
            assert bytes(out_r) == bytes(want[:len(out_r)])
        assert [e for e in probe.events if e[0] == "lost"] == [("lost", None)]
        assert [e for e in ref_events if e[0] == "lost"] == [("lost", None)]
        assert probe.fileno == -1 and probe.queued == 0
        _check_marks(probe.events, 0)
        _check_marks(ref_events, 0)
    finally:
        for s in (b, c, d):
            s.close()
        probe.abort()


def test_a_reset_peer_aborts_with_the_error(loop):
    a, b = _pair()
    probe = _io_probe.IoProbe()
    probe.attach(loop, a.detach())
    b.close()
    probe.write(b"x" * 100)
    for _ in range(3):
        loop.run_until_complete(asyncio.sleep(0))
    lost = [e for e in probe.events if e[0] == "lost"]
    assert len(lost) == 1 and isinstance(lost[0][1], OSError)
    assert probe.fileno == -1


def test_reads_eof_and_pausing(loop):
    a, b = _pair()
    probe = _io_probe.IoProbe()
    probe.attach(loop, a.detach())
    b.sendall(b"hello")
    for _ in range(3):
        loop.run_until_complete(asyncio.sleep(0))
    assert ("data", b"hello") in probe.events
    probe.pause_reading()
    b.sendall(b"more")
    for _ in range(3):
        loop.run_until_complete(asyncio.sleep(0))
    assert ("data", b"more") not in probe.events  # paused: not read
    probe.resume_reading()
    b.close()
    for _ in range(5):
        loop.run_until_complete(asyncio.sleep(0))
    kinds = [e[0] for e in probe.events]
    assert ("data", b"more") in probe.events
    assert kinds.index("eof") > kinds.index("data")
    assert kinds[-1] == "lost" and kinds.count("lost") == 1


def test_close_gives_up_on_a_peer_that_does_not_read(loop):
    a, b = _pair()
    probe = _io_probe.IoProbe()
    probe.attach(loop, a.detach())
    try:
        probe.write(b"q" * 300_000)
        assert probe.queued > 0
        probe.close(flush_timeout=0.2)
        loop.run_until_complete(asyncio.sleep(0.1))
        assert probe.fileno >= 0  # still flushing
        loop.run_until_complete(asyncio.sleep(0.3))
        assert probe.fileno == -1 and probe.queued == 0
        lost = [e for e in probe.events if e[0] == "lost"]
        assert len(lost) == 1 and isinstance(lost[0][1], TimeoutError)
    finally:
        b.close()
