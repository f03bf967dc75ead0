"""The PROXY protocol: the compiled parser and writers against their
pure-Python reference (sluiceway._proxyproto_py), and the proxy behind a
balancer that sends it (raw sockets, curl --haproxy-protocol, nginx's
stream module) and in front of upstreams that expect it (another proxy,
nginx's proxy_protocol listener)."""

import contextlib
import logging
import os
import shutil
import socket
import subprocess
import time

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from proxy_harness import HAVE_NGINX, Harness, free_port, recv_all, run_nginx
from raw_peers import read_head
from sluiceway import _engine
from sluiceway import _proxyproto_py as ref
from sluiceway.config import ConfigError, ServerConf
from sluiceway.proxy import HttpPeer, ProxyHttp

STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
CURL = shutil.which("curl")

FAST = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------- parser and writers --

def same(data):
    """The compiled parser says exactly what the reference says."""
    c, p = _engine.pp_parse(data), ref.parse(data)
    assert c == p, data
    return c


ipv4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
ipv6 = st.binary(min_size=16, max_size=16).map(lambda b: socket.inet_ntop(socket.AF_INET6, b))
ports = st.integers(0, 65535)


@st.composite
def headers(draw):
    """A valid header (v1 or v2, IPv4 or IPv6, v2 with TLVs), as bytes."""
    family = draw(st.sampled_from([4, 6]))
    addr = ipv4 if family == 4 else ipv6
    src, dst, sp, dp = draw(addr), draw(addr), draw(ports), draw(ports)
    if draw(st.booleans()):
        return ref.write_v1(family, src, dst, sp, dp)
    h = bytearray(ref.write_v2(family, src, dst, sp, dp))
    tlvs = draw(st.binary(max_size=64))
    body = (h[14] << 8 | h[15]) + len(tlvs)
    h[14:16] = body.to_bytes(2, "big")
    return bytes(h) + tlvs


@FAST
@given(headers(), st.binary(max_size=40))
def test_a_valid_header_parses_the_same_and_every_prefix_needs_more(h, after):
    n, hdr, reason = same(h + after)
    assert n == len(h) and reason is None and not hdr.local
    for cut in range(len(h)):
        assert same(h[:cut]) == (ref.NEED, None, None)


@FAST
@given(headers(), st.data())
def test_damaged_headers_give_the_same_verdict(h, data):
    b = bytearray(h)
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(b) - 1))
        b[i] = data.draw(st.sampled_from([0, 10, 13, 32, 48, 57, 58, 0x20, 0x11, 0x30, 255,
                                          data.draw(st.integers(0, 255))]))
    same(bytes(b))
    same(bytes(b[:data.draw(st.integers(0, len(b)))]))


@FAST
@given(st.binary(max_size=120), st.sampled_from([b"", b"PROXY ", ref.V2_SIG,
                                                 b"PROXY TCP4 ", b"PROXY TCP6 ", b"PROXY UNKNOWN"]))
@example(b"1.2.3.4\x00 5.6.7.8 1 2\r\n", b"PROXY TCP4 ")
@example(b"1.2.3.4 5.6.7.8 01 2\r\n", b"PROXY TCP4 ")
@example(b"1.2.3.4 5.6.7.8 1 65536\r\n", b"PROXY TCP4 ")
@example(b"1.2.3.4  5.6.7.8 1 2\r\n", b"PROXY TCP4 ")
@example(b"1.2.3.4 5.6.7.8 1 2 3\r\n", b"PROXY TCP4 ")
@example(b"\n", b"PROXY TCP4 ")
@example(b"\x21\x31\x00\x00", ref.V2_SIG)
@example(b"\x21\x12\x00\x0c" + bytes(12), ref.V2_SIG)
@example(b"\x20\x00\x00\x00", ref.V2_SIG)
@example(b"\x21\x11\x0f\xf1", ref.V2_SIG)
def test_arbitrary_bytes_give_the_same_verdict(tail, prefix):
    same(prefix + tail)


@FAST
@given(st.sampled_from([4, 6]), st.data(), ports, ports)
def test_writers_match_and_read_back(family, data, sp, dp):
    addr = ipv4 if family == 4 else ipv6
    src, dst = data.draw(addr), data.draw(addr)
    for version, write in ((1, ref.write_v1), (2, ref.write_v2)):
        out = _engine.pp_write(version, family, src, dst, sp, dp)
        assert out == write(family, src, dst, sp, dp)
        n, hdr, _ = same(out)
        assert n == len(out)
        assert (hdr.version, hdr.family, hdr.src, hdr.dst, hdr.src_port, hdr.dst_port) == \
            (version, family, src, dst, sp, dp)


def test_known_headers_and_refusals():
    assert same(b"PROXY UNKNOWN\r\nGET")[0] == 15
    assert same(b"PROXY UNKNOWN ffff::1 ::1 1 2\r\n")[1].local
    v2_local = ref.V2_SIG + b"\x20\x00\x00\x00"
    assert same(v2_local) == (16, ref.ProxyHeader(2, True, 0, "", "", 0, 0), None)
    assert same(b"GET / HTTP/1.1\r\n\r\n")[2] == \
        "the connection did not start with a PROXY protocol header"
    assert same(b"PROXY TCP4 " + b"1" * 120)[2] == "PROXY v1 line longer than 107 bytes"
    assert same(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n")[2] == "stray CR or LF in a PROXY v1 line"
    assert same(b"PROXY TCP4 ::1 ::1 1 2\r\n")[2] == "bad source address in a PROXY v1 line"
    assert same(ref.V2_SIG + b"\x21\x11\x00\x04" + bytes(4))[2] == \
        "PROXY v2 header too short for its addresses"
    with pytest.raises(ValueError, match="not an IPv4 address"):
        _engine.pp_write(1, 4, "::1", "1.2.3.4", 1, 2)
    with pytest.raises(ValueError, match="not an IPv4 address"):
        ref.write_v1(4, "::1", "1.2.3.4", 1, 2)


# ------------------------------------------------------------ the listener --

class Who(ProxyHttp):
    """Answers with the addresses the proxy believes."""

    def request_filter(self, session, ctx):
        c, s = session.client_addr, session.server_addr
        session.respond(200, {"x-client": f"{c[0]}:{c[1]}", "x-server": f"{s[0]}:{s[1]}"},
                        b"ok")
        return True

    def upstream_peer(self, session, ctx):
        raise AssertionError("not reached")


def pp_harness(app="who", **kw):
    """A Harness with PROXY protocol on, trusting 127.0.0.0/8; ``app``
    defaults to Who (None: the harness's pass-through to its origin)."""
    kw.setdefault("proxy_protocol", True)
    kw.setdefault("proxy_protocol_from", ["127.0.0.0/8"])
    return Harness(Who() if app == "who" else app, **kw)


def exchange(port, first, requests=1, fragment=False):
    """Send ``first`` (a PROXY header, maybe with more) then ``requests``
    GETs; return the response heads (b"" when the proxy closed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        payload = first + b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"
        if fragment:
            for i in range(len(payload)):
                c.sendall(payload[i:i + 1])
                time.sleep(0.001)
        else:
            c.sendall(payload)
        out = []
        buf = b""
        for i in range(requests):
            if i:
                c.sendall(b"GET /y HTTP/1.1\r\nHost: a\r\n\r\n")
            head, buf = read_head(c, buf)
            if not head:
                out.append(b"")
                break
            n = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            while len(buf) < n:
                more = c.recv(65536)
                if not more:
                    break
                buf += more
            buf = buf[n:]
            out.append(head)
        return out


def field(head, name):
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == name:
            return v.strip().decode()
    return None


@pytest.mark.parametrize("fragment", [False, True], ids=["whole", "byte-by-byte"])
@pytest.mark.parametrize("kind", ["v1", "v2", "v2-ipv6-tlv"])
def test_the_header_names_the_client_for_every_request_of_the_connection(kind, fragment):
    if kind == "v1":
        hdr = ref.write_v1(4, "203.0.113.7", "192.0.2.1", 51234, 443)
        client, server = "203.0.113.7:51234", "192.0.2.1:443"
    elif kind == "v2":
        hdr = ref.write_v2(4, "203.0.113.7", "192.0.2.1", 51234, 443)
        client, server = "203.0.113.7:51234", "192.0.2.1:443"
    else:
        h = bytearray(ref.write_v2(6, "2001:db8::7", "2001:db8::1", 4000, 8443))
        tlv = b"\x04\x00\x03abc"   # a NOOP TLV, skipped
        h[15] += len(tlv)
        hdr = bytes(h) + tlv
        client, server = "2001:db8::7:4000", "2001:db8::1:8443"
    with pp_harness() as h:
        heads = exchange(h.port, hdr, requests=2, fragment=fragment)
        assert len(heads) == 2
        for head in heads:
            assert head.startswith(b"HTTP/1.1 200")
            assert field(head, b"x-client") == client
            assert field(head, b"x-server") == server


def test_a_local_header_keeps_the_connections_own_address():
    with pp_harness() as h:
        for hdr in (ref.V2_SIG + b"\x20\x00\x00\x00", b"PROXY UNKNOWN\r\n"):
            (head,) = exchange(h.port, hdr)
            assert field(head, b"x-client").startswith("127.0.0.1:")
            assert field(head, b"x-server") == f"127.0.0.1:{h.port}"


def test_curl_haproxy_protocol_and_the_access_log(caplog):
    if CURL is None:
        pytest.skip("curl is not installed")
    with pp_harness(access_log=True) as h:
        with caplog.at_level(logging.INFO, logger="sluiceway.access"):
            out = subprocess.run([CURL, "-sS", "-D", "-", "-o", "/dev/null", "--haproxy-protocol",
                                  h.url + "/x"], capture_output=True, timeout=20)
        assert out.returncode == 0, out.stderr
        assert b"HTTP/1.1 200" in out.stdout
        assert b"x-client: 127.0.0.1:" in out.stdout.lower()
        # without the header (a client that bypasses the balancer): closed
        out = subprocess.run([CURL, "-sS", "-o", "/dev/null", h.url + "/x"],
                             capture_output=True, timeout=20)
        assert out.returncode != 0
    assert any("GET /x" in r.getMessage() for r in caplog.records if r.name == "sluiceway.access")


def test_refusals_are_closed_logged_and_leak_nothing(caplog):
    with caplog.at_level(logging.WARNING, logger="sluiceway.error"):
        # a trusted peer that sends plain HTTP, or a broken header
        with pp_harness() as h:
            assert exchange(h.port, b"") == [b""]
            assert exchange(h.port, b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n") == [b""]
            assert exchange(h.port, ref.V2_SIG + b"\x21\x11\x00\x02\x00\x00") == [b""]
            deadline = time.time() + 5
            while h.svc.stats()["connections"] and time.time() < deadline:
                time.sleep(0.02)
            assert h.svc.stats()["connections"] == 0
        # a peer that is not a trusted balancer: refused before any byte
        with pp_harness(proxy_protocol_from=["10.0.0.0/8", "::1"]) as h:
            good = ref.write_v1(4, "203.0.113.7", "192.0.2.1", 1, 2)
            assert exchange(h.port, good) == [b""]
    lines = [r.getMessage() for r in caplog.records]
    assert any("did not start with a PROXY protocol header" in m for m in lines)
    assert any("bad source port in a PROXY v1 line" in m for m in lines)
    assert any("PROXY v2 header too short" in m for m in lines)
    assert any("refused a connection from 127.0.0.1" in m and "proxy_protocol_from" in m
               for m in lines)


def test_a_header_that_never_completes_times_out(caplog):
    with caplog.at_level(logging.INFO, logger="sluiceway.error"):
        with pp_harness(downstream_header_timeout_seconds=0.3) as h:
            with socket.create_connection(("127.0.0.1", h.port), timeout=5) as c:
                c.sendall(b"PROXY TCP4 1.2.3.4")
                t = time.monotonic()
                assert c.recv(100) == b""
                assert time.monotonic() - t < 3
    assert any("no complete PROXY protocol header" in r.getMessage() for r in caplog.records)


def test_forwarded_headers_carry_the_balancers_client():
    with pp_harness(app=None, forwarded_headers=True) as h:
        hdr = ref.write_v2(4, "198.51.100.9", "192.0.2.1", 5000, 80)
        (head,) = exchange(h.port, hdr)
        assert head.startswith(b"HTTP/1.1 200")
        assert h.origin.last.header("x-forwarded-for") == "198.51.100.9"


def test_configuration_errors_say_what_to_write():
    with pytest.raises(ConfigError, match="proxy_protocol_from is empty"):
        ServerConf(proxy_protocol=True)
    with pytest.raises(ConfigError, match="'10.0.0.300/8' is not an IP address"):
        ServerConf(proxy_protocol=True, proxy_protocol_from=["10.0.0.300/8"])
    with pytest.raises(ValueError, match="1 or 2"):
        HttpPeer(("127.0.0.1", 80), proxy_protocol=3)
    assert HttpPeer(("127.0.0.1", 443), tls=True, proxy_protocol=1).proxy_protocol == 1


# ------------------------------------------------------- towards upstreams --

class SendsPP(ProxyHttp):
    def __init__(self, port, version, **tls):
        self.port, self.version, self.tls = port, version, tls
        self.reused = []

    def upstream_peer(self, session, ctx):
        return HttpPeer(("127.0.0.1", self.port), proxy_protocol=self.version, **self.tls)

    def logging(self, session, error, ctx):
        self.reused.append(session.upstream_reused)


@pytest.mark.parametrize("version", [1, 2])
def test_sent_to_an_upstream_proxy_that_expects_it(version):
    """client (through a balancer: 203.0.113.7) -> outer proxy -> PROXY vN
    -> inner proxy (trusts 127.0.0.1) -> sees the first client."""
    with pp_harness() as inner:
        outer_app = SendsPP(inner.port, version)
        with pp_harness(app=outer_app) as outer:
            hdr = ref.write_v1(4, "203.0.113.7", "192.0.2.1", 51234, 443)
            heads = exchange(outer.port, hdr, requests=3)
            for head in heads:
                assert field(head, b"x-client") == "203.0.113.7:51234"
                assert field(head, b"x-server") == "192.0.2.1:443"
            # and a direct client of the outer proxy (a v2 LOCAL header):
            # the inner proxy sees the outer's view of it
            (head,) = exchange(outer.port, ref.V2_SIG + b"\x20\x00\x00\x00")
            assert field(head, b"x-client").startswith("127.0.0.1:")
            assert field(head, b"x-server") == f"127.0.0.1:{outer.port}"
        # such connections carry one client each: never from the pool
        assert outer_app.reused == [False] * 4


# ---------------------------------------------------------- nginx, for real --

STREAM = """
stream {{
    server {{
        listen 127.0.0.1:{port};
        proxy_pass 127.0.0.1:{to};
        proxy_protocol on;
    }}
}}
"""

# (inside http { })
HTTP_PP = """
    server {{
        listen 127.0.0.1:{port} proxy_protocol;
        location / {{
            default_type text/plain;
            return 200 "$proxy_protocol_addr:$proxy_protocol_port $proxy_protocol_server_addr:$proxy_protocol_server_port";
        }}
    }}
"""


@pytest.fixture
def nginx_proc(tmp_path):
    procs = []

    def start(body, **fmt):
        """Run nginx with ``body`` (a stream block, or what goes inside the
        http block); its port."""
        if not HAVE_NGINX:
            pytest.skip("nginx is not installed")
        port = free_port()
        d = tmp_path / f"nginx{len(procs)}"
        d.mkdir()
        for p in (tmp_path, d):
            os.chmod(p, 0o755)
        body = body.format(d=d, port=port, **fmt)
        if "stream {" not in body:
            procs.append(running.enter_context(run_nginx(d, body, wait=[port])))
            return port
        if not os.path.exists(STREAM_MODULE):
            pytest.skip("nginx's stream module is not installed (libnginx-mod-stream; "
                        "ci/install-deps.sh installs it)")
        procs.append(running.enter_context(run_nginx(
            d, other=body, wait=[port], load=f"load_module {STREAM_MODULE};")))
        return port

    with contextlib.ExitStack() as running:
        yield start


def test_behind_nginx_stream_balancer(nginx_proc):
    """nginx's stream module as the L4 balancer (proxy_protocol on: v1)."""
    with pp_harness() as h:
        lb = nginx_proc(STREAM, to=h.port)
        with httpx.Client() as c:
            for _ in range(3):
                r = c.get(f"http://127.0.0.1:{lb}/x")
                assert r.status_code == 200
                # the client as nginx saw it: our httpx socket
                assert r.headers["x-client"].startswith("127.0.0.1:")
                assert r.headers["x-server"] == f"127.0.0.1:{lb}"


def fetch(port, first):
    """``first`` (a PROXY header) and one GET with Connection: close; the
    whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        c.sendall(first + b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        return recv_all(c)


@pytest.mark.parametrize("version", [1, 2])
def test_nginx_reads_the_header_we_send(nginx_proc, version):
    """nginx (listen ... proxy_protocol) as the upstream answers with the
    client its header named ($proxy_protocol_addr and friends)."""
    up = nginx_proc(HTTP_PP)
    with pp_harness(app=SendsPP(up, version)) as h:
        data = fetch(h.port, ref.write_v1(4, "203.0.113.7", "192.0.2.1", 51234, 443))
        assert data.startswith(b"HTTP/1.1 200") and data.endswith(
            b"\r\n\r\n203.0.113.7:51234 192.0.2.1:443"), data
        data = fetch(h.port, ref.write_v2(6, "2001:db8::42", "2001:db8::1", 3333, 8443))
        assert data.endswith(b"\r\n\r\n2001:db8::42:3333 2001:db8::1:8443"), data


HTTPS_PP = HTTP_PP.replace("listen 127.0.0.1:{port} proxy_protocol;",
                           "listen 127.0.0.1:{port} ssl proxy_protocol;\n"
                           "        ssl_certificate {certs}/srv.pem;\n"
                           "        ssl_certificate_key {certs}/srv.key;")


@pytest.mark.parametrize("version", [1, 2])
def test_nginx_reads_the_header_before_our_tls_handshake(nginx_proc, tmp_path, version):
    """With tls=True the header goes in the clear before the handshake:
    nginx's `listen ... ssl proxy_protocol` reads it, then speaks TLS."""
    from tls_certs import HAVE_OPENSSL, make_certs
    if not HAVE_OPENSSL:
        pytest.skip("needs the openssl command")
    certs = tmp_path / "certs"
    certs.mkdir()
    make_certs(certs)
    for f in certs.iterdir():
        os.chmod(f, 0o644)
    up = nginx_proc(HTTPS_PP, certs=certs)
    app = SendsPP(up, version, tls=True, sni="localhost", ca_file=str(certs / "ca.pem"))
    with pp_harness(app=app) as h:
        for _ in range(2):
            data = fetch(h.port, ref.write_v1(4, "203.0.113.7", "192.0.2.1", 51234, 443))
            assert data.startswith(b"HTTP/1.1 200") and data.endswith(
                b"\r\n\r\n203.0.113.7:51234 192.0.2.1:443"), data
        assert app.reused == [False, False]   # one connection per client, never pooled
        assert h.pool_stats()["idle"] == 0


def test_the_docs_example_runs():
    import re
    import sys

    from conftest import subprocess_env
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "docs", "client-addresses.md"), encoding="utf-8") as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    example = next(b for b in blocks if "asyncio.run(main())" in b and "PROXY TCP4" in b)
    proc = subprocess.run([sys.executable, "-c", example], capture_output=True, text=True,
                          timeout=60, env=subprocess_env(), cwd=root)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "you are 203.0.113.7:51234"
    sender = next(b for b in blocks if "proxy_protocol=2" in b)
    ns = {}
    exec("from sluiceway import HttpPeer, ProxyHttp\n" + sender, ns)
    assert ns["App"]().upstream_peer(None, None).proxy_protocol == 2
