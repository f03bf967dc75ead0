"""Server, services and the process model.

A :class:`Server` holds the configuration and the services. ``run_forever``
runs them: with ``threads: 1`` in this process; with more, in that many
worker processes forked from this one, each with its own uvloop loop, all
listening on the same ports with SO_REUSEPORT.

Signals: SIGTERM stops accepting, lets in-flight requests finish within
``grace_period_seconds``, closes idle keep-alive connections and exits 0.
SIGINT exits at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
from typing import List, Optional

from .config import ConfigError, ServerConf, load_config
from .proxy import ProxyHttp, _engine

__all__ = ["Server", "ProxyService", "http_proxy_service", "BackgroundService", "background_service"]

log = logging.getLogger("sluiceway.error")


def _parse_tcp(addr: str):
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"listen address {addr!r} must be 'host:port' (e.g. '0.0.0.0:8080')")
    return host.strip("[]") or "0.0.0.0", int(port)


class ProxyService:
    """An HTTP proxy service: an application (:class:`ProxyHttp`) and the
    addresses it listens on. Made by :func:`http_proxy_service`."""

    def __init__(self, conf: ServerConf, app: ProxyHttp, name: str = "proxy") -> None:
        if not isinstance(app, ProxyHttp):
            raise TypeError(f"http_proxy_service needs a ProxyHttp instance, got {type(app).__name__}")
        if type(app).upstream_peer is ProxyHttp.upstream_peer:
            raise TypeError(f"{type(app).__name__} must override upstream_peer(session, ctx)")
        self.conf = conf
        self.app = app
        self.name = name
        self._tcp: List[tuple] = []
        self._uds: List[tuple] = []
        self._servers: list = []
        self._socks: list = []
        self.engine = None
        self.addresses: list = []

    def add_tcp(self, addr: str) -> None:
        """Listen on ``"host:port"`` (port 0 picks a free port; see
        ``addresses`` after start)."""
        self._tcp.append(_parse_tcp(addr))

    def add_uds(self, path: str, permissions: Optional[int] = None) -> None:
        """Listen on a Unix domain socket at ``path``."""
        self._uds.append((path, permissions))

    def _bind(self, reuse_port: bool, listen: bool = True) -> None:
        """Create the listening sockets.

        With several workers the master first calls this with
        ``listen=False``: the sockets only reserve the ports (port 0 is
        resolved once, so every worker uses the same one) and, not
        listening, never receive connections. Each worker then binds its
        own SO_REUSEPORT socket (``_rebind_for_worker``), so the kernel
        spreads connections across the workers.
        """
        for host, port in self._tcp:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            s = socket.socket(family, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind((host, port))
            if listen:
                s.listen(4096)
            s.setblocking(False)
            self._socks.append(s)
            self.addresses.append(s.getsockname()[:2])
        # Unix sockets are bound once and shared by the workers.
        for path, perm in self._uds:
            if os.path.exists(path):
                os.unlink(path)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.bind(path)
            if perm is not None:
                os.chmod(path, perm)
            s.listen(4096)
            s.setblocking(False)
            self._socks.append(s)
            self.addresses.append(path)

    def _rebind_for_worker(self) -> None:
        """In a worker: replace the master's reservations by this worker's
        own listening SO_REUSEPORT sockets on the same ports."""
        n = len(self._tcp)
        reserved, shared = self._socks[:n], self._socks[n:]
        tcp_addrs, uds_addrs = self.addresses[:n], self.addresses[n:]
        self._socks, self.addresses = [], []
        uds, self._uds = self._uds, []
        self._tcp = [tuple(a) for a in tcp_addrs]
        self._bind(reuse_port=True)
        self._uds = uds
        self._socks += shared
        self.addresses += uds_addrs
        for s in reserved:
            s.close()

    async def start(self, loop=None) -> list:
        """Start serving on the running loop (binds first if needed).
        Returns the bound addresses."""
        loop = loop or asyncio.get_running_loop()
        if not self._socks:
            self._bind(reuse_port=False)
        self.engine = _engine.make_engine(self.app, ProxyHttp, loop, **self.conf.engine_settings())
        for s in self._socks:
            self._servers.append(self.engine.serve(s))
        return self.addresses

    def stop_accepting(self) -> None:
        for srv in self._servers:
            srv.close()

    async def stop(self, grace: Optional[float] = None) -> None:
        """Stop: no new connections, finish in-flight requests within
        ``grace`` seconds (the configured grace period by default), then
        close everything."""
        grace = self.conf.grace_period_seconds if grace is None else grace
        self.stop_accepting()
        eng = self.engine
        if eng is not None:
            eng.begin_shutdown()
            deadline = time.monotonic() + grace
            while eng.active_requests() and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            eng.close_all()
            eng.stop()
            _engine.forget_pool(asyncio.get_running_loop())
        for srv in self._servers:
            try:
                await asyncio.wait_for(srv.wait_closed(), 1.0)
            except (asyncio.TimeoutError, Exception):
                pass
        self._servers.clear()
        for s in self._socks:
            s.close()
        self._socks.clear()

    def pool_stats(self) -> dict:
        return self.engine.pool_stats if self.engine is not None else {}


def http_proxy_service(conf: ServerConf, app: ProxyHttp, name: str = "proxy") -> ProxyService:
    """Make a proxy service running ``app`` with the settings in ``conf``."""
    return ProxyService(conf, app, name)


class BackgroundService:
    """Work that runs beside the proxy services on each worker's loop, such
    as a :class:`~sluiceway.LoadBalancer`'s discovery and health checks.
    Made by :func:`background_service`.

    The task is any object with ``start(loop)`` (begins the work on ``loop``
    and returns at once) and ``async stop()`` (ends it and waits).
    Background services start before any proxy service accepts a
    connection, and stop after the proxy services have drained.
    """

    def __init__(self, name: str, task) -> None:
        for attr in ("start", "stop"):
            if not callable(getattr(task, attr, None)):
                raise TypeError(f"background_service({name!r}, ...) needs an object with start(loop) "
                                f"and async stop(); {type(task).__name__} has no {attr}()")
        self.name = name
        self.task = task

    async def start(self, loop=None) -> None:
        self.task.start(loop)

    async def stop(self, grace: Optional[float] = None) -> None:
        await self.task.stop()

    def __repr__(self) -> str:
        return f"<BackgroundService {self.name!r} {self.task!r}>"


def background_service(name: str, task) -> BackgroundService:
    """Wrap ``task`` (e.g. a LoadBalancer) as a service for
    :meth:`Server.add_service`, as Pingora's ``background_service`` does."""
    return BackgroundService(name, task)


class Server:
    """Configuration, services and the process model.

    Args:
        conf: a ServerConf, or None for the defaults.
    """

    def __init__(self, conf: Optional[ServerConf] = None) -> None:
        self.configuration = conf or ServerConf()
        redis = self.configuration.redis_backend_args()
        if redis is not None:
            from ._limits_redis import configure_default

            configure_default(redis)
        self.services: List[ProxyService] = []
        self.background: List[BackgroundService] = []
        self._stopping = False

    @classmethod
    def from_args(cls, argv: Optional[List[str]] = None) -> "Server":
        """Build from command-line options: ``-c conf.yaml``, ``-t`` (check
        the configuration and exit), ``-d`` (run as a daemon)."""
        import argparse

        ap = argparse.ArgumentParser(description="sluiceway server")
        ap.add_argument("-c", "--conf", help="YAML configuration file")
        ap.add_argument("-t", "--test", action="store_true", help="check the configuration and exit")
        ap.add_argument("-d", "--daemon", action="store_true", help="run in the background")
        ns = ap.parse_args(argv)
        try:
            conf = load_config(ns.conf) if ns.conf else ServerConf()
        except ConfigError as exc:
            print(f"sluiceway: {exc}", file=sys.stderr)
            raise SystemExit(2)
        if ns.test:
            print(f"sluiceway: configuration {ns.conf or '(defaults)'} is valid")
            raise SystemExit(0)
        if ns.daemon:
            conf.daemon = True
        return cls(conf)

    def add_service(self, service) -> None:
        """Add a proxy service (:func:`http_proxy_service`) or a background
        service (:func:`background_service`)."""
        if isinstance(service, BackgroundService):
            self.background.append(service)
        elif isinstance(service, ProxyService):
            self.services.append(service)
        else:
            raise TypeError(f"add_service takes http_proxy_service(...) or background_service(...), "
                            f"not {type(service).__name__}")

    def bootstrap(self) -> None:
        """Set up logging (the error log file when configured)."""
        conf = self.configuration
        root = logging.getLogger("sluiceway")
        if not root.handlers:
            h = logging.FileHandler(conf.error_log) if conf.error_log else logging.StreamHandler()
            h.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s %(message)s"))
            root.addHandler(h)
            root.setLevel(logging.INFO)

    def run_forever(self) -> None:
        """Run every service until SIGTERM (graceful, exit 0) or SIGINT."""
        conf = self.configuration
        self.bootstrap()
        if conf.daemon:
            _daemonize(conf.pid_file)
        workers = conf.threads
        for svc in self.services:
            svc._bind(reuse_port=workers > 1, listen=workers <= 1)
        if workers <= 1:
            try:
                code = _worker_main(self)
            finally:
                if conf.daemon and conf.pid_file:
                    try:
                        os.unlink(conf.pid_file)
                    except OSError:
                        pass
            raise SystemExit(code)
        pids = []
        for _ in range(workers):
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    for svc in self.services:
                        svc._rebind_for_worker()
                    code = _worker_main(self)
                finally:
                    os._exit(code)
            pids.append(pid)
        for svc in self.services:
            for s in svc._socks:
                s.close()
        raise SystemExit(_master_wait(pids, conf))


def _worker_main(server: Server) -> int:
    import uvloop

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    stop = loop.create_future()

    def on_term():
        if not stop.done():
            stop.set_result("term")

    def on_int():
        if not stop.done():
            stop.set_result("int")

    loop.add_signal_handler(signal.SIGTERM, on_term)
    loop.add_signal_handler(signal.SIGINT, on_int)

    async def main():
        import gc

        from . import _limits_redis

        for bg in server.background:
            await bg.start(loop)
        _limits_redis.start_backends(loop)  # limits shared through Redis sync on this loop
        for svc in server.services:
            await svc.start(loop)
        # Everything made at start-up lives as long as the worker: keep it
        # out of the cyclic collector's scans (shorter pauses under load).
        gc.collect()
        gc.freeze()
        how = await stop
        grace = server.configuration.grace_period_seconds if how == "term" else 0.0
        await asyncio.gather(*(svc.stop(grace) for svc in server.services))
        await asyncio.gather(*(bg.stop(grace) for bg in server.background), return_exceptions=True)
        await _limits_redis.stop_backends()
        return 0

    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


def _master_wait(pids: List[int], conf: ServerConf) -> int:
    state = {"sig": None}

    def forward(signum, frame):
        state["sig"] = signum
        for p in pids:
            try:
                os.kill(p, signum)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    alive = set(pids)
    deadline = None
    code = 0
    while alive:
        if state["sig"] is not None and deadline is None:
            deadline = time.monotonic() + conf.graceful_shutdown_timeout_seconds
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            if deadline is not None and time.monotonic() > deadline:
                for p in alive:
                    try:
                        os.kill(p, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            time.sleep(0.05)
            continue
        alive.discard(pid)
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) != 0:
            code = os.WEXITSTATUS(status)
        if state["sig"] is None:
            log.error("sluiceway: worker %d exited unexpectedly (status %d)", pid, status)
    if conf.daemon and conf.pid_file:
        try:
            os.unlink(conf.pid_file)
        except OSError:
            pass
    return code


def _daemonize(pid_file: str) -> None:
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    with open(pid_file, "w") as f:
        f.write(f"{os.getpid()}\n")
