"""The ``sluiceway`` command.

    sluiceway run module:App [-c conf.yaml] [-t] [-d] [-u] [-l host:port ...]
        Run the ProxyHttp subclass ``App`` from ``module`` (a class, which
        is instantiated without arguments, or an instance). Listens on every
        ``-l`` address, else the configuration's ``listen`` list, else
        127.0.0.1:8080. ``-t`` checks everything a start would (the
        configuration, the app, addresses, log and pid paths) and exits;
        ``-d`` runs as a daemon writing ``pid_file``; ``-u`` (``--upgrade``)
        takes the listening sockets over from the running server instead of
        binding them. SIGHUP reads the configuration and imports the app
        again (docs/operations.md).

    sluiceway demo [-p PORT]
        Start a demo proxy with its own embedded demo origin and print the
        URL to try.

    sluiceway new NAME
        Write a starter project: app, configuration, systemd unit, test.

    sluiceway config example|reference
        Print the commented example configuration, or the key reference.

    sluiceway --version
        sluiceway's, llhttp's and Python's versions.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import signal
import sys
from typing import List, Optional

from .config import ConfigError, ServerConf, load_config


class AppError(Exception):
    """The APP argument does not name a usable ProxyHttp."""


def _load_app(spec: str, instantiate: bool = True):
    """Import ``module:Name`` and return the ProxyHttp instance (or, with
    ``instantiate=False``, the class or instance found).

    Raises:
        AppError: the message says what is wrong and what to write.
    """
    from .proxy import ProxyHttp

    mod_name, sep, attr = spec.partition(":")
    if not sep or not mod_name or not attr:
        raise AppError(f"APP must be 'module:Name' (e.g. 'myproxy:Router'), got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as exc:
        raise AppError(f"cannot import module {mod_name!r}: {exc} (run from the folder that "
                       "holds it, or put that folder on PYTHONPATH)") from exc
    except Exception as exc:
        import traceback

        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-3:])
        raise AppError(f"importing module {mod_name!r} failed: {type(exc).__name__}: {exc}\n{tb}") from exc
    obj = getattr(mod, attr, None)
    if obj is None:
        names = sorted(n for n, v in vars(mod).items()
                       if isinstance(v, type) and issubclass(v, ProxyHttp) and v is not ProxyHttp)
        hint = f" (it has: {', '.join(names)})" if names else " (it defines no ProxyHttp subclass)"
        raise AppError(f"module {mod_name!r} has no attribute {attr!r}{hint}")
    cls = obj if isinstance(obj, type) else type(obj)
    if not issubclass(cls, ProxyHttp):
        raise AppError(f"{spec} is a {'class' if isinstance(obj, type) else type(obj).__name__} "
                       "that is not a ProxyHttp subclass")
    if cls.upstream_peer is ProxyHttp.upstream_peer:
        raise AppError(f"{spec} must override upstream_peer(session, ctx)")
    if isinstance(obj, type) and instantiate:
        try:
            obj = obj()
        except Exception as exc:
            raise AppError(f"{spec}() failed: {type(exc).__name__}: {exc}") from exc
    return obj


class AppLoader:
    """Imports the app of ``sluiceway run``, and imports it again for a
    reload (SIGHUP).

    The modules the first import brought in that are the user's own (Python
    source outside the standard library, site-packages and sluiceway) are
    dropped from ``sys.modules`` before the new import, so an edited module
    is read again; installed libraries stay as they are. If the new import
    fails, or the reload is given up later (``undo``), the previous modules
    are put back: nothing is half-applied.
    """

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.own: List[str] = []   # names of the user's modules

    def load(self, instantiate: bool = True):
        before = set(sys.modules)
        try:
            return _load_app(self.spec, instantiate)
        finally:
            self.own = sorted(n for n in set(sys.modules) - before if _own_module(sys.modules[n]))

    def reload(self):
        """The app imported again. Returns ``(app, undo)``.

        Raises:
            AppError: the import failed (the old modules are back).
        """
        saved = {n: sys.modules.pop(n) for n in self.own if n in sys.modules}
        own_before = self.own
        before = set(sys.modules)
        importlib.invalidate_caches()

        def undo():
            for n in set(sys.modules) - before:
                if n in saved or _own_module(sys.modules[n]):
                    del sys.modules[n]
            sys.modules.update(saved)
            self.own = own_before

        try:
            app = self.load()
        except BaseException:
            undo()
            raise
        return app, undo


def _own_module(mod) -> bool:
    """Whether ``mod`` is the user's Python source (not the standard
    library, an installed package, sluiceway or a compiled extension)."""
    import sysconfig

    path = getattr(mod, "__file__", None)
    if not path or not path.endswith((".py", ".pyc")):
        return False
    path = os.path.realpath(path)
    skip = {os.path.realpath(p) for key, p in sysconfig.get_paths().items()
            if key in ("stdlib", "platstdlib", "purelib", "platlib")}
    skip.add(os.path.realpath(os.path.dirname(os.path.abspath(__file__))))
    return not any(path.startswith(p + os.sep) for p in skip)


def _read_conf(ns) -> ServerConf:
    """The configuration ``sluiceway run`` uses: the file, then -l and -d."""
    conf = load_config(ns.conf) if ns.conf else ServerConf()
    if ns.listen:
        conf.listen = list(ns.listen)
        conf.validate()
    if not conf.listen and not conf.tls_listen:
        conf.listen = ["127.0.0.1:8080"]
    if ns.daemon:
        conf.daemon = True
    return conf


def _cmd_run(ns) -> int:
    from .server import Server, http_proxy_service

    if not ns.test:
        from ._startup import hold_signals

        hold_signals()   # a SIGHUP while the app imports must not end the start
    try:
        conf = _read_conf(ns)
    except ConfigError as exc:
        print(f"sluiceway: {exc}", file=sys.stderr)
        return 2
    loader = AppLoader(ns.app)
    try:
        app = loader.load(instantiate=not ns.test)
    except AppError as exc:
        print(f"sluiceway: {exc}", file=sys.stderr)
        return 2
    server = Server(conf, conf_path=ns.conf)
    if ns.test:
        from .proxy import ProxyHttp

        if isinstance(app, type):
            app = object.__new__(app)   # checked, not constructed: -t has no side effects
        svc = http_proxy_service(conf, app) if isinstance(app, ProxyHttp) else None
        server.add_service(svc)
        code = server.check()
        if code == 0:
            print(f"sluiceway: app {ns.app} is a ProxyHttp ({type(app).__name__})")
        return code

    def reloader():
        new_conf = _read_conf(ns)
        new_app, undo = loader.reload()
        new = Server(new_conf, conf_path=ns.conf)
        new._undo = undo
        new.add_service(http_proxy_service(new_conf, new_app))
        return new

    server._reloader = reloader
    server._upgrade = ns.upgrade
    server.add_service(http_proxy_service(conf, app))
    server.run_forever()
    return 0


# ----------------------------------------------------------------- demo --

_DEMO_PAGE = b"""<!doctype html><title>sluiceway demo</title>
<h1>Hello from the demo origin</h1>
<p>This page came through the sluiceway proxy. Look at the response headers:
<code>x-proxied-by</code> was added by <code>response_filter</code>.</p>
<p>Try <code>/api/time</code> (needs header <code>x-api-key: demo</code>) and
<code>/slow</code>.</p>
"""


class _DemoOrigin(asyncio.Protocol):
    """A tiny HTTP/1.1 origin for the demo (uses sluiceway's own parser)."""

    def connection_made(self, transport):
        from . import _compiled

        self.t = transport
        self.p = _compiled.load("_http").RequestParser()

    def data_received(self, data):
        from . import _compiled

        h = _compiled.load("_http")
        self.p.feed(data)
        try:
            while True:
                ev = self.p.next_event()
                if ev is h.NEED_DATA:
                    return
                if isinstance(ev, h.RequestHead):
                    self.head = ev
                elif isinstance(ev, h.EndOfMessage):
                    self._answer(self.head)
        except Exception:
            self.t.close()

    def _answer(self, head):
        import time

        if head.path == "/api/time":
            body, ctype = (b'{"time": %d}' % int(time.time())), b"application/json"
        elif head.path == "/slow":
            body, ctype = b"slow but fine\n", b"text/plain"
        else:
            body, ctype = _DEMO_PAGE, b"text/html"
        self.t.write(b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s"
                     % (ctype, len(body), body))


def _demo_app(origin_port: int):
    from .proxy import HttpPeer, ProxyHttp

    class DemoProxy(ProxyHttp):
        """Routes to the embedded origin; /api/* needs x-api-key: demo."""

        def request_filter(self, session, ctx):
            if session.req_header.path.startswith("/api/") and \
                    session.req_header.get("x-api-key") != "demo":
                session.respond(401, {"content-type": "text/plain"},
                                "401: send the header  x-api-key: demo\n")
                return True
            return False

        origin_port = 0

        def upstream_peer(self, session, ctx):
            return HttpPeer(("127.0.0.1", self.origin_port))

        def response_filter(self, session, upstream_response, ctx):
            upstream_response.headers["x-proxied-by"] = "sluiceway"

    app = DemoProxy()
    app.origin_port = origin_port
    return app


async def _demo_main(port: int, ready=None) -> None:
    from .server import http_proxy_service

    from ._startup import setup_logging

    conf = ServerConf(access_log=True)
    setup_logging(conf)   # errors to stderr, one access line per request to stdout
    loop = asyncio.get_running_loop()
    svc = http_proxy_service(conf, _demo_app(0))
    svc.add_tcp(f"127.0.0.1:{port}")
    svc._bind()   # first: a port in use fails before anything starts
    origin = await loop.create_server(_DemoOrigin, "127.0.0.1", 0)
    svc.app.origin_port = origin.sockets[0].getsockname()[1]
    origin_port = svc.app.origin_port
    (host, bound), = await svc.start(loop)
    url = f"http://127.0.0.1:{bound}/"
    print(f"sluiceway demo: proxy on {url} -> demo origin on 127.0.0.1:{origin_port}", flush=True)
    print(f"  try:  curl -i {url}", flush=True)
    print(f"        curl -i -H 'x-api-key: demo' {url}api/time", flush=True)
    print("  Ctrl-C to stop.", flush=True)
    stop = loop.create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    await stop
    await svc.stop(1.0)
    origin.close()


def _cmd_demo(ns) -> int:
    import uvloop

    from ._startup import BindError

    try:
        uvloop.run(_demo_main(ns.port))
    except BindError as exc:
        print(f"sluiceway demo: {exc}", file=sys.stderr)
        print("  try another port:  sluiceway demo -p 8081   (or -p 0 for any free port)",
              file=sys.stderr)
        return 1
    return 0


def _cmd_config(ns) -> int:
    from .config import example_yaml, reference_markdown

    sys.stdout.write(example_yaml() if ns.what == "example" else reference_markdown())
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    from ._startup import VersionAction

    ap = argparse.ArgumentParser(prog="sluiceway", description="programmable HTTP reverse proxy")
    ap.add_argument("--version", action=VersionAction)
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run a ProxyHttp application")
    run.add_argument("app", help="module:Name of a ProxyHttp subclass or instance")
    run.add_argument("-c", "--conf", metavar="FILE", help="YAML configuration file")
    run.add_argument("-t", "--test", action="store_true",
                     help="check the configuration, the app, addresses, log and pid paths; then exit")
    run.add_argument("-d", "--daemon", action="store_true", help="run in the background")
    run.add_argument("-l", "--listen", action="append", metavar="HOST:PORT",
                     help="address to listen on (repeatable; unix:/path for a Unix socket); "
                          "default: the configuration's listen, else 127.0.0.1:8080")
    run.add_argument("-u", "--upgrade", action="store_true",
                     help="take the listening sockets over from the running server (send it "
                          "SIGQUIT) instead of binding them: a restart without downtime")
    demo = sub.add_parser("demo", help="start a demo proxy with an embedded origin")
    demo.add_argument("-p", "--port", type=int, default=8080, help="proxy port (0: any free port)")
    new = sub.add_parser("new", help="write a starter project (app, config, systemd unit, test)")
    new.add_argument("name", help="project folder and Python module name (e.g. myproxy)")
    new.add_argument("--force", action="store_true", help="write into an existing folder")
    cfg = sub.add_parser("config", help="print the commented example configuration or the key reference")
    cfg.add_argument("what", choices=["example", "reference"])
    ns = ap.parse_args(argv)
    if ns.cmd == "run":
        return _cmd_run(ns)
    if ns.cmd == "new":
        from ._scaffold import main as new_main

        return new_main(ns.name, force=ns.force)
    if ns.cmd == "config":
        return _cmd_config(ns)
    return _cmd_demo(ns)


if __name__ == "__main__":
    sys.exit(main())
