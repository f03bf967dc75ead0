"""TLS to the upstream, on the TLS layer over the engine's own I/O:
certificate checked against a test CA, pooled like plain connections; a
handshake that fails is a 502 that says why (and what to change), a slow
one a 504 at the connect timeout; close_notify both ways; large bodies both
ways with backpressure."""

import asyncio
import hashlib
import logging
import socket
import ssl
import struct
import threading
import time

import httpx
import pytest

from proxy_harness import (Harness, Origin, ThreadOrigin, _OriginProto, free_port, open_fds,
                           recv_head, rss_bytes, spawn, stop_proc, wait_port)
from sluiceway.proxy import HttpPeer, ProxyHttp
from tls_certs import HAVE_OPENSSL, make_ca, make_certs, make_client_cert, server_context

pytestmark = pytest.mark.skipif(not HAVE_OPENSSL, reason="openssl not installed")


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("certs"))


class TlsApp(ProxyHttp):
    def __init__(self, **kw):
        self.kw = kw
        self.kw.setdefault("sni", "localhost")
        self.tls_port = None

    def upstream_peer(self, session, ctx):
        return HttpPeer(("127.0.0.1", self.tls_port), tls=True, **self.kw)


def _with_tls_origin(app, certs):
    h = Harness(app)
    h.__enter__()
    origin = Origin()
    sctx = server_context(certs)

    async def start():
        loop = asyncio.get_running_loop()
        origin.server = await loop.create_server(lambda: _OriginProto(origin), "127.0.0.1", 0, ssl=sctx)
        return origin.server.sockets[0].getsockname()[1]
    app.tls_port = h.call(start())
    return h, origin


def test_tls_upstream_with_ca_file_and_reuse(certs):
    app = TlsApp(ca_file=str(certs / "ca.pem"))
    h, origin = _with_tls_origin(app, certs)
    try:
        with httpx.Client(base_url=h.url) as c:
            for _ in range(5):
                assert c.get("/").content == b"hello"
            assert c.get("/big?size=200000").content == b"x" * 200000
        st = h.pool_stats()
        assert st["created"] == 1 and st["reused"] == 5
        assert origin.connections == 1
    finally:
        h.call(origin.stop())
        h.__exit__(None, None, None)


def test_untrusted_certificate_is_502(certs, caplog):
    app = TlsApp()  # system trust store: the test CA is unknown
    with caplog.at_level(logging.WARNING, logger="sluiceway.error"):
        h, origin = _with_tls_origin(app, certs)
        try:
            assert httpx.get(h.url + "/").status_code == 502
        finally:
            h.call(origin.stop())
            h.__exit__(None, None, None)
    assert any("CERTIFICATE_VERIFY_FAILED" in r.getMessage() or "certificate verify failed"
               in r.getMessage() for r in caplog.records)


def test_verify_cert_false_accepts_any_certificate(certs):
    app = TlsApp(verify_cert=False)
    h, origin = _with_tls_origin(app, certs)
    try:
        assert httpx.get(h.url + "/").content == b"hello"
    finally:
        h.call(origin.stop())
        h.__exit__(None, None, None)


def _messages(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "sluiceway.error"]


def _fails_with(app, port, caplog):
    app.tls_port = port
    with caplog.at_level(logging.WARNING, logger="sluiceway.error"):
        with Harness(app) as h:
            r = httpx.get(h.url + "/", timeout=10)
    return r.status_code, " | ".join(_messages(caplog))


def test_handshake_failure_untrusted_ca_says_what_to_change(certs, caplog):
    origin = ThreadOrigin(lambda c: None, tls=server_context(certs))
    try:
        status, msg = _fails_with(TlsApp(), origin.port, caplog)   # system CAs only
    finally:
        origin.close()
    assert status == 502
    assert f"TLS handshake with upstream 127.0.0.1:{origin.port} (sni 'localhost') failed: " \
           "certificate verify failed: unable to get local issuer certificate " \
           "(CERTIFICATE_VERIFY_FAILED); pass the CA that issued it as ca_file" in msg, msg


def test_handshake_failure_wrong_name(certs, caplog):
    origin = ThreadOrigin(lambda c: None, tls=server_context(certs))
    try:
        status, msg = _fails_with(TlsApp(sni="other.example", ca_file=str(certs / "ca.pem")),
                                  origin.port, caplog)
    finally:
        origin.close()
    assert status == 502
    assert "certificate verify failed: Hostname mismatch" in msg and \
        "set sni to a name the certificate holds" in msg, msg


def test_handshake_failure_plain_http_upstream(certs, caplog):
    def plain(c):
        c.recv(65536)   # the client hello, answered as an HTTP server would
        c.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    origin = ThreadOrigin(plain)
    try:
        status, msg = _fails_with(TlsApp(ca_file=str(certs / "ca.pem")), origin.port, caplog)
    finally:
        origin.close()
    assert status == 502
    assert "(WRONG_VERSION_NUMBER); does the upstream speak TLS on this port? " \
           "(plain HTTP: tls=False)" in msg, msg


def test_handshake_failure_upstream_closes_during_handshake(certs, caplog):
    def hang_up(c):
        c.recv(65536)   # the client hello; then a clean close
    origin = ThreadOrigin(hang_up)
    try:
        status, msg = _fails_with(TlsApp(ca_file=str(certs / "ca.pem")), origin.port, caplog)
    finally:
        origin.close()
    assert status == 502
    assert "failed: the peer closed the connection during the TLS handshake" in msg, msg


def test_alert_after_the_handshake_is_a_clear_502(certs, caplog):
    """TLS 1.3: an origin that requires a client certificate finds it
    missing after the client's handshake is done; its alert comes instead
    of the response."""
    sctx = server_context(certs, client_cert=True)
    origin = ThreadOrigin(lambda c: c.recv(65536), tls=sctx, hold=0.5)
    try:
        status, msg = _fails_with(TlsApp(ca_file=str(certs / "ca.pem")), origin.port, caplog)
    finally:
        origin.close()
    assert status == 502
    assert "(TLS: tlsv13 alert certificate required (TLSV13_ALERT_CERTIFICATE_REQUIRED)); " \
           "the upstream wants a client certificate: pass client_cert and client_key" in msg, msg


def test_slow_handshake_hits_the_connect_timeout(certs, caplog):
    """An upstream that accepts the TCP connection and never answers the
    client hello: 504 at connect_timeout, and nothing stays open."""
    from sluiceway import _engine

    stop = threading.Event()
    origin = ThreadOrigin(lambda c: stop.wait(10))
    app = TlsApp(ca_file=str(certs / "ca.pem"), connect_timeout=0.3)
    app.tls_port = origin.port
    try:
        with caplog.at_level(logging.WARNING, logger="sluiceway.error"):
            with Harness(app) as h:
                base = h.run(_engine.io_connections, h.loop)
                t0 = time.monotonic()
                r = httpx.get(h.url + "/", timeout=10)
                took = time.monotonic() - t0
                time.sleep(0.05)
                after = h.run(_engine.io_connections, h.loop)
                stats = h.pool_stats()
    finally:
        stop.set()
        origin.close()
    assert r.status_code == 504 and 0.25 < took < 3
    msg = " | ".join(_messages(caplog))
    assert f"the TLS handshake with upstream 127.0.0.1:{origin.port} did not finish within 0.3s " \
           "(connect_timeout)" in msg, msg
    assert after == base
    assert stats["created"] == 0 and stats["closed"] == 0


def _hello_then_reset(c):
    c.recv(65536)   # the client hello; then a reset instead of an answer
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _hello_then_wait_for_eof(c):
    c.recv(65536)   # the client hello, never answered
    c.recv(65536)   # returns when the proxy gives up


# Each: (origin handler, origin's TLS context or None, app options, status).
_FAILURES = {
    "untrusted-ca": (lambda c: None, "server", {}, 502),
    "wrong-name": (lambda c: None, "server", {"sni": "other.example", "ca": True}, 502),
    "plain-http-upstream": (lambda c: c.recv(65536) and c.sendall(
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
        None, {"ca": True}, 502),
    "closed-mid-handshake": (lambda c: c.recv(65536), None, {"ca": True}, 502),
    "reset-mid-handshake": (_hello_then_reset, None, {"ca": True}, 502),
    "handshake-timeout": (_hello_then_wait_for_eof, None, {"ca": True, "connect_timeout": 0.2}, 504),
    "alert-after-handshake": (lambda c: c.recv(65536), "client-cert", {"ca": True}, 502),
    # an origin that wants a client certificate: none given (TLS 1.2: the
    # handshake fails), or one from a CA it does not trust (TLS 1.3: its
    # alert comes after the proxy's handshake is done; TLS 1.2: during it)
    "no-client-cert-tls12": (lambda c: c.recv(65536), "client-cert-tls12", {"ca": True}, 502),
    "untrusted-client-cert": (lambda c: c.recv(65536), "client-cert",
                              {"ca": True, "cert": "cli-other"}, 502),
    "untrusted-client-cert-tls12": (lambda c: c.recv(65536), "client-cert-tls12",
                                    {"ca": True, "cert": "cli-other"}, 502),
}


def _tls12(ctx):
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx


@pytest.mark.parametrize("kind", list(_FAILURES))
def test_tls_failures_leave_no_descriptor_or_connection(certs, kind):
    """A TLS upstream that fails the same way again and again: every
    request is answered, and afterwards the proxy holds no more descriptors
    or registered connections than before, the pool holds nothing, and every
    upstream connection it made was closed."""
    from sluiceway import _engine

    handler, tls, opts, status = _FAILURES[kind]
    opts = dict(opts)
    if opts.pop("ca", False):
        opts["ca_file"] = str(certs / "ca.pem")
    cert = opts.pop("cert", None)
    if cert is not None:
        if not (certs / f"{cert}.pem").exists():
            make_ca(certs, "ca-other")
            make_client_cert(certs, cert, "client of another CA", ca="ca-other")
        opts["client_cert"], opts["client_key"] = str(certs / f"{cert}.pem"), str(certs / f"{cert}.key")
    sctx = {None: None, "server": server_context(certs),
            "client-cert": server_context(certs, client_cert=True),
            "client-cert-tls12": _tls12(server_context(certs, client_cert=True))}[tls]
    origin = ThreadOrigin(handler, tls=sctx)
    app = TlsApp(**opts)
    app.tls_port = origin.port

    def settle():
        for t in list(origin.threads):
            t.join(5)

    def counts(h):
        return open_fds(), h.run(_engine.io_connections, h.loop)

    try:
        with Harness(app) as h:
            with httpx.Client(base_url=h.url, timeout=10) as c:
                assert c.get("/").status_code == status   # warm up: contexts, freelists
                settle()
                fds0, io0 = counts(h)
                for _ in range(20):
                    assert c.get("/").status_code == status
                settle()
                deadline = time.monotonic() + 3
                while counts(h) > (fds0, io0) and time.monotonic() < deadline:
                    time.sleep(0.05)
                fds1, io1 = counts(h)
                stats = h.pool_stats()
                active = h.engine().active_requests()
    finally:
        origin.close()
    assert not [t for t in origin.threads if t.is_alive()]
    assert fds1 <= fds0, (fds0, fds1)
    assert io1 == io0, (io0, io1)
    assert active == 0
    assert stats["idle"] == 0 and stats["created"] == stats["closed"], stats


@pytest.mark.parametrize("clean", [False, True], ids=["no-close_notify", "close_notify"])
def test_close_delimited_response_needs_close_notify(certs, caplog, clean):
    """A response that ends with the connection: its end is the origin's
    close_notify. A TCP close without it may be a cut (an attacker can send
    one), so the response is not complete: the client sees it cut, and the
    log says why."""
    def answer(c):
        recv_head(c)
        c.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nclosed-body")
        if clean:
            c.unwrap()
    origin = ThreadOrigin(answer, tls=server_context(certs))
    app = TlsApp(ca_file=str(certs / "ca.pem"))
    app.tls_port = origin.port
    try:
        with caplog.at_level(logging.WARNING, logger="sluiceway.error"):
            with Harness(app) as h:
                if clean:
                    r = httpx.get(h.url + "/", timeout=10)
                    assert r.status_code == 200 and r.content == b"closed-body"
                else:
                    with pytest.raises(httpx.RemoteProtocolError):
                        httpx.get(h.url + "/", timeout=10)
    finally:
        origin.close()
    msg = " | ".join(_messages(caplog))
    if clean:
        assert msg == ""
    else:
        assert "closed the connection before the response was complete " \
               "(the TLS stream ended without a close_notify)" in msg, msg


def test_pooled_tls_connection_reused_then_closed_with_close_notify(certs):
    """Keep-alive requests share one TLS connection; when the origin ends it
    cleanly while it is pooled, the next request opens a new one; when the
    proxy stops, it ends its pooled connection with a close_notify."""
    ends = []

    def serve(c):
        n = 0
        while True:
            try:
                recv_head(c)
            except EOFError:
                ends.append("proxy: clean")   # the proxy's close_notify
                return
            except ssl.SSLEOFError:
                ends.append("proxy: no close_notify")
                return
            n += 1
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            if n == 3:
                time.sleep(0.1)
                c.unwrap()    # ends it cleanly while the proxy has it pooled
                ends.append("origin: clean")
                return
    origin = ThreadOrigin(serve, tls=server_context(certs))
    app = TlsApp(ca_file=str(certs / "ca.pem"))
    app.tls_port = origin.port
    try:
        with Harness(app) as h:
            with httpx.Client(base_url=h.url) as c:
                for _ in range(3):
                    assert c.get("/").content == b"ok"
                time.sleep(0.3)
                assert c.get("/").content == b"ok"
            st = h.pool_stats()
            assert st["created"] == 2 and st["reused"] == 2 and st["idle"] == 1
    finally:
        origin.close()
    assert ends == ["origin: clean", "proxy: clean"], (ends, origin.errors)


BIG = 48 << 20


def _pattern(n):
    block = hashlib.sha256(b"sluiceway").digest() * (65536 // 32)
    return block * (n // len(block)) + block[:n % len(block)]


APP = """
import os
from sluiceway.proxy import HttpPeer, ProxyHttp

class App(ProxyHttp):
    def upstream_peer(self, session, ctx):
        return HttpPeer(("127.0.0.1", int(os.environ["ORIGIN_PORT"])), tls=True, sni="localhost",
                        ca_file=os.environ["CA"])
"""


def test_large_bodies_both_ways_with_backpressure(certs, tmp_path):
    """48 MiB up to an origin that reads slowly, and 48 MiB down to a client
    that reads slowly, through a proxy (a subprocess) on a TLS upstream: the
    bytes arrive intact and the proxy's RSS stays flat."""
    got = {}

    def serve(c):
        head, rest = recv_head(c)
        if head.startswith(b"POST"):
            h = hashlib.sha256(rest)
            n = len(rest)
            while n < BIG:
                b = c.recv(65536)
                if not b:
                    break
                h.update(b)
                n += len(b)
                time.sleep(0.0005)   # a slow upstream
            got["up"] = (n, h.hexdigest())
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        else:
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BIG)
            c.sendall(_pattern(BIG))
        recv_head(c)   # until the proxy closes
    origin = ThreadOrigin(serve, tls=server_context(certs))
    (tmp_path / "tlsbp.py").write_text(APP)
    port = free_port()
    p = spawn(["-m", "sluiceway.cli", "run", "tlsbp:App", "-l", f"127.0.0.1:{port}"],
              {"ORIGIN_PORT": str(origin.port), "CA": str(certs / "ca.pem"),
               "PYTHONPATH": str(tmp_path)})
    samples, stop = [], threading.Event()

    def sample():
        while not stop.is_set():
            samples.append(rss_bytes(p.pid))
            time.sleep(0.02)
    try:
        wait_port(port, p)
        base = rss_bytes(p.pid)
        th = threading.Thread(target=sample, daemon=True)
        th.start()
        body = _pattern(BIG)
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        s.sendall(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % BIG)
        s.sendall(body)
        resp = b""
        while not resp.endswith(b"ok"):
            chunk = s.recv(4096)
            assert chunk, resp
            resp += chunk
        assert resp.startswith(b"HTTP/1.1 200")
        assert got["up"] == (BIG, hashlib.sha256(body).hexdigest())
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
        s.sendall(b"GET /down HTTP/1.1\r\nHost: x\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(4096)
        head, _, first = head.partition(b"\r\n\r\n")
        h = hashlib.sha256(first)
        n = len(first)
        while n < BIG:
            b = s.recv(65536)
            assert b
            h.update(b)
            n += len(b)
            time.sleep(0.0005)   # a slow client
        s.close()
        assert h.hexdigest() == hashlib.sha256(body).hexdigest()
        stop.set()
        th.join()
        rise = max(samples) - base
        assert rise < 24 << 20, f"RSS rose by {rise / (1 << 20):.1f} MiB"
    finally:
        stop.set()
        stop_proc(p)
        origin.close()


@pytest.mark.parametrize("case", ["none-tls12", "untrusted-tls12", "untrusted-tls13"])
def test_client_certificate_refused_says_what_to_change(certs, caplog, case):
    """An origin that wants a client certificate and gets none, or one
    from a CA it does not trust: a 502 whose log line has the origin's
    alert and, when it came during the handshake, what to change."""
    sctx = server_context(certs, client_cert=True)
    if case.endswith("tls12"):
        _tls12(sctx)
    opts = {"ca_file": str(certs / "ca.pem")}
    if case.startswith("untrusted"):
        if not (certs / "cli-other.pem").exists():
            make_ca(certs, "ca-other")
            make_client_cert(certs, "cli-other", "client of another CA", ca="ca-other")
        opts.update(client_cert=str(certs / "cli-other.pem"), client_key=str(certs / "cli-other.key"))
    origin = ThreadOrigin(lambda c: c.recv(65536), tls=sctx, hold=0.5)
    try:
        status, msg = _fails_with(TlsApp(**opts), origin.port, caplog)
    finally:
        origin.close()
    assert status == 502
    want = {
        "none-tls12": "(SSLV3_ALERT_HANDSHAKE_FAILURE); the upstream refused the handshake (no "
                      "cipher in common, or it wants a client certificate: client_cert)",
        "untrusted-tls12": "(TLSV1_ALERT_UNKNOWN_CA); the upstream does not trust the CA that "
                           "issued the client certificate (client_cert)",
        "untrusted-tls13": "(TLS: tlsv1 alert unknown ca (TLSV1_ALERT_UNKNOWN_CA)); the upstream "
                           "does not trust the CA that issued the client certificate (client_cert)",
    }[case]
    assert want in msg, msg
