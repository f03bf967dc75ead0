"""Every phase hook: order, return meaning, short-circuits, sync and async."""

import asyncio
import json
import sys
import time

import httpx
import pytest

from proxy_harness import Harness, count_responses, raw
from sluiceway.errors import Error
from sluiceway.proxy import HttpPeer, ProxyHttp

ALL_HOOKS = ["new_ctx", "early_request_filter", "request_filter", "request_body_filter",
             "upstream_peer", "connected_to_upstream", "upstream_request_filter",
             "upstream_response_filter", "response_filter", "response_body_filter", "logging"]
RUN_ORDER = ["new_ctx", "early_request_filter", "request_filter", "upstream_peer",
             "connected_to_upstream", "upstream_request_filter", "request_body_filter",
             "upstream_response_filter", "response_filter", "response_body_filter", "logging"]


class Recorder(ProxyHttp):
    """Overrides every phase and records the order."""

    def __init__(self, asynchronous=False, suspend=False):
        self.port = None
        self.calls = []
        self.logged = []
        self.asynchronous = asynchronous
        self.suspend = suspend

    def new_ctx(self):
        self.calls.append("new_ctx")
        return {"n": 0}

    def early_request_filter(self, session, ctx):
        self.calls.append("early_request_filter")

    def request_filter(self, session, ctx):
        self.calls.append("request_filter")
        return False

    def request_body_filter(self, session, body, end, ctx):
        self.calls.append("request_body_filter")
        return body.upper() if body else None

    def upstream_peer(self, session, ctx):
        self.calls.append("upstream_peer")
        return HttpPeer(("127.0.0.1", self.port))

    def connected_to_upstream(self, session, reused, peer, ctx):
        self.calls.append("connected_to_upstream")
        ctx["reused"] = reused

    def upstream_request_filter(self, session, req, ctx):
        self.calls.append("upstream_request_filter")
        req.insert_header("x-added", "1")

    def upstream_response_filter(self, session, resp, ctx):
        self.calls.append("upstream_response_filter")

    def response_filter(self, session, resp, ctx):
        self.calls.append("response_filter")
        resp.headers["x-resp"] = "yes"

    def response_body_filter(self, session, body, end, ctx):
        self.calls.append("response_body_filter")
        return None

    def logging(self, session, error, ctx):
        self.calls.append("logging")
        self.logged.append((session.status, error, ctx.get("reused")))


def _asyncify(cls, suspend):
    """A subclass whose hooks are coroutines (that really await if suspend)."""
    ns = {}
    for name in ALL_HOOKS:
        base = getattr(cls, name)

        def make(base):
            async def hook(self, *a):
                if suspend:
                    await asyncio.sleep(0.001)
                return base(self, *a)
            return hook
        ns[name] = make(base)
    return type("Async" + cls.__name__, (cls,), ns)


@pytest.mark.parametrize("mode", ["sync", "async-inline", "async-suspending"])
def test_phase_order_and_effects(mode):
    cls = Recorder if mode == "sync" else _asyncify(Recorder, mode == "async-suspending")
    app = cls()
    with Harness(app) as h:
        with httpx.Client(base_url=h.url) as c:
            r = c.post("/echo", content=b"abc")
            assert r.status_code == 200
            assert r.content == b"ABC"          # request_body_filter replaced the chunk
            assert r.headers["x-resp"] == "yes"  # response_filter
            r2 = c.get("/headers")
            got = json.loads(r2.content)
            assert ["x-added", "1"] in got["headers"]
    seq = app.calls[:app.calls.index("logging") + 1]
    # Body chunks reach request_body_filter as they stream, once the head
    # went upstream (as in Pingora).
    assert [n for n in dict.fromkeys(seq)] == RUN_ORDER
    assert app.logged[0][0] == 200 and app.logged[0][1] is None
    assert app.logged[1][2] is True  # second request reused the pooled connection


def test_unoverridden_hooks_are_not_called():
    class Minimal(ProxyHttp):
        port = None

        def upstream_peer(self, session, ctx):
            return HttpPeer(("127.0.0.1", self.port))
    with Harness(Minimal()) as h:
        assert h.engine().overridden_hooks == ["upstream_peer"]
        assert httpx.get(h.url + "/").content == b"hello"


def test_upstream_peer_is_required():
    class NoPeer(ProxyHttp):
        pass
    with pytest.raises(TypeError, match="upstream_peer"):
        from sluiceway.server import http_proxy_service
        from sluiceway.config import ServerConf
        http_proxy_service(ServerConf(), NoPeer())


class Auth(ProxyHttp):
    port = None

    def __init__(self):
        self.logged = []

    def request_filter(self, session, ctx):
        if session.req_header.get("x-api-key") != "k":
            session.respond_error(401)
            return True
        return False

    def upstream_peer(self, session, ctx):
        return HttpPeer(("127.0.0.1", self.port))

    def logging(self, session, error, ctx):
        self.logged.append(session.status)


def test_request_filter_short_circuit_keeps_connection():
    app = Auth()
    with Harness(app) as h:
        with httpx.Client(base_url=h.url) as c:
            assert c.get("/").status_code == 401
            assert c.get("/", headers={"x-api-key": "k"}).content == b"hello"
            assert c.get("/").status_code == 401
        assert h.origin.requests == 1
        assert app.logged == [401, 200, 401]


def test_request_filter_short_circuit_with_unread_body_drops_it_and_keeps_the_connection():
    # The unread (small) body is read and dropped after the answer, never
    # taken for a request; the next request on the connection is served.
    with Harness(Auth()) as h:
        out = raw(h.port, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
                          b"GET / HTTP/1.1\r\nHost: x\r\nx-api-key: k\r\n\r\n", expect=2)
        assert out.startswith(b"HTTP/1.1 401")
        assert b"Connection: close" not in out
        assert out.endswith(b"\r\n\r\nhello") and count_responses(out) == 2
        assert h.origin.requests == 1


def test_request_filter_short_circuit_with_large_unread_body_closes():
    with Harness(Auth()) as h:
        out = raw(h.port, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 500000\r\n\r\nhello"
                          b"GET / HTTP/1.1\r\nHost: x\r\nx-api-key: k\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 401")
        assert b"Connection: close" in out and count_responses(out) == 1
        assert h.origin.requests == 0


def test_respond_with_headers_and_body():
    class Direct(ProxyHttp):
        def request_filter(self, session, ctx):
            session.respond(203, {"x-direct": "1"}, b"direct")
            return True

        def upstream_peer(self, session, ctx):
            raise AssertionError("not reached")
    with Harness(Direct()) as h:
        r = httpx.get(h.url + "/")
        assert (r.status_code, r.headers["x-direct"], r.content) == (203, "1", b"direct")


def test_request_filter_true_without_response_answers_500():
    class Bad(ProxyHttp):
        def request_filter(self, session, ctx):
            return True

        def upstream_peer(self, session, ctx):
            raise AssertionError("not reached")
    with Harness(Bad()) as h:
        assert httpx.get(h.url + "/").status_code == 500


def test_hook_exception_answers_500_and_logging_sees_it():
    class Boom(ProxyHttp):
        port = None
        seen = []

        def request_filter(self, session, ctx):
            raise ValueError("boom")

        def upstream_peer(self, session, ctx):
            return HttpPeer(("127.0.0.1", self.port))

        def logging(self, session, error, ctx):
            self.seen.append(error)
    app = Boom()
    with Harness(app) as h:
        assert httpx.get(h.url + "/").status_code == 500
    assert isinstance(app.seen[0], Error) and "boom" in app.seen[0].message


def test_hook_raising_error_uses_its_status():
    class Deny(ProxyHttp):
        def request_filter(self, session, ctx):
            raise Error("nope", status=403)

        def upstream_peer(self, session, ctx):
            raise AssertionError
    with Harness(Deny()) as h:
        assert httpx.get(h.url + "/").status_code == 403


def test_upstream_peer_wrong_type_is_500():
    class Wrong(ProxyHttp):
        def upstream_peer(self, session, ctx):
            return ("127.0.0.1", 1)
    with Harness(Wrong()) as h:
        assert httpx.get(h.url + "/").status_code == 500


def test_response_header_rewrite_and_body_filter():
    class Rewrite(ProxyHttp):
        port = None

        def upstream_peer(self, session, ctx):
            return HttpPeer(("127.0.0.1", self.port))

        def response_filter(self, session, resp, ctx):
            resp.headers["strict-transport-security"] = "max-age=31536000"
            resp.headers.pop("x-debug", None)

        def response_body_filter(self, session, body, end, ctx):
            return body.replace(b"dbg", b"DBG!") if body else None
    with Harness(Rewrite()) as h:
        r = httpx.get(h.url + "/debug")
        assert "x-debug" not in r.headers
        assert r.headers["x-keep"] == "1"
        assert r.headers["strict-transport-security"] == "max-age=31536000"
        assert r.content == b"DBG!"
        assert r.headers["transfer-encoding"] == "chunked"


def test_upstream_request_filter_changes_uri_and_method():
    class Rewrite(ProxyHttp):
        port = None

        def upstream_peer(self, session, ctx):
            return HttpPeer(("127.0.0.1", self.port))

        def upstream_request_filter(self, session, req, ctx):
            req.uri = "/headers?rewritten=1"
            req.remove_header("x-drop")
    with Harness(Rewrite()) as h:
        got = httpx.get(h.url + "/anything", headers={"x-drop": "1"}).json()
        assert got["uri"] == "/headers?rewritten=1"
        assert all(n.lower() != "x-drop" for n, v in got["headers"])


def test_fail_to_connect_retry_then_success():
    class Retry(ProxyHttp):
        port = None

        def __init__(self):
            self.peers = []

        def upstream_peer(self, session, ctx):
            # first a closed port, then the origin
            p = HttpPeer(("127.0.0.1", 1 if not self.peers or session.retries == 0 else self.port))
            self.peers.append(p.port)
            return p

        def fail_to_connect(self, session, peer, ctx, error):
            error.retryable = True
            return error
    app = Retry()
    with Harness(app, max_retries=2) as h:
        assert httpx.get(h.url + "/").content == b"hello"
    assert app.peers == [1, h.origin.port]


def test_fail_to_connect_retries_bounded_by_max_retries():
    class Always(ProxyHttp):
        def __init__(self):
            self.asked = 0

        def upstream_peer(self, session, ctx):
            self.asked += 1
            return HttpPeer(("127.0.0.1", 1))

        def fail_to_connect(self, session, peer, ctx, error):
            error.retryable = True
            return error
    app = Always()
    with Harness(app, max_retries=3) as h:
        assert httpx.get(h.url + "/").status_code == 502
    assert app.asked == 4


def test_fail_to_proxy_chooses_status():
    class Custom(ProxyHttp):
        def upstream_peer(self, session, ctx):
            return HttpPeer(("127.0.0.1", 1))

        def fail_to_proxy(self, session, error, ctx):
            return 503
    with Harness(Custom()) as h:
        assert httpx.get(h.url + "/").status_code == 503


def test_error_while_proxy_called_for_upstream_errors():
    class Watch(ProxyHttp):
        port = None
        seen = []

        def upstream_peer(self, session, ctx):
            return HttpPeer(("127.0.0.1", self.port))

        def error_while_proxy(self, session, peer, error, ctx, client_reused):
            self.seen.append(error.status)
            return error
    app = Watch()
    with Harness(app) as h:
        assert httpx.get(h.url + "/garbage").status_code == 502
    assert app.seen == [502]


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout is Python 3.11+")
def test_async_hook_with_real_await_and_timeout():
    class Slow(ProxyHttp):
        port = None

        async def request_filter(self, session, ctx):
            # Hooks start inline, yet have a current task from the first
            # line (more in test_proxy_async_hooks.py).
            async with asyncio.timeout(1):
                await asyncio.wait_for(asyncio.sleep(0.01), 1)
            async with asyncio.timeout(1):  # now inside the driving Task
                await asyncio.sleep(0.001)
            return False

        async def upstream_peer(self, session, ctx):
            await asyncio.sleep(0)
            return HttpPeer(("127.0.0.1", self.port))
    with Harness(Slow()) as h:
        with httpx.Client(base_url=h.url) as c:
            for _ in range(5):
                assert c.get("/").content == b"hello"


def test_session_attributes():
    class Look(ProxyHttp):
        port = None
        seen = {}

        def request_filter(self, session, ctx):
            rq = session.req_header
            self.seen.update(method=rq.method, uri=rq.uri, path=rq.path, query=rq.query,
                             version=rq.version, addr=session.client_addr[0],
                             ua=rq.get("user-agent"), missing=rq.get("nope", "d"))
            return False

        def upstream_peer(self, session, ctx):
            return HttpPeer(("127.0.0.1", self.port))

        def logging(self, session, error, ctx):
            t = session.timing
            self.seen["elapsed_ok"] = 0 <= t["elapsed"] < 5 and t["response_start"] >= t["start"]
    app = Look()
    with Harness(app) as h:
        httpx.get(h.url + "/p/q?x=1", headers={"user-agent": "ua-test"})
    assert app.seen == dict(method="GET", uri="/p/q?x=1", path="/p/q", query="x=1", version="1.1",
                            addr="127.0.0.1", ua="ua-test", missing="d", elapsed_ok=True)


def test_truthy_ctx_without_request_filter_is_proxied():
    # Regression: the value of new_ctx leaked into request_filter's result.
    class Ctx(ProxyHttp):
        port = None

        def new_ctx(self):
            return {"non": "empty"}

        def upstream_peer(self, session, ctx):
            assert ctx == {"non": "empty"}
            return HttpPeer(("127.0.0.1", self.port))
    with Harness(Ctx()) as h:
        assert httpx.get(h.url + "/").content == b"hello"


class BodyReader(ProxyHttp):
    """request_filter reads the whole body; rejects bodies containing 'evil'."""
    port = None

    async def request_filter(self, session, ctx):
        parts = []
        while True:
            chunk = await session.read_request_body()
            if chunk is None:
                break
            parts.append(bytes(chunk))
        body = b"".join(parts)
        ctx_body_len = len(body)
        if b"evil" in body:
            session.respond(403, None, b"no evil\n")
            return True
        assert ctx_body_len == session.request_body_bytes
        return False

    def upstream_peer(self, session, ctx):
        return HttpPeer(("127.0.0.1", self.port))


def test_read_request_body_in_request_filter_then_forward():
    with Harness(BodyReader()) as h:
        with httpx.Client(base_url=h.url) as c:
            big = b"0123456789" * 50000
            r = c.post("/echo", content=big)
            assert r.status_code == 200 and r.content == big
            assert c.post("/echo", content=b"so evil").status_code == 403
            # the connection stays usable: the whole body was read
            assert c.get("/").content == b"hello"
            def gen():
                yield b"a" * 1000
                yield b"b" * 1000
            assert c.post("/echo", content=gen()).content == b"a" * 1000 + b"b" * 1000
            assert c.get("/").content == b"hello"


def test_read_request_body_with_expect_continue():
    import socket
    from proxy_harness import count_responses
    with Harness(BodyReader()) as h:
        s = socket.create_connection(("127.0.0.1", h.port), timeout=5)
        try:
            s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
            assert s.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
            s.sendall(b"good")
            buf = b""
            while count_responses(buf) < 1:
                buf += s.recv(65536)
            assert buf.startswith(b"HTTP/1.1 200") and buf.endswith(b"good")
            assert b"100 Continue" not in buf
        finally:
            s.close()


class PatientReader(ProxyHttp):
    """request_filter waits for the body with a timeout, and again after one."""
    port = None

    def __init__(self):
        self.timeouts = 0
        self.seen = []

    async def request_filter(self, session, ctx):
        while True:
            try:
                chunk = await asyncio.wait_for(session.read_request_body(), 0.1)
            except asyncio.TimeoutError:
                self.timeouts += 1
                continue
            if chunk is None:
                return False
            self.seen.append(bytes(chunk))

    def upstream_peer(self, session, ctx):
        return HttpPeer(("127.0.0.1", self.port))


def test_read_request_body_again_after_a_timeout():
    """A read cancelled by a timeout does not lose the chunk that arrives
    after it, and the next read may wait again."""
    import socket
    from proxy_harness import count_responses
    app = PatientReader()
    with Harness(app) as h:
        s = socket.create_connection(("127.0.0.1", h.port), timeout=5)
        try:
            s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
            time.sleep(0.35)
            s.sendall(b"01234")
            time.sleep(0.35)
            s.sendall(b"56789")
            buf = b""
            while count_responses(buf) < 1:
                buf += s.recv(65536)
            assert buf.startswith(b"HTTP/1.1 200") and buf.endswith(b"0123456789")
        finally:
            s.close()
    assert app.timeouts >= 4
    assert b"".join(app.seen) == b"0123456789"


@pytest.mark.parametrize("suspend,expect_tasks", [(False, False), (True, True)])
def test_inline_coroutine_hooks_are_not_scheduled(suspend, expect_tasks):
    """A coroutine hook that finishes without suspending runs inline: no
    Task is created for it (counted with a task factory)."""
    class AsyncHooks(ProxyHttp):
        port = None

        async def request_filter(self, session, ctx):
            if suspend:
                await asyncio.sleep(0)
            return False

        async def upstream_peer(self, session, ctx):
            return HttpPeer(("127.0.0.1", self.port))

    created = []

    def factory(loop, coro, **kw):
        # the harness origin shares the loop: count only the proxy's tasks
        if not any(x in getattr(coro, "__qualname__", "") for x in ("_answer", "Harness.run")):
            created.append(getattr(coro, "__qualname__", coro))
        return asyncio.Task(coro, loop=loop, **kw)

    with Harness(AsyncHooks()) as h:
        with httpx.Client(base_url=h.url) as c:
            assert c.get("/").content == b"hello"   # opens the pooled connection
            h.run(h.loop.set_task_factory, factory)
            for _ in range(20):
                assert c.get("/").content == b"hello"
            h.run(h.loop.set_task_factory, None)
    assert bool(created) == expect_tasks
    if expect_tasks:
        assert len(created) == 20 and set(created) == {"_drive"}


@pytest.mark.parametrize("where", ["upstream_peer", "upstream_request_filter", "response_filter"])
def test_respond_from_later_hooks_answers_once(where):
    class Late(ProxyHttp):
        port = None

        def upstream_peer(self, session, ctx):
            if where == "upstream_peer":
                session.respond(299, None, b"from peer")
            return HttpPeer(("127.0.0.1", self.port))

        def upstream_request_filter(self, session, req, ctx):
            if where == "upstream_request_filter":
                session.respond(299, None, b"from req filter")

        def response_filter(self, session, resp, ctx):
            if where == "response_filter":
                session.respond(299, None, b"from resp filter")
    with Harness(Late()) as h:
        with httpx.Client(base_url=h.url) as c:
            for _ in range(3):
                r = c.get("/big?size=1000")
                assert r.status_code == 299 and r.content.startswith(b"from ")
        # a connection nothing was sent on goes back to the pool
        if where == "upstream_request_filter":
            assert h.pool_stats()["created"] == 1


@pytest.mark.parametrize("suspend", [False, True])
def test_async_hook_exception_answers_500(suspend):
    class Boom(ProxyHttp):
        port = None
        seen = []

        async def request_filter(self, session, ctx):
            if suspend:
                await asyncio.sleep(0.001)
            raise ValueError("async boom")

        def upstream_peer(self, session, ctx):
            return HttpPeer(("127.0.0.1", self.port))

        def logging(self, session, error, ctx):
            self.seen.append(error)
    app = Boom()
    with Harness(app) as h:
        with httpx.Client(base_url=h.url) as c:
            for _ in range(3):
                assert c.get("/").status_code == 500
    assert len(app.seen) == 3 and all("async boom" in e.message for e in app.seen)


def test_inline_coroutine_results_have_no_refcount_leak():
    import sys

    class Peer(ProxyHttp):
        port = None
        peer = None

        async def upstream_peer(self, session, ctx):
            return self.peer
    app = Peer()
    with Harness(app) as h:
        app.peer = HttpPeer(("127.0.0.1", h.origin.port))
        with httpx.Client(base_url=h.url) as c:
            c.get("/")
            before = sys.getrefcount(app.peer)
            for _ in range(50):
                assert c.get("/").content == b"hello"
            after = sys.getrefcount(app.peer)
    assert after - before < 5
