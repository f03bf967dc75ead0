"""The engine's own connection I/O (one epoll set per loop, see
docs/architecture.md): addresses, name resolution, write queues, resets,
running out of descriptors, and that nothing stays registered."""

import socket
import struct
import textwrap
import time

import httpx
import pytest

from proxy_harness import (Harness, OriginThread, SimpleApp, free_port, recv_all, spawn, stop_proc,
                           wait_port)
from sluiceway import _engine
from sluiceway.proxy import HttpPeer, ProxyHttp


def _io_count(h):
    return h.run(lambda: _engine.io_connections(h.loop))


def _wait(pred, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


class AddrApp(SimpleApp):
    def __init__(self):
        super().__init__()
        self.seen = []
        self.logged = []

    def request_filter(self, session, ctx):
        self.seen.append(session.client_addr)
        return False

    def logging(self, session, error, ctx):
        self.logged.append((session.client_addr, error))


def test_client_addr_is_the_clients_socket_address():
    app = AddrApp()
    with Harness(app) as h:
        s = socket.create_connection(("127.0.0.1", h.port))
        try:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert s.recv(65536).startswith(b"HTTP/1.1 200")
            assert app.seen == [s.getsockname()]
        finally:
            s.close()


def test_client_addr_kept_for_logging_after_the_client_left():
    app = AddrApp()
    with Harness(app) as h:
        s = socket.create_connection(("127.0.0.1", h.port))
        me = s.getsockname()
        s.sendall(b"GET /slow?d=0.5 HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.1)
        s.close()
        assert _wait(lambda: app.logged)
        addr, err = app.logged[0]
        assert addr == me
        assert err is not None


def test_client_addr_over_ipv6_and_after_the_client_left():
    """The address accept gave, IPv6 with its flow info and scope id, as
    the socket module gives it; also to logging after a reset."""
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        pytest.skip("no IPv6 loopback here")
    from sluiceway.server import ProxyService
    app = AddrApp()
    with Harness(app) as h:
        svc = ProxyService(h.conf, app)
        svc.add_tcp("[::1]:0")
        h.call(svc.start())
        try:
            port = svc.addresses[0][1]
            with socket.create_connection(("::1", port)) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                assert s.recv(65536).startswith(b"HTTP/1.1 200")
                assert app.seen == [s.getsockname()]
                assert len(app.seen[0]) == 4 and app.seen[0][0] == "::1"
            s = socket.create_connection(("::1", port))
            me = s.getsockname()
            s.sendall(b"GET /slow?d=0.5 HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(0.1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()        # a reset
            assert _wait(lambda: len(app.logged) == 2)
            assert app.logged[1][0] == me and app.logged[1][1] is not None
        finally:
            h.call(svc.stop(0.5))


def test_a_burst_of_connections_waiting_in_the_backlog_is_all_served():
    """Connections are accepted one per wake-up: 300 that wait in the
    listen queue together (connected before the proxy took any) are all
    taken and answered."""
    with Harness(SimpleApp()) as h:
        socks = [socket.create_connection(("127.0.0.1", h.port), timeout=10) for _ in range(300)]
        try:
            for s in socks:
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            for s in socks:
                got = recv_all(s)
                assert got.startswith(b"HTTP/1.1 200"), got[:80]
        finally:
            for s in socks:
                s.close()
        assert _wait(lambda: h.run(lambda: h.svc.stats())["connections"] == 0)


def test_upstream_given_by_host_name():
    """A name is resolved with the loop's getaddrinfo and each address is
    tried in order ("localhost" may give ::1 first, where nothing listens)."""

    class NameApp(SimpleApp):
        def upstream_peer(self, session, ctx):
            return HttpPeer(("localhost", self.port))

    with Harness(NameApp()) as h:
        r = httpx.get(h.url + "/")
        assert r.status_code == 200 and r.content == b"hello"


def test_connection_refused_is_502_and_nothing_stays_registered():
    port = free_port()

    class Refused(ProxyHttp):
        def upstream_peer(self, session, ctx):
            return HttpPeer(("127.0.0.1", port))

    with Harness(Refused()) as h:
        base = _io_count(h)
        for _ in range(5):
            assert httpx.get(h.url + "/").status_code == 502
        assert _wait(lambda: _io_count(h) == base)


def test_many_pipelined_requests_to_a_client_that_reads_late():
    """Responses the client does not read yet are queued (the kernel's
    buffers fill first) and written in order."""
    with Harness() as h:
        n = 1500
        sizes = [4000 + i for i in range(n)]
        s = socket.create_connection(("127.0.0.1", h.port))
        try:
            s.sendall(b"".join(b"GET /big?size=%d HTTP/1.1\r\nHost: x\r\n\r\n" % k for k in sizes))
            time.sleep(0.5)
            total = sum(sizes)
            chunks = []
            got = 0
            s.settimeout(10)
            while got < total + n * 40:
                chunk = s.recv(1 << 20)
                assert chunk, "connection closed early"
                chunks.append(chunk)
                got += len(chunk)
                if got >= total and b"".join(chunks).endswith(b"x" * sizes[-1]):
                    break
            buf = b"".join(chunks)
            bodies = [part.split(b"\r\n\r\n", 1)[1] for part in buf.split(b"HTTP/1.1 200")[1:]]
            assert [len(b) for b in bodies] == sizes
            assert set(buf.split(b"HTTP/1.1 200")[0]) == set()
        finally:
            s.close()


def test_slow_reader_gets_every_byte():
    with Harness() as h:
        size = 32 * 1024 * 1024
        s = socket.create_connection(("127.0.0.1", h.port))
        try:
            s.sendall(b"GET /big?size=%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % size)
            time.sleep(0.5)  # the kernel's buffers fill, then the proxy queues and pauses
            s.settimeout(10)
            chunks = []
            while True:
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
            head, body = b"".join(chunks).split(b"\r\n\r\n", 1)
            assert b"Content-Length: %d" % size in head
            assert len(body) == size and body.count(b"x") == size
        finally:
            s.close()


def test_client_reset_during_a_large_response_frees_both_sides():
    with Harness() as h:
        base = _io_count(h)
        for _ in range(3):
            s = socket.create_connection(("127.0.0.1", h.port))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(b"GET /big?size=20000000 HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 200")
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()  # RST
        # The upstream connections that were mid-body are closed, not pooled.
        assert _wait(lambda: _io_count(h) == base + h.pool_stats()["idle"])
        assert h.pool_stats()["idle"] == 0
        assert httpx.get(h.url + "/").content == b"hello"


def test_registered_connections_match_open_ones():
    with Harness() as h:
        base = _io_count(h)
        clients = [httpx.Client() for _ in range(10)]
        try:
            for c in clients:
                assert c.get(h.url + "/").status_code == 200
            # 10 clients kept alive, plus the pooled upstream connections
            assert _io_count(h) == base + 10 + h.pool_stats()["idle"]
        finally:
            for c in clients:
                c.close()
        assert _wait(lambda: _io_count(h) == base + h.pool_stats()["idle"])


def test_accept_pauses_when_out_of_descriptors_and_resumes(tmp_path):
    (tmp_path / "fdapp.py").write_text(textwrap.dedent("""
        import os
        from sluiceway import HttpPeer, ProxyHttp

        class App(ProxyHttp):
            def upstream_peer(self, session, ctx):
                return HttpPeer(("127.0.0.1", int(os.environ["ORIGIN_PORT"])))
    """))
    (tmp_path / "conf.yaml").write_text("version: 1\n")
    port = free_port()
    limit = 64
    code = (f"import resource, runpy, sys; resource.setrlimit(resource.RLIMIT_NOFILE, ({limit}, "
            f"resource.getrlimit(resource.RLIMIT_NOFILE)[1])); "
            f"sys.argv = ['sluiceway', 'run', 'fdapp:App', '-c', {str(tmp_path / 'conf.yaml')!r}, "
            f"'-l', '127.0.0.1:{port}']; runpy.run_module('sluiceway', run_name='__main__')")
    with OriginThread() as o:
        p = spawn(["-c", code], {"ORIGIN_PORT": str(o.ports[0]), "PYTHONPATH": str(tmp_path)})
        socks = []
        try:
            wait_port(port, p)
            for _ in range(limit + 20):  # more than the proxy can hold
                socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            time.sleep(0.8)
            assert p.poll() is None
            for s in socks:
                s.close()
            socks = []
            # accepting resumes: a request is served again
            deadline = time.monotonic() + 10
            while True:
                try:
                    r = httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
                    break
                except httpx.HTTPError:
                    assert time.monotonic() < deadline, "accepting did not resume"
                    time.sleep(0.2)
            assert r.status_code == 200 and r.content == b"hello"
        finally:
            for s in socks:
                s.close()
            stop_proc(p)
        err = p.stderr.read().decode(errors="replace")
        assert "cannot accept connections" in err and "pausing accept" in err, err[-2000:]


def test_large_reads_are_handed_over_intact():
    """Reads over 4 KiB hand the receive buffer itself to the parser (shrunk
    in place, then a new buffer is made); the very first read of a fresh
    loop may be one of them."""
    with Harness() as h:
        body = bytes(range(256)) * 250  # 64,000 bytes, not all alike
        with httpx.Client(base_url=h.url) as c:
            for i in range(3):
                r = c.post("/echo", content=body[i:])
                assert r.status_code == 200 and r.content == body[i:]
                r = c.get(f"/big?size={100000 + i}")
                assert r.content == b"x" * (100000 + i)


def test_write_timeout_drops_a_client_that_stopped_reading_with_bytes_queued():
    """downstream_write_timeout closes the client at once, queued bytes and
    all (as nginx's send_timeout); the upstream connection goes too."""
    with Harness(downstream_write_timeout_seconds=0.3) as h:
        base = _io_count(h)
        s = socket.create_connection(("127.0.0.1", h.port))
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(b"GET /big?size=50000000 HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _wait(lambda: _io_count(h) == base + h.pool_stats()["idle"] and
                         h.engine().connections == 0, 5)
        finally:
            s.close()
        assert h.pool_stats()["idle"] == 0


def test_a_client_connection_without_a_socket_has_no_addresses():
    """A client connection that no socket carries (the engine fed directly,
    as bench/bench_hooks.py does) answers ``session.server_addr`` and
    ``client_addr`` with None rather than failing: there is no transport to
    ask any more."""
    import asyncio

    import uvloop

    from sluiceway import _engine, _io_probe
    from sluiceway.proxy import ProxyHttp

    seen = []

    class App(ProxyHttp):
        def upstream_peer(self, session, ctx):
            raise AssertionError("not reached")

        def request_filter(self, session, ctx):
            seen.append((session.client_addr, session.server_addr))
            session.respond(200, None, b"ok")
            return True

    loop = uvloop.new_event_loop()
    asyncio.events._set_running_loop(loop)  # hooks run as if in a loop callback
    try:
        eng = _engine.make_engine(App(), ProxyHttp, loop)
        conn = _io_probe.detached_client(eng)
        _io_probe.feed(conn, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        eng.stop()
    finally:
        asyncio.events._set_running_loop(None)
        loop.close()
    assert seen == [(None, None)]
