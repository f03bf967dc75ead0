"""Testing sluiceway applications, and the sample messages shared by the
tests, the benchmarks and the self-check.

The machinery behind the pytest plugin (:mod:`sluiceway.pytest_plugin`):

* :class:`Origin`: an HTTP/1.1 origin server to put behind the proxy. It
  records every request it receives (:attr:`Origin.received`) and answers by
  script (:meth:`Origin.route`: status, headers, body, delay, reset, chunked
  with trailers, or a function), else by its built-in paths (below).
* :class:`Harness`: the proxy under test (your :class:`~sluiceway.ProxyHttp`)
  and an origin, both on 127.0.0.1 on free ports, on an event loop in a
  background thread; ``with Harness(app) as h: ...``.
* :class:`OriginThread`: origins alone (for a proxy run as a subprocess).
* :func:`raw`, :func:`count_responses`, :func:`free_port`, :func:`wait_port`,
  :func:`assert_response`.

The origin parses with httptools (an independent parser, not ours): install
``sluiceway[testing]`` (httptools, httpx) to use it. Built-in paths:

    /                 200 "hello" (Content-Length)
    /headers          200, JSON {method, uri, version, headers: [[n, v], ...], body_len}
    /echo             200, the request body back (Content-Length)
    /chunked?n=K      200 chunked, K chunks "chunk-i;"
    /close            200 close-delimited body "closed-body" (no length)
    /big?size=N       200, N bytes of "x" (Content-Length)
    /status/NNN       status NNN, no body for 204/304, "s" otherwise
    /slow?d=S         wait S seconds, then 200 "slow"
    /garbage          a garbage status line
    /cut              Content-Length 1000, 10 bytes, then close
    /early            answers 200 at once, without reading the body, and closes
    /drop             closes without answering
    /debug            200 with an X-Debug header
    /conn-close       200 "bye" with Connection: close
    /drop-reused      closes without answering if the connection served a
                      request before, else echoes the body
    /ws (Upgrade)     101, then echoes every byte
    /bytewise         a chunked response sent one byte at a time
    /resp-headers?h=J 200 "rh" with the headers in the JSON list J
    /big-head?size=N  200 "bh" with an X-Big header of N bytes

Set SLUICEWAY_TEST_LOOP=asyncio to run the proxy and origin on the stdlib
loop (the reference) instead of uvloop.
"""

from __future__ import annotations

import asyncio
import fnmatch
import http
import json
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "BROWSER_REQUEST", "MINIMAL_REQUEST", "JSON_RESPONSE",
    "Reply", "Received", "Origin", "OriginThread", "LoopThread", "Harness", "PassThrough",
    "raw", "count_responses", "free_port", "wait_port", "open_fds", "new_loop", "assert_response",
]


# ------------------------------------------------------------ sample messages --

BROWSER_REQUEST = (
    b"GET /search/results?q=sluiceway&page=2 HTTP/1.1\r\n"
    b"Host: www.example.com\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
    b"Accept-Language: en-US,en;q=0.5\r\n"
    b"Accept-Encoding: gzip, deflate, br\r\n"
    b"Referer: https://www.example.com/\r\n"
    b"Cookie: session=4f2a9c1e; theme=dark\r\n"
    b"Connection: keep-alive\r\n"
    b"Upgrade-Insecure-Requests: 1\r\n"
    b"Sec-Fetch-Dest: document\r\n"
    b"Sec-Fetch-Mode: navigate\r\n"
    b"X-API-Key: k-123\r\n"
    b"\r\n"
)
"""A 520-byte browser GET with 12 header fields, the last one an API key."""

MINIMAL_REQUEST = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"

JSON_RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Server: origin\r\n"
    b"Date: Fri, 27 Nov 2026 21:00:00 GMT\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: 2\r\n"
    b"Cache-Control: no-store\r\n"
    b"X-Request-Id: 5b1c2d3e\r\n"
    b"Vary: Accept-Encoding\r\n"
    b"Connection: keep-alive\r\n"
    b"\r\n{}"
)
"""A 200 response with 8 header fields and a 2-byte body."""


# ------------------------------------------------------------------ scripting --

@dataclass
class Reply:
    """What a scripted origin route answers.

    Args:
        status: the status code.
        headers: a dict or a list of ``(name, value)`` pairs.
        body: bytes or str (UTF-8); sent with Content-Length unless
            ``chunks`` is given.
        delay: seconds to wait before the response head.
        reset: close the connection with a TCP reset instead of answering.
        chunks: send a chunked body made of these pieces.
        chunk_delay: seconds to wait before each chunk.
        trailers: trailer fields after the last chunk (dict or pairs).
        close: close the connection after the response.
    """

    status: int = 200
    headers: Union[dict, Sequence[Tuple[str, str]]] = ()
    body: Union[bytes, str] = b""
    delay: float = 0.0
    reset: bool = False
    chunks: Optional[Sequence[Union[bytes, str]]] = None
    chunk_delay: float = 0.0
    trailers: Optional[Union[dict, Sequence[Tuple[str, str]]]] = None
    close: bool = False


@dataclass
class Received:
    """A request as the origin received it (after the proxy).

    Attributes:
        method, target (as sent: path and query), version ("1.1"),
        headers (``[(name, value), ...]`` as str, names as sent), body (bytes).
    """

    method: str
    target: str
    version: str
    headers: List[Tuple[str, str]]
    body: bytes = b""

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> str:
        return urlsplit(self.target).query

    def header(self, name: str, default: Optional[str] = None) -> Optional[str]:
        """The first value of ``name`` (any case), or ``default``."""
        n = name.lower()
        for k, v in self.headers:
            if k.lower() == n:
                return v
        return default

    def header_names(self) -> List[str]:
        return [k.lower() for k, _ in self.headers]


class _OriginProto(asyncio.Protocol):
    def __init__(self, origin):
        self.origin = origin
        import httptools

        self.parser = httptools.HttpRequestParser(self)
        self.t = None
        self.closed = False

    def connection_made(self, t):
        self.t = t
        self.origin.connections += 1
        self.origin.open.add(self)
        self._reset()

    def _reset(self):
        self.url = b""
        self.headers = []
        self.body = bytearray()
        self.answered = False

    def connection_lost(self, exc):
        self.closed = True
        self.origin.open.discard(self)

    def data_received(self, data):
        import httptools

        if getattr(self, "echo", False):
            self.t.write(data)  # after a protocol switch: echo
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # /ws: switch to an echo protocol; bytes after the head are echoed.
            if not self.url.startswith(b"/ws"):
                self.t.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
                self.t.close()
                return
            self.echo = True
            up = dict((n.lower(), v) for n, v in self.headers).get("upgrade", "echo")
            self.t.write(f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: {up}\r\n"
                         "Connection: Upgrade\r\n\r\n".encode())
            rest = data[exc.args[0]:]
            if rest:
                self.t.write(rest)
        except httptools.HttpParserError:
            self.t.close()

    def on_url(self, url):
        self.url += url

    def on_header(self, n, v):
        self.headers.append([n.decode("latin-1"), v.decode("latin-1")])

    def on_headers_complete(self):
        self.origin.requests += 1
        self.served = getattr(self, "served", 0) + 1
        path = urlsplit(self.url.decode()).path
        if path == "/drop-reused" and self.served > 1:
            self.answered = True  # a keep-alive connection that died
            self.t.close()
            return
        if path == "/early":
            self.answered = True
            self.t.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nearly")
            self.t.close()
        elif path == "/drop":
            self.answered = True
            self.t.close()

    def on_body(self, b):
        self.body += b

    def on_message_complete(self):
        body = bytes(self.body)
        method = self.parser.get_method().decode()
        version = self.parser.get_http_version()
        req = Received(method, self.url.decode("latin-1"), version,
                       [tuple(h) for h in self.headers], body)
        self.origin._record(req)
        if self.answered or self.parser.should_upgrade():
            return
        asyncio.ensure_future(self._answer(self.url, self.headers, body, method, version,
                                           self.parser.should_keep_alive(), req))
        self._reset()

    async def _answer(self, url, headers, body, method, version, keep, req=None):
        u = urlsplit(url.decode())
        q = parse_qs(u.query)
        path = u.path
        t = self.t

        def send(status, hdrs, payload=b"", length=True):
            out = [f"HTTP/1.1 {status} X\r\n".encode()]
            for n, v in hdrs:
                out.append(f"{n}: {v}\r\n".encode())
            if length:
                out.append(f"Content-Length: {len(payload)}\r\n".encode())
            if not keep:
                out.append(b"Connection: close\r\n")
            out.append(b"\r\n")
            if method != "HEAD":
                out.append(payload)
            t.write(b"".join(out))
            if not keep:
                t.close()

        if self.closed:
            return
        reply = self.origin._match(path)
        if reply is not None:
            await self._scripted(reply, req, method, keep)
        elif path == "/headers":
            send(200, [("Content-Type", "application/json")], json.dumps(
                {"method": method, "uri": url.decode("latin-1"), "version": version,
                 "headers": headers, "body_len": len(body)}).encode())
        elif path in ("/echo", "/drop-reused"):
            send(200, [("X-Body-Len", str(len(body)))], body)
        elif path == "/chunked":
            n = int(q.get("n", ["3"])[0])
            t.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for i in range(n):
                c = f"chunk-{i};".encode()
                t.write(b"%x\r\n%s\r\n" % (len(c), c))
            t.write(b"0\r\n\r\n")
        elif path == "/close":
            t.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nclosed-body")
            t.close()
        elif path == "/big":
            size = int(q.get("size", ["65536"])[0])
            send(200, [], b"x" * size)
        elif path.startswith("/status/"):
            st = int(path.rsplit("/", 1)[1])
            if st in (204, 304):
                send(st, [], b"", length=False)
            else:
                send(st, [], b"s")
        elif path == "/slow":
            await asyncio.sleep(float(q.get("d", ["1"])[0]))
            if not self.closed:
                send(200, [], b"slow")
        elif path == "/garbage":
            t.write(b"HELLO THERE\r\n\r\n")
            t.close()
        elif path == "/cut":
            t.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789")
            t.close()
        elif path == "/bytewise":
            # a chunked response written one byte per TCP segment
            msg = (b"HTTP/1.1 200 OK\r\nX-Long: " + b"v" * 300 + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
            sock = t.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for i in range(len(msg)):
                if self.closed:
                    return
                t.write(msg[i:i + 1])
                await asyncio.sleep(0.0005)
        elif path == "/resp-headers":
            # the response headers given as JSON in ?h=[[name, value], ...]
            hdrs = json.loads(q.get("h", ["[]"])[0])
            send(200, hdrs, b"rh")
        elif path == "/big-head":
            send(200, [("X-Big", "b" * int(q.get("size", ["102400"])[0]))], b"bh")
        elif path == "/debug":
            send(200, [("X-Debug", "secret"), ("X-Keep", "1")], b"dbg")
        elif path == "/conn-close":
            t.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbye")
            t.close()
        else:
            send(200, [("Content-Type", "text/plain")], b"hello")

    async def _scripted(self, reply, req, method, keep):
        t = self.t
        if callable(reply) and not isinstance(reply, Reply):
            reply = reply(req)
            if asyncio.iscoroutine(reply):
                reply = await reply
        if not isinstance(reply, Reply):
            reply = Reply(body=reply if reply is not None else b"")
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if self.closed:
            return
        if reply.reset:
            sock = t.get_extra_info("socket")
            if sock is not None:   # SO_LINGER 0: close() sends a RST
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            t.abort()
            return
        body = reply.body.encode() if isinstance(reply.body, str) else bytes(reply.body)
        hdrs = list(reply.headers.items()) if isinstance(reply.headers, dict) else list(reply.headers)
        close = reply.close or not keep
        try:
            phrase = http.HTTPStatus(reply.status).phrase
        except ValueError:
            phrase = "Unknown"
        out = [f"HTTP/1.1 {reply.status} {phrase}\r\n".encode()]
        out += [f"{n}: {v}\r\n".encode("latin-1") for n, v in hdrs]
        no_body = method == "HEAD" or reply.status in (204, 304) or reply.status < 200
        if reply.chunks is not None:
            out.append(b"Transfer-Encoding: chunked\r\n")
        elif reply.status >= 200 and reply.status not in (204, 304):
            out.append(b"Content-Length: %d\r\n" % len(body))
        if close:
            out.append(b"Connection: close\r\n")
        out.append(b"\r\n")
        if reply.chunks is None:
            t.write(b"".join(out) + (b"" if no_body else body))
        else:
            t.write(b"".join(out))
            for c in reply.chunks:
                c = c.encode() if isinstance(c, str) else bytes(c)
                if reply.chunk_delay:
                    await asyncio.sleep(reply.chunk_delay)
                if self.closed:
                    return
                if c:
                    t.write(b"%x\r\n%s\r\n" % (len(c), c))
            tr = reply.trailers or {}
            tr = list(tr.items()) if isinstance(tr, dict) else list(tr)
            t.write(b"0\r\n" + b"".join(f"{n}: {v}\r\n".encode("latin-1") for n, v in tr) + b"\r\n")
        if close:
            t.close()


def new_loop():
    """uvloop, or the stdlib loop (the reference) with SLUICEWAY_TEST_LOOP=asyncio."""
    if os.environ.get("SLUICEWAY_TEST_LOOP") == "asyncio":
        return asyncio.new_event_loop()
    import uvloop

    return uvloop.new_event_loop()


class Origin:
    """An HTTP/1.1 origin on 127.0.0.1 that records what it receives and
    answers by script or by its built-in paths (see the module docstring).

    Attributes:
        port, address: where it listens (after :meth:`start`).
        received: the requests received, oldest first (the last 1,000).
        requests: how many request heads arrived; connections: how many
            connections were accepted.
    """

    def __init__(self):
        self.connections = 0
        self.requests = 0
        self.open = set()
        self.server = None
        self.port = None
        self.received: List[Received] = []
        self._routes: List[Tuple[str, Any]] = []

    @property
    def address(self) -> Tuple[str, int]:
        return ("127.0.0.1", self.port)

    async def start(self):
        import httptools  # noqa: F401  (the origin's parser: fail here, clearly)

        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _OriginProto(self), "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self):
        self.server.close()
        for p in list(self.open):
            p.t.close()

    # --- scripting ---------------------------------------------------------

    def route(self, path: str, reply: Union[Reply, Callable, bytes, str, None] = None, **kw) -> None:
        """Answer requests whose path matches ``path`` (exact, or a glob such
        as ``"/api/*"``) with ``reply``: a :class:`Reply`, bytes/str (a 200
        with that body), or a function ``f(received) -> Reply`` (may be
        ``async``). Keyword arguments build a Reply:
        ``origin.route("/slow", delay=0.5, body="late")``. Later routes win.
        """
        if reply is None:
            reply = Reply(**kw)
        elif kw:
            raise TypeError("give either a reply or Reply keyword arguments, not both")
        self._routes.insert(0, (path, reply))

    def clear(self) -> None:
        """Forget the routes and the received requests."""
        self._routes.clear()
        self.received.clear()

    def _match(self, path: str):
        for pattern, reply in self._routes:
            if pattern == path or fnmatch.fnmatchcase(path, pattern):
                return reply
        return None

    def _record(self, req: Received) -> None:
        self.received.append(req)
        if len(self.received) > 1000:
            del self.received[:100]

    # --- assertions --------------------------------------------------------

    @property
    def last(self) -> Received:
        """The last request received (AssertionError when none came)."""
        if not self.received:
            raise AssertionError("the origin received no request")
        return self.received[-1]

    def assert_received(self, path: Optional[str] = None, *, method: Optional[str] = None,
                        headers: Optional[dict] = None, body: Optional[Union[bytes, str]] = None,
                        absent: Sequence[str] = ()) -> Received:
        """Find a received request matching every condition given (the most
        recent first) and return it; raise AssertionError listing what did
        arrive otherwise.

        Args:
            path: its path (exact or a glob).
            method: its method.
            headers: ``{name: value}`` that must be present (any case), or
                ``{name: None}`` for "present, any value".
            body: its body.
            absent: header names that must not be present.
        """
        want_body = body.encode() if isinstance(body, str) else body
        for r in reversed(self.received):
            if path is not None and not (r.path == path or fnmatch.fnmatchcase(r.path, path)):
                continue
            if method is not None and r.method != method:
                continue
            if headers and any(r.header(k) is None or (v is not None and r.header(k) != v)
                               for k, v in headers.items()):
                continue
            if want_body is not None and r.body != want_body:
                continue
            if any(r.header(a) is not None for a in absent):
                continue
            return r
        seen = "\n".join(f"  {r.method} {r.target} {dict(r.headers)} body={r.body[:60]!r}"
                         for r in self.received[-10:]) or "  (nothing)"
        raise AssertionError(f"the origin received no request with path={path!r} method={method!r} "
                             f"headers={headers!r} body={body!r} absent={list(absent)!r}; "
                             f"it received:\n{seen}")

    def assert_not_received(self, path: Optional[str] = None) -> None:
        """No request (with this path, when given) reached the origin."""
        hits = [r for r in self.received
                if path is None or r.path == path or fnmatch.fnmatchcase(r.path, path)]
        if hits:
            raise AssertionError(f"the origin received {len(hits)} request(s)"
                                 f"{' for ' + path if path else ''}: "
                                 + ", ".join(f"{r.method} {r.target}" for r in hits[:5]))


class LoopThread:
    """An event loop (uvloop, or asyncio with SLUICEWAY_TEST_LOOP=asyncio)
    running in a daemon thread. ``call(coro)`` runs a coroutine there and
    waits for its result."""

    def __init__(self):
        self.loop = new_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                       name="sluiceway-test-loop")

    def start(self) -> "LoopThread":
        self.thread.start()
        return self

    def call(self, coro, timeout=10):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        """Cancel what still runs on the loop (an origin answer that sleeps,
        a hook's task), stop the loop and close it."""
        if self.thread.is_alive():
            async def cancel_all():
                tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                for t in tasks:
                    t.cancel()
                if tasks:
                    await asyncio.wait(tasks, timeout=1.0)
            try:
                self.call(cancel_all(), 5)
            except Exception:
                pass
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
        self.loop.close()


def _proxy_types():
    from .config import ServerConf
    from .proxy import HttpPeer, ProxyHttp
    from .server import http_proxy_service

    return ServerConf, HttpPeer, ProxyHttp, http_proxy_service


def _passthrough_class():
    _, HttpPeer, ProxyHttp, _ = _proxy_types()

    class PassThrough(ProxyHttp):
        """Sends everything to one upstream: ``port`` on 127.0.0.1 (the
        harness's origin when left None)."""

        def __init__(self, port=None):
            self.port = port

        def upstream_peer(self, session, ctx):
            return HttpPeer(("127.0.0.1", self.port))

    return PassThrough


def __getattr__(name):
    # PassThrough subclasses ProxyHttp, which needs the compiled modules:
    # made on first use so that importing this module (the pytest plugin
    # does) stays cheap.
    if name == "PassThrough":
        cls = _passthrough_class()
        globals()["PassThrough"] = cls
        return cls
    raise AttributeError(name)


class Harness:
    """The proxy under test and an origin, on 127.0.0.1, on an event loop in
    a background thread. Use as a context manager::

        with Harness(MyProxy()) as h:
            httpx.get(h.url + "/x")
            h.origin.assert_received("/x")

    Args:
        app: the ProxyHttp instance (default: a PassThrough to the origin).
            An app with a ``port`` attribute that is None gets the origin's
            port.
        conf: a ServerConf; or ``conf_kw``: its keys (the upstream timeouts
            default to 5 s read and 2 s connect).
        loop_thread: run on this :class:`LoopThread` (shared with an origin
            started on it) instead of a new one.
        origin: use this started :class:`Origin` instead of a new one.
        tls: listen for HTTPS instead: ``add_tls``'s arguments as a dict
            (``{"cert_path": ..., "key_path": ..., **options}``); ``url``
            is then ``https://``.

    Attributes:
        url, port: the proxy's; origin: the Origin; svc: the ProxyService;
        app, conf, loop.
    """

    def __init__(self, app=None, conf=None, *, loop_thread=None, origin=None, tls=None, **conf_kw):
        ServerConf = _proxy_types()[0]
        self.app = app if app is not None else _passthrough_class()()
        kw = dict(upstream_read_timeout_seconds=5.0, upstream_connect_timeout_seconds=2.0)
        kw.update(conf_kw)
        self.conf = conf or ServerConf(**kw)
        self._own_loop = loop_thread is None
        self._lt = loop_thread or LoopThread()
        self.loop = self._lt.loop
        self.thread = self._lt.thread
        self._given_origin = origin
        self._tls = tls
        self.svc = None

    def call(self, coro, timeout=10):
        """Run a coroutine on the proxy's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def run(self, fn, *args):
        """Call ``fn(*args)`` on the proxy's loop and return its result."""
        async def f():
            return fn(*args)
        return self.call(f())

    def __enter__(self):
        if self._own_loop:
            self._lt.start()
        try:
            self.origin = self._given_origin or self.call(Origin().start())
            if getattr(self.app, "port", "missing") is None:
                self.app.port = self.origin.port
            self.svc = _proxy_types()[3](self.conf, self.app)
            if self._tls is not None:
                self.svc.add_tls("127.0.0.1:0", **self._tls)
            else:
                self.svc.add_tcp("127.0.0.1:0")
            self.call(self.svc.start())
        except BaseException:
            self._close()
            raise
        self.port = self.svc.addresses[0][1]
        self.url = f"{'https' if self._tls is not None else 'http'}://127.0.0.1:{self.port}"
        return self

    def __exit__(self, *exc):
        self._close()

    def _close(self):
        try:
            if self.svc is not None and self.svc.engine is not None:
                self.call(self.svc.stop(0.5))
            if self._given_origin is None and getattr(self, "origin", None) is not None:
                self.call(self.origin.stop())
        finally:
            if self._own_loop:
                self._lt.stop()

    def pool_stats(self):
        return self.run(lambda: self.svc.pool_stats())

    def engine(self):
        return self.svc.engine

    # --- clients -----------------------------------------------------------

    def request(self, method: str, path: str = "/", **kw):
        """One request through the proxy with httpx (a new connection);
        returns the ``httpx.Response``."""
        import httpx

        kw.setdefault("timeout", 10.0)
        return httpx.request(method, self.url + path, **kw)

    def get(self, path: str = "/", **kw):
        return self.request("GET", path, **kw)

    def post(self, path: str = "/", **kw):
        return self.request("POST", path, **kw)

    async def arequest(self, method: str, path: str = "/", **kw):
        """The same from an ``async def`` test (any event loop)."""
        import httpx

        kw.setdefault("timeout", 10.0)
        async with httpx.AsyncClient() as c:
            return await c.request(method, self.url + path, **kw)

    async def aget(self, path: str = "/", **kw):
        return await self.arequest("GET", path, **kw)

    async def apost(self, path: str = "/", **kw):
        return await self.arequest("POST", path, **kw)

    def raw(self, data: bytes, **kw) -> bytes:
        """Send raw bytes to the proxy; see :func:`raw`."""
        return raw(self.port, data, **kw)


def assert_response(resp, status: Optional[int] = None, *, headers: Optional[dict] = None,
                    body: Optional[Union[bytes, str]] = None, absent: Sequence[str] = ()):
    """Check an ``httpx.Response`` (status, ``{header: value}`` with None for
    "any value", body, header names that must be absent) with one message
    that shows the whole response when something differs. Returns it."""
    problems = []
    if status is not None and resp.status_code != status:
        problems.append(f"status {resp.status_code}, expected {status}")
    for k, v in (headers or {}).items():
        got = resp.headers.get(k)
        if got is None or (v is not None and got != v):
            problems.append(f"header {k}: {got!r}, expected {v!r}")
    for k in absent:
        if k in resp.headers:
            problems.append(f"header {k} present ({resp.headers[k]!r}), expected absent")
    if body is not None:
        want = body.encode() if isinstance(body, str) else body
        if resp.content != want:
            problems.append(f"body {resp.content[:200]!r}, expected {want[:200]!r}")
    if problems:
        raise AssertionError("; ".join(problems) + f"\nresponse: {resp.status_code} "
                             f"{dict(resp.headers)} {resp.content[:200]!r}")
    return resp


def raw(port, data: bytes, timeout=5.0, until_close=True, expect=None):
    """Send raw bytes; read until the peer closes (or `expect` responses are
    complete by a simple Content-Length count); return bytes."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(data)
        buf = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            buf += chunk
            if expect is not None and count_responses(buf) >= expect:
                break
        return buf
    finally:
        s.close()


def count_responses(buf: bytes) -> int:
    """Count complete Content-Length-framed responses in buf (test helper)."""
    n = 0
    while True:
        i = buf.find(b"\r\n\r\n")
        if i < 0:
            return n
        head = buf[:i].lower()
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line.startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        if len(buf) < i + 4 + length:
            return n
        buf = buf[i + 4 + length:]
        n += 1


def open_fds() -> int:
    return len(os.listdir(f"/proc/{os.getpid()}/fd"))


class OriginThread:
    """Origins alone, on a loop in a thread (for proxies run as
    subprocesses). ``ports`` lists one port per origin; ``origins`` the
    :class:`Origin` objects."""

    def __init__(self, n=1):
        self.n = n
        self._lt = LoopThread()
        self.loop = self._lt.loop
        self.thread = self._lt.thread

    def __enter__(self):
        self._lt.start()
        self.origins = [self._lt.call(Origin().start(), 5) for _ in range(self.n)]
        self.ports = [o.port for o in self.origins]
        return self

    def __exit__(self, *exc):
        for o in self.origins:
            self._lt.call(o.stop(), 5)
        self._lt.stop()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on and that the kernel
    will not hand out for a while.

    A plain bind-to-0-then-close leaves a race: the kernel may give the same
    port to the next socket that binds port 0, or use it as the local port
    of an outgoing connection, before the caller binds it. Here the port is
    bound, connected to and closed from the accepting side first, so it sits
    in TIME_WAIT (about 60 s): the kernel does not pick it for port 0 or for
    outgoing connections meanwhile, while a server that sets SO_REUSEADDR
    (sluiceway and nginx do) can still bind it.
    """
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, 0))
        s.listen(1)
        port = s.getsockname()[1]
        c = socket.create_connection((host, port), timeout=5)
        a, _ = s.accept()
        a.close()      # the accepted side closes first: its end of the port waits in TIME_WAIT
        c.close()
    return port


def wait_port(port, proc=None, timeout=10.0, host="127.0.0.1"):
    """Wait until something accepts connections on ``port``; raise
    RuntimeError when ``proc`` (a Popen) exits first or after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}: "
                               f"{proc.stderr.read().decode(errors='replace') if proc.stderr else ''}")
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on port {port} after {timeout}s")
