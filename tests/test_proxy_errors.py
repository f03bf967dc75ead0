"""Error statuses, limits and misbehaving peers (timeouts: test_proxy_timeouts.py)."""

import logging
import socket
import time

import httpx
import pytest

from proxy_harness import FixedPeer, Harness, SimpleApp, open_fds, raw


def _closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_connect_refused_is_502_with_log_line(caplog):
    port = _closed_port()
    app = FixedPeer(("127.0.0.1", port))
    with caplog.at_level(logging.WARNING, logger="sluiceway.error"):
        with Harness(app) as h:
            assert httpx.get(h.url + "/").status_code == 502
    assert app.errors[0].status == 502 and app.errors[0].source == "upstream"
    assert any(f"127.0.0.1:{port}" in r.getMessage() and "failed" in r.getMessage()
               for r in caplog.records)


@pytest.fixture(scope="module")
def h():
    with Harness(max_request_body_bytes=1000, max_request_header_bytes=4096) as harness:
        yield harness


def test_garbage_status_line_is_502(h):
    assert httpx.get(h.url + "/garbage").status_code == 502


def test_upstream_closes_without_response_is_502(h):
    assert httpx.get(h.url + "/drop").status_code == 502


def test_upstream_closes_mid_body_client_sees_close_not_hang(h):
    t0 = time.monotonic()
    out = raw(h.port, b"GET /cut HTTP/1.1\r\nHost: x\r\n\r\n", timeout=5)
    assert time.monotonic() - t0 < 2
    assert out.startswith(b"HTTP/1.1 200")
    assert out.endswith(b"0123456789")  # 10 of the promised 1000 bytes, then EOF


def test_response_before_request_body_is_read(h):
    body = b"x" * 900
    out = raw(h.port, b"POST /early HTTP/1.1\r\nHost: x\r\nContent-Length: 900\r\n\r\n" + body)
    assert out.startswith(b"HTTP/1.1 200") and out.endswith(b"early")


def test_malformed_request_is_400_with_reason_logged(h, caplog):
    with caplog.at_level(logging.INFO, logger="sluiceway.error"):
        out = raw(h.port, b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400")
    assert b"Connection: close" in out
    assert any("400 from client" in r.getMessage() for r in caplog.records)


def test_oversized_head_is_431(h):
    out = raw(h.port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 431")


def test_body_over_limit_is_413(h):
    r = httpx.post(h.url + "/echo", content=b"x" * 2000)
    assert r.status_code == 413
    r = httpx.post(h.url + "/echo", content=b"x" * 500)
    assert r.status_code == 200 and len(r.content) == 500


def test_chunked_body_over_limit_is_413(h):
    def gen():
        for _ in range(10):
            yield b"y" * 300
    assert httpx.post(h.url + "/echo", content=gen()).status_code == 413


def test_tls_on_plain_port_gets_clear_400(h):
    out = raw(h.port, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\0" * 40)
    assert out.startswith(b"HTTP/1.1 400")
    assert b"TLS" in out


def test_client_disconnect_mid_request_body_releases_upstream():
    app = SimpleApp()
    with Harness(app) as h:
        s = socket.create_connection(("127.0.0.1", h.port))
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"a" * 1000)
        time.sleep(0.2)
        s.close()
        deadline = time.monotonic() + 3
        while (h.engine().connections or h.origin.open) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert h.engine().connections == 0
        assert not h.origin.open  # the upstream connection was closed, not pooled
        assert h.pool_stats()["idle"] == 0


def test_client_disconnect_while_waiting_for_upstream():
    class Log(SimpleApp):
        errors = []

        def logging(self, session, error, ctx):
            self.errors.append(error)
    app = Log()
    with Harness(app) as h:
        s = socket.create_connection(("127.0.0.1", h.port))
        s.sendall(b"GET /slow?d=2 HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.2)
        s.close()
        deadline = time.monotonic() + 3
        while not app.errors and time.monotonic() < deadline:
            time.sleep(0.02)
        assert app.errors and app.errors[0].source == "downstream"
        assert h.pool_stats()["idle"] == 0


def test_max_connections_answers_503():
    with Harness(max_connections=2) as h:
        a = socket.create_connection(("127.0.0.1", h.port))
        b = socket.create_connection(("127.0.0.1", h.port))
        time.sleep(0.1)
        out = raw(h.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 503")
        a.close()
        b.close()
        time.sleep(0.1)
        assert raw(h.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").startswith(b"HTTP/1.1 200")


def test_max_connections_pause_mode_stops_accepting_until_one_closes(caplog):
    with Harness(max_connections=2, max_connections_mode="pause") as h:
        a = socket.create_connection(("127.0.0.1", h.port))
        b = socket.create_connection(("127.0.0.1", h.port))
        time.sleep(0.1)
        # The third client is not accepted: it waits in the backlog, unanswered.
        c = socket.create_connection(("127.0.0.1", h.port), timeout=0.5)
        try:
            c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            with pytest.raises(socket.timeout):
                c.recv(100)
            assert h.engine().connections == 2
            a.close()  # a slot frees: the waiting client is accepted and served
            c.settimeout(5)
            out = b""
            while True:
                chunk = c.recv(65536)
                if not chunk:
                    break
                out += chunk
            assert out.startswith(b"HTTP/1.1 200") and out.endswith(b"hello")
        finally:
            b.close()
            c.close()
    assert any("not accepting until one closes" in r.getMessage() for r in caplog.records)


def test_max_connections_mode_is_checked():
    from sluiceway.config import ConfigError, ServerConf
    with pytest.raises(ConfigError, match="max_connections_mode must be 'reject' or 'pause'"):
        ServerConf(max_connections_mode="queue")


def _mixed(h, n):
    paths = ["/", "/chunked?n=3", "/close", "/big?size=20000", "/status/204", "/garbage",
             "/drop", "/cut", "/debug", "/conn-close"]
    with httpx.Client(base_url=h.url, timeout=5) as c:
        for i in range(n):
            p = paths[i % len(paths)]
            try:
                if i % 7 == 0:
                    c.post("/echo", content=b"z" * (i % 5000))
                else:
                    c.get(p)
            except httpx.HTTPError:
                pass  # /cut ends mid-body on purpose


def _no_leaks(n):
    with Harness() as h:
        _mixed(h, 50)  # warm up (pool, freelists)
        fds0 = open_fds()
        _mixed(h, n)
        deadline = time.monotonic() + 3
        while open_fds() > fds0 and time.monotonic() < deadline:
            time.sleep(0.05)
        st = h.pool_stats()
        assert open_fds() <= fds0
        assert st["idle"] <= 1
        assert h.engine().connections <= 1
        assert h.engine().active_requests() == 0
        assert st["created"] - st["closed"] == st["idle"]


def test_no_fd_or_pool_leak_after_mixed_requests():
    _no_leaks(1000)


@pytest.mark.slow
def test_no_fd_or_pool_leak_after_10000_mixed_requests():
    _no_leaks(10000)
