"""Failover: a request whose upstream attempt fails before any response byte
goes to upstream_peer again when that is safe (a failed connect; a broken,
reset or timed-out connection for an idempotent method with its body kept),
bounded by max_retries; error_while_proxy and fail_to_connect decide in the
end. Passive health: a LoadBalancer's peers report each attempt, and a
backend that fails max_fails times within fail_timeout is left out for
fail_timeout (nginx's semantics). The load version (an origin killed under
wrk) is in test_ops_load.py."""

import asyncio
import logging
import socket
import struct
import threading
import time

import httpx
import pytest

from proxy_harness import Harness, free_port
from raw_peers import RawOrigin, content_length, read_exact, read_head
from sluiceway import Error, LoadBalancer, ProxyHttp, TcpHealthCheck
from sluiceway.lb import SelectionAlgorithm


class FirstFirst(SelectionAlgorithm):
    """The first backend first, then the others in order: the bad one is
    always tried first."""

    def next(self, key):
        return 0


class LBApp(ProxyHttp):
    """upstream_peer through a LoadBalancer; a retry avoids the peers that
    failed (``avoid=session.tried_peers``)."""

    port = 0   # the Harness leaves an app without port=None alone

    def __init__(self, lb):
        self.lb = lb
        self.asked = []

    def upstream_peer(self, session, ctx):
        peer = self.lb.select_peer(None, avoid=session.tried_peers)
        if peer is None:
            raise Error("no usable backend", status=502, source="upstream")
        self.asked.append(peer.port)
        return peer


def _drop(conn, origin):
    """Read the request, then close without answering."""
    head, rest = read_head(conn)
    if head:
        read_exact(conn, content_length(head), rest)
        origin.received.append(head)


def _reset(conn, origin):
    """Read the request, then reset the connection."""
    head, _ = read_head(conn)
    if head:
        origin.received.append(head)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _hang(conn, origin):
    head, _ = read_head(conn)
    if head:
        origin.received.append(head)
    time.sleep(1.5)


def _lb(*ports, **kw):
    return LoadBalancer.from_iter([f"127.0.0.1:{p}" for p in ports], FirstFirst, **kw)


@pytest.mark.parametrize("bad", [_drop, _reset, _hang])
def test_get_that_fails_before_any_response_byte_goes_to_another_peer(bad, caplog):
    with RawOrigin(bad) as o, Harness(LBApp(None), upstream_read_timeout_seconds=0.5) as h:
        h.app.lb = _lb(o.port, h.origin.port, max_fails=0)
        with caplog.at_level(logging.WARNING, logger="sluiceway.error"):
            r = httpx.get(h.url + "/headers", timeout=5)
        assert r.status_code == 200
        assert len(o.received) == 1 and h.origin.requests == 1
        assert h.app.asked == [o.port, h.origin.port]
        assert h.run(lambda: h.svc.stats()["retried"]) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_request_body_is_sent_again_when_kept(caplog):
    class OptIn(LBApp):
        def error_while_proxy(self, session, peer, error, ctx, client_reused):
            if session.req_header.get("idempotency-key"):
                error.retryable = True
            return error
    with RawOrigin(_drop) as o, Harness(OptIn(None), retry_buffer_bytes=1000) as h:
        h.app.lb = _lb(o.port, h.origin.port, max_fails=0)
        # PUT is idempotent: its body (kept, under retry_buffer_bytes) goes again
        r = httpx.put(h.url + "/echo", content=b"p" * 900, timeout=5)
        assert r.status_code == 200 and r.content == b"p" * 900
        # POST is not: 502, sent once
        h.app.asked.clear()
        assert httpx.post(h.url + "/echo", content=b"x" * 10, timeout=5).status_code == 502
        assert h.app.asked == [o.port]
        # ... unless error_while_proxy marks it retryable
        r = httpx.post(h.url + "/echo", content=b"y" * 10, headers={"idempotency-key": "k"},
                       timeout=5)
        assert r.status_code == 200 and r.content == b"y" * 10
        # a body over retry_buffer_bytes was not kept: not sent again
        h.app.asked.clear()
        assert httpx.put(h.url + "/echo", content=b"z" * 2000, timeout=5).status_code == 502
        assert h.app.asked == [o.port]
        # a chunked body is kept too
        r = httpx.put(h.url + "/echo", content=iter([b"a" * 100, b"b" * 100]), timeout=5)
        assert r.status_code == 200 and r.content == b"a" * 100 + b"b" * 100


@pytest.mark.parametrize("max_retries", [0, 1, 3])
def test_max_retries_bounds_the_attempts(max_retries):
    bad = []
    for _ in range(4):
        bad.append(RawOrigin(_drop).__enter__())
    try:
        with Harness(LBApp(None), max_retries=max_retries) as h:
            h.app.lb = _lb(*[o.port for o in bad], max_fails=0)
            assert httpx.get(h.url + "/", timeout=5).status_code == 502
            assert len(h.app.asked) == max_retries + 1
            assert len(set(h.app.asked)) == max_retries + 1    # each retry: another peer
    finally:
        for o in bad:
            o.__exit__(None, None, None)


def test_a_failed_connect_is_retried_unless_fail_to_connect_says_no():
    closed = free_port()

    class NoRetry(LBApp):
        def fail_to_connect(self, session, peer, ctx, error):
            if session.req_header.path == "/once":
                error.retryable = False
            return error
    with Harness(NoRetry(None)) as h:
        h.app.lb = _lb(closed, h.origin.port, max_fails=0)
        r = httpx.post(h.url + "/echo", content=b"body", timeout=5)   # nothing was sent: safe
        assert r.status_code == 200 and r.content == b"body"
        assert h.app.asked == [closed, h.origin.port]
        h.app.asked.clear()
        assert httpx.get(h.url + "/once", timeout=5).status_code == 502
        assert h.app.asked == [closed]


def test_passive_health_leaves_a_failing_backend_out_for_fail_timeout(caplog):
    # fail_timeout long enough for five requests on a busy machine
    closed = free_port()
    with Harness(LBApp(None)) as h:
        lb = h.app.lb = _lb(closed, h.origin.port, max_fails=2, fail_timeout=2.0)
        with caplog.at_level(logging.INFO, logger="sluiceway.error"):
            for _ in range(2):                       # two failures: left out
                assert httpx.get(h.url + "/", timeout=5).status_code == 200
            assert not lb.state(lb.backends()[0]).usable
            h.app.asked.clear()
            for _ in range(5):
                assert httpx.get(h.url + "/", timeout=5).status_code == 200
            assert h.app.asked == [h.origin.port] * 5   # not even tried
            time.sleep(2.1)                             # back, on probation
            assert lb.state(lb.backends()[0]).usable
            h.app.asked.clear()
            assert httpx.get(h.url + "/", timeout=5).status_code == 200
            assert h.app.asked == [closed, h.origin.port]
            assert not lb.state(lb.backends()[0]).usable   # one failure was enough
        msgs = [r.getMessage() for r in caplog.records]
        assert f"load balancer: backend 127.0.0.1:{closed} failed 2 times within 2s; left " \
               f"out of selection for 2s" in msgs
        assert any("is back in selection after 2s" in m for m in msgs)
        assert any("failed again after coming back" in m for m in msgs)


def test_a_success_clears_the_count_and_responses_report_success():
    seen = []

    class Watch(LoadBalancer):
        def report(self, backend, ok, error=None):
            seen.append((backend.port, ok))
            super().report(backend, ok, error)

    with Harness(LBApp(None)) as h:
        lb = h.app.lb = Watch.from_iter([f"127.0.0.1:{h.origin.port}"], FirstFirst,
                                        max_fails=2)
        assert httpx.get(h.url + "/status/503", timeout=5).status_code == 503
        assert seen == [(h.origin.port, True)]   # an answer is a success, whatever its status
        b = lb.backends()[0]
        lb.report(b, False)
        assert lb.state(b).fails == 1
        assert httpx.get(h.url + "/", timeout=5).status_code == 200
        assert lb.state(b).fails == 0 and lb.state(b).usable


def test_an_active_check_that_sees_a_backend_come_back_ends_its_exclusion():
    async def main():
        ls = socket.socket()
        ls.bind(("127.0.0.1", 0))
        port = ls.getsockname()[1]
        lb = LoadBalancer.from_iter([f"127.0.0.1:{port}"], health_check=TcpHealthCheck(
            timeout=0.5, consecutive_failure=3), max_fails=1, fail_timeout=60)
        b = lb.backends()[0]
        for _ in range(3):
            await lb.check_health()              # nothing listens: 3 failures in a row
        assert not lb.state(b).healthy
        lb.report(b, False)                      # and real traffic failed
        assert lb.state(b).left_out
        ls.listen(8)                             # it comes back
        await lb.check_health()
        st = lb.state(b)
        assert st.healthy and not st.left_out and st.usable
        ls.close()
    asyncio.run(main())


def test_peers_are_made_once_per_backend_and_carry_it():
    lb = LoadBalancer.from_iter(["127.0.0.1:9001", "unix:/tmp/x.sock"],
                                peer_options={"read_timeout": 3})
    a, u = lb.backends()
    assert lb.peer(a) is lb.peer(a) and lb.peer(a).backend is a and lb.peer(a).balancer is lb
    assert (lb.peer(a).host, lb.peer(a).port, lb.peer(a).read_timeout) == ("127.0.0.1", 9001, 3)
    assert lb.peer(u).path == "/tmp/x.sock"
    with pytest.raises(TypeError, match="report"):
        from sluiceway import HttpPeer
        HttpPeer(("127.0.0.1", 1), balancer=object())


def test_no_retry_once_the_response_started():
    def half(conn, origin):
        head, _ = read_head(conn)
        origin.received.append(head)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
    with RawOrigin(half) as o, Harness(LBApp(None)) as h:
        h.app.lb = _lb(o.port, h.origin.port, max_fails=0)
        with pytest.raises(httpx.HTTPError):
            httpx.get(h.url + "/", timeout=5).read()
        assert h.app.asked == [o.port] and h.origin.requests == 0


def test_a_retry_waits_for_the_rest_of_a_streamed_body():
    """The client is still sending when the first peer breaks: what was sent
    goes to the next peer, then the rest streams there."""
    got = threading.Event()

    def drop_after_some(conn, origin):
        head, rest = read_head(conn)
        conn.settimeout(5)
        while len(rest) < 100:
            rest += conn.recv(65536)
        got.set()

    with RawOrigin(drop_after_some) as o, Harness(LBApp(None)) as h:
        h.app.lb = _lb(o.port, h.origin.port, max_fails=0)

        def body():
            yield b"a" * 100
            got.wait(5)
            time.sleep(0.2)
            yield b"b" * 100
        r = httpx.put(h.url + "/echo", content=body(), timeout=5)
        assert r.status_code == 200 and r.content == b"a" * 100 + b"b" * 100
