"""Request bodies that stall or drip: answered 408 at the body timeout or
under the minimum rate, the client named as the cause; time the proxy
spends waiting for the upstream or a hook is not the client's."""

import asyncio
import logging
import select
import time

from proxy_harness import Harness, open_fds
from raw_peers import (RawOrigin, Upload, content_length, n_responses, read_exact, read_head,
                       responses)
from sluiceway.config import ServerConf
from sluiceway.proxy import HttpPeer, ProxyHttp


def reading_origin(delay=0.0):
    """Reads each request whole (after ``delay`` seconds) and answers 200
    with the body's length."""
    def handler(conn, origin):
        buf = b""
        while True:
            head, buf = read_head(conn, buf, timeout=10)
            if head is None:
                return
            origin.received.append(head)
            if delay:
                time.sleep(delay)
            body, buf = read_exact(conn, content_length(head), buf)
            origin.received.append(len(body))
            out = b"%d" % len(body)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(out), out))
    return handler


class ToOrigin(ProxyHttp):
    def __init__(self, addr):
        self.addr = addr
        self.errors = []

    def upstream_peer(self, session, ctx):
        return HttpPeer(self.addr)

    def logging(self, session, error, ctx):
        self.errors.append(error)


def test_defaults():
    c = ServerConf()
    assert c.downstream_body_timeout_seconds == 60.0
    assert c.downstream_body_min_rate == 100.0
    from sluiceway._engine import Settings
    s = Settings.from_conf(c)
    assert s.downstream_body_timeout_seconds == 60.0 and s.downstream_body_min_rate == 100.0


def test_stalled_body_is_408_and_blames_the_client(caplog):
    with RawOrigin(reading_origin()) as o:
        app = ToOrigin(o.addr)
        with Harness(app, downstream_body_timeout_seconds=0.5) as h:
            base = open_fds()
            with caplog.at_level(logging.WARNING, logger="sluiceway.error"):
                t0 = time.monotonic()
                u = Upload(h.port, b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
                           + b"a" * 100)
                got, err, _ = u.result()
                took = time.monotonic() - t0
            assert err is None
            assert got.startswith(b"HTTP/1.1 408") and b"Connection: close" in got
            assert 0.4 < took < 2.5
            deadline = time.monotonic() + 3
            while open_fds() > base and time.monotonic() < deadline:
                time.sleep(0.05)
            assert open_fds() <= base  # client and upstream connections closed
            assert h.pool_stats()["idle"] == 0
    err = app.errors[-1]
    assert err.status == 408 and err.source == "downstream"
    assert any("408" in r.getMessage() and "downstream_body_timeout" in r.getMessage()
               and "client 127.0.0.1:" in r.getMessage() for r in caplog.records)


def test_dripping_body_is_408_under_the_minimum_rate(caplog):
    with RawOrigin(reading_origin()) as o:
        app = ToOrigin(o.addr)
        with Harness(app, downstream_body_timeout_seconds=0.5, downstream_body_min_rate=100) as h:
            u = Upload(h.port, b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
            u.send_more(b"")  # the head is out
            t0 = time.monotonic()
            with caplog.at_level(logging.WARNING, logger="sluiceway.error"):
                while time.monotonic() - t0 < 5:
                    try:
                        u.sock.sendall(b"d")  # 5 bytes a second: never 0.5 s quiet
                    except OSError:
                        break
                    if select.select([u.sock], [], [], 0.2)[0]:
                        break  # the answer came
                got, err, _ = u.result()
            assert got.startswith(b"HTTP/1.1 408"), got
            assert time.monotonic() - t0 < 3
    assert any("downstream_body_min_rate" in r.getMessage() for r in caplog.records)


def test_slow_upstream_is_not_the_clients_fault():
    # The origin reads nothing for 1.5 s: the proxy stops reading the
    # client (backpressure); the client's body timeout does not run then.
    with RawOrigin(reading_origin(delay=1.5)) as o:
        with Harness(ToOrigin(o.addr), downstream_body_timeout_seconds=0.5,
                     upstream_read_timeout_seconds=10) as h:
            size = 8 * 1024 * 1024
            got, err, send_err = Upload(h.port, b"POST /up HTTP/1.1\r\nHost: x\r\n"
                                        b"Content-Length: %d\r\n\r\n" % size + b"b" * size,
                                        timeout=20, until=n_responses(1)).result()
            assert err is None and send_err is None
            (head, body), = responses(got)
            assert head.startswith(b"HTTP/1.1 200") and body == b"%d" % size


class SlowGate(ProxyHttp):
    """A request_filter that takes 1 s (an auth call, say)."""

    def __init__(self, addr):
        self.addr = addr

    async def request_filter(self, session, ctx):
        await asyncio.sleep(1.0)
        return False

    def upstream_peer(self, session, ctx):
        return HttpPeer(self.addr)


def test_time_in_hooks_is_not_the_clients_fault():
    # An Expect: 100-continue client sends its body only after the 100,
    # which comes once the request goes upstream (after the slow hook).
    with RawOrigin(reading_origin()) as o:
        with Harness(SlowGate(o.addr), downstream_body_timeout_seconds=0.4) as h:
            u = Upload(h.port, b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                               b"Expect: 100-continue\r\n\r\n")
            u.read(until=lambda b: b"\r\n\r\n" in b)
            assert u.got.startswith(b"HTTP/1.1 100")
            u.send_more(b"hello")
            got = u.read(until=lambda b: b.endswith(b"5"))
            u.sock.close()
            assert b"HTTP/1.1 200" in got


def test_steady_slow_upload_above_the_minimum_rate_passes():
    with RawOrigin(reading_origin()) as o:
        with Harness(ToOrigin(o.addr), downstream_body_timeout_seconds=0.3,
                     downstream_body_min_rate=1000) as h:
            n = 12
            u = Upload(h.port, b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (n * 500))
            for _ in range(n):
                time.sleep(0.1)  # 5,000 bytes a second
                u.sock.sendall(b"c" * 500)
            got = u.read(until=lambda b: b.endswith(b"%d" % (n * 500)))
            err = u.recv_error
            u.sock.close()
            assert err is None and got.startswith(b"HTTP/1.1 200")
