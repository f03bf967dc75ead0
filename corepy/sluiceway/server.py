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
import dataclasses
import logging
import os
import signal
import socket
import sys
import time
from typing import List, Optional

from . import _startup
from ._startup import BindError, StartError, fmt_addr
from .config import ConfigError, ServerConf, load_config, parse_listen
from .proxy import ProxyHttp, _engine

__all__ = ["Server", "ProxyService", "http_proxy_service", "BackgroundService", "background_service"]

log = logging.getLogger("sluiceway.error")


def _parse_tcp(addr: str):
    try:
        parsed = parse_listen(addr)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    if parsed[0] != "tcp":
        raise ValueError(f"listen address {addr!r} is a Unix socket; use add_uds() or add_address()")
    return parsed[1] or "0.0.0.0", parsed[2]


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

    def add_address(self, addr: str) -> None:
        """Listen on ``"host:port"``, ``"[v6addr]:port"`` or ``"unix:/path"``
        (the forms of the configuration's ``listen``)."""
        if addr.startswith("unix:"):
            self.add_uds(parse_listen(addr)[1])
        else:
            self.add_tcp(addr)

    def listen_addresses(self) -> List[str]:
        """The addresses given so far, as ``listen`` writes them (before a
        start resolves port 0)."""
        return [fmt_addr(a) for a in self._tcp] + ["unix:" + p for p, _ in self._uds]

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
            try:
                s.bind((host, port))
            except OSError as exc:
                s.close()
                raise BindError(fmt_addr((host, port)), exc) from None
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
            try:
                s.bind(path)
            except OSError as exc:
                s.close()
                raise BindError("unix:" + path, exc) from None
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
        from .compression import CompressionPolicy

        self.engine = _engine.make_engine(self.app, ProxyHttp, loop,
                                          _engine.Settings.from_conf(self.conf),
                                          CompressionPolicy.from_conf(self.conf))
        for s in self._socks:
            self._servers.append(self.engine.serve(s))
        return self.addresses

    def stop_accepting(self) -> None:
        """Stop accepting: connections already waiting in the listen queues
        are taken first (to be served), then the listening sockets close."""
        for srv in self._servers:
            srv.close(drain=True)
        for s in self._socks:
            s.close()

    async def stop(self, grace: Optional[float] = None) -> None:
        """Stop gracefully: no new connections; every request whose head
        arrives is answered (with `Connection: close`); connections close
        between requests; whatever is still open after ``grace`` seconds
        (the configured grace period by default) is closed, and requests cut
        that way are logged."""
        grace = self.conf.grace_period_seconds if grace is None else grace
        self.stop_accepting()
        eng = self.engine
        if eng is not None:
            eng.begin_shutdown()
            deadline = time.monotonic() + grace
            while (eng.connections or eng.active_requests()) and time.monotonic() < deadline:
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
        """The upstream connection pool's counters (this worker)."""
        return self.engine.pool_stats if self.engine is not None else {}

    def stats(self) -> dict:
        """This service's counters in this worker: ``requests``, ``active``,
        ``connections``, ``replayed`` (see the engine's ``stats``)."""
        if self.engine is None:
            return {"requests": 0, "active": 0, "connections": 0, "replayed": 0}
        return self.engine.stats()


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
        conf_path: the file ``conf`` was read from (shown at start-up).

    Attributes:
        configuration: the :class:`ServerConf`.
        args: the parsed command line when made by :meth:`from_args` (your
            own arguments included), else None.
    """

    def __init__(self, conf: Optional[ServerConf] = None, *, conf_path: Optional[str] = None) -> None:
        self.configuration = conf or ServerConf()
        self.conf_path = conf_path
        redis = self.configuration.redis_backend_args()
        if redis is not None:
            from ._limits_redis import configure_default

            configure_default(redis)
        self.services: List[ProxyService] = []
        self.background: List[BackgroundService] = []
        self.args = None
        self._check_only = False
        self._stopping = False
        self._ready_fd = -1

    @staticmethod
    def add_arguments(parser) -> None:
        """Add sluiceway's options to an ``argparse`` parser: ``-c/--conf``,
        ``-t/--test``, ``-d/--daemon``, ``-l/--listen`` (repeatable) and
        ``--version``."""
        parser.add_argument("-c", "--conf", metavar="FILE", help="YAML configuration file")
        parser.add_argument("-t", "--test", action="store_true",
                            help="check the configuration, addresses, log and pid paths; then exit")
        parser.add_argument("-d", "--daemon", action="store_true", help="run in the background")
        parser.add_argument("-l", "--listen", action="append", metavar="HOST:PORT",
                            help="address to listen on, instead of the configuration's listen "
                                 "(repeatable; unix:/path for a Unix socket)")
        parser.add_argument("--version", action=_startup.VersionAction)

    @classmethod
    def from_args(cls, argv: Optional[List[str]] = None, parser=None) -> "Server":
        """Build from the command line: ``-c conf.yaml``, ``-t`` (check
        everything and exit when :meth:`run_forever` is called), ``-d`` (run
        as a daemon), ``-l HOST:PORT`` (replaces ``listen``), ``--version``.

        Args:
            argv: the arguments (default: ``sys.argv[1:]``).
            parser: an ``argparse.ArgumentParser`` holding your program's own
                arguments; sluiceway's are added to it, and the parsed
                namespace (yours and ours) is ``server.args``.

        A wrong configuration prints the error (file, line, key) and exits
        with status 2.
        """
        import argparse

        ap = parser if parser is not None else argparse.ArgumentParser(description="sluiceway server")
        cls.add_arguments(ap)
        ns = ap.parse_args(argv)
        try:
            server = cls.from_conf(ns.conf, **({"listen": list(ns.listen)} if ns.listen else {}))
        except ConfigError as exc:
            print(f"sluiceway: {exc}", file=sys.stderr)
            raise SystemExit(2)
        if ns.daemon:
            server.configuration.daemon = True
        server.args = ns
        server._check_only = bool(ns.test)
        return server

    @classmethod
    def from_conf(cls, path: Optional[str] = None, **overrides) -> "Server":
        """Build from a YAML file (or the defaults when ``path`` is None),
        then apply ``overrides`` (configuration keys). For programs with a
        command line of their own.

        Raises:
            ConfigError: the file or an override is wrong.
        """
        conf = load_config(path) if path else ServerConf()
        known = {f.name for f in dataclasses.fields(ServerConf)}
        for key, value in overrides.items():
            if key not in known:
                raise ConfigError(f"unknown key {key!r}")
            setattr(conf, key, value)
        conf.validate()
        return cls(conf, conf_path=path)

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
        """Set up logging: ``sluiceway.*`` to ``error_log`` or standard
        error; with ``access_log: true``, ``sluiceway.access`` to
        ``access_log_file`` or standard output."""
        _startup.setup_logging(self.configuration)

    def _apply_listen(self) -> None:
        """The configuration's ``listen`` (or ``-l``) replaces the addresses
        the program gave its proxy service."""
        listen = self.configuration.listen
        if not listen:
            return
        if len(self.services) != 1:
            raise StartError(f"the configuration's listen ({', '.join(listen)}) applies to a program "
                             f"with one proxy service; this one has {len(self.services)}: give each "
                             "service its addresses with add_tcp()/add_uds() and remove listen", 2)
        svc = self.services[0]
        svc._tcp, svc._uds = [], []
        for addr in listen:
            svc.add_address(addr)

    def addresses(self) -> List[str]:
        """Every address the services will listen on."""
        return [a for svc in self.services for a in svc.listen_addresses()]

    def check(self, out=None) -> int:
        """What ``-t`` does: check the configuration's effect on this
        machine (addresses, log and pid paths) and print the verdict.
        Returns the exit status (0 valid, 2 not)."""
        conf = self.configuration
        out = out or sys.stdout
        problems: List[str] = []
        notes: List[str] = []
        try:
            self._apply_listen()
        except StartError as exc:
            problems.append(str(exc))
        if not self.services:
            problems.append("no proxy service was added (server.add_service(http_proxy_service(...)))")
        for svc in self.services:
            if not svc.listen_addresses():
                problems.append(f"service {svc.name!r} has no address: add_tcp('127.0.0.1:8080') "
                                "or listen: in the configuration")
        for addr in self.addresses():
            problem, note = _startup.check_address(addr)
            if problem:
                problems.append(problem)
            if note:
                notes.append(note)
        problems += _startup.check_paths(conf, conf.daemon)
        name = self.conf_path or "(built-in defaults)"
        for n in notes:
            print(f"sluiceway: note: {n}", file=out)
        if problems:
            for p in problems:
                print(f"sluiceway: {p}", file=sys.stderr)
            print(f"sluiceway: configuration {name} is NOT valid ({len(problems)} "
                  f"problem{'s' if len(problems) != 1 else ''})", file=sys.stderr)
            return 2
        print(f"sluiceway: configuration {name} is valid; would listen on "
              f"{', '.join(self.addresses())}", file=out)
        return 0

    def _startup_lines(self) -> List[str]:
        addrs = [fmt_addr(a) for svc in self.services for a in svc.addresses]
        return _startup.startup_lines(addrs, self.configuration, self.conf_path, os.getpid(),
                                      self.configuration.daemon)

    def _started(self) -> None:
        """The services listen: say so (or tell the waiting foreground
        process, for a daemon)."""
        lines = self._startup_lines()
        if self._ready_fd >= 0:
            _report(self._ready_fd, "ok", "\n".join(lines))
            self._ready_fd = -1
        else:
            print("\n".join(lines), file=sys.stderr, flush=True)
        if self.configuration.error_log:
            for line in lines:
                log.info("%s", line.strip())

    def run_forever(self) -> None:
        """Run every service until SIGTERM (graceful, exit 0) or SIGINT.

        With ``-t`` (:meth:`from_args`): check and exit instead. A start that
        fails (a port in use, a log file that cannot be opened) prints why
        and exits with status 1 (2 for a configuration problem), also as a
        daemon: the command returns only when the server listens or failed.
        """
        conf = self.configuration
        if self._check_only:
            raise SystemExit(self.check())
        try:
            self._apply_listen()
            for svc in self.services:
                if not svc.listen_addresses():
                    raise StartError(f"service {svc.name!r} has no address to listen on: call "
                                     "add_tcp('127.0.0.1:8080') or set listen: in the configuration", 2)
            if conf.daemon:
                problems = _startup.check_paths(conf, True)
                if problems:
                    raise StartError("; ".join(problems), 2)
            self.bootstrap()
            workers = conf.threads
            for svc in self.services:
                svc._bind(reuse_port=workers > 1, listen=workers <= 1)
        except (StartError, BindError) as exc:
            for svc in self.services:
                for s in svc._socks:
                    s.close()
            print(f"sluiceway: {exc}", file=sys.stderr)
            raise SystemExit(getattr(exc, "code", 1) if isinstance(exc, StartError) else 1)
        if conf.daemon:
            if not conf.error_log:
                print("sluiceway: warning: running as a daemon without error_log: log lines after "
                      "start-up are discarded; set error_log in the configuration", file=sys.stderr)
            self._ready_fd = _daemonize(conf.pid_file)
        try:
            if workers <= 1:
                code = _worker_main(self)
                raise SystemExit(code)
            pids = []
            for _ in range(workers):
                pid = os.fork()
                if pid == 0:
                    code = 1
                    try:
                        if self._ready_fd >= 0:
                            os.close(self._ready_fd)   # only the master reports
                            self._ready_fd = -1
                        for svc in self.services:
                            svc._rebind_for_worker()
                        code = _worker_main(self, report=False)
                    finally:
                        os._exit(code)
                pids.append(pid)
            for svc in self.services:
                for s in svc._socks:
                    s.close()
            self._started()
            raise SystemExit(_master_wait(pids, conf))
        except BaseException as exc:
            if self._ready_fd >= 0:   # a daemon that failed before it was ready
                log.error("sluiceway: start failed", exc_info=not isinstance(exc, SystemExit))
                _report(self._ready_fd, "error", f"{type(exc).__name__}: {exc}")
                self._ready_fd = -1
            raise
        finally:
            if conf.daemon and conf.pid_file:
                try:
                    os.unlink(conf.pid_file)
                except OSError:
                    pass


def _worker_main(server: Server, report: bool = True) -> int:
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
        if report:
            server._started()
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


def _report(fd: int, status: str, text: str) -> None:
    try:
        os.write(fd, f"{status}\n{text}".encode())
    except OSError:
        pass
    os.close(fd)


def _daemonize(pid_file: str) -> int:
    """Detach. The foreground process stays until the daemon reports (on a
    pipe) that it listens, prints what it said and exits 0, or 1 when the
    start failed. Returns the pipe's write end, in the daemon."""
    r, w = os.pipe()
    if os.fork() > 0:
        os.close(w)
        chunks = []
        while True:
            b = os.read(r, 65536)
            if not b:
                break
            chunks.append(b)
        status, _, text = b"".join(chunks).decode(errors="replace").partition("\n")
        if status == "ok":
            print(text, file=sys.stderr, flush=True)
            os._exit(0)
        if status == "error":
            print(f"sluiceway: the daemon failed to start: {text}", file=sys.stderr, flush=True)
        else:
            print("sluiceway: the daemon exited during start-up without saying why "
                  "(see the error log)", file=sys.stderr, flush=True)
        os._exit(1)
    os.close(r)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    with open(pid_file, "w") as f:
        f.write(f"{os.getpid()}\n")
    return w
