"""The ``sluiceway`` command.

    sluiceway run module:App [-c conf.yaml] [-t] [-d] [-l host:port ...]
        Run the ProxyHttp subclass ``App`` from ``module`` (a class, which
        is instantiated without arguments, or an instance). Listens on every
        ``-l`` address, else the configuration's ``listen`` list, else
        127.0.0.1:8080. ``-t`` checks the configuration and exits; ``-d``
        runs as a daemon writing ``pid_file``.

    sluiceway demo [-p PORT]
        Start a demo proxy with its own embedded demo origin and print the
        URL to try.
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


def _load_app(spec: str):
    from .proxy import ProxyHttp

    mod_name, sep, attr = spec.partition(":")
    if not sep or not mod_name or not attr:
        raise SystemExit(f"sluiceway: APP must be 'module:Name' (e.g. 'myproxy:Router'), got {spec!r}")
    sys.path.insert(0, os.getcwd())
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as exc:
        raise SystemExit(f"sluiceway: cannot import module {mod_name!r}: {exc}")
    obj = getattr(mod, attr, None)
    if obj is None:
        raise SystemExit(f"sluiceway: module {mod_name!r} has no attribute {attr!r}")
    if isinstance(obj, type):
        if not issubclass(obj, ProxyHttp):
            raise SystemExit(f"sluiceway: {spec} is not a ProxyHttp subclass")
        obj = obj()
    if not isinstance(obj, ProxyHttp):
        raise SystemExit(f"sluiceway: {spec} is not a ProxyHttp subclass or instance")
    return obj


def _cmd_run(ns) -> int:
    from .server import Server, http_proxy_service

    try:
        conf = load_config(ns.conf) if ns.conf else ServerConf()
    except ConfigError as exc:
        print(f"sluiceway: {exc}", file=sys.stderr)
        return 2
    if ns.test:
        print(f"sluiceway: configuration {ns.conf or '(defaults)'} is valid")
        return 0
    if ns.daemon:
        conf.daemon = True
    app = _load_app(ns.app)
    server = Server(conf)
    svc = http_proxy_service(conf, app)
    for addr in ns.listen or conf.listen or ["127.0.0.1:8080"]:
        if addr.startswith("unix:"):
            svc.add_uds(addr[5:])
        else:
            svc.add_tcp(addr)
    server.add_service(svc)
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

        def upstream_peer(self, session, ctx):
            return HttpPeer(("127.0.0.1", origin_port))

        def response_filter(self, session, upstream_response, ctx):
            upstream_response.headers["x-proxied-by"] = "sluiceway"

    return DemoProxy()


async def _demo_main(port: int, ready=None) -> None:
    import logging

    from .server import http_proxy_service

    logging.getLogger("sluiceway").addHandler(logging.StreamHandler())
    loop = asyncio.get_running_loop()
    origin = await loop.create_server(_DemoOrigin, "127.0.0.1", 0)
    origin_port = origin.sockets[0].getsockname()[1]
    conf = ServerConf(access_log=True)
    logging.getLogger("sluiceway.access").setLevel(logging.INFO)
    svc = http_proxy_service(conf, _demo_app(origin_port))
    svc.add_tcp(f"127.0.0.1:{port}")
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

    uvloop.run(_demo_main(ns.port))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="sluiceway", description="programmable HTTP reverse proxy")
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run a ProxyHttp application")
    run.add_argument("app", help="module:Name of a ProxyHttp subclass or instance")
    run.add_argument("-c", "--conf", help="YAML configuration file")
    run.add_argument("-t", "--test", action="store_true", help="check the configuration and exit")
    run.add_argument("-d", "--daemon", action="store_true", help="run in the background")
    run.add_argument("-l", "--listen", action="append", help="address to listen on (repeatable)")
    demo = sub.add_parser("demo", help="start a demo proxy with an embedded origin")
    demo.add_argument("-p", "--port", type=int, default=8080, help="proxy port (0: any free port)")
    ns = ap.parse_args(argv)
    if ns.cmd == "run":
        return _cmd_run(ns)
    return _cmd_demo(ns)


if __name__ == "__main__":
    sys.exit(main())
