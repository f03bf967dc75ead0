"""X-Forwarded-*, Unix sockets both sides, the access log, HeaderMap."""

import asyncio
import json
import logging
import os
import socket

import httpx
import pytest

from proxy_harness import Harness, Origin, _OriginProto, raw
from sluiceway.proxy import HttpPeer, ProxyHttp


def _headers(out):
    return {n.lower(): v for n, v in json.loads(out.split(b"\r\n\r\n", 1)[1])["headers"]}


def test_forwarded_headers_when_configured():
    with Harness(forwarded_headers=True) as h:
        out = raw(h.port, b"GET /headers HTTP/1.1\r\nHost: example.com\r\n"
                          b"X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: https\r\nConnection: close\r\n\r\n")
        got = _headers(out)
        assert got["x-forwarded-for"] == "10.0.0.1, 127.0.0.1"
        assert got["x-forwarded-proto"] == "http"
        assert got["x-forwarded-host"] == "example.com"


def test_no_forwarded_headers_by_default():
    with Harness() as h:
        got = _headers(raw(h.port, b"GET /headers HTTP/1.1\r\nHost: e\r\nConnection: close\r\n\r\n"))
        assert "x-forwarded-for" not in got


def test_unix_sockets_downstream_and_upstream(tmp_path):
    up_path = str(tmp_path / "origin.sock")
    down_path = str(tmp_path / "proxy.sock")

    class UdsApp(ProxyHttp):
        def upstream_peer(self, session, ctx):
            return HttpPeer("unix:" + up_path)

    with Harness(UdsApp()) as h:
        origin = Origin()

        async def start():
            loop = asyncio.get_running_loop()
            origin.server = await loop.create_unix_server(lambda: _OriginProto(origin), up_path)
        h.call(start())
        # a second listener on the running service
        async def listen():
            from sluiceway.server import ProxyService
            svc = ProxyService(h.conf, h.app)
            svc.add_uds(down_path)
            await svc.start()
            return svc
        svc2 = h.call(listen())
        try:
            s = socket.socket(socket.AF_UNIX)
            s.connect(down_path)
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            buf = b""
            while True:
                c = s.recv(65536)
                if not c:
                    break
                buf += c
            s.close()
            assert buf.startswith(b"HTTP/1.1 200") and buf.endswith(b"hello")
        finally:
            h.call(svc2.stop(0.2))
            h.call(origin.stop())


def test_access_log_line(caplog):
    with caplog.at_level(logging.INFO, logger="sluiceway.access"):
        with Harness(access_log=True) as h:
            httpx.get(h.url + "/big?size=10")
    lines = [r.getMessage() for r in caplog.records if r.name == "sluiceway.access"]
    assert lines and '"GET /big?size=10 HTTP/1.1" 200 10' in lines[0]


def test_access_log_off_by_default(caplog):
    with caplog.at_level(logging.INFO, logger="sluiceway.access"):
        with Harness() as h:
            httpx.get(h.url + "/")
    assert not [r for r in caplog.records if r.name == "sluiceway.access"]


def test_header_map_api():
    seen = {}

    class Probe(ProxyHttp):
        port = None

        def upstream_peer(self, session, ctx):
            return HttpPeer(("127.0.0.1", self.port))

        def upstream_request_filter(self, session, req, ctx):
            hm = req.headers
            seen["get"] = (hm.get("X-MULTI"), hm.get(b"x-multi"), hm.getall("x-multi"), hm.get_bytes("x-multi"))
            seen["len"] = len(hm)
            seen["contains"] = ("x-multi" in hm, "nope" in hm, 3 in hm)
            with pytest.raises(KeyError):
                hm["nope"]
            with pytest.raises(ValueError):
                hm["bad name"] = "x"
            with pytest.raises(ValueError):
                hm["x-ok"] = "a\r\nb"
            hm.add("x-multi", "3")
            assert hm.getall("x-multi") == ["1", "2", "3"]
            hm["x-multi"] = "only"
            assert hm.getall("x-multi") == ["only"]
            assert hm.pop("x-multi") == "only"
            assert hm.pop("x-multi", None) is None
            del hm["x-del"]
            req.append_header("x-new", "n")
            seen["items"] = hm.items()

    app = Probe()
    with Harness(app) as h:
        got = _headers(raw(h.port, b"GET /headers HTTP/1.1\r\nHost: e\r\nX-Multi: 1\r\nx-multi: 2\r\n"
                                   b"X-Del: d\r\nConnection: close\r\n\r\n"))
    assert seen["get"] == ("1", "1", ["1", "2"], b"1")
    assert seen["len"] == 5
    assert seen["contains"] == (True, False, False)
    assert seen["items"] == [("Host", "e"), ("Connection", "close"), ("x-new", "n")]
    assert "x-multi" not in got and "x-del" not in got and got["x-new"] == "n"
    assert "connection" not in got  # still hop-by-hop after an edit


def test_http_peer_validation():
    with pytest.raises(ValueError, match="port"):
        HttpPeer(("127.0.0.1", 70000))
    with pytest.raises(ValueError):
        HttpPeer("nocolon")
    p = HttpPeer("10.0.0.1:8080")
    assert (p.host, p.port, p.reuse_key) == ("10.0.0.1", 8080, ("10.0.0.1", 8080, False, "10.0.0.1"))
    assert HttpPeer("unix:/tmp/x.sock").reuse_key == ("unix", "/tmp/x.sock")


def test_http_peer_plain_address_cache():
    """Plain peers given the same address share one reuse_key object (the
    pool then matches it by identity); the cache never skips validation."""
    a = HttpPeer(("10.1.2.3", 8080))
    b = HttpPeer(("10.1.2.3", 8080))
    assert a.reuse_key is b.reuse_key == ("10.1.2.3", 8080, False, "10.1.2.3")
    assert (b.host, b.port, b.path, b.sni, b.address) == ("10.1.2.3", 8080, None, "10.1.2.3", ("10.1.2.3", 8080))
    c = HttpPeer(("10.1.2.3", 8080), idle_timeout=3, read_timeout=1)
    assert c.reuse_key is a.reuse_key and (c.idle_timeout, c.read_timeout) == (3, 1)
    with pytest.raises(ValueError):
        HttpPeer(("10.1.2.3", 8080.0))  # equal to a cached key, still refused
    s1, s2 = HttpPeer("unix:/tmp/a.sock"), HttpPeer("unix:/tmp/a.sock")
    assert s1.reuse_key is s2.reuse_key and s2.path == "/tmp/a.sock" and s2.host is None
    t = HttpPeer(("10.1.2.3", 8080), tls=True)
    assert t.reuse_key != a.reuse_key and t.tls
    n = HttpPeer(("10.1.2.3", 8080), sni="example.com")
    assert n.sni == "example.com" and n.reuse_key != a.reuse_key
    for i in range(10000):  # many distinct addresses: the cache stays bounded
        HttpPeer(("10.0.%d.%d" % (i // 256, i % 256), 80))
    assert HttpPeer(("10.1.2.3", 8080)).reuse_key == a.reuse_key


def test_in_process_suites_pass_on_the_stdlib_loop():
    """The engine is written against asyncio's protocol interface: the same
    end-to-end suites pass on the stdlib loop (the reference) as on uvloop."""
    if os.environ.get("SLUICEWAY_TEST_LOOP") == "asyncio":
        pytest.skip("already running on the stdlib loop")
    import subprocess
    import sys
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, SLUICEWAY_TEST_LOOP="asyncio")
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                          os.path.join(here, "test_proxy_core.py"),
                          os.path.join(here, "test_proxy_hooks.py"),
                          os.path.join(here, "test_proxy_errors.py")],
                         env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
