"""End-to-end proxying: framings, keep-alive, pipelining, pooling, hop-by-hop
headers. Real clients (httpx, curl, raw sockets) against the harness origin
on 127.0.0.1."""

import json
import logging
import shutil
import socket
import subprocess
import time

import httpx
import pytest

from proxy_harness import Harness, SimpleApp, count_responses, raw


@pytest.fixture(scope="module")
def h():
    with Harness() as harness:
        yield harness


def test_content_length_response(h):
    r = httpx.get(h.url + "/")
    assert r.status_code == 200
    assert r.content == b"hello"
    assert r.headers["content-length"] == "5"


def test_chunked_response_is_rechunked(h):
    r = httpx.get(h.url + "/chunked?n=5")
    assert r.content == b"".join(b"chunk-%d;" % i for i in range(5))
    assert r.headers["transfer-encoding"] == "chunked"


def test_close_delimited_response_becomes_chunked_for_http11(h):
    r = httpx.get(h.url + "/close")
    assert r.content == b"closed-body"
    assert r.headers["transfer-encoding"] == "chunked"


def test_close_delimited_response_to_http10_client_closes(h):
    out = raw(h.port, b"GET /close HTTP/1.0\r\nHost: x\r\n\r\n")
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"transfer-encoding" not in head.lower()
    assert b"connection: close" in head.lower()
    assert body == b"closed-body"


def test_http10_keep_alive_client(h):
    s = socket.create_connection(("127.0.0.1", h.port), timeout=5)
    try:
        for _ in range(3):
            s.sendall(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            buf = b""
            while count_responses(buf) < 1:
                buf += s.recv(65536)
            assert b"Connection: keep-alive" in buf
            assert buf.endswith(b"hello")
    finally:
        s.close()


def test_large_bodies_both_ways(h):
    r = httpx.get(h.url + "/big?size=3000000")
    assert len(r.content) == 3000000
    body = bytes(range(256)) * 8000
    r = httpx.post(h.url + "/echo", content=body)
    assert r.content == body


def test_chunked_request_body(h):
    def gen():
        for i in range(10):
            yield b"part%d," % i
    r = httpx.post(h.url + "/echo", content=gen())
    assert r.content == b"".join(b"part%d," % i for i in range(10))


def test_head_204_304_have_no_body(h):
    s = socket.create_connection(("127.0.0.1", h.port), timeout=5)
    try:
        s.sendall(b"HEAD /big?size=100 HTTP/1.1\r\nHost: x\r\n\r\n"
                  b"GET /status/204 HTTP/1.1\r\nHost: x\r\n\r\n"
                  b"GET /status/304 HTTP/1.1\r\nHost: x\r\n\r\n"
                  b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        buf = b""
        while True:
            c = s.recv(65536)
            if not c:
                break
            buf += c
    finally:
        s.close()
    parts = buf.split(b"HTTP/1.1 ")
    assert [p[:3] for p in parts[1:]] == [b"200", b"204", b"304", b"200"]
    # HEAD keeps the upstream's Content-Length but sends no body.
    assert b"Content-Length: 100\r\n\r\n" in parts[1]
    assert parts[1].endswith(b"\r\n\r\n")
    assert buf.endswith(b"hello")


def test_pipelined_requests_answered_in_order(h):
    reqs = b"".join(b"GET /headers?i=%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(20))
    out = raw(h.port, reqs, expect=20)
    bodies = [json.loads(p.split(b"\r\n\r\n", 1)[1].split(b"HTTP/1.1")[0])
              for p in out.split(b"HTTP/1.1 200")[1:]]
    assert [b["uri"] for b in bodies] == ["/headers?i=%d" % i for i in range(20)]


def test_byte_at_a_time_request(h):
    s = socket.create_connection(("127.0.0.1", h.port), timeout=5)
    try:
        for b in b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n":
            s.send(bytes([b]))
        buf = b""
        while True:
            c = s.recv(65536)
            if not c:
                break
            buf += c
        assert buf.startswith(b"HTTP/1.1 200") and buf.endswith(b"hello")
    finally:
        s.close()


def test_hop_by_hop_headers_removed_both_ways(h):
    out = raw(h.port, b"GET /headers HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, X-Secret\r\n"
                      b"X-Secret: s\r\nKeep-Alive: timeout=5\r\nProxy-Connection: x\r\nTE: trailers\r\n"
                      b"Trailer: X\r\nUpgrade: foo\r\nX-Kept: yes\r\n\r\n", expect=1)
    got = json.loads(out.split(b"\r\n\r\n", 1)[1])
    names = [n.lower() for n, v in got["headers"]]
    for hop in ("connection", "x-secret", "keep-alive", "proxy-connection", "te", "trailer", "upgrade"):
        assert hop not in names
    assert "x-kept" in names and "host" in names
    assert got["version"] == "1.1"


def test_untouched_head_forwarded_verbatim(h):
    out = raw(h.port, b"GET /headers?a=1 HTTP/1.1\r\nHost: x\r\nX-A:  spaced\r\nx-b: 2\r\n\r\n", expect=1)
    got = json.loads(out.split(b"\r\n\r\n", 1)[1])
    assert got["uri"] == "/headers?a=1"
    assert got["headers"] == [["Host", "x"], ["X-A", "spaced"], ["x-b", "2"]]


def test_host_added_for_http10_without_host(h):
    out = raw(h.port, b"GET /headers HTTP/1.0\r\n\r\n")
    got = json.loads(out.split(b"\r\n\r\n", 1)[1])
    assert ["Host", f"127.0.0.1:{h.origin.port}"] in got["headers"]


def test_expect_100_continue(h):
    s = socket.create_connection(("127.0.0.1", h.port), timeout=5)
    try:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        first = s.recv(65536)
        assert first == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(b"ping")
        buf = b""
        while count_responses(buf) < 1:
            buf += s.recv(65536)
        assert buf.startswith(b"HTTP/1.1 200") and buf.endswith(b"ping")
    finally:
        s.close()


def test_keepalive_reuse_counts():
    with Harness() as h:
        with httpx.Client(base_url=h.url) as c:
            for _ in range(50):
                assert c.get("/").status_code == 200
        st = h.pool_stats()
        assert h.origin.connections == 1
        assert st["created"] == 1 and st["reused"] == 49 and st["idle"] == 1


def test_curl_client(h):
    if not shutil.which("curl"):
        pytest.skip("curl not installed")
    out = subprocess.run(["curl", "-s", "-D", "-", h.url + "/chunked?n=2", h.url + "/"],
                         capture_output=True, timeout=10)
    assert out.returncode == 0
    assert b"chunk-0;chunk-1;" in out.stdout and out.stdout.endswith(b"hello")


def test_idle_pooled_connection_closed_by_peer_is_dropped_at_once():
    with Harness() as h:
        assert httpx.get(h.url + "/").status_code == 200
        assert h.pool_stats()["idle"] == 1
        h.call(h.origin.stop())  # closes the origin's side of the idle connection
        deadline = time.monotonic() + 2
        while h.pool_stats()["idle"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert h.pool_stats()["idle"] == 0


@pytest.mark.parametrize("max_retries", [0, 1])
def test_reused_connection_failure_is_retried_on_new_connection(max_retries):
    with Harness(max_retries=max_retries) as h:
        with httpx.Client(base_url=h.url) as c:
            assert c.get("/").status_code == 200
            # Make the pooled connection dead without the pool noticing:
            # /drop closes right after reading the request on that connection.
            r = c.get("/drop")
            assert r.status_code == 502
            assert c.get("/").status_code == 200
        # /drop was sent on the pooled connection, then once more on a new
        # one (never more), then max_retries times after asking upstream_peer
        # again (the new connection broke before answering too).
        assert h.origin.requests == 4 + max_retries
        assert h.pool_stats()["created"] == 3 + max_retries
        assert h.run(lambda: h.svc.stats()["retried"]) == max_retries


def test_upgrade_tunnel_websocket_style(h):
    s = socket.create_connection(("127.0.0.1", h.port), timeout=5)
    try:
        s.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\nfirst")
        buf = b""
        while b"first" not in buf:
            buf += s.recv(65536)
        head = buf.split(b"\r\n\r\n")[0].lower()
        assert head.startswith(b"http/1.1 101")
        assert b"upgrade: echo" in head and b"connection: upgrade" in head
        for i in range(20):
            msg = b"message-%d" % i
            s.sendall(msg)
            got = b""
            while len(got) < len(msg):
                got += s.recv(65536)
            assert got == msg
    finally:
        s.close()
    # the tunnel's upstream connection is closed, never pooled
    deadline = time.monotonic() + 3
    while h.engine().active_requests() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert h.engine().active_requests() == 0


def test_upgrade_refused_by_upstream_is_a_normal_response(h):
    out = raw(h.port, b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200") and out.endswith(b"hello")
    assert b"Connection: close" in out


def test_connect_method_is_405(h):
    out = raw(h.port, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 405")


def test_idle_keepalive_connections_hold_no_parser():
    """Parsers are bounded by requests in flight, not by open connections
    (the bench measures the RSS per idle connection)."""
    import gc
    with Harness() as h:
        socks = []
        try:
            for _ in range(400):
                s = socket.create_connection(("127.0.0.1", h.port), timeout=5)
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                buf = b""
                while count_responses(buf) < 1:
                    buf += s.recv(65536)
                socks.append(s)

            def count():
                return sum(1 for o in gc.get_objects() if type(o).__name__ == "_Wire")
            # upstream connections have their own parser; client ones are pooled
            assert h.run(count) <= 8
            assert h.engine().connections == 400
        finally:
            for s in socks:
                s.close()


@pytest.mark.parametrize("body", [None, b"payload" * 100, "chunked"])
def test_dead_pooled_connection_is_retried_once_with_the_body(body, caplog):
    """An idempotent request (RFC 9110 9.2.2) that met a pooled connection
    the origin had closed is sent once more on a new one, with its body."""
    with Harness() as h:
        with caplog.at_level(logging.DEBUG, logger="sluiceway.error"):
            with httpx.Client(base_url=h.url) as c:
                assert c.get("/").status_code == 200          # pools a connection
                if body is None:
                    r = c.get("/drop-reused")
                    expect = b""
                elif body == "chunked":
                    r = c.put("/drop-reused", content=iter([b"a" * 100, b"b" * 100]))
                    expect = b"a" * 100 + b"b" * 100
                else:
                    r = c.put("/drop-reused", content=body)
                    expect = body
                assert r.status_code == 200 and r.content == expect
                assert c.get("/").status_code == 200
        st = h.pool_stats()
        assert st["created"] == 2  # the dead one, then the retry's (reused after)
        assert h.origin.requests == 4
        assert h.run(lambda: h.svc.stats()["replayed"]) == 1
    retry_lines = [r for r in caplog.records if "sending it again" in r.getMessage()]
    assert len(retry_lines) == 1 and retry_lines[0].levelno == logging.DEBUG
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("body", [b"payload" * 100, "chunked", b""])
def test_post_on_a_dead_pooled_connection_is_not_replayed(body, caplog):
    """The origin may have acted on a POST before its connection died: it is
    never sent twice behind the client's back; the client gets 502."""
    with Harness() as h:
        with caplog.at_level(logging.WARNING, logger="sluiceway.error"):
            with httpx.Client(base_url=h.url) as c:
                assert c.get("/").status_code == 200
                content = iter([b"a" * 100, b"b" * 100]) if body == "chunked" else body
                assert c.post("/drop-reused", content=content).status_code == 502
                assert c.get("/").status_code == 200
        assert h.origin.requests == 3  # the POST reached the origin once
        assert h.run(lambda: h.svc.stats()["replayed"]) == 0
    assert any("502 for POST /drop-reused" in r.getMessage() and "reused connection" in r.getMessage()
               for r in caplog.records)


class OptInReplay(SimpleApp):
    """error_while_proxy opts in to replaying a POST the origin declared
    safe to repeat (an idempotency key)."""

    def error_while_proxy(self, session, peer, error, ctx, client_reused):
        if session.req_header.get("idempotency-key") is not None:
            error.retryable = True
        return error


def test_post_replay_when_a_hook_opts_in():
    with Harness(OptInReplay()) as h:
        with httpx.Client(base_url=h.url) as c:
            assert c.get("/").status_code == 200
            r = c.post("/drop-reused", content=b"pay", headers={"idempotency-key": "k1"})
            assert r.status_code == 200 and r.content == b"pay"
            assert c.get("/").status_code == 200
            assert c.post("/drop-reused", content=b"pay").status_code == 502
        assert h.run(lambda: h.svc.stats()["replayed"]) == 1


def test_pipelined_request_waits_during_a_retry():
    with Harness() as h:
        assert httpx.get(h.url + "/").status_code == 200
        out = raw(h.port, b"GET /drop-reused HTTP/1.1\r\nHost: x\r\n\r\n"
                          b"GET /headers?second HTTP/1.1\r\nHost: x\r\n\r\n", expect=2)
        assert out.count(b"HTTP/1.1 200") == 2
        assert out.index(b"Content-Length: 0") < out.index(b"/headers?second")


def test_parsers_are_reused_across_connections_safely(h):
    # keep-alive, close, HTTP/1.0, malformed: each leaves the free-listed
    # parser usable by the next connection.
    reqs = [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"GET / HTTP/1.0\r\n\r\n",
            b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
            b"BAD\r\n\r\n",
            b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"]
    for _ in range(3):
        for r in reqs:
            out = raw(h.port, r, timeout=2, expect=1)
            if r.startswith(b"BAD"):
                assert out.startswith(b"HTTP/1.1 400")
            else:
                assert out.startswith(b"HTTP/1.1 200"), (r, out)


def test_upstream_response_one_byte_at_a_time(h):
    with httpx.Client(base_url=h.url) as c:
        for _ in range(2):
            r = c.get("/bytewise")
            assert r.status_code == 200 and r.content == b"hello world"
            assert r.headers["x-long"] == "v" * 300
