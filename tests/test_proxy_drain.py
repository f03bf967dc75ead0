"""A graceful stop (SIGTERM) under busy keep-alive traffic loses nothing: every
request whose head reached the proxy is answered, the last response on each
connection says `Connection: close`, idle connections close only between
requests, and requests still running at the end of the grace period are
logged."""

import asyncio
import logging
import signal
import threading
import time

from proxy_harness import Harness, OriginThread, SimpleApp, spawn, stop_proc, wait_port
from raw_peers import content_length


async def _client(port, stats, stop_at, path=b"/"):
    """Requests one after another on one connection, as wrk does; never
    retries. Stops when an answer says Connection: close, and counts a
    request that was sent but never answered as lost."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        stats["refused"] += 1
        return
    try:
        while time.monotonic() < stop_at:
            writer.write(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            stats["sent"] += 1
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                await asyncio.wait_for(reader.readexactly(content_length(head)), 10)
            except (asyncio.IncompleteReadError, ConnectionError, asyncio.TimeoutError) as exc:
                stats["lost"] += 1
                stats["errors"].append(repr(exc))
                return
            stats["answered"] += 1
            if b"connection: close" in head.lower():
                stats["told_to_close"] += 1
                return
    finally:
        writer.close()


def _load(port, n, seconds, path=b"/"):
    stats = {"sent": 0, "answered": 0, "lost": 0, "told_to_close": 0, "refused": 0, "errors": []}

    async def main():
        stop_at = time.monotonic() + seconds
        await asyncio.gather(*(_client(port, stats, stop_at, path) for _ in range(n)))

    t = threading.Thread(target=lambda: asyncio.run(main()))
    t.start()
    return t, stats


def test_graceful_stop_under_busy_keepalive_loses_no_request():
    with OriginThread(1) as o:
        with Harness(SimpleApp(o.ports[0]), grace_period_seconds=5) as h:
            t, stats = _load(h.port, 200, 20)
            time.sleep(1.0)
            assert stats["answered"] > 200
            t0 = time.monotonic()
            h.call(h.svc.stop(), timeout=15)
            took = time.monotonic() - t0
            t.join(15)
    assert stats["lost"] == 0, stats["errors"][:5]
    assert stats["told_to_close"] == 200
    assert stats["sent"] == stats["answered"]
    assert took < 3


def test_graceful_stop_finishes_slow_requests_and_pipelined_heads():
    with OriginThread(1) as o:
        with Harness(SimpleApp(o.ports[0]), grace_period_seconds=5) as h:
            t, stats = _load(h.port, 50, 20, path=b"/slow?d=0.3")
            time.sleep(0.5)
            h.call(h.svc.stop(), timeout=15)
            t.join(15)
    assert stats["lost"] == 0, stats["errors"][:5]
    assert stats["told_to_close"] == 50


def test_requests_cut_at_the_grace_period_are_logged(caplog):
    with OriginThread(1) as o:
        with Harness(SimpleApp(o.ports[0]), grace_period_seconds=0.3) as h:
            t, stats = _load(h.port, 3, 5, path=b"/slow?d=3")
            time.sleep(0.3)
            with caplog.at_level(logging.WARNING, logger="sluiceway.error"):
                h.call(h.svc.stop(), timeout=15)
            t.join(15)
    cut = [r for r in caplog.records if "grace period" in r.getMessage()]
    assert len(cut) == 3 and "GET /slow?d=3" in cut[0].getMessage()


APP = """
import os
from sluiceway.proxy import HttpPeer, ProxyHttp

class App(ProxyHttp):
    def upstream_peer(self, session, ctx):
        return HttpPeer(("127.0.0.1", int(os.environ["ORIGIN_PORT"])))
"""


def test_sigterm_under_busy_keepalive_loses_no_request(tmp_path):
    from proxy_harness import free_port
    (tmp_path / "testapp.py").write_text(APP)
    conf = tmp_path / "conf.yaml"
    conf.write_text("version: 1\ngrace_period_seconds: 5\n")
    with OriginThread(1) as o:
        port = free_port()
        p = spawn(["-m", "sluiceway.cli", "run", "testapp:App", "-c", str(conf),
                   "-l", f"127.0.0.1:{port}"],
                  {"ORIGIN_PORT": str(o.ports[0]), "PYTHONPATH": str(tmp_path)})
        try:
            wait_port(port, p)
            t, stats = _load(port, 200, 20)
            time.sleep(1.0)
            p.send_signal(signal.SIGTERM)
            assert p.wait(15) == 0
            t.join(15)
        finally:
            stop_proc(p, signal.SIGKILL)
    assert stats["lost"] == 0, stats["errors"][:5]
    assert stats["told_to_close"] == 200
