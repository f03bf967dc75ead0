"""Informational (1xx) responses from the origin: 103 Early Hints and 102
Processing reach HTTP/1.1 clients; a 100 Continue does not (the proxy
answers Expect itself); an endless series ends in a 502."""

import logging
import time

import httpx

from proxy_harness import Harness
from raw_peers import RawOrigin, Upload, content_length, read_exact, read_head
from sluiceway.proxy import HttpPeer, ProxyHttp

HINT = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\nConnection: x-hop\r\nX-Hop: 1\r\n\r\n"


def interim_origin(*interims, gap=0.0):
    """Sends the given interim heads, then 200 "done"."""
    def handler(conn, origin):
        buf = b""
        while True:
            head, buf = read_head(conn, buf)
            if head is None:
                return
            _, buf = read_exact(conn, content_length(head), buf)
            for i in interims:
                conn.sendall(i)
                if gap:
                    time.sleep(gap)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone")
    return handler


class ToOrigin(ProxyHttp):
    def __init__(self, addr):
        self.addr = addr
        self.statuses = []

    def upstream_peer(self, session, ctx):
        return HttpPeer(self.addr)

    def response_filter(self, session, upstream_response, ctx):
        self.statuses.append(upstream_response.status)


def test_early_hints_reach_http11_clients():
    with RawOrigin(interim_origin(HINT)) as o, Harness(ToOrigin(o.addr)) as h:
        u = Upload(h.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                   until=lambda b: b.endswith(b"done"))
        got, err, _ = u.result()
        assert err is None
        first, _, rest = got.partition(b"\r\n\r\n")
        assert first.startswith(b"HTTP/1.1 103 Early Hints\r\n")
        assert b"Link: </style.css>; rel=preload" in first
        # hop-by-hop fields (and what Connection names) are not forwarded
        assert b"X-Hop" not in first and b"Connection" not in first
        assert rest.startswith(b"HTTP/1.1 200")
        assert h.app.statuses == [200]  # response hooks see only the final one


def test_interim_responses_with_httpx():
    with RawOrigin(interim_origin(HINT, b"HTTP/1.1 102 Processing\r\n\r\n")) as o, \
            Harness(ToOrigin(o.addr)) as h:
        r = httpx.get(h.url + "/")
        assert r.status_code == 200 and r.text == "done"


def test_no_interim_responses_to_http10_clients():
    with RawOrigin(interim_origin(HINT)) as o, Harness(ToOrigin(o.addr)) as h:
        got, err, _ = Upload(h.port, b"GET / HTTP/1.0\r\n\r\n").result()
        assert err is None
        assert got.startswith(b"HTTP/1.1 200") and b"103" not in got


def test_unsolicited_100_continue_is_not_forwarded():
    with RawOrigin(interim_origin(b"HTTP/1.1 100 Continue\r\n\r\n", HINT)) as o, \
            Harness(ToOrigin(o.addr)) as h:
        got, err, _ = Upload(h.port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi",
                             until=lambda b: b.endswith(b"done")).result()
        assert err is None
        assert got.startswith(b"HTTP/1.1 103") and b" 100 " not in got


def test_endless_interim_responses_end_in_502(caplog):
    processing = [b"HTTP/1.1 102 Processing\r\n\r\n"] * 40
    with RawOrigin(interim_origin(*processing, gap=0.01)) as o, \
            Harness(ToOrigin(o.addr)) as h:
        with caplog.at_level(logging.WARNING, logger="sluiceway.error"):
            got, err, _ = Upload(h.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").result()
        # 16 forwarded, then the proxy gives up: the final answer is a 502
        assert got.count(b"HTTP/1.1 102") == 16
        assert got.split(b"\r\n\r\n")[16].startswith(b"HTTP/1.1 502")
    assert any("informational" in r.getMessage() for r in caplog.records)
