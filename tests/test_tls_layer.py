"""The TLS layer (pyx/sluiceway/engine/tls.pyx) on the engine's own I/O,
driven through ``_io_probe.IoProbe`` (a connection with no protocol that
records what the I/O calls) as a server and as a client.

The other end is Python's ``ssl.SSLObject`` over memory BIOs, pumped by
hand over a non-blocking Unix socket pair, so every test is one thread and
deterministic; the renegotiation test uses ``openssl s_client``."""

import asyncio
import random
import socket
import ssl
import subprocess
import time

import pytest
import uvloop
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sluiceway import _engine, _io_probe
from sluiceway._io_py import HIGH_WATER, LOW_WATER
from tls_certs import HAVE_OPENSSL, client_context, make_certs, server_context

pytestmark = pytest.mark.skipif(not HAVE_OPENSSL, reason="openssl not installed")

BUF = 4096


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def loop():
    lp = uvloop.new_event_loop()
    yield lp
    _engine.forget_pool(lp)
    lp.close()


class Peer:
    """The other end: an SSLObject over memory BIOs on a non-blocking socket."""

    def __init__(self, sock, ctx, server_side, hostname=None):
        self.sock = sock
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inc, self.out, server_side=server_side,
                                server_hostname=hostname)
        self.backlog = b""
        self.done = False      # handshake complete
        self.data = bytearray()
        self.clean_eof = False  # the probe's close_notify came
        self.tcp_eof = False
        self.err = None
        self.read_budget = None  # bytes of ciphertext it may still read (None: any)

    def pump(self):
        self.backlog += self.out.read()
        while self.backlog:
            try:
                n = self.sock.send(self.backlog)
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                break
            self.backlog = self.backlog[n:]
        while not self.tcp_eof and (self.read_budget is None or self.read_budget > 0):
            want = 65536 if self.read_budget is None else min(65536, self.read_budget)
            try:
                got = self.sock.recv(want)
            except BlockingIOError:
                break
            except ConnectionResetError:
                got = b""
            if not got:
                self.tcp_eof = True
                self.inc.write_eof()
                break
            if self.read_budget is not None:
                self.read_budget -= len(got)
            self.inc.write(got)
        try:
            if not self.done:
                self.obj.do_handshake()
                self.done = True
            while True:
                chunk = self.obj.read(65536)
                if not chunk:
                    self.clean_eof = True
                    break
                self.data += chunk
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            pass
        except ssl.SSLZeroReturnError:
            self.clean_eof = True
        except ssl.SSLError as exc:
            self.err = exc
        self.backlog += self.out.read()
        while self.backlog:
            try:
                n = self.sock.send(self.backlog)
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                break
            self.backlog = self.backlog[n:]


def _pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUF)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUF)
    a.setblocking(False)
    b.setblocking(False)
    return a, b


def _spin(loop, peer, until, limit=5.0):
    deadline = time.monotonic() + limit
    while not until():
        assert time.monotonic() < deadline, "timed out"
        loop.run_until_complete(asyncio.sleep(0))
        if peer is not None:
            peer.pump()
        loop.run_until_complete(asyncio.sleep(0))


def _kinds(probe):
    return [e[0] for e in probe.events]


def _server_probe(loop, certs, client_cert=False):
    a, b = _pair()
    probe = _io_probe.IoProbe()
    probe.attach(loop, a.detach())
    probe.start_tls(server_context(certs, client_cert=client_cert), server_side=True)
    return probe, b


def _client_probe(loop, ctx, hostname="localhost"):
    a, b = _pair()
    probe = _io_probe.IoProbe()
    probe.attach(loop, a.detach())
    probe.start_tls(ctx, server_side=False, server_hostname=hostname)
    return probe, b


def test_server_side_handshake_data_and_close_notify(loop, certs):
    probe, b = _server_probe(loop, certs)
    peer = Peer(b, client_context(certs), False, "localhost")
    try:
        _spin(loop, peer, lambda: ("handshake", None) in probe.events and peer.done)
        info = probe.tls_info
        assert info["version"] in ("TLSv1.2", "TLSv1.3") and info["cipher"]
        assert info["alpn"] is None and info["peer_cert"] is None  # no client certificate
        peer.obj.write(b"ping")
        _spin(loop, peer, lambda: ("data", b"ping") in probe.events)
        probe.write(b"pong")
        _spin(loop, peer, lambda: peer.data == b"pong")
        # The client's close_notify is the probe's EOF; the probe closes with its own.
        try:
            peer.obj.unwrap()
        except ssl.SSLWantReadError:
            pass
        _spin(loop, peer, lambda: "lost" in _kinds(probe) and peer.clean_eof)
        assert _kinds(probe) == ["handshake", "data", "eof", "lost"]
        assert probe.events[-1] == ("lost", None) and probe.fileno == -1
    finally:
        b.close()
        probe.abort()


def test_server_side_client_certificate(loop, certs):
    probe, b = _server_probe(loop, certs, client_cert=True)
    peer = Peer(b, client_context(certs, cert=True), False, "localhost")
    try:
        _spin(loop, peer, lambda: "handshake" in _kinds(probe) and peer.done)
        assert probe.events[0] == ("handshake", None)
        peer.obj.write(b"x")   # TLS 1.3: the server checks the certificate after the client is done
        _spin(loop, peer, lambda: ("data", b"x") in probe.events)
        cert = probe.tls_info["peer_cert"]
        assert ((("commonName", "sluiceway test client"),) in cert["subject"])
        assert probe.tls_info["peer_cert_der"].startswith(b"\x30")
    finally:
        b.close()
        probe.abort()


def test_client_side_writes_before_the_handshake_wait_for_it(loop, certs):
    probe, b = _client_probe(loop, client_context(certs))
    peer = Peer(b, server_context(certs), True)
    try:
        probe.write(b"early ")        # the handshake is not done: kept in the layer
        probe.writev([b"and ", b"vectored"])
        _spin(loop, peer, lambda: peer.data == b"early and vectored")
        assert probe.events[0] == ("handshake", None)
        cert = probe.tls_info["peer_cert"]
        assert (("commonName", "localhost"),) in cert["subject"]
        peer.obj.write(b"answer")
        _spin(loop, peer, lambda: ("data", b"answer") in probe.events)
    finally:
        b.close()
        probe.abort()


def test_untrusted_certificate_is_a_handshake_failure_not_a_loss(loop, certs):
    probe, b = _client_probe(loop, ssl.create_default_context())  # the test CA is unknown
    peer = Peer(b, server_context(certs), True)
    try:
        _spin(loop, peer, lambda: "handshake" in _kinds(probe) and probe.fileno == -1)
        _spin(loop, peer, lambda: peer.err is not None or peer.tcp_eof)
        loop.run_until_complete(asyncio.sleep(0.01))
        assert _kinds(probe) == ["handshake"]   # no on_lost: it never opened
        exc = probe.events[0][1]
        assert isinstance(exc, ssl.SSLCertVerificationError)
        # The probe told the server why, with an alert.
        assert peer.err is not None and "UNKNOWN_CA" in str(peer.err)
    finally:
        b.close()
        probe.abort()


def test_plain_http_on_a_tls_port_fails_the_handshake(loop, certs):
    probe, b = _server_probe(loop, certs)
    try:
        b.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        _spin(loop, None, lambda: probe.fileno == -1)
        loop.run_until_complete(asyncio.sleep(0.01))
        assert _kinds(probe) == ["handshake"]
        exc = probe.events[0][1]
        assert isinstance(exc, ssl.SSLError) and exc.reason == "HTTP_REQUEST"
    finally:
        b.close()


def test_eof_during_the_handshake(loop, certs):
    probe, b = _client_probe(loop, client_context(certs))
    try:
        b.shutdown(socket.SHUT_WR)
        _spin(loop, None, lambda: probe.fileno == -1)
        loop.run_until_complete(asyncio.sleep(0.01))
        assert _kinds(probe) == ["handshake"]
        exc = probe.events[0][1]
        assert isinstance(exc, ConnectionResetError) and "during the TLS handshake" in str(exc)
    finally:
        b.close()


def test_eof_without_close_notify_is_a_loss_not_an_eof(loop, certs):
    probe, b = _server_probe(loop, certs)
    peer = Peer(b, client_context(certs), False, "localhost")
    try:
        _spin(loop, peer, lambda: ("handshake", None) in probe.events and peer.done)
        peer.obj.write(b"last words")
        peer.pump()
        b.shutdown(socket.SHUT_WR)      # TCP EOF, no close_notify
        _spin(loop, peer, lambda: "lost" in _kinds(probe))
        assert ("data", b"last words") in probe.events
        assert "eof" not in _kinds(probe)
        exc = probe.events[-1][1]
        assert isinstance(exc, ConnectionResetError) and "close_notify" in str(exc)
    finally:
        b.close()
        probe.abort()


def test_pausing_reading_holds_the_ciphertext(loop, certs):
    probe, b = _server_probe(loop, certs)
    peer = Peer(b, client_context(certs), False, "localhost")
    try:
        _spin(loop, peer, lambda: ("handshake", None) in probe.events and peer.done)
        probe.pause_reading()
        peer.obj.write(b"one")
        peer.obj.write(b"two")
        for _ in range(5):
            peer.pump()
            loop.run_until_complete(asyncio.sleep(0))
        assert _kinds(probe) == ["handshake"]
        probe.resume_reading()
        _spin(loop, peer, lambda: "data" in _kinds(probe))
        # Both records of one read arrive as one piece.
        assert probe.events[1] == ("data", b"onetwo")
    finally:
        b.close()
        probe.abort()


sizes = st.integers(0, 90_000)
ops = st.lists(st.one_of(
    st.tuples(st.just("write"), sizes),
    st.tuples(st.just("writev"), st.lists(st.integers(0, 30_000), min_size=1, max_size=10)),
    st.tuples(st.just("send"), st.integers(0, 300), st.integers(0, 60_000), st.floats(0, 1), st.floats(0, 1)),
    st.tuples(st.just("read"), st.integers(0, 200_000)),
    st.tuples(st.just("tick")),
), max_size=20)


def _check_marks(events, queued):
    marks = [e for e in events if e[0] in ("pause", "resume")]
    for i, e in enumerate(marks):
        assert e[0] == ("pause" if i % 2 == 0 else "resume"), marks
        assert e[1] > HIGH_WATER if e[0] == "pause" else e[1] <= LOW_WATER
    if queued > HIGH_WATER:
        assert marks and marks[-1][0] == "pause"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=ops, seed=st.integers(0, 2 ** 32 - 1))
def test_writes_through_tls_arrive_in_order_with_backpressure(loop, certs, ops, seed):
    """The write path of test_io_queue.py, through the layer: whatever the
    writes and the peer's partial reads, the peer decrypts exactly what was
    written, in order, and pause/resume follow the queued ciphertext."""
    rnd = random.Random(seed)
    probe, b = _server_probe(loop, certs)
    peer = Peer(b, client_context(certs), False, "localhost")
    want = bytearray()
    try:
        _spin(loop, peer, lambda: ("handshake", None) in probe.events and peer.done)
        peer.read_budget = 0
        for op in ops:
            if op[0] == "write":
                data = rnd.randbytes(op[1])
                want += data
                probe.write(data)
            elif op[0] == "writev":
                parts = [rnd.randbytes(n) for n in op[1]]
                want += b"".join(parts)
                probe.writev(parts)
            elif op[0] == "send":
                head = rnd.randbytes(op[1]) if op[1] else None
                owner = rnd.randbytes(op[2])
                off = int(op[3] * len(owner))
                n = int(op[4] * (len(owner) - off))
                want += (head or b"") + owner[off:off + n]
                probe.send(head, owner, off, n)
            elif op[0] == "read":
                peer.read_budget = op[1]
                for _ in range(40):
                    loop.run_until_complete(asyncio.sleep(0))
                    peer.pump()
                    if peer.read_budget <= 0:
                        break
                peer.read_budget = 0
            else:
                loop.run_until_complete(asyncio.sleep(0))
            assert bytes(peer.data) == bytes(want[:len(peer.data)])
            _check_marks(probe.events, probe.queued)
            if probe.queued:
                event("bytes queued")
        if any(e[0] == "pause" for e in probe.events):
            event("paused")
        probe.close()
        peer.read_budget = None
        _spin(loop, peer, lambda: peer.clean_eof and "lost" in _kinds(probe), limit=10)
        assert bytes(peer.data) == bytes(want)
        assert probe.events[-1] == ("lost", None) and probe.queued == 0
        _check_marks(probe.events, 0)
    finally:
        b.close()
        probe.abort()


def test_renegotiation_is_refused(loop, certs):
    """A TLS 1.2 client asking to renegotiate (s_client's "R") is refused
    (OP_NO_RENEGOTIATION: a no_renegotiation alert); OpenSSL's client then
    gives up with a handshake_failure alert, which ends the connection with
    that reason. No second handshake happens."""
    ls = socket.create_server(("127.0.0.1", 0))
    port = ls.getsockname()[1]
    proc = subprocess.Popen(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_2",
                             "-CAfile", str(certs / "ca.pem"), "-servername", "localhost"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    probe = _io_probe.IoProbe()
    try:
        c, _ = ls.accept()
        c.setblocking(False)
        probe.attach(loop, c.detach())
        probe.start_tls(server_context(certs), server_side=True)
        _spin(loop, None, lambda: "handshake" in _kinds(probe), limit=10)
        assert probe.events[0] == ("handshake", None)
        assert probe.tls_info["version"] == "TLSv1.2"
        proc.stdin.write(b"R\n")
        proc.stdin.flush()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and "lost" not in _kinds(probe):
            loop.run_until_complete(asyncio.sleep(0.02))
    finally:
        proc.kill()
        out = proc.communicate()[0]
        ls.close()
        probe.abort()
    assert b"no renegotiation" in out
    assert _kinds(probe) == ["handshake", "lost"]
    exc = probe.events[-1][1]
    assert isinstance(exc, ssl.SSLError) and "HANDSHAKE_FAILURE" in str(exc)
