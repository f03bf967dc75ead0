"""Per-request cost of the hook calls in the engine: plain hooks, coroutine
hooks that finish inline, and one that enters ``asyncio.timeout``.

Run:  PYTHONPATH=corepy python -m pytest bench/bench_hooks.py -s \
          --benchmark-columns=min,median,rounds

No sockets: a batch of REQUESTS pipelined ``GET``s is fed to one client
connection that has no socket (``_io_probe.detached_client``: what is
written to it is dropped).
``new_ctx``, ``early_request_filter``, ``request_filter`` (answers with
``session.respond`` and returns True) and ``logging`` run for each request;
nothing goes upstream. The difference between the sync and the inline-async
case is what four coroutine hooks cost (creating and stepping the coroutine,
and making a stand-in the loop's current task during that step).
"""

import asyncio

import pytest

from sluiceway import _io_probe
from sluiceway.proxy import ProxyHttp, _engine

REQUESTS = 50
REQ = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"


class Sync(ProxyHttp):
    def new_ctx(self):
        return {}

    def early_request_filter(self, session, ctx):
        pass

    def request_filter(self, session, ctx):
        session.respond(200, None, b"ok")
        return True

    def upstream_peer(self, session, ctx):
        raise AssertionError("not reached")

    def logging(self, session, error, ctx):
        pass


class AsyncInline(Sync):
    async def new_ctx(self):
        return {}

    async def early_request_filter(self, session, ctx):
        pass

    async def request_filter(self, session, ctx):
        session.respond(200, None, b"ok")
        return True

    async def logging(self, session, error, ctx):
        pass


class AsyncTimeout(AsyncInline):
    async def request_filter(self, session, ctx):
        async with asyncio.timeout(10):
            session.respond(200, None, b"ok")
        return True


@pytest.mark.parametrize("app", [Sync, AsyncInline, AsyncTimeout],
                         ids=["sync", "async-inline", "async-inline-timeout"])
def test_hooks_per_request(benchmark, app):
    import uvloop

    loop = uvloop.new_event_loop()
    asyncio.events._set_running_loop(loop)  # hooks run as if in a loop callback
    try:
        eng = _engine.make_engine(app(), ProxyHttp, loop)
        conn = _io_probe.detached_client(eng)
        data = REQ * REQUESTS
        before = eng.requests
        _io_probe.feed(conn, data)
        assert eng.requests - before == REQUESTS
        benchmark(_io_probe.feed, conn, data)
        eng.stop()
    finally:
        asyncio.events._set_running_loop(None)
        loop.close()
    if benchmark.stats is None:
        return
    stats = benchmark.stats.stats
    ns, median = stats.min / REQUESTS * 1e9, stats.median / REQUESTS * 1e9
    benchmark.extra_info["ns_per_request_min"] = round(ns)
    benchmark.extra_info["ns_per_request_median"] = round(median)
    print(f"\n{benchmark.name}: {ns:.0f} ns/request (min), {median:.0f} ns/request (median)")
