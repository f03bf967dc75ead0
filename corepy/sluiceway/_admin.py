"""The admin listener (``admin_listen``), served by the master process.

Theory of operation
-------------------
The master never runs an event loop: it sleeps in one ``select``
(``_master``). The admin listener adds its descriptors to that select: the
listening socket, the connections still sending their request, and those
with a response left to write. A connection sends one request (a GET or
HEAD head of at most 16 KiB within 10 seconds) and gets one response, then
is closed (``Connection: close``); everything is non-blocking, so a slow or
silent client costs a descriptor, never the master's time.

Paths:

``/metrics``   every worker's metrics summed from the shared store, through
               prometheus_client's exposition: Prometheus text, or OpenMetrics
               when the Accept header asks for it.
``/healthz``   200 while the master runs.
``/readyz``    200 once the first workers accept, 503 while starting,
               stopping (draining) or handing the sockets to a new process.
``/status``    JSON: pid, state, generation, workers (pid, slot,
               generation, ready, uptime, their connections and requests),
               services (requests by class, pools), backends, the store's use.

The admin listener serves what the master knows; it never asks a worker.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from typing import Dict, List, Optional

from . import metrics
from ._startup import BindError
from .config import parse_listen

log = logging.getLogger("sluiceway.error")

MAX_HEAD = 16384
CONN_TIMEOUT = 10.0
MAX_CONNS = 64


class _Conn:
    __slots__ = ("sock", "buf", "out", "born")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.out: Optional[memoryview] = None
        self.born = time.monotonic()


def bind(addr: str) -> socket.socket:
    """The admin listening socket (raises BindError)."""
    kind, *rest = parse_listen(addr)
    if kind == "unix":
        path = rest[0]
        if os.path.exists(path):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            in_use = False
            try:
                probe.connect(path)
                in_use = True
            except OSError:
                pass
            finally:
                probe.close()
            if in_use:
                raise BindError("unix:" + path, OSError(98, "in use"))
            os.unlink(path)   # a stale socket file
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target = path
    else:
        host, port = rest
        host = host or "127.0.0.1"
        s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        target = (host, port)
    try:
        s.bind(target)
        s.listen(64)
    except OSError as exc:
        s.close()
        raise BindError(addr, exc) from None
    s.setblocking(False)
    return s


class AdminServer:
    """The admin listener on ``sock``, answering from ``master`` (a
    ``_master.Master``)."""

    def __init__(self, sock: socket.socket, master) -> None:
        self.sock = sock
        self.master = master
        self.conns: Dict[int, _Conn] = {}

    def address(self):
        return self.sock.getsockname()

    def rfds(self) -> List[int]:
        return [self.sock.fileno()] + [fd for fd, c in self.conns.items() if c.out is None]

    def wfds(self) -> List[int]:
        return [fd for fd, c in self.conns.items() if c.out is not None]

    def timeout(self) -> float:
        if not self.conns:
            return 1.0
        return max(0.0, min(c.born for c in self.conns.values()) + CONN_TIMEOUT - time.monotonic())

    def close(self) -> None:
        for fd in list(self.conns):
            self._drop(fd)
        self.sock.close()

    def close_in_child(self) -> None:
        """After a fork: a worker has no business with these."""
        for c in self.conns.values():
            c.sock.close()
        self.conns.clear()
        self.sock.close()

    def handle(self, readable, writable) -> None:
        lfd = self.sock.fileno()
        if lfd in readable:
            self._accept()
        for fd in list(self.conns):
            c = self.conns.get(fd)
            if c is None:
                continue
            try:
                if c.out is None and fd in readable:
                    self._read(fd, c)
                elif c.out is not None and fd in writable:
                    self._write(fd, c)
            except Exception:
                log.exception("sluiceway: admin listener: error on a connection (this is a bug)")
                self._drop(fd)
        now = time.monotonic()
        for fd, c in list(self.conns.items()):
            if now - c.born > CONN_TIMEOUT:
                self._drop(fd)

    def _accept(self) -> None:
        for _ in range(16):
            try:
                s, _addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.error("sluiceway: admin listener: accept failed: %s", exc)
                return
            if len(self.conns) >= MAX_CONNS:
                s.close()
                continue
            s.setblocking(False)
            self.conns[s.fileno()] = _Conn(s)

    def _drop(self, fd: int) -> None:
        c = self.conns.pop(fd, None)
        if c is not None:
            c.sock.close()

    def _read(self, fd: int, c: _Conn) -> None:
        try:
            data = c.sock.recv(8192)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(fd)
            return
        if not data:
            self._drop(fd)
            return
        c.buf += data
        end = c.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(c.buf) > MAX_HEAD:
                self._respond(c, 431, b"request head too large\n", "text/plain")
            return
        self._request(c, bytes(c.buf[:end]))
        self._write(fd, c)

    def _write(self, fd: int, c: _Conn) -> None:
        try:
            n = c.sock.send(c.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(fd)
            return
        c.out = c.out[n:]
        if not len(c.out):
            self._drop(fd)

    def _respond(self, c: _Conn, status: int, body: bytes, ctype: str, head_only=False) -> None:
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
                  431: "Request Header Fields Too Large", 500: "Internal Server Error",
                  503: "Service Unavailable"}.get(status, "OK")
        head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\n"
                "Connection: close\r\n\r\n").encode()
        c.out = memoryview(head if head_only else head + body)

    def _request(self, c: _Conn, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            self._respond(c, 400, b"bad request\n", "text/plain")
            return
        method, target, _ = parts
        if method not in ("GET", "HEAD"):
            self._respond(c, 405, b"GET or HEAD only\n", "text/plain")
            return
        accept = ""
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "accept":
                accept = value.strip()
        path = target.split("?", 1)[0]
        head_only = method == "HEAD"
        try:
            status, body, ctype = self.route(path, accept)
        except Exception:
            log.exception("sluiceway: admin listener: %s failed", path)
            status, body, ctype = 500, b"internal error (see the error log)\n", "text/plain"
        self._respond(c, status, body, ctype, head_only)

    # --- the answers ------------------------------------------------------------

    def route(self, path: str, accept: str):
        m = self.master
        if path == "/metrics":
            if metrics.store() is None:
                return 404, b"metrics are off (metrics: false)\n", "text/plain"
            body, ctype = metrics.exposition(accept)
            return 200, body, ctype
        if path == "/healthz":
            return 200, b"ok\n", "text/plain"
        if path == "/readyz":
            ready, state = m.readiness()
            return (200 if ready else 503), (state + "\n").encode(), "text/plain"
        if path == "/status":
            return 200, (json.dumps(m.status(), indent=1, sort_keys=True) + "\n").encode(), \
                "application/json"
        return 404, b"not found: /metrics, /healthz, /readyz, /status\n", "text/plain"


def worker_figures(pid: int) -> dict:
    """A worker's own figures from its slab: connections open, requests."""
    st = metrics.store()
    if st is None:
        return {}
    try:
        slab = st.owners().index(pid)
    except ValueError:
        return {}
    out = {"connections": 0.0, "requests": 0.0, "upstream_connections_idle": 0.0}
    for key, _val, kind, first, n in st.entries():
        name = key.split(b"\0", 1)[0]
        if name == b"sluiceway_client_connections":
            out["connections"] += st.read_slab(slab, first, n)[0]
        elif name == b"sluiceway_requests":
            out["requests"] += st.read_slab(slab, first, n)[0]
        elif name == b"sluiceway_upstream_connections_idle":
            out["upstream_connections_idle"] += st.read_slab(slab, first, n)[0]
    return {k: int(v) for k, v in out.items()}


def services_status() -> dict:
    """Per service: requests by class, pool figures (every worker summed)."""
    snap = metrics.snapshot()
    out: Dict[str, dict] = {}
    for (service, code), v in snap.get("sluiceway_requests", {}).items():
        out.setdefault(service, {}).setdefault("requests", {})[code] = int(v)
    pool_names = {"sluiceway_upstream_connections_idle": "idle",
                  "sluiceway_upstream_connections_in_use": "in_use",
                  "sluiceway_upstream_connections_opened": "opened",
                  "sluiceway_upstream_connections_reused": "reused",
                  "sluiceway_client_connections": "client_connections"}
    for name, short in pool_names.items():
        for (service,), v in snap.get(name, {}).items():
            d = out.setdefault(service, {})
            if short == "client_connections":
                d[short] = int(v)
            else:
                d.setdefault("pool", {})[short] = int(v)
    for (service, reason), v in snap.get("sluiceway_upstream_connections_closed", {}).items():
        out.setdefault(service, {}).setdefault("pool", {}).setdefault("closed", {})[reason] = int(v)
    return out
