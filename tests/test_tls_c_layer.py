"""TLS listeners' C layer (csrc/sw_tls.c over the libssl that ssl loaded):
which listeners run on it and which stay on ssl's SSLObject (and why), SNI
chosen in C, and nothing leaked over many connections that finish, fail or
are cut. The behaviour both layers share is tested in test_tls_listen.py,
which CI runs on both (SLUICEWAY_TLS_LAYER=python for ssl's)."""

import os
import socket
import ssl
import subprocess
import sys

import httpx
import pytest

from proxy_harness import Harness, open_fds, recv_all
from sluiceway import _engine
from sluiceway.tls import TlsOptions, build
from test_tls_listen import Seen as Pass, wait_until as _wait
from tls_certs import HAVE_OPENSSL, issue, make_certs

pytestmark = pytest.mark.skipif(not HAVE_OPENSSL, reason="openssl not installed")

ON_PYTHON_LAYER = os.environ.get("SLUICEWAY_TLS_LAYER") == "python"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = make_certs(tmp_path_factory.mktemp("certs"))
    issue(d, "a", "a.example", sans=("DNS:a.example",))
    issue(d, "wild", "wild", sans=("DNS:*.wild.example",), ec=True)
    return d


def opts(d, **kw):
    return TlsOptions.make(str(d / "srv.pem"), str(d / "srv.key"), **kw)


def test_which_listeners_run_on_the_c_layer_and_why_not(certs):
    layer = _engine.tls_layer_for
    if ON_PYTHON_LAYER:
        assert layer(build(opts(certs)).context) == ("python", "SLUICEWAY_TLS_LAYER=python")
        return
    # What add_tls and tls_listen build: on the C layer, SNI table and all.
    assert layer(build(opts(certs)).context) == ("c", None)
    multi = build(opts(certs, certificates=[(str(certs / "a.pem"), str(certs / "a.key")),
                                            (str(certs / "wild.pem"), str(certs / "wild.key"))]))
    assert layer(multi.context) == ("c", None)
    # Client certificates: ssl decodes the verified certificate for the hooks.
    kind, why = layer(build(opts(certs, client_auth="optional",
                                 client_ca=str(certs / "ca.pem"))).context)
    assert kind == "python" and "client certificates" in why
    # A context with a Python SNI callback of someone else's.
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(certs / "srv.pem"), str(certs / "srv.key"))
    ctx.sni_callback = lambda obj, name, c: None
    kind, why = layer(ctx)
    assert kind == "python" and "sni_callback" in why
    assert layer(object())[0] == "python"


def test_the_environment_variable_keeps_listeners_on_ssls_layer():
    code = ("import ssl; from sluiceway import _engine; "
            "print(_engine.tls_layer_for(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)))")
    env = dict(os.environ, SLUICEWAY_TLS_LAYER="python")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.strip() == "('python', 'SLUICEWAY_TLS_LAYER=python')"


def _served_cert(port, name, certs):
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    ctx.check_hostname = False
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        with ctx.wrap_socket(s, server_hostname=name) as t:
            return t.getpeercert(True), t.version()


def test_sni_in_c_picks_exact_wildcard_case_and_default(certs):
    tls = {"cert_path": str(certs / "srv.pem"), "key_path": str(certs / "srv.key"),
           "certificates": [(str(certs / "a.pem"), str(certs / "a.key")),
                            (str(certs / "wild.pem"), str(certs / "wild.key"))]}
    der = {n: ssl.PEM_cert_to_DER_cert((certs / f"{n}.pem").read_text()) for n in ("srv", "a", "wild")}
    with Harness(Pass(), tls=tls) as h:
        assert _served_cert(h.port, "a.example", certs)[0] == der["a"]
        assert _served_cert(h.port, "A.EXAMPLE", certs)[0] == der["a"]
        assert _served_cert(h.port, "deep.wild.example", certs)[0] == der["wild"]
        assert _served_cert(h.port, "Deep.Wild.Example", certs)[0] == der["wild"]
        # A wildcard covers one label only, and not its own suffix.
        assert _served_cert(h.port, "a.b.wild.example", certs)[0] == der["srv"]
        assert _served_cert(h.port, "wild.example", certs)[0] == der["srv"]
        assert _served_cert(h.port, "nobody.example", certs)[0] == der["srv"]
        assert _served_cert(h.port, ".".join(["x" * 60] * 4) + ".example", certs)[0] == der["srv"]
        # What the hooks see of it.
        ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
        with httpx.Client(verify=ctx) as c:
            assert c.get(f"https://localhost:{h.port}/hello").status_code == 200
        tls = h.app.seen[-1][1]      # (hook, session.tls, session.client_cert)
        assert (tls.sni, tls.alpn, tls.resumed) == ("localhost", "http/1.1", False)
        assert tls.version == "TLSv1.3" and tls.cipher.startswith("TLS_")


def _rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hello(certs):
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ssl.create_default_context(cafile=str(certs / "ca.pem")).wrap_bio(
        inc, out, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


def _rounds(h, certs, n, hello):
    """n connections of each kind: a request over a full handshake; a
    ClientHello and a reset; garbage after a handshake record header."""
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    req = b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    for _ in range(n):
        with socket.create_connection(("127.0.0.1", h.port), timeout=5) as s:
            with ctx.wrap_socket(s, server_hostname="localhost") as t:
                t.sendall(req)
                got = recv_all(t)
                assert got.startswith(b"HTTP/1.1 200"), got[:100]
        s = socket.create_connection(("127.0.0.1", h.port), timeout=5)
        s.sendall(hello)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()    # a reset in the middle of the handshake
        with socket.create_connection(("127.0.0.1", h.port), timeout=5) as s:
            s.sendall(b"\x16\x03\x01\x00\x40" + bytes(range(64)))
            s.settimeout(5)
            try:
                while s.recv(4096):
                    pass
            except ConnectionResetError:
                pass


def test_many_connections_that_finish_fail_or_are_cut_leak_nothing(certs):
    hello = _hello(certs)
    with Harness(Pass(), tls={"cert_path": str(certs / "srv.pem"),
                              "key_path": str(certs / "srv.key")}) as h:
        _rounds(h, certs, 150, hello)
        h.run(lambda: None)
        fds, rss = open_fds(), _rss()
        _rounds(h, certs, 600, hello)
        assert _wait(lambda: h.run(lambda: h.svc.stats())["connections"] == 0)
        grown = _rss() - rss
        # 1,800 more connections; an SSL object left behind each would be
        # well over 10 KB apiece.
        assert grown < 4 * 1024 * 1024, f"RSS grew by {grown} bytes"
        assert _wait(lambda: open_fds() <= fds)
        stats = h.run(lambda: h.svc.stats())
        assert stats["tls_errors"] >= 1200


def _tls_over(port, certs):
    """A TLS client over a plain socket whose bytes the test sends as it
    likes: the socket and the SSLObject with its two BIOs."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ssl.create_default_context(cafile=str(certs / "ca.pem")).wrap_bio(
        inc, out, server_hostname="localhost")
    return s, obj, inc, out


def _dribble(s, data, step):
    import time
    for i in range(0, len(data), step):
        s.sendall(data[i:i + step])
        time.sleep(0.0005)


def test_records_cut_anywhere_between_reads(certs):
    """Ciphertext that comes a few bytes at a time (handshake and data
    records cut at every point) and records larger than one read."""
    body = bytes(range(256)) * 1024          # 256 KiB: many 16 KiB records
    with Harness(Pass(), tls={"cert_path": str(certs / "srv.pem"),
                              "key_path": str(certs / "srv.key")}) as h:
        for step in (1, 7, 300):
            s, obj, inc, out = _tls_over(h.port, certs)
            with s:
                while True:
                    try:
                        obj.do_handshake()
                        break
                    except ssl.SSLWantReadError:
                        _dribble(s, out.read(), step)
                        got = s.recv(65536)
                        assert got, "closed during the handshake"
                        inc.write(got)
                _dribble(s, out.read(), step)
                obj.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
                obj.write(body)
                wire = out.read()
                if step == 300:
                    s.sendall(wire)                  # whole reads too
                else:
                    _dribble(s, wire[:4000], step)   # cut everywhere, then the rest
                    s.sendall(wire[4000:])
                resp = b""
                while not (b"\r\n\r\n" in resp and len(resp) - resp.index(b"\r\n\r\n") - 4 >= len(body)):
                    got = s.recv(65536)
                    assert got, resp[:200]
                    inc.write(got)
                    try:
                        while True:
                            chunk = obj.read(65536)
                            if not chunk:
                                break
                            resp += chunk
                    except ssl.SSLWantReadError:
                        pass
                head, _, got_body = resp.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200"), head
                assert got_body == body
        assert h.run(lambda: h.svc.stats())["tls_errors"] == 0


def _data_segments_in(sock):
    """Segments with data this socket received (Linux TCP_INFO,
    tcpi_data_segs_in)."""
    import struct
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 160)
    return struct.unpack_from("I", info, 152)[0]


@pytest.mark.skipif(ON_PYTHON_LAYER, reason="the C layer holds a batch's output; ssl's sends it at once")
def test_a_response_and_the_close_notify_after_it_go_out_in_one_segment(certs):
    """What one batch of events writes to a TLS connection goes out with
    one send: the last response on a connection and the close_notify
    after it come in one segment, as one read."""
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2    # (no tickets after the handshake)
    with Harness(Pass(), tls={"cert_path": str(certs / "srv.pem"),
                              "key_path": str(certs / "srv.key")}) as h:
        for _ in range(5):
            with socket.create_connection(("127.0.0.1", h.port), timeout=5) as s:
                with ctx.wrap_socket(s, server_hostname="localhost") as t:
                    before = _data_segments_in(t)
                    t.sendall(b"GET /hello HTTP/1.0\r\n\r\n")
                    got = recv_all(t)       # (until the close_notify)
                    assert got.startswith(b"HTTP/1.1 200") and got.endswith(b"hello"), got
                    assert _data_segments_in(t) - before == 1
