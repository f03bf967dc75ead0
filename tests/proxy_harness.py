"""The tests' names for the proxy test harness, which lives in the package
(:mod:`sluiceway.testing`, behind the pytest plugin): the tests use the same
machinery users get. This module keeps the names the suites import
(``Harness``, ``raw``, ``OriginThread``, ``Origin``, ``spawn``, ...) and adds
what only this repository needs (subprocesses that import the sluiceway under
test, the examples).

The origin's built-in paths are listed in :mod:`sluiceway.testing`.
Set SLUICEWAY_TEST_LOOP=asyncio to run the in-process suites on the stdlib
loop (the reference) instead of uvloop.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time

from sluiceway.proxy import HttpPeer, ProxyHttp
from sluiceway.testing import (  # noqa: F401  (re-exported for the suites)
    Harness, LoopThread, Origin, OriginThread, Received, Reply, _OriginProto, assert_response,
    count_responses, free_port, new_loop, open_fds, raw, wait_port,
)
from sluiceway.testing import PassThrough as SimpleApp  # noqa: F401

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class FixedPeer(ProxyHttp):
    """Every request to ``addr`` (an HttpPeer with options ``kw``); the
    error of each request, None for a good one, in ``errors``."""

    def __init__(self, addr, **kw):
        self.addr = addr
        self.kw = kw
        self.errors = []

    def upstream_peer(self, session, ctx):
        return HttpPeer(self.addr, **self.kw)

    def logging(self, session, error, ctx):
        self.errors.append(error)


def spawn(args, env=None, **kw):
    """Start a Python subprocess that imports the same sluiceway as the tests
    (``cwd`` defaults to the repository)."""
    import subprocess
    import sys

    from conftest import subprocess_env

    e = subprocess_env(**(env or {}))
    kw.setdefault("cwd", REPO)
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen([sys.executable] + list(args), env=e, **kw)


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


def rss_bytes(pid):
    """The resident set of process ``pid`` in bytes (0 when /proc does not say)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


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


# ------------------------------------------------------------------ nginx --

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
HAVE_NGINX = os.path.exists(NGINX)


def _accepts(addr):
    """Whether something accepts connections at ``addr``: a port on
    127.0.0.1, a (host, port) pair or a Unix socket's path."""
    try:
        if isinstance(addr, str):
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(0.2)
            s.connect(addr)
        else:
            s = socket.create_connection(
                ("127.0.0.1", addr) if isinstance(addr, int) else addr, timeout=0.2)
        s.close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def run_nginx(d, http=None, other="", wait=(), load="", user=None, connections=256):
    """Run nginx (one worker, in the foreground) from the folder ``d`` with
    its pid, error log and temp folders there, until the block ends.

    ``http`` is what goes inside ``http { }`` (after ``access_log off`` and
    the temp paths; no http block when None), ``other`` more top-level
    blocks (``stream { }``), ``load`` lines before all (``load_module``),
    ``user`` the user workers run as. Waits until each of ``wait`` (ports on
    127.0.0.1, (host, port) pairs, Unix socket paths) accepts connections;
    yields the process; SIGTERM at the end."""
    d = str(d)
    conf = [load, "worker_processes 1;", "daemon off;"]
    if user:
        conf.append(f"user {user};")
    conf += [f"pid {d}/nginx.pid;", f"error_log {d}/error.log warn;",
             f"events {{ worker_connections {connections}; }}"]
    if http is not None:
        conf += ["http {", "    access_log off;",
                 f"    client_body_temp_path {d}/cb; proxy_temp_path {d}/pt;",
                 f"    fastcgi_temp_path {d}/ft; uwsgi_temp_path {d}/ut; scgi_temp_path {d}/st;",
                 http, "}"]
    conf.append(other)
    path = os.path.join(d, "nginx.conf")
    with open(path, "w") as f:
        f.write("\n".join(conf) + "\n")
    proc = subprocess.Popen([NGINX, "-p", d, "-c", path, "-e", os.path.join(d, "error.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        for addr in wait:
            while not _accepts(addr):
                if proc.poll() is not None:
                    with open(os.path.join(d, "error.log"), errors="replace") as f:
                        log = f.read()[-2000:]
                    raise RuntimeError(f"nginx exited: {proc.stderr.read().decode()[-2000:]} {log}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"nginx did not listen on {addr} within 10 s")
                time.sleep(0.05)
        yield proc
    finally:
        stop_proc(proc)
        proc.stderr.close()


# ------------------------------------------------- a blocking TLS origin --

class ThreadOrigin:
    """A blocking origin in a thread, for what asyncio's TLS server does not
    let a test choose (closing without close_notify, refusing to answer a
    handshake, reading slowly). ``handler(conn)`` runs per connection after
    the TLS handshake (or on the plain socket when ``tls`` is None). A
    connection that fails waits ``hold`` seconds before it is closed (a
    close with unread input resets it, and a reset may overtake what was
    sent)."""

    def __init__(self, handler, tls=None, hold=0.0):
        self.handler = handler
        self.tls = tls
        self.hold = hold
        self.ls = socket.create_server(("127.0.0.1", 0))
        self.port = self.ls.getsockname()[1]
        self.errors = []
        self.threads = []
        self.t = threading.Thread(target=self._serve, daemon=True)
        self.t.start()

    def _serve(self):
        while True:
            try:
                c, _ = self.ls.accept()
            except OSError:
                return
            t = threading.Thread(target=self._one, args=(c,), daemon=True)
            self.threads.append(t)
            t.start()

    def _one(self, c):
        c.settimeout(10)
        try:
            if self.tls is not None:
                # (A failed handshake inside wrap_socket would close at once.)
                c = self.tls.wrap_socket(c, server_side=True, do_handshake_on_connect=False)
                c.do_handshake()
            self.handler(c)
        except Exception as exc:  # the test looks at these
            self.errors.append(exc)
            time.sleep(self.hold)
        finally:
            c.close()

    def close(self):
        self.ls.close()
        for t in self.threads:
            t.join(10)


def recv_all(c):
    """Everything the blocking socket ``c`` (plain or TLS) receives until
    the peer closes (for TLS: its close_notify)."""
    got = b""
    while True:
        chunk = c.recv(65536)
        if not chunk:
            return got
        got += chunk


def recv_head(c):
    """Read a request head from the blocking socket ``c``: (head, what came
    after it); EOFError when the peer closes first."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        got = c.recv(65536)
        if not got:
            raise EOFError("no request head")
        buf += got
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest
