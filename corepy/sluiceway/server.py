"""Server, services and the worker processes.

A :class:`Server` holds the configuration and the services. ``run_forever``
makes the process a master (``sluiceway._master``) that binds the listening
sockets once and runs ``threads`` worker processes, each with its own
uvloop loop, all accepting from those sockets.

Signals (docs/operations.md): SIGTERM stops accepting, lets in-flight
requests finish within ``grace_period_seconds``, closes idle keep-alive
connections and exits 0; SIGINT exits at once; SIGHUP reloads the
configuration and the app; SIGQUIT hands the sockets to a process started
with ``--upgrade``; SIGUSR1 reopens the logs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import os
import signal
import socket
import sys
import time
from typing import List, Optional

from . import _observe, _startup
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
        self._tls: List[tuple] = []        # (host, port, TlsOptions)
        self._sock_tls: list = []          # per socket in _socks: its ListenerTls, or None
        self._servers: list = []
        self._socks: list = []
        self.engine = None
        self.addresses: list = []

    def add_tcp(self, addr: str) -> None:
        """Listen on ``"host:port"`` (port 0 picks a free port; see
        ``addresses`` after start)."""
        self._tcp.append(_parse_tcp(addr))

    def add_tls(self, addr: str, cert_path: Optional[str] = None, key_path: Optional[str] = None,
                **options) -> None:
        """Listen for HTTPS on ``"host:port"``: TLS with the certificate
        ``cert_path`` (PEM, the chain after the leaf) and its key
        ``key_path``, then HTTP/1.1 as on a plain address.

        Keyword options (docs/tls.md has them all): ``certificates`` (more
        ``(cert, key)`` pairs: other names chosen by SNI, or an ECDSA pair
        beside an RSA one), ``min_version``/``max_version`` (``"TLSv1.2"``,
        ``"TLSv1.3"``), ``ciphers`` (TLS 1.2 suites; Mozilla's intermediate
        by default), ``ecdh_curve``, ``alpn`` (``["http/1.1"]``),
        ``session_tickets`` (True), ``handshake_timeout`` (60 s),
        ``client_auth`` (``"none"``, ``"optional"``, ``"required"``) with
        ``client_ca`` (a PEM file of CA certificates), ``watch_certs``
        (reload when the files change).

        Raises:
            ValueError: a bad address or option. The files are read when
                the server starts (a missing or bad file stops the start
                with the reason).
        """
        from .tls import TlsOptions

        host, port = _parse_tcp(addr)
        self._tls.append((host, port, TlsOptions.make(cert_path, key_path, **options)))

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
        return [fmt_addr(a) for a in self._tcp] + ["unix:" + p for p, _ in self._uds] + \
            [fmt_addr((h, p)) for h, p, _ in self._tls]

    def _build_tls(self) -> list:
        """Each TLS address's ListenerTls (its files read, its contexts
        made), in ``_tls`` order.

        Raises:
            StartError: a file cannot be used (the message says which and why).
        """
        from .tls import build

        out = []
        for host, port, opts in self._tls:
            try:
                out.append(build(opts))
            except ValueError as exc:
                raise StartError(f"TLS listener {fmt_addr((host, port))}: {exc}", 2) from None
        return out

    def _bind(self, pool: Optional[dict] = None) -> None:
        """Create (or adopt) the listening sockets, one per address.

        ``pool`` maps what a socket is bound to (``_handover.sock_key``) to
        a listening socket already open: one the master holds from before a
        reload, or one an old process handed over in an upgrade. Such a
        socket is taken instead of binding a new one, so the port is never
        without a listener and no queued connection is reset. Every worker
        accepts from the same sockets (no SO_REUSEPORT): a worker that dies
        takes none with it, and a start beside a running server fails with
        "address in use".
        """
        pool = pool if pool is not None else {}
        tls = self._build_tls()   # before any socket: a bad file binds nothing
        for i, (host, port) in enumerate(list(self._tcp) + [(h, p) for h, p, _ in self._tls]):
            s = pool.pop(("tcp", host, port), None) if port else None
            if s is None:
                family = socket.AF_INET6 if ":" in host else socket.AF_INET
                s = socket.socket(family, socket.SOCK_STREAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind((host, port))
                    s.listen(4096)
                except OSError as exc:
                    s.close()
                    raise BindError(fmt_addr((host, port)), exc) from None
            s.setblocking(False)
            self._socks.append(s)
            self._sock_tls.append(tls[i - len(self._tcp)] if i >= len(self._tcp) else None)
            self.addresses.append(s.getsockname()[:2])
        for path, perm in self._uds:
            s = pool.pop(("unix", path), None)
            if s is None:
                if os.path.exists(path):
                    if _unix_listening(path):
                        raise BindError("unix:" + path, OSError(errno.EADDRINUSE, "in use"))
                    os.unlink(path)   # a stale socket file: nobody accepts there
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    s.bind(path)
                    if perm is not None:
                        os.chmod(path, perm)
                    s.listen(4096)
                except OSError as exc:
                    s.close()
                    raise BindError("unix:" + path, exc) from None
            s.setblocking(False)
            self._socks.append(s)
            self._sock_tls.append(None)
            self.addresses.append(path)

    def _copy(self, conf: ServerConf, app: Optional[ProxyHttp] = None) -> "ProxyService":
        """The same service (addresses, name) with another configuration
        and, optionally, another app: what a reload starts."""
        svc = ProxyService(conf, app if app is not None else self.app, self.name)
        svc._tcp, svc._uds, svc._tls = list(self._tcp), list(self._uds), list(self._tls)
        return svc

    async def start(self, loop=None) -> list:
        """Start serving on the running loop (binds first if needed).
        Returns the bound addresses."""
        loop = loop or asyncio.get_running_loop()
        if not self._socks:
            self._bind()
        from .compression import CompressionPolicy

        self.engine = _engine.make_engine(self.app, ProxyHttp, loop,
                                          _engine.Settings.from_conf(self.conf),
                                          CompressionPolicy.from_conf(self.conf))
        _observe.attach(self.engine, self.conf, self.name, loop)
        for s, lt in zip(self._socks, self._sock_tls):
            if lt is None:
                self._servers.append(self.engine.serve(s))
            else:
                self._servers.append(self.engine.serve(s, lt.context, lt.options.handshake_timeout))
        return self.addresses

    def tls_listeners(self) -> list:
        """The TLS listeners' ``sluiceway.tls.ListenerTls`` (contexts and the
        state of their files), once bound."""
        return [lt for lt in self._sock_tls if lt is not None]

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
        self._sock_tls.clear()

    def pool_stats(self) -> dict:
        """The upstream connection pool's counters (this worker)."""
        return self.engine.pool_stats if self.engine is not None else {}

    def stats(self) -> dict:
        """This service's counters in this worker: ``requests``, ``active``,
        ``connections``, ``replayed`` (see the engine's ``stats``)."""
        if self.engine is None:
            return {"requests": 0, "active": 0, "connections": 0, "replayed": 0}
        return self.engine.stats()


def _unix_listening(path: str) -> bool:
    """Whether something accepts connections on the Unix socket ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()


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
        self._upgrade = False
        self._ready_fd = -1
        self._overrides: dict = {}
        self._reloader = None    # () -> Server, for SIGHUP (set by `sluiceway run`)
        self._undo = None        # undoes what building this Server in a reload changed
        self._took_over = 0      # the pid an upgrade took the sockets from

    @staticmethod
    def add_arguments(parser) -> None:
        """Add sluiceway's options to an ``argparse`` parser: ``-c/--conf``,
        ``-t/--test``, ``-d/--daemon``, ``-l/--listen`` (repeatable),
        ``-u/--upgrade`` and ``--version``."""
        parser.add_argument("-c", "--conf", metavar="FILE", help="YAML configuration file")
        parser.add_argument("-t", "--test", action="store_true",
                            help="check the configuration, addresses, log and pid paths; then exit")
        parser.add_argument("-d", "--daemon", action="store_true", help="run in the background")
        parser.add_argument("-l", "--listen", action="append", metavar="HOST:PORT",
                            help="address to listen on, instead of the configuration's listen "
                                 "(repeatable; unix:/path for a Unix socket)")
        parser.add_argument("-u", "--upgrade", action="store_true",
                            help="take the listening sockets over from the running server (send it "
                                 "SIGQUIT) instead of binding them: a restart without downtime")
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
        if not ns.test:
            _startup.hold_signals()   # a SIGHUP before run_forever must not end the start
        try:
            server = cls.from_conf(ns.conf, **({"listen": list(ns.listen)} if ns.listen else {}))
        except ConfigError as exc:
            print(f"sluiceway: {exc}", file=sys.stderr)
            raise SystemExit(2)
        if ns.daemon:
            server.configuration.daemon = True
        server.args = ns
        server._check_only = bool(ns.test)
        server._upgrade = bool(getattr(ns, "upgrade", False))
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
        server = cls(conf, conf_path=path)
        server._overrides = dict(overrides)
        return server

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
        tls_listen = self.configuration.tls_listen
        if not listen and not tls_listen:
            return
        if len(self.services) != 1:
            names = ", ".join(listen + [e["listen"] for e in tls_listen])
            raise StartError(f"the configuration's listen and tls_listen ({names}) apply to a "
                             f"program with one proxy service; this one has {len(self.services)}: "
                             "give each service its addresses with add_tcp()/add_tls()/add_uds() "
                             "and remove them", 2)
        svc = self.services[0]
        if listen:
            svc._tcp, svc._uds = [], []
            for addr in listen:
                svc.add_address(addr)
        if tls_listen:
            from .tls import TlsOptions

            svc._tls = []
            for entry in tls_listen:
                e = dict(entry)
                host, port = _parse_tcp(e.pop("listen"))
                svc._tls.append((host, port, TlsOptions.make(**e)))

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
        for svc in self.services:
            try:
                svc._build_tls()
            except StartError as exc:
                problems.append(str(exc))
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
        addrs = [("https://" if lt is not None else "") + fmt_addr(a) for svc in self.services
                 for a, lt in zip(svc.addresses, svc._sock_tls or [None] * len(svc.addresses))]
        lines = _startup.startup_lines(addrs, self.configuration, self.conf_path, os.getpid(),
                                       self.configuration.daemon)
        if self._took_over:
            lines.append(f"  upgrade: took the listening sockets over from pid {self._took_over}, "
                         "which stops gracefully")
        return lines

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

        This process becomes the master: it binds the listening sockets (or,
        with ``--upgrade``, takes them over from the running server), forks
        ``threads`` workers, restarts any that dies, reloads on SIGHUP and
        hands its sockets to a new process on SIGQUIT (docs/operations.md).

        With ``-t`` (:meth:`from_args`): check and exit instead. A start that
        fails (a port in use, a log file that cannot be opened, a server
        already running) prints why and exits with status 1 (2 for a
        configuration problem), also as a daemon: the command returns only
        when the server listens or failed.
        """
        from . import _handover, _master

        conf = self.configuration
        if self._check_only:
            raise SystemExit(self.check())
        _startup.hold_signals()   # until the master's handlers: binding, forking
        receiver = None
        admin_sock = None
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
            _master.check_user(conf)
            if not self._upgrade:
                _startup.refuse_if_running(conf.pid_file)
            self.bootstrap()
            _master.give_logs_to(conf)
            pool = {}
            if self._upgrade:
                receiver = _handover.Receiver(conf.upgrade_sock)
                try:
                    pool = _handover.match(receiver.receive(conf.upgrade_wait_seconds))
                except _handover.HandoverError as exc:
                    raise StartError(f"upgrade failed: {exc}", 1) from None
            for svc in self.services:
                svc._bind(pool)
            for s in pool.values():
                s.close()   # an address the old process had and this configuration drops
            _observe.master_setup(conf)
            if conf.admin_listen:
                from . import _admin

                admin_sock = _admin.bind(conf.admin_listen)
        except (StartError, BindError) as exc:
            for svc in self.services:
                for s in svc._socks:
                    s.close()
            if admin_sock is not None:
                admin_sock.close()
            if receiver is not None:
                receiver.ack(False, str(exc))
            msg = str(exc)
            if isinstance(exc, BindError) and exc.errno == errno.EADDRINUSE:
                msg += (" (if a sluiceway serves there, replace it without downtime: start this "
                        "with --upgrade, then send the running one SIGQUIT)")
            print(f"sluiceway: {msg}", file=sys.stderr)
            raise SystemExit(getattr(exc, "code", 1) if isinstance(exc, StartError) else 1)
        if conf.daemon:
            if not conf.error_log:
                print("sluiceway: warning: running as a daemon without error_log: log lines after "
                      "start-up are discarded; set error_log in the configuration", file=sys.stderr)
            self._ready_fd = _daemonize()
        code = 1
        master = _master.Master(self, receiver, admin_sock)
        try:
            code = master.run()
            if master.failure and self._ready_fd < 0:
                print(f"sluiceway: the workers did not start: {master.failure}"
                      + (f" (more in {conf.error_log})" if conf.error_log else ""),
                      file=sys.stderr, flush=True)
        except BaseException as exc:
            if self._ready_fd >= 0:   # a daemon that failed before it was ready
                log.error("sluiceway: start failed", exc_info=not isinstance(exc, SystemExit))
                _report(self._ready_fd, "error", f"{type(exc).__name__}: {exc}")
                self._ready_fd = -1
            raise
        finally:
            if self._ready_fd >= 0:
                _report(self._ready_fd, "error", f"the workers did not start: "
                        f"{master.failure or 'see the error log'}")
                self._ready_fd = -1
            if conf.daemon and conf.pid_file:
                _startup.remove_pid_file(conf.pid_file)
        raise SystemExit(code)

    def _reload(self) -> "Server":
        """What SIGHUP starts: the configuration read again and the services
        built from it (by the ``sluiceway`` command: the app imported again
        too; a program's own services keep their app objects). The new
        Server's sockets are not bound yet.

        Raises:
            ConfigError, and whatever the reloader raises: nothing changed.
        """
        if self._reloader is not None:
            new = self._reloader()
        else:
            conf = Server.from_conf(self.conf_path, **self._overrides).configuration \
                if self.conf_path else dataclasses.replace(self.configuration)
            new = Server(conf, conf_path=self.conf_path)
            new.services = [svc._copy(conf) for svc in self.services]
            new.background = list(self.background)
            new._overrides = dict(self._overrides)
        new.args = self.args
        new._reloader = self._reloader
        new.configuration.daemon = self.configuration.daemon
        new._apply_listen()
        return new

    def _abandon(self) -> None:
        """A reload that was built but not started: undo what building it
        changed in this process (the app's modules)."""
        if self._undo is not None:
            undo, self._undo = self._undo, None
            undo()


def _worker_main(server: Server, ready_fd: int = -1) -> int:
    """A worker: run the services on a new uvloop loop until SIGTERM
    (graceful) or SIGINT (at once). Writes a line on ``ready_fd`` (its pipe
    to the master): ``ok`` once every service accepts, or why it could not
    start; ``stopped`` once it accepts no more."""
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

    def on_usr1():
        try:
            _startup.reopen_logs(server.configuration)
        except Exception as exc:
            log.error("sluiceway: reopening the logs failed: %s", exc)
        _observe.reopen()

    loop.add_signal_handler(signal.SIGTERM, on_term)
    loop.add_signal_handler(signal.SIGINT, on_int)
    loop.add_signal_handler(signal.SIGUSR1, on_usr1)
    for sig in (signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_IGN)   # the master's business

    async def main():
        import gc

        from . import _limits_redis

        try:
            for bg in server.background:
                await bg.start(loop)
            _limits_redis.start_backends(loop)  # limits shared through Redis sync on this loop
            for svc in server.services:
                await svc.start(loop)
        except BaseException as exc:
            if ready_fd >= 0:
                _write_all(ready_fd, f"error: {type(exc).__name__}: {exc}\n".encode())
                os.close(ready_fd)
            raise
        if ready_fd >= 0:
            _write_all(ready_fd, b"ok\n")
        # Everything made at start-up lives as long as the worker: keep it
        # out of the cyclic collector's scans (shorter pauses under load).
        gc.collect()
        gc.freeze()
        how = await stop
        for svc in server.services:
            svc.stop_accepting()   # what waits in the queues is taken first
        if ready_fd >= 0:
            _write_all(ready_fd, b"stopped\n")   # the master may say a reload is done
            os.close(ready_fd)
        grace = server.configuration.grace_period_seconds if how == "term" else 0.0
        await asyncio.gather(*(svc.stop(grace) for svc in server.services))
        _observe.worker_stopped()
        await asyncio.gather(*(bg.stop(grace) for bg in server.background), return_exceptions=True)
        await _limits_redis.stop_backends()
        return 0

    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


def _write_all(fd: int, data: bytes) -> None:
    try:
        os.write(fd, data)
    except OSError:
        pass


def _report(fd: int, status: str, text: str) -> None:
    try:
        os.write(fd, f"{status}\n{text}".encode())
    except OSError:
        pass
    os.close(fd)


def _daemonize() -> int:
    """Detach. The foreground process stays until the daemon reports (on a
    pipe) that it listens, prints what it said and exits 0, or 1 when the
    start failed. Returns the pipe's write end, in the daemon (the master
    writes the pid file once its workers accept)."""
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
    return w
