"""Test harness for the proxy: a uvloop test origin and the proxy under test,
both on 127.0.0.1, on a loop in a background thread.

The origin is written with httptools (not our parser) and behaves by path:

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

Set SLUICEWAY_TEST_LOOP=asyncio to run the in-process suites on the stdlib
loop (the reference) instead of uvloop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import threading
import time
from urllib.parse import parse_qs, urlsplit

import httptools
import uvloop

from sluiceway.config import ServerConf
from sluiceway.proxy import HttpPeer, ProxyHttp
from sluiceway.server import http_proxy_service


class _OriginProto(asyncio.Protocol):
    def __init__(self, origin):
        self.origin = origin
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
        if self.answered or self.parser.should_upgrade():
            return
        asyncio.ensure_future(self._answer(self.url, self.headers, bytes(self.body),
                                           self.parser.get_method().decode(),
                                           self.parser.get_http_version(),
                                           self.parser.should_keep_alive()))
        self._reset()

    async def _answer(self, url, headers, body, method, version, keep):
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
        if path == "/headers":
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
        elif path == "/debug":
            send(200, [("X-Debug", "secret"), ("X-Keep", "1")], b"dbg")
        elif path == "/conn-close":
            t.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbye")
            t.close()
        else:
            send(200, [("Content-Type", "text/plain")], b"hello")


def new_loop():
    """uvloop, or the stdlib loop (the reference) with SLUICEWAY_TEST_LOOP=asyncio."""
    if os.environ.get("SLUICEWAY_TEST_LOOP") == "asyncio":
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class Origin:
    def __init__(self):
        self.connections = 0
        self.requests = 0
        self.open = set()
        self.server = None
        self.port = None

    async def start(self):
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _OriginProto(self), "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self):
        self.server.close()
        for p in list(self.open):
            p.t.close()


class SimpleApp(ProxyHttp):
    """Sends everything to the harness origin."""

    def __init__(self, port=None):
        self.port = port

    def upstream_peer(self, session, ctx):
        return HttpPeer(("127.0.0.1", self.port))


class Harness:
    """Origin + proxy on a loop in a thread. Use as a context manager."""

    def __init__(self, app=None, conf=None, **conf_kw):
        self.app = app if app is not None else SimpleApp()
        kw = dict(upstream_read_timeout_seconds=5.0, upstream_connect_timeout_seconds=2.0)
        kw.update(conf_kw)
        self.conf = conf or ServerConf(**kw)
        self.loop = new_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def call(self, coro, timeout=10):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def run(self, fn, *args):
        async def f():
            return fn(*args)
        return self.call(f())

    def __enter__(self):
        self.thread.start()
        self.origin = self.call(Origin().start())
        if getattr(self.app, "port", "missing") is None:
            self.app.port = self.origin.port
        self.svc = http_proxy_service(self.conf, self.app)
        self.svc.add_tcp("127.0.0.1:0")
        self.call(self.svc.start())
        self.port = self.svc.addresses[0][1]
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    def __exit__(self, *exc):
        try:
            self.call(self.svc.stop(0.5))
            self.call(self.origin.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            self.loop.close()

    def pool_stats(self):
        return self.run(lambda: self.svc.pool_stats())

    def engine(self):
        return self.svc.engine


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
    """Harness origins alone, on a loop in a thread (for proxies run as
    subprocesses). ``ports`` lists one port per origin."""

    def __init__(self, n=1):
        self.n = n
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        self.origins = [asyncio.run_coroutine_threadsafe(Origin().start(), self.loop).result(5)
                        for _ in range(self.n)]
        self.ports = [o.port for o in self.origins]
        return self

    def __exit__(self, *exc):
        for o in self.origins:
            asyncio.run_coroutine_threadsafe(o.stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, proc=None, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}: "
                               f"{proc.stderr.read().decode(errors='replace') if proc.stderr else ''}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on port {port} after {timeout}s")


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def spawn(args, env=None, **kw):
    """Start a Python subprocess that imports the same sluiceway as the tests."""
    import subprocess
    import sys

    from conftest import subprocess_env

    e = subprocess_env(**(env or {}))
    kw.setdefault("cwd", REPO)
    return subprocess.Popen([sys.executable] + list(args), env=e,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def stop_proc(proc, sig=None, timeout=10):
    """Signal (SIGTERM by default) the process we started and reap it."""
    import signal as _signal

    if proc.poll() is None:
        proc.send_signal(sig or _signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except Exception:
        proc.kill()
        proc.wait(5)
        raise


def run_example(script, env):
    """Start examples/<script> listening on a free port; return (process, base URL)."""
    import signal as _signal

    port = free_port()
    proc = spawn([f"examples/{script}"], dict(env, LISTEN=f"127.0.0.1:{port}"))
    try:
        wait_port(port, proc)
    except Exception:
        stop_proc(proc, _signal.SIGKILL)
        raise
    return proc, f"http://127.0.0.1:{port}"
