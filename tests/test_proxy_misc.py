"""X-Forwarded-*, Unix sockets both sides, the access log."""

import asyncio
import json
import logging
import socket

import httpx

from proxy_harness import Harness, Origin, _OriginProto, raw
from sluiceway.proxy import HttpPeer, ProxyHttp


def _headers(out):
    return {n.lower(): v for n, v in json.loads(out.split(b"\r\n\r\n", 1)[1])["headers"]}


def test_forwarded_headers_when_configured():
    req = (b"GET /headers HTTP/1.1\r\nHost: example.com\r\n"
           b"X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: https\r\nConnection: close\r\n\r\n")
    with Harness(forwarded_headers=True) as h:
        got = _headers(raw(h.port, req))
        # from a client nobody trusts, what it claimed is replaced
        assert got["x-forwarded-for"] == "127.0.0.1"
        assert got["x-forwarded-proto"] == "http"
        assert got["x-forwarded-host"] == "example.com"
    with Harness(forwarded_headers=True, trusted_proxies=["127.0.0.1"]) as h:
        got = _headers(raw(h.port, req))
        # from a trusted proxy, its chain goes on
        assert got["x-forwarded-for"] == "10.0.0.1, 127.0.0.1"
        assert got["x-forwarded-proto"] == "https"
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
