"""Every timeout, with real clients and peers on 127.0.0.1: connecting,
upstream reads and writes, a whole request, a client's head (slowloris), its
idle keep-alive connection, a client that stops reading, stalled or dripping
request bodies (408 at the body timeout or under the minimum rate, the client
named as the cause; time spent waiting for the upstream or a hook is not the
client's), and how precisely a deadline shorter than the sweep's period
fires."""


import asyncio
import logging
import select
import socket
import threading
import time

import httpx

from proxy_harness import FixedPeer, Harness, SimpleApp, count_responses, open_fds
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


def test_connect_timeout_is_504():
    # A listener that never accepts, with a full backlog: SYNs are dropped.
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(0)
    fillers = []
    for _ in range(4):
        c = socket.socket()
        c.setblocking(False)
        c.connect_ex(ls.getsockname())
        fillers.append(c)
    try:
        app = FixedPeer(ls.getsockname(), connect_timeout=0.3)
        with Harness(app) as h:
            t0 = time.monotonic()
            r = httpx.get(h.url + "/", timeout=5)
            assert r.status_code == 504
            assert time.monotonic() - t0 < 3
        assert "connect_timeout" in app.errors[0].message
    finally:
        for c in fillers:
            c.close()
        ls.close()


def test_upstream_read_timeout_is_504_and_names_upstream(caplog):
    app = SimpleApp()
    with caplog.at_level(logging.WARNING, logger="sluiceway.error"):
        with Harness(app, upstream_read_timeout_seconds=0.3) as h:
            t0 = time.monotonic()
            assert httpx.get(h.url + "/slow?d=3", timeout=5).status_code == 504
            assert time.monotonic() - t0 < 2
            assert h.pool_stats()["idle"] == 0  # the timed-out connection is not pooled
    assert any("timed out" in r.getMessage() and "read_timeout" in r.getMessage()
               and f"127.0.0.1:{h.origin.port}" in r.getMessage() for r in caplog.records)


def test_total_request_timeout_is_504():
    with Harness(request_timeout_seconds=0.3) as h:
        assert httpx.get(h.url + "/slow?d=3", timeout=5).status_code == 504


def test_slowloris_head_timeout_closes():
    with Harness(downstream_header_timeout_seconds=0.3) as h:
        s = socket.create_connection(("127.0.0.1", h.port), timeout=5)
        try:
            s.sendall(b"GET / HTTP/1.1\r\nHo")
            t0 = time.monotonic()
            out = s.recv(65536)
            assert time.monotonic() - t0 < 2
            assert out.startswith(b"HTTP/1.1 408")
            assert s.recv(65536) == b""
        finally:
            s.close()


def test_idle_keepalive_timeout_closes():
    with Harness(downstream_keepalive_timeout_seconds=0.3) as h:
        s = socket.create_connection(("127.0.0.1", h.port), timeout=5)
        try:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            buf = b""
            while count_responses(buf) < 1:
                buf += s.recv(65536)
            t0 = time.monotonic()
            assert s.recv(65536) == b""
            assert 0.2 < time.monotonic() - t0 < 2
        finally:
            s.close()


def test_upstream_write_timeout_is_504():
    # An upstream that accepts the connection but never reads the body.
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(4)
    accepted = []
    import threading

    def accept():
        try:
            c, _ = ls.accept()
            c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            accepted.append(c)
        except OSError:
            pass
    threading.Thread(target=accept, daemon=True).start()
    app = FixedPeer(ls.getsockname(), write_timeout=0.3)
    try:
        with Harness(app) as h:
            s = socket.create_connection(("127.0.0.1", h.port), timeout=10)
            size = 64 * 1024 * 1024
            s.sendall(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
            s.setblocking(False)
            block = b"w" * 65536
            got = b""
            t0 = time.monotonic()
            while time.monotonic() - t0 < 5 and b"\r\n\r\n" not in got:
                try:
                    s.send(block)
                except (BlockingIOError, ConnectionError):
                    pass
                try:
                    got += s.recv(65536)
                except BlockingIOError:
                    time.sleep(0.005)
                except ConnectionError:
                    break
            s.close()
            assert got.startswith(b"HTTP/1.1 504"), got[:100]
        assert "write_timeout" in app.errors[0].message
    finally:
        ls.close()
        for c in accepted:
            c.close()


def test_client_that_stops_reading_is_disconnected(caplog):
    class Log(SimpleApp):
        errors = []

        def logging(self, session, error, ctx):
            self.errors.append(error)
    app = Log()
    with caplog.at_level(logging.INFO, logger="sluiceway.error"):
        with Harness(app, downstream_write_timeout_seconds=0.3) as h:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", h.port))
            s.sendall(b"GET /big?size=50000000 HTTP/1.1\r\nHost: x\r\n\r\n")
            deadline = time.monotonic() + 5
            while not app.errors and time.monotonic() < deadline:
                time.sleep(0.05)
            s.close()
            assert app.errors and "downstream_write_timeout" in app.errors[0].message
            assert h.pool_stats()["idle"] == 0  # the half-read upstream is not pooled
    assert any("read nothing" in r.getMessage() for r in caplog.records)


def test_per_peer_read_timeout_fires_on_time():
    """A peer's read timeout shorter than the sweep's period (a second with
    these settings) fires within 50 ms of its deadline, not up to a period
    late."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(16)
    held = []
    stop = threading.Event()

    def accept():  # an origin that accepts and never answers
        ls.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(ls.accept()[0])
            except OSError:
                pass
    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        app = FixedPeer(ls.getsockname(), read_timeout=0.2)
        # max_retries 0: a GET timed out before any response byte is
        # otherwise sent again (test_proxy_failover.py); one timeout is timed.
        with Harness(app, upstream_read_timeout_seconds=30, downstream_header_timeout_seconds=30,
                     downstream_keepalive_timeout_seconds=30, max_retries=0) as h:
            assert h.engine().settings.upstream_read_timeout_seconds == 30
            late = []
            with httpx.Client(timeout=5) as c:
                for _ in range(5):
                    t0 = time.monotonic()
                    r = c.get(h.url + "/")
                    late.append(time.monotonic() - t0 - 0.2)
                    assert r.status_code == 504
            # the median within 50 ms; none near a sweep period late (a busy
            # machine can delay one wake-up by tens of milliseconds)
            assert sorted(late)[2] < 0.05 and max(late) < 0.5, late
    finally:
        stop.set()
        t.join(2)
        for c in held:
            c.close()
        ls.close()
