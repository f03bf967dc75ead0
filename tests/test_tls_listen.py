"""TLS listeners (add_tls), in process: real clients (httpx with
verification, curl, openssl s_client, Python's ssl) against the proxy; what
hooks see (session.tls, session.client_cert); certificates chosen by SNI,
ECDSA beside RSA; and hostile or broken clients (plain HTTP, garbage,
truncated and half-open handshakes, handshake timeouts, renegotiation),
which must each end in a closed connection, a counted error, no leaked
connection or descriptor. The master's side (resumption across workers,
reloads) is in test_tls_reload.py."""

import ctypes
import logging
import os
import socket
import ssl
import subprocess
import sys
import time

import httpx
import pytest

from proxy_harness import Harness, open_fds
from sluiceway import ClientCert, HttpPeer, ProxyHttp, TlsInfo, _engine
from sluiceway.tls import TlsOptions, build
from tls_certs import HAVE_OPENSSL, issue, make_certs, serial_of

pytestmark = pytest.mark.skipif(not HAVE_OPENSSL, reason="openssl not installed")


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = make_certs(tmp_path_factory.mktemp("certs"))
    issue(d, "ecsrv", "localhost", ec=True)
    issue(d, "a", "a.example", sans=("DNS:a.example",))
    issue(d, "wild", "wild", sans=("DNS:*.wild.example",), ec=True)
    return d


class Seen(ProxyHttp):
    """Passes requests to the origin; notes what request_filter and logging
    saw of the client's TLS."""

    port = None

    def __init__(self):
        self.seen = []

    def upstream_peer(self, session, ctx):
        return HttpPeer(("127.0.0.1", self.port))

    async def request_filter(self, session, ctx):
        self.seen.append(("request_filter", session.tls, session.client_cert))
        return False

    async def logging(self, session, error, ctx):
        self.seen.append(("logging", session.tls, session.client_cert))


def tls_args(d, **options):
    return {"cert_path": str(d / "srv.pem"), "key_path": str(d / "srv.key"), **options}


def verified(d, cert=False, **kw):
    ctx = ssl.create_default_context(cafile=str(d / "ca.pem"))
    if cert:
        ctx.load_cert_chain(str(d / "cli.pem"), str(d / "cli.key"))
    for k, v in kw.items():
        setattr(ctx, k, v)
    return ctx


def wait_until(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def stats(h):
    return h.run(lambda: h.svc.stats())


# --- serving --------------------------------------------------------------------------


def test_httpx_curl_and_openssl_get_answers_over_tls(certs):
    app = Seen()
    with Harness(app, tls=tls_args(certs), forwarded_headers=True) as h:
        with httpx.Client(verify=verified(certs)) as c:
            for _ in range(3):   # one connection, kept alive
                r = c.get(h.url + "/hello")
                assert r.status_code == 200 and r.text == "hello"
        got = h.origin.last
        assert ("X-Forwarded-Proto", "https") in got.headers
        out = subprocess.run(["curl", "-sS", "--cacert", str(certs / "ca.pem"), "-w", "%{http_code}",
                              h.url + "/hello"], capture_output=True, text=True, timeout=20)
        assert out.stdout == "hello200", out.stderr
        req = b"GET /hello HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{h.port}",
                              "-servername", "localhost", "-CAfile", str(certs / "ca.pem"),
                              "-verify_return_error", "-quiet", "-alpn", "http/1.1"],
                             input=req, capture_output=True, timeout=20)
        assert out.stdout.startswith(b"HTTP/1.1 200") and out.stdout.endswith(b"hello"), out
        assert stats(h)["tls_handshakes"] == 3 and stats(h)["tls_errors"] == 0
        info = [s for s in app.seen if s[0] == "request_filter"][0][1]
        assert isinstance(info, TlsInfo)
        assert info.version == "TLSv1.3" and info.alpn == "http/1.1" and not info.resumed
        # Both hooks see the same object (made once per connection).
        assert app.seen[0][1] is app.seen[1][1] and app.seen[0][2] is None


def test_plain_http_keeps_saying_http(certs):
    with Harness(Seen(), forwarded_headers=True) as h:
        assert httpx.get(h.url + "/hello").text == "hello"
        assert ("X-Forwarded-Proto", "http") in h.origin.last.headers
        assert h.app.seen[0][1] is None and h.app.seen[0][2] is None


def test_tls12_only_listener_and_its_cipher(certs):
    with Harness(Seen(), tls=tls_args(certs, max_version="TLSv1.2")) as h:
        with httpx.Client(verify=verified(certs)) as c:
            assert c.get(h.url + "/hello").status_code == 200
        info = h.app.seen[0][1]
        assert info.version == "TLSv1.2" and info.cipher.startswith("ECDHE-RSA-AES")
        # A client that offers TLS 1.3 only fails, counted.
        ctx = verified(certs, minimum_version=ssl.TLSVersion.TLSv1_3)
        with pytest.raises(ssl.SSLError):
            with socket.create_connection(("127.0.0.1", h.port), timeout=5) as s:
                ctx.wrap_socket(s, server_hostname="localhost")
        assert wait_until(lambda: stats(h)["tls_errors"] == 1)


def test_client_certificates_required_optional(certs):
    opts = dict(client_auth="required", client_ca=str(certs / "ca.pem"))
    with Harness(Seen(), tls=tls_args(certs, **opts)) as h:
        with httpx.Client(verify=verified(certs, cert=True)) as c:
            assert c.get(h.url + "/hello").status_code == 200
        kinds = {k: (t, c) for k, t, c in h.app.seen}
        cert = kinds["request_filter"][1]
        assert isinstance(cert, ClientCert) and kinds["logging"][1] is cert
        assert cert.subject == "CN=sluiceway test client" and cert.issuer == "CN=sluiceway test CA"
        assert ("DNS", "localhost") in cert.sans and cert.der.startswith(b"\x30")
        assert cert.serial == serial_of(certs / "cli.pem")
        import hashlib
        assert cert.fingerprint_sha256 == hashlib.sha256(cert.der).hexdigest()
        # Without a certificate: no request gets through.
        with pytest.raises(httpx.HTTPError):
            with httpx.Client(verify=verified(certs)) as c:
                c.get(h.url + "/hello")
        assert wait_until(lambda: stats(h)["tls_errors"] >= 1)
        assert h.origin.requests == 1
    opts["client_auth"] = "optional"
    with Harness(Seen(), tls=tls_args(certs, **opts)) as h:
        with httpx.Client(verify=verified(certs)) as c:
            assert c.get(h.url + "/hello").status_code == 200
        assert h.app.seen[0][2] is None


def _peer_cert(port, name, **kw):
    ctx = verified(kw.pop("cafile_dir"))
    ctx.check_hostname = False
    for k, v in kw.items():
        if k == "ciphers":
            ctx.set_ciphers(v)
        else:
            setattr(ctx, k, v)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        with ctx.wrap_socket(s, server_hostname=name) as t:
            return t.getpeercert(True), t.version()


def _der(pem_path):
    return ssl.PEM_cert_to_DER_cert(open(pem_path).read())


def test_sni_exact_wildcard_default_and_ecdsa_beside_rsa(certs):
    tls = tls_args(certs, certificates=[(str(certs / "ecsrv.pem"), str(certs / "ecsrv.key")),
                                        {"cert": str(certs / "a.pem"), "key": str(certs / "a.key")},
                                        (str(certs / "wild.pem"), str(certs / "wild.key"))])
    with Harness(Seen(), tls=tls) as h:
        d = dict(cafile_dir=certs)
        assert _peer_cert(h.port, "a.example", **d)[0] == _der(certs / "a.pem")
        assert _peer_cert(h.port, "A.Example", **d)[0] == _der(certs / "a.pem")
        assert _peer_cert(h.port, "x.wild.example", **d)[0] == _der(certs / "wild.pem")
        # Not a name any certificate has, or none: the first certificate's.
        assert _peer_cert(h.port, "other.example", **d)[0] in (_der(certs / "srv.pem"),
                                                               _der(certs / "ecsrv.pem"))
        assert _peer_cert(h.port, None, **d)[0] in (_der(certs / "srv.pem"),
                                                    _der(certs / "ecsrv.pem"))
        # RSA and ECDSA for localhost: a TLS 1.2 client gets the one it can use.
        tls12 = dict(d, maximum_version=ssl.TLSVersion.TLSv1_2)
        assert _peer_cert(h.port, "localhost", ciphers="ECDHE-ECDSA-AES128-GCM-SHA256",
                          **tls12)[0] == _der(certs / "ecsrv.pem")
        assert _peer_cert(h.port, "localhost", ciphers="ECDHE-RSA-AES128-GCM-SHA256",
                          **tls12)[0] == _der(certs / "srv.pem")
        # And the hooks see the name asked for.
        with httpx.Client(verify=verified(certs)) as c:
            c.get(f"https://localhost:{h.port}/hello")
        assert h.app.seen[-1][1].sni == "localhost"


def test_session_tickets_resume_and_can_be_turned_off(certs):
    for tickets, expect in ((True, True), (False, False)):
        with Harness(Seen(), tls=tls_args(certs, session_tickets=tickets)) as h:
            ctx = verified(certs)
            sess = None
            resumed = []
            for _ in range(3):
                with socket.create_connection(("127.0.0.1", h.port), timeout=5) as s:
                    with ctx.wrap_socket(s, server_hostname="localhost", session=sess) as t:
                        t.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
                        assert t.recv(4096).startswith(b"HTTP/1.1 200")
                        resumed.append(t.session_reused)
                        sess = t.session
            assert resumed == [False, expect, expect]
            if tickets:
                assert h.app.seen[-1][1].resumed


# --- options and files --------------------------------------------------------------


def test_bad_options_and_files_say_what_is_wrong(certs, tmp_path):
    def err(**kw):
        with pytest.raises(ValueError) as e:
            build(TlsOptions.make(**kw))
        return str(e.value)

    srv = dict(cert=str(certs / "srv.pem"), key=str(certs / "srv.key"))
    assert "did you mean min_version" in err(min_versoin="TLSv1.2", **srv)
    assert "TLSv1.2 or TLSv1.3" in err(min_version="TLSv1", **srv)
    assert "above max_version" in err(min_version="TLSv1.3", max_version="TLSv1.2", **srv)
    assert "needs client_ca" in err(client_auth="required", **srv)
    assert "needs a certificate" in err()
    assert "key does not match" in err(cert=str(certs / "srv.pem"), key=str(certs / "a.key"))
    assert "cannot read certificate" in err(cert=str(tmp_path / "none.pem"), key=srv["key"])
    assert "ciphers: OpenSSL accepts none" in err(ciphers="NOPE", **srv)
    assert "unknown curve" in err(ecdh_curve="nope", **srv)
    o = TlsOptions.make(**srv)
    with pytest.raises(ValueError, match="expired on"):
        build(o, now=time.time() + 10 * 86400)
    lt = build(TlsOptions.make(**srv, ecdh_curve="secp384r1", alpn="http/1.1"))
    assert lt.context.verify_mode == ssl.CERT_NONE and lt.by_name["localhost"] is lt.context
    # A service refuses to start on a bad file, and says which.
    from sluiceway import ServerConf
    from sluiceway.server import ProxyService
    from sluiceway._startup import StartError
    svc = ProxyService(ServerConf(), Seen())
    svc.add_tls("127.0.0.1:0", str(certs / "srv.pem"), str(certs / "a.key"))
    with pytest.raises(StartError, match="TLS listener 127.0.0.1:0: cannot load certificate"):
        svc._bind()
    assert svc._socks == []


def test_tls_listen_in_the_yaml_configuration(certs, tmp_path):
    from sluiceway import ConfigError, load_config

    p = tmp_path / "c.yaml"
    p.write_text(f"version: 1\ntls_listen:\n  - listen: 127.0.0.1:0\n    cert: {certs / 'srv.pem'}\n"
                 f"    key: {certs / 'srv.key'}\n    min_version: TLSv1.3\n"
                 f"    handshake_timeout: 5\n    alpn: [http/1.1]\n")
    conf = load_config(str(p))
    assert conf.tls_listen[0]["min_version"] == "TLSv1.3"
    p.write_text("version: 1\ntls_listen:\n  - listen: 127.0.0.1:0\n    cert: a.pem\n"
                 "    key: a.key\n    client_atuh: required\n")
    with pytest.raises(ConfigError, match=r"c.yaml:2: tls_listen entry 1 \(127.0.0.1:0\): "
                                          r"unknown TLS option 'client_atuh' \(did you mean client_auth"):
        load_config(str(p))
    p.write_text("version: 1\ntls_listen: [{listen: 'unix:/x', cert: a, key: b}]\n")
    with pytest.raises(ConfigError, match="TLS is for TCP addresses"):
        load_config(str(p))


# --- hostile and broken clients ---------------------------------------------------------


def _closed_by_server(s, timeout=5.0):
    """Read until the server closes; returns what came (b"" if nothing)."""
    s.settimeout(timeout)
    out = b""
    while True:
        try:
            b = s.recv(65536)
        except ConnectionResetError:
            return out
        if not b:
            return out
        out += b


def test_plain_http_on_the_tls_port_gets_a_plaintext_400(certs):
    with Harness(Seen(), tls=tls_args(certs)) as h:
        out = subprocess.run(["curl", "-s", "-i", f"http://127.0.0.1:{h.port}/x"],
                             capture_output=True, text=True, timeout=20).stdout
        assert out.startswith("HTTP/1.1 400 Bad Request")
        assert "The plain HTTP request was sent to HTTPS port" in out
        with socket.create_connection(("127.0.0.1", h.port)) as s:
            s.sendall(b"\x00\x01garbage that is not TLS")
            assert _closed_by_server(s).startswith(b"HTTP/1.1 400")
        assert wait_until(lambda: stats(h)["tls_errors"] == 2)
        assert h.origin.requests == 0


GARBAGE = [
    b"\x16\x03\x01\x00\x05hello",                    # a handshake record holding no ClientHello
    b"\x16\x03\x01\xff\xff" + b"\x00" * 100,          # a record longer than allowed
    b"\x17\x03\x03\x00\x10" + b"\x00" * 16,           # application data before a handshake
]


def test_garbage_records_truncated_handshakes_and_eof_are_counted(certs):
    hello = _client_hello(certs)
    with Harness(Seen(), tls=tls_args(certs, handshake_timeout=1.0)) as h:
        base_conns = h.run(_engine.io_connections, h.loop)
        for g in GARBAGE:
            with socket.create_connection(("127.0.0.1", h.port)) as s:
                s.sendall(g if g[0] == 0x16 else b"\x16" + g[1:])
                _closed_by_server(s)
        # A ClientHello cut in the middle, then EOF.
        with socket.create_connection(("127.0.0.1", h.port)) as s:
            s.sendall(hello[:len(hello) // 2])
            s.shutdown(socket.SHUT_WR)
            _closed_by_server(s)
        # A ClientHello cut in the middle, then silence: the handshake timeout.
        t0 = time.monotonic()
        with socket.create_connection(("127.0.0.1", h.port)) as s:
            s.sendall(hello[:40])
            _closed_by_server(s)
        assert 0.8 < time.monotonic() - t0 < 3.0
        # Nothing at all: also the handshake timeout.
        with socket.create_connection(("127.0.0.1", h.port)) as s:
            _closed_by_server(s)
        assert wait_until(lambda: stats(h)["tls_errors"] == len(GARBAGE) + 3), stats(h)
        assert wait_until(lambda: h.run(_engine.io_connections, h.loop) == base_conns)
        assert stats(h)["connections"] == 0
        # Still serving.
        with httpx.Client(verify=verified(certs)) as c:
            assert c.get(h.url + "/hello").status_code == 200


def _client_hello(certs):
    """The first flight of a real TLS client (its ClientHello record)."""
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = verified(certs).wrap_bio(inc, out, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


class Errors(Seen):
    """Seen, noting the error each request ended with."""

    def __init__(self):
        super().__init__()
        self.errors = []

    async def logging(self, session, error, ctx):
        self.errors.append(error)


def _handshaken(port, certs):
    """A TLS client over a plain socket whose bytes the test controls: the
    socket, the SSLObject and its two BIOs, after the handshake."""
    s = socket.create_connection(("127.0.0.1", port))
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = verified(certs).wrap_bio(inc, out, server_hostname="localhost")
    while True:
        try:
            obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            s.sendall(out.read())
            got = s.recv(65536)
            assert got, "the server closed during the handshake"
            inc.write(got)
    s.sendall(out.read())
    return s, obj, inc, out


BAD_RECORD = b"\x17\x03\x03\x00\x20" + bytes(range(32))   # application data that does not decrypt


def test_a_bad_record_after_the_handshake_is_counted_and_logged(certs, caplog):
    caplog.set_level(logging.INFO, logger="sluiceway.error")
    app = Errors()
    with Harness(app, tls=tls_args(certs)) as h:
        # Between requests: nothing else would report it.
        s, obj, inc, out = _handshaken(h.port, certs)
        with s:
            obj.write(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
            s.sendall(out.read())
            got = b""
            while b"hello" not in got:
                inc.write(s.recv(65536))
                try:
                    got += obj.read(65536)
                except ssl.SSLWantReadError:
                    pass
            assert got.startswith(b"HTTP/1.1 200")
            s.sendall(BAD_RECORD)
            _closed_by_server(s)
        assert wait_until(lambda: stats(h)["tls_errors"] == 1), stats(h)
        assert wait_until(lambda: "TLS failed after the handshake" in caplog.text)
        assert "BAD_RECORD_MAC" in caplog.text
        # In the middle of a request: the request ends with the TLS reason.
        s, obj, inc, out = _handshaken(h.port, certs)
        with s:
            obj.write(b"POST /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123")
            s.sendall(out.read())
            assert wait_until(lambda: stats(h)["active"] == 1)
            s.sendall(BAD_RECORD)
            _closed_by_server(s)
        assert wait_until(lambda: len(app.errors) == 2)
        assert app.errors[0] is None and "BAD_RECORD_MAC" in str(app.errors[1])
        assert stats(h)["tls_errors"] == 1          # counted once, as the request's
        assert wait_until(lambda: stats(h)["connections"] == 0)
        with httpx.Client(verify=verified(certs)) as c:
            assert c.get(h.url + "/hello").status_code == 200


def test_renegotiation_is_refused(certs):
    with Harness(Seen(), tls=tls_args(certs, max_version="TLSv1.2")) as h:
        p = subprocess.Popen(["openssl", "s_client", "-connect", f"127.0.0.1:{h.port}", "-tls1_2",
                              "-servername", "localhost", "-CAfile", str(certs / "ca.pem")],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            out, _ = p.communicate(b"R\n", timeout=20)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        assert b"RENEGOTIATING" in out
        # The server refuses it: an alert (no_renegotiation), no second handshake.
        assert b"no renegotiation" in out
        assert wait_until(lambda: stats(h)["connections"] == 0)
        with httpx.Client(verify=verified(certs)) as c:
            assert c.get(h.url + "/hello").status_code == 200


def _rss():
    """This process's resident memory, after glibc has given back the free
    pages of every arena (``malloc_trim``): freed memory an arena keeps is
    not a leak, and whether it keeps it depends on where the last
    allocations landed."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass   # not glibc: RSS as it is
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def half_open(certs, n, timeout, waves=3):
    """``n`` clients that send half a ClientHello and wait: all closed by the
    handshake timeout, counted, nothing left open or leaked; the waves after
    the first do not grow the process (memory is flat)."""
    hello = _client_hello(certs)
    with Harness(Seen(), tls=tls_args(certs, handshake_timeout=timeout)) as h:
        base_fds = open_fds()
        base_conns = h.run(_engine.io_connections, h.loop)
        rss = []
        for wave in range(waves):
            socks = []
            try:
                for i in range(n):
                    s = socket.create_connection(("127.0.0.1", h.port), timeout=10)
                    s.sendall(hello[:60])
                    socks.append(s)
                assert wait_until(lambda: stats(h)["connections"] == n, 10)
                t0 = time.monotonic()
                assert wait_until(lambda: stats(h)["tls_errors"] == n * (wave + 1), timeout + 20), \
                    stats(h)
                assert time.monotonic() - t0 < timeout + 20
                for s in socks[:50]:
                    assert _closed_by_server(s, 5) == b""
            finally:
                for s in socks:
                    s.close()
            assert wait_until(lambda: h.run(_engine.io_connections, h.loop) == base_conns, 10)
            assert stats(h)["connections"] == 0
            assert wait_until(lambda: open_fds() <= base_fds, 5)
            rss.append(_rss())
        # A leak grows the process with every wave; the first wave may
        # leave caches behind once (OpenSSL's, Python's free lists), and the
        # allocator may keep about one wave's worth once more, at any later
        # wave (a CI run saw +8.5 MB at the third of three waves of 2,000,
        # none at the second).  So over more waves the bound is per wave:
        # 8 MiB for one wave after the first, 4 MiB a wave beyond that.
        assert rss[-1] - rss[1] < max(8 << 20, (waves - 2) * (4 << 20)), rss
        with httpx.Client(verify=verified(certs)) as c:
            assert c.get(h.url + "/hello").status_code == 200


ALONE = "SLUICEWAY_TEST_ALONE"


def _in_a_process_of_its_own(request) -> bool:
    """Run this test again in a new Python process, and say whether that was
    done (then the caller returns). The memory check reads this process's
    RSS: inside a long suite it holds everything earlier tests left, and
    the allocator's trims of it, so it is measured where only this runs."""
    if os.environ.get(ALONE) == request.node.nodeid:
        return False
    r = subprocess.run([sys.executable, "-m", "pytest", request.node.nodeid, "-q",
                        "-m", "slow or not slow"],
                       cwd=str(request.config.rootpath), capture_output=True, text=True,
                       timeout=600, env=dict(os.environ, **{ALONE: request.node.nodeid}))
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert " passed" in r.stdout, r.stdout[-2000:]
    return True


def test_2000_half_open_handshakes_time_out(certs, request):
    if _in_a_process_of_its_own(request):
        return
    half_open(certs, 2000, 2.0, waves=5)


@pytest.mark.slow
def test_up_to_20000_half_open_handshakes_time_out(certs, request):
    if _in_a_process_of_its_own(request):
        return
    import resource

    # Both ends are in this process: two descriptors per client.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    n = min(20000, (hard - 1000) // 2)
    if n < 5000:
        pytest.skip(f"the open-files hard limit ({hard}) allows too few clients")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    half_open(certs, n, 5.0)
