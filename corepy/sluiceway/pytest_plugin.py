"""pytest fixtures for testing a sluiceway application (registered as the
``sluiceway`` pytest plugin when the package is installed).

Fixtures (each test gets fresh ones; everything runs on 127.0.0.1, on free
ports, and stops at the end of the test):

``origin``
    A started :class:`sluiceway.testing.Origin`: scriptable
    (``origin.route("/x", status=503, delay=0.2)``), recording
    (``origin.received``, ``origin.assert_received(...)``).
``proxy_app``
    The application under test. The default forwards everything to
    ``origin``; override this fixture (in your test module or conftest.py)
    to return your own ``ProxyHttp``, built with ``origin.address``.
``proxy_conf``
    Configuration keys for the proxy (a dict, default ``{}``), or a
    ``ServerConf``. Override it like ``proxy_app``.
``proxy``
    A started :class:`sluiceway.testing.Harness` running ``proxy_app`` in
    front of ``origin``: ``proxy.url``, ``proxy.get(path, ...)``,
    ``await proxy.aget(...)`` in async tests, ``proxy.raw(bytes)``.
``client``
    An ``httpx.Client`` with ``base_url=proxy.url`` (keep-alive).
``start_proxy``
    A factory: ``start_proxy(app, **conf_keys)`` starts another proxy in
    front of the same origin and returns its Harness.
``start_origin``
    A factory: ``start_origin()`` starts another Origin (e.g. a second
    upstream for a routing test).

Async tests work with any runner (``@pytest.mark.anyio`` with anyio's plugin,
or pytest-asyncio): the proxy runs on its own loop in a thread, so a test's
loop only runs the client.
"""

from __future__ import annotations

import pytest


@pytest.fixture
def sluiceway_loop():
    """The event loop (in a thread) that ``origin`` and ``proxy`` run on."""
    from sluiceway.testing import LoopThread

    lt = LoopThread().start()
    try:
        yield lt
    finally:
        lt.stop()


@pytest.fixture
def origin(sluiceway_loop):
    """A scriptable, recording HTTP/1.1 origin (see sluiceway.testing.Origin)."""
    from sluiceway.testing import Origin

    o = sluiceway_loop.call(Origin().start())
    try:
        yield o
    finally:
        sluiceway_loop.call(o.stop())


@pytest.fixture
def proxy_conf():
    """Configuration keys for ``proxy`` (override to change them)."""
    return {}


@pytest.fixture
def proxy_app(origin):
    """The ProxyHttp under test (override: the default forwards to ``origin``)."""
    from sluiceway.testing import PassThrough

    return PassThrough(origin.port)


def _harness(app, conf, origin, loop):
    from sluiceway.config import ServerConf
    from sluiceway.testing import Harness

    if isinstance(conf, ServerConf):
        return Harness(app, conf, loop_thread=loop, origin=origin)
    return Harness(app, loop_thread=loop, origin=origin, **dict(conf or {}))


@pytest.fixture
def proxy(proxy_app, proxy_conf, origin, sluiceway_loop):
    """``proxy_app`` running in front of ``origin`` (a sluiceway.testing.Harness)."""
    with _harness(proxy_app, proxy_conf, origin, sluiceway_loop) as h:
        yield h


@pytest.fixture
def client(proxy):
    """An httpx.Client whose base_url is the proxy."""
    import httpx

    with httpx.Client(base_url=proxy.url, timeout=10.0) as c:
        yield c


@pytest.fixture
def start_proxy(origin, sluiceway_loop):
    """``start_proxy(app, **conf_keys) -> Harness``: more proxies in one test."""
    started = []

    def start(app, **conf):
        h = _harness(app, conf, origin, sluiceway_loop)
        h.__enter__()
        started.append(h)
        return h

    try:
        yield start
    finally:
        for h in reversed(started):
            h.__exit__(None, None, None)


@pytest.fixture
def start_origin(sluiceway_loop):
    """``start_origin() -> Origin``: more origins in one test."""
    from sluiceway.testing import Origin

    started = []

    def start():
        o = sluiceway_loop.call(Origin().start())
        started.append(o)
        return o

    try:
        yield start
    finally:
        for o in started:
            sluiceway_loop.call(o.stop())
