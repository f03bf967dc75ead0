"""Answers that come before the request body is read: an origin that refuses
an upload at once, a request_filter that answers itself, a 413, a
malformed request. The client must get the answer (never a reset), and the
connection is kept only when the proxy can read and drop the rest of the
body cheaply.
"""

import logging
import threading
import time

import pytest

from proxy_harness import Harness, open_fds
from raw_peers import (RawOrigin, Upload, content_length, linger_close, n_responses,
                       read_exact, read_head, responses)
from sluiceway.proxy import HttpPeer, ProxyHttp

BIG = 4 * 1024 * 1024


def early_origin(how):
    """An origin answering 401 to POST /upload without reading its body,
    then lingering (as nginx closes), holding the connection without
    reading, or closing at once; any other request is read whole and
    answered 200 "ok"."""
    def handler(conn, origin):
        buf = b""
        while True:
            head, buf = read_head(conn, buf)
            if head is None:
                return
            origin.received.append(head)
            if head.startswith(b"POST /upload"):
                conn.sendall(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 4\r\n\r\nnope")
                if how == "linger":
                    linger_close(conn)
                elif how == "hold":
                    time.sleep(3)
                return
            _, buf = read_exact(conn, content_length(head), buf)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    return handler


class ToOrigin(ProxyHttp):
    def __init__(self, addr):
        self.addr = addr

    def upstream_peer(self, session, ctx):
        return HttpPeer(self.addr)


def _uploads(port, n, size, follow=b""):
    head = b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size
    ups = [Upload(port, head + b"x" * size + follow, timeout=15) for _ in range(n)]
    return [u.result() for u in ups]


@pytest.mark.parametrize("how", ["linger", "hold"])
def test_origin_refusing_a_large_upload_reaches_every_client(how):
    with RawOrigin(early_origin(how)) as o, Harness(ToOrigin(o.addr)) as h:
        results = []

        def run():
            results.extend(_uploads(h.port, 1, BIG))

        threads = [threading.Thread(target=run) for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(results) == 20
        for got, recv_err, _send_err in results:
            assert recv_err is None, f"client lost the answer: {recv_err!r} after {got[:80]!r}"
            (head, body), = responses(got)
            assert head.startswith(b"HTTP/1.1 401") and body == b"nope"
            # The rest of the body is not read: the connection closes, and
            # the answer says so.
            assert b"connection: close" in head.lower()


def test_origin_refusing_a_small_upload_keeps_the_client_connection():
    with RawOrigin(early_origin("linger")) as o, Harness(ToOrigin(o.addr)) as h:
        size = 30000
        u = Upload(h.port, b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
        u.read(until=n_responses(1))
        # The answer came before the body; the proxy keeps the connection
        # and drops the body when it comes.
        head, body = responses(u.got)[0]
        assert head.startswith(b"HTTP/1.1 401") and b"connection: close" not in head.lower()
        u.send_more(b"y" * size + b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
        got, recv_err, send_err = (u.read(until=n_responses(2)), u.recv_error, u.send_error)
        u.sock.close()
        assert recv_err is None and send_err is None
        (_, _), (head2, body2) = responses(got)
        assert head2.startswith(b"HTTP/1.1 200") and body2 == b"ok"
        assert not any(r.startswith(b"y") for r in o.received)


class Refuser(ProxyHttp):
    """Answers 401 itself to requests without an API key."""

    def __init__(self, addr):
        self.addr = addr

    def request_filter(self, session, ctx):
        if session.req_header.get("x-api-key") is None:
            session.respond_error(401)
            return True
        return False

    def upstream_peer(self, session, ctx):
        return HttpPeer(self.addr)


def test_request_filter_refusing_a_large_upload_reaches_the_client():
    with RawOrigin(early_origin("linger")) as o, Harness(Refuser(o.addr)) as h:
        for got, recv_err, _ in [r for _ in range(5) for r in _uploads(h.port, 4, BIG)]:
            assert recv_err is None, f"client lost the answer: {recv_err!r}"
            (head, _), = responses(got)
            assert head.startswith(b"HTTP/1.1 401") and b"connection: close" in head.lower()
        assert o.connections == 0


def test_request_filter_refusing_a_small_upload_keeps_the_connection():
    with RawOrigin(early_origin("linger")) as o, Harness(Refuser(o.addr)) as h:
        follow = b"GET /next HTTP/1.1\r\nHost: x\r\nX-API-Key: k\r\n\r\n"
        u = Upload(h.port, b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
                   + b"z" * 1000 + follow, until=n_responses(2))
        got, recv_err, send_err = u.result()
        assert recv_err is None and send_err is None
        (h1, _), (h2, b2) = responses(got)
        assert h1.startswith(b"HTTP/1.1 401") and b"connection: close" not in h1.lower()
        assert h2.startswith(b"HTTP/1.1 200") and b2 == b"ok"
        assert len(o.received) == 1 and o.received[0].startswith(b"GET /next")


def test_413_for_a_large_upload_reaches_the_client(caplog):
    with RawOrigin(early_origin("linger")) as o, \
            Harness(ToOrigin(o.addr), max_request_body_bytes=1000) as h:
        with caplog.at_level(logging.WARNING, logger="sluiceway.error"):
            for got, recv_err, _ in _uploads(h.port, 8, BIG):
                assert recv_err is None, f"client lost the answer: {recv_err!r}"
                (head, _), = responses(got)
                assert head.startswith(b"HTTP/1.1 413") and b"connection: close" in head.lower()
        assert o.connections == 0
    assert any("413" in r.getMessage() and "max_body_size" in r.getMessage() for r in caplog.records)


def test_malformed_request_followed_by_a_flood_gets_its_400():
    with RawOrigin(early_origin("linger")) as o, Harness(ToOrigin(o.addr)) as h:
        got, recv_err, _ = Upload(h.port, b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n"
                                  + b"w" * BIG).result()
        assert recv_err is None
        assert got.startswith(b"HTTP/1.1 400")


def test_lingering_close_is_bounded_and_leaks_nothing():
    """A client that keeps sending after the answer is cut off at
    lingering_time; its descriptor is released."""
    with RawOrigin(early_origin("linger")) as o, \
            Harness(Refuser(o.addr), lingering_time_seconds=0.5,
                    lingering_timeout_seconds=0.3) as h:
        base = open_fds()
        u = Upload(h.port, b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n",
                   timeout=10)
        u.read(until=n_responses(1))
        assert u.got.startswith(b"HTTP/1.1 401")
        t0 = time.monotonic()
        stop = time.monotonic() + 5
        try:
            while time.monotonic() < stop:
                u.sock.sendall(b"x" * 4096)
                time.sleep(0.01)
        except OSError:
            pass
        assert time.monotonic() - t0 < 3, "the proxy went on reading past lingering_time"
        u.sock.close()
        deadline = time.monotonic() + 3
        while open_fds() > base and time.monotonic() < deadline:
            time.sleep(0.05)
        assert open_fds() <= base
        assert h.run(lambda: h.svc.engine.connections) == 0
