"""Coroutine hooks and asyncio's task machinery.

A coroutine hook's first step runs inline (no Task is made for a hook that
never suspends), yet ``asyncio.current_task()`` must be usable from its first
line: ``asyncio.timeout``, ``TaskGroup`` and libraries built on the current
task (anyio, so httpx's AsyncClient) work before the first ``await`` too.
"""

import asyncio
import gc
import logging
import socket
import sys
import time

import httpx
import pytest

from proxy_harness import Harness, spawn
from sluiceway import _engine
from sluiceway.errors import Error
from sluiceway.proxy import HttpPeer, ProxyHttp

needs_timeout = pytest.mark.skipif(sys.version_info < (3, 11),
                                   reason="asyncio.timeout and TaskGroup are Python 3.11+")


@pytest.fixture(params=["builtin", "generic"], autouse=True)
def swap_impl(request):
    """Run every test with this Python's way of switching the current task
    and with the generic one (current_task/_enter_task/_leave_task, what an
    unknown asyncio would get)."""
    old = _engine._task_swap_impl(_engine._swap_generic if request.param == "generic" else None)
    try:
        yield request.param
    finally:
        _engine._task_swap_impl(old)


def _refused_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _hook_tasks_alive():
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o).__name__ == "_HookTask")


def _loop_state(h, settle=2.0):
    """(current task, pending tasks) on h's loop, read from a plain callback
    (outside any Task); waits up to ``settle`` s for hooks still running
    after their response went out (``logging``)."""
    import concurrent.futures

    deadline = time.monotonic() + settle
    while True:
        fut = concurrent.futures.Future()

        def probe():
            fut.set_result((asyncio.current_task(h.loop),
                            [t for t in asyncio.all_tasks(h.loop) if not t.done()]))
        h.loop.call_soon_threadsafe(probe)
        current, pending = fut.result(5)
        if not pending or time.monotonic() > deadline:
            return current, pending
        time.sleep(0.02)


# ------------------------------------------------------- current_task ------

ALL = ["new_ctx", "early_request_filter", "request_filter", "request_body_filter",
       "upstream_peer", "connected_to_upstream", "upstream_request_filter",
       "upstream_response_filter", "response_filter", "response_body_filter", "logging"]


class SeeTask(ProxyHttp):
    """Every hook a coroutine that records asyncio.current_task() first."""

    def __init__(self, suspend):
        self.port = None
        self.seen = {}
        self.suspend = suspend

    def _note(self, name):
        t = asyncio.current_task()
        self.seen.setdefault(name, []).append(
            t is not None and t.get_loop() is asyncio.get_running_loop() and not t.done())

    async def _pause(self):
        if self.suspend:
            await asyncio.sleep(0.001)

    async def new_ctx(self):
        self._note("new_ctx")
        await self._pause()
        return {}

    async def early_request_filter(self, session, ctx):
        self._note("early_request_filter")
        await self._pause()

    async def request_filter(self, session, ctx):
        self._note("request_filter")
        await self._pause()
        return False

    async def request_body_filter(self, session, body, end, ctx):
        self._note("request_body_filter")
        await self._pause()

    async def upstream_peer(self, session, ctx):
        self._note("upstream_peer")
        await self._pause()
        port = self.port if session.req_header.path != "/refused" else _refused_port()
        return HttpPeer(("127.0.0.1", port))

    async def connected_to_upstream(self, session, reused, peer, ctx):
        self._note("connected_to_upstream")
        await self._pause()

    async def upstream_request_filter(self, session, req, ctx):
        self._note("upstream_request_filter")
        await self._pause()

    async def upstream_response_filter(self, session, resp, ctx):
        self._note("upstream_response_filter")
        await self._pause()

    async def response_filter(self, session, resp, ctx):
        self._note("response_filter")
        await self._pause()

    async def response_body_filter(self, session, body, end, ctx):
        self._note("response_body_filter")
        await self._pause()

    async def logging(self, session, error, ctx):
        self._note("logging")
        await self._pause()

    async def fail_to_connect(self, session, peer, ctx, error):
        self._note("fail_to_connect")
        await self._pause()
        return error

    async def error_while_proxy(self, session, peer, error, ctx, client_reused):
        self._note("error_while_proxy")
        await self._pause()
        return error

    async def fail_to_proxy(self, session, error, ctx):
        self._note("fail_to_proxy")
        await self._pause()
        return error.status


@pytest.mark.parametrize("suspend", [False, True], ids=["inline", "suspending"])
def test_current_task_on_the_first_line_of_every_hook(suspend):
    app = SeeTask(suspend)
    with Harness(app) as h:
        with httpx.Client(base_url=h.url) as c:
            assert c.post("/echo", content=b"abc").content == b"abc"
            assert c.get("/").content == b"hello"          # pooled connection
            assert c.get("/refused").status_code == 502     # fail_to_connect, fail_to_proxy
            assert c.get("/garbage").status_code == 502     # error_while_proxy
        current, pending = _loop_state(h)
    assert set(app.seen) == set(ALL) | {"fail_to_connect", "error_while_proxy", "fail_to_proxy"}
    assert all(all(v) for v in app.seen.values()), app.seen
    assert current is None and pending == []


def test_hooks_called_from_the_connect_task_get_their_own():
    """connected_to_upstream and later hooks run inside the Task that opened
    the connection; they must not see (and cancel) that Task as theirs."""
    class App(ProxyHttp):
        port = None
        tasks = []

        def upstream_peer(self, session, ctx):
            return HttpPeer(("127.0.0.1", self.port))

        async def connected_to_upstream(self, session, reused, peer, ctx):
            t = asyncio.current_task()
            self.tasks.append((reused, t.get_name() if type(t) is asyncio.Task else "hook"))

    app = App()
    with Harness(app) as h:
        with httpx.Client(base_url=h.url) as c:
            assert c.get("/").content == b"hello"       # new connection
            assert c.get("/").content == b"hello"       # pooled
    assert app.tasks == [(False, "hook"), (True, "hook")]


# ---------------------------------------------------------- asyncio.timeout --

@needs_timeout
def test_timeout_in_request_filter_completes_inline():
    """A hook that enters asyncio.timeout and finishes without suspending:
    still no Task, the timer is gone with the block, and nothing cancels a
    later hook when the deadline passes."""
    class App(ProxyHttp):
        port = None
        kept = []

        async def request_filter(self, session, ctx):
            async with asyncio.timeout(0.05):
                session.req_header.insert_header("x-filtered", "1")
            if session.req_header.path == "/headers":
                self.kept.append(asyncio.current_task())  # keep one stand-in
            return False

        async def upstream_peer(self, session, ctx):
            if session.req_header.path == "/slow":
                await asyncio.sleep(0.15)      # longer than the timeouts above
            return HttpPeer(("127.0.0.1", self.port))

    created = []

    def factory(loop, coro, **kw):
        if not any(x in getattr(coro, "__qualname__", "") for x in ("_answer", "Harness.run")):
            created.append(getattr(coro, "__qualname__", coro))
        return asyncio.Task(coro, loop=loop, **kw)

    app = App()
    with Harness(app) as h:
        with httpx.Client(base_url=h.url) as c:
            assert c.get("/").content == b"hello"   # opens the pooled connection
            h.run(h.loop.set_task_factory, factory)
            for _ in range(20):
                assert c.get("/").content == b"hello"
            h.run(h.loop.set_task_factory, None)
            assert json_header(c.get("/headers"), "x-filtered") == "1"
            for _ in range(3):
                r = c.get("/slow?d=0")
                assert r.status_code == 200 and r.content == b"slow"
        current, pending = _loop_state(h)
    assert created == []
    t = app.kept[0]
    assert t.done() and not t.cancelled() and t.cancelling() == 0
    assert t.cancel() is False
    assert current is None and pending == []


def json_header(r, name):
    for n, v in r.json()["headers"]:
        if n.lower() == name:
            return v
    return None


@needs_timeout
@pytest.mark.parametrize("outcome", ["respond-504", "fallback-peer"])
def test_timeout_expiring_in_upstream_peer_is_caught(outcome):
    class App(ProxyHttp):
        port = None
        caught = []

        async def upstream_peer(self, session, ctx):
            try:
                async with asyncio.timeout(0.05):      # first line: no Task yet
                    await asyncio.sleep(5)             # a slow service lookup
                return HttpPeer(("127.0.0.1", 1))
            except TimeoutError:
                self.caught.append(asyncio.current_task().cancelling())
                if outcome == "respond-504":
                    session.respond_error(504)
                    return None
                return HttpPeer(("127.0.0.1", self.port))

    app = App()
    with Harness(app) as h:
        with httpx.Client(base_url=h.url) as c:
            for _ in range(3):
                t0 = time.monotonic()
                r = c.get("/")
                assert time.monotonic() - t0 < 2
                if outcome == "respond-504":
                    assert r.status_code == 504
                else:
                    assert r.status_code == 200 and r.content == b"hello"
        current, pending = _loop_state(h)
    assert app.caught == [0, 0, 0]   # the cancellation was taken back (uncancel)
    assert current is None and pending == []


@needs_timeout
def test_timeout_zero_is_delivered_at_the_first_await():
    """asyncio.timeout(0) expires before the Task that continues the hook
    has run: the cancellation waits for it and hits the hook's first await."""
    class App(ProxyHttp):
        port = None
        caught = []

        async def request_filter(self, session, ctx):
            try:
                async with asyncio.timeout(0):
                    await asyncio.sleep(5)
            except TimeoutError:
                self.caught.append(True)
            return False

        def upstream_peer(self, session, ctx):
            return HttpPeer(("127.0.0.1", self.port))

    app = App()
    with Harness(app) as h:
        with httpx.Client(base_url=h.url) as c:
            t0 = time.monotonic()
            assert c.get("/").content == b"hello"
            assert time.monotonic() - t0 < 2
    assert app.caught == [True]


@needs_timeout
def test_timeout_in_connected_to_upstream_fires():
    """Before, this hook ran under the connect Task: its timeout recorded
    that Task and never fired."""
    class App(ProxyHttp):
        port = None
        caught = []

        def upstream_peer(self, session, ctx):
            return HttpPeer(("127.0.0.1", self.port))

        async def connected_to_upstream(self, session, reused, peer, ctx):
            try:
                async with asyncio.timeout(0.05):
                    await asyncio.sleep(5)
            except TimeoutError:
                self.caught.append(reused)

    app = App()
    with Harness(app) as h:
        with httpx.Client(base_url=h.url) as c:
            t0 = time.monotonic()
            assert c.get("/").content == b"hello"
            assert c.get("/").content == b"hello"
            assert time.monotonic() - t0 < 2
    assert app.caught == [False, True]


@needs_timeout
def test_uncaught_timeout_error_answers_500(caplog):
    """A TimeoutError the hook lets out is like any other exception from a
    hook: 500, logged with its traceback (raise Error(status=504) for 504)."""
    class App(ProxyHttp):
        port = None
        errors = []

        async def request_filter(self, session, ctx):
            async with asyncio.timeout(0.05):
                await asyncio.sleep(5)
            return False

        def upstream_peer(self, session, ctx):
            return HttpPeer(("127.0.0.1", self.port))

        def logging(self, session, error, ctx):
            self.errors.append(error)

    app = App()
    with caplog.at_level(logging.ERROR, logger="sluiceway.error"):
        with Harness(app) as h:
            with httpx.Client(base_url=h.url) as c:
                for _ in range(2):
                    assert c.get("/").status_code == 500
            current, pending = _loop_state(h)
    assert [e.status for e in app.errors] == [500, 500]
    assert all(isinstance(e, Error) and isinstance(e.__cause__, TimeoutError) for e in app.errors)
    assert any(r.exc_info and r.exc_info[0] is TimeoutError for r in caplog.records)
    assert current is None and pending == []
    # The log line and the error name the hook, also when it failed after suspending.
    assert any("App.request_filter failed" in r.getMessage() for r in caplog.records)
    assert all("App.request_filter" in e.message for e in app.errors)


# ---------------------------------------------------------------- cancel ----

@pytest.mark.parametrize("then", ["await", "return"])
def test_hook_cancelling_itself_in_its_first_step(then):
    """current_task().cancel() acts as in a Task: the next await raises
    CancelledError; returning without awaiting ends the hook cancelled."""
    class App(ProxyHttp):
        port = None
        seen = []

        async def request_filter(self, session, ctx):
            assert asyncio.current_task().cancel("stop") is True
            if then == "await":
                try:
                    await asyncio.sleep(5)
                except asyncio.CancelledError as exc:
                    self.seen.append(exc.args)
                    if sys.version_info >= (3, 11):
                        asyncio.current_task().uncancel()
            return False

        def upstream_peer(self, session, ctx):
            return HttpPeer(("127.0.0.1", self.port))

    app = App()
    with Harness(app) as h:
        with httpx.Client(base_url=h.url) as c:
            t0 = time.monotonic()
            r = c.get("/")
            assert time.monotonic() - t0 < 2
        current, pending = _loop_state(h)
    if then == "await":
        assert r.status_code == 200 and app.seen == [("stop",)]
    else:
        assert r.status_code == 500
    assert current is None and pending == []


@needs_timeout
def test_client_leaving_cancels_a_hook_inside_a_timeout():
    """The engine cancels the hook's Task when the client goes away: the
    hook sees CancelledError (not TimeoutError) and nothing stays behind."""
    class App(ProxyHttp):
        port = None
        seen = []

        async def request_filter(self, session, ctx):
            try:
                async with asyncio.timeout(5):
                    await asyncio.sleep(5)
            except BaseException as exc:
                self.seen.append(type(exc))
                raise
            return False

        def upstream_peer(self, session, ctx):
            return HttpPeer(("127.0.0.1", self.port))

    app = App()
    with Harness(app) as h:
        s = socket.create_connection(("127.0.0.1", h.port))
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.2)
        s.close()
        deadline = time.monotonic() + 3
        while not app.seen and time.monotonic() < deadline:
            time.sleep(0.02)
        current, pending = _loop_state(h)
    assert app.seen == [asyncio.CancelledError]
    assert current is None and pending == []


# ------------------------------------------------------------- TaskGroup ----

@needs_timeout
def test_task_group_in_a_hook():
    class App(ProxyHttp):
        port = None
        sibling = []

        async def request_filter(self, session, ctx):
            async def lookup(name, delay):
                await asyncio.sleep(delay)
                return name.upper()

            async def failing():
                await asyncio.sleep(0.01)
                raise ValueError("lookup failed")

            async def slow():
                try:
                    await asyncio.sleep(5)
                except asyncio.CancelledError:
                    self.sibling.append("cancelled")
                    raise

            if session.req_header.path == "/fail":
                async with asyncio.TaskGroup() as tg:   # first line
                    tg.create_task(slow())
                    tg.create_task(failing())
                return False
            async with asyncio.TaskGroup() as tg:
                a = tg.create_task(lookup("a", 0.01))
                b = tg.create_task(lookup("b", 0))
            session.req_header.insert_header("x-lookups", a.result() + b.result())
            async with asyncio.TaskGroup():
                pass                                    # no children: finishes at once
            return False

        def upstream_peer(self, session, ctx):
            return HttpPeer(("127.0.0.1", self.port))

    app = App()
    with Harness(app) as h:
        with httpx.Client(base_url=h.url) as c:
            for _ in range(3):
                assert json_header(c.get("/headers"), "x-lookups") == "AB"
            t0 = time.monotonic()
            assert c.get("/fail").status_code == 500     # an ExceptionGroup from the hook
            assert time.monotonic() - t0 < 2
        current, pending = _loop_state(h)
    assert app.sibling == ["cancelled"]
    assert current is None and pending == []


# ---------------------------------------------------------- libraries -------

def test_httpx_async_client_in_the_first_step():
    """anyio (under httpx's AsyncClient) keys its cancel scopes by the
    current task and checks it on exit: the hook must keep one task from its
    first line to its end."""
    class App(ProxyHttp):
        port = None

        async def request_filter(self, session, ctx):
            async with httpx.AsyncClient() as client:
                r = await client.get(f"http://127.0.0.1:{self.port}/status/201", timeout=5)
            session.req_header.insert_header("x-sub", str(r.status_code))
            return False

        def upstream_peer(self, session, ctx):
            return HttpPeer(("127.0.0.1", self.port))

    with Harness(App()) as h:
        with httpx.Client(base_url=h.url) as c:
            for _ in range(2):
                assert json_header(c.get("/headers"), "x-sub") == "201"


# -------------------------------------------------------------- leaks -------

@needs_timeout
def test_nothing_is_left_behind():
    """After many requests through every path above: no pending Task, no
    current task left on the loop, no stand-in piling up, and no timer of a
    finished asyncio.timeout still scheduled (stdlib loop)."""
    class App(ProxyHttp):
        port = None

        async def request_filter(self, session, ctx):
            p = session.req_header.path
            if p == "/expire":
                try:
                    async with asyncio.timeout(0.01):
                        await asyncio.sleep(1)
                except TimeoutError:
                    pass
            else:
                async with asyncio.timeout(30):
                    if p == "/suspend":
                        await asyncio.sleep(0)
            if p == "/group":
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(asyncio.sleep(0))
            return False

        async def upstream_peer(self, session, ctx):
            return HttpPeer(("127.0.0.1", self.port))

    with Harness(App()) as h:
        with httpx.Client(base_url=h.url) as c:
            for i in range(40):
                path = ["/", "/suspend", "/expire", "/group"][i % 4]
                assert c.get(path).content == b"hello"
        current, pending = _loop_state(h)
        alive = _hook_tasks_alive()

        async def timers():
            scheduled = getattr(asyncio.get_running_loop(), "_scheduled", [])
            return [x for x in scheduled if not x.cancelled()
                    and type(getattr(x._callback, "__self__", None)).__name__ == "Timeout"]
        stray = h.call(timers())
    assert current is None and pending == []
    assert alive <= 2
    assert stray == []


# --------------------------------------------------- pure-Python asyncio ----

@needs_timeout
def test_pure_python_asyncio(swap_impl):
    """The same in a process where asyncio runs without its C accelerator."""
    if swap_impl == "generic":
        pytest.skip("the subprocess picks its own way")
    code = r'''
import sys
sys.modules["_asyncio"] = None       # asyncio's pure-Python tasks and futures
sys.path.insert(0, "tests")
import asyncio, httpx
assert asyncio.Task.__module__ == "asyncio.tasks", asyncio.Task
from proxy_harness import Harness
from sluiceway.proxy import HttpPeer, ProxyHttp

class App(ProxyHttp):
    port = None
    async def request_filter(self, session, ctx):
        assert asyncio.current_task() is not None
        async with asyncio.timeout(5):
            pass
        return False
    async def upstream_peer(self, session, ctx):
        try:
            async with asyncio.timeout(0.05):
                await asyncio.sleep(5)
        except TimeoutError:
            return HttpPeer(("127.0.0.1", self.port))

with Harness(App()) as h:
    with httpx.Client(base_url=h.url) as c:
        for _ in range(3):
            assert c.get("/").content == b"hello"
print("ok")
'''
    p = spawn(["-c", code])
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0 and out.strip() == b"ok", err.decode(errors="replace")
