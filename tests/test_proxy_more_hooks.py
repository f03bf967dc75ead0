"""The hooks beside the main phases: upstream_response_body_filter (before
response_body_filter), suppress_error_log, request_summary, and the body
throttle (Session.limit_rate)."""

import asyncio
import logging
import time

import httpx
import pytest

from proxy_harness import Harness, SimpleApp


class TwoFilters(SimpleApp):
    def __init__(self, suspend=False):
        super().__init__()
        self.suspend = suspend
        self.calls = []

    async def _maybe(self):
        if self.suspend:
            await asyncio.sleep(0.001)

    async def upstream_response_body_filter(self, session, body, end, ctx):
        await self._maybe()
        self.calls.append(("upstream", bytes(body), end))
        return bytes(body).upper() if body else (b"<end>" if end else None)

    async def response_body_filter(self, session, body, end, ctx):
        await self._maybe()
        self.calls.append(("response", bytes(body), end))
        return bytes(body) + b"!" if body else None


@pytest.mark.parametrize("suspend", [False, True], ids=["inline", "suspending"])
def test_upstream_body_filter_runs_before_the_response_body_filter(suspend):
    app = TwoFilters(suspend)
    with Harness(app) as h:
        r = httpx.get(h.url + "/chunked?n=2")
        assert r.status_code == 200
        assert r.content == b"CHUNK-0;!CHUNK-1;!<end>!"
    kinds = [c[0] for c in app.calls]
    assert kinds == ["upstream", "response"] * 3
    # the end: the upstream filter added bytes, the response filter saw them
    assert app.calls[-2] == ("upstream", b"", True) and app.calls[-1] == ("response", b"<end>", True)


class Quiet(SimpleApp):
    def __init__(self):
        super().__init__()
        self.logged = []

    def suppress_error_log(self, session, ctx, error):
        return session.req_header.path == "/drop"

    def request_summary(self, session, ctx):
        return f"request to {session.req_header.path} (tenant {session.req_header.get('x-tenant')})"

    def logging(self, session, error, ctx):
        self.logged.append(error.status if error is not None else 200)


def test_suppress_error_log_and_request_summary(caplog):
    app = Quiet()
    with Harness(app) as h:
        with caplog.at_level(logging.WARNING, logger="sluiceway.error"):
            assert httpx.get(h.url + "/drop").status_code == 502
            assert httpx.get(h.url + "/garbage", headers={"x-tenant": "acme"}).status_code == 502
    lines = [r.getMessage() for r in caplog.records]
    assert not any("/drop" in line for line in lines)              # suppressed
    assert any("request to /garbage (tenant acme)" in line for line in lines)
    assert app.logged == [502, 502]                                  # logging still ran


class Throttled(SimpleApp):
    def request_filter(self, session, ctx):
        rate = session.req_header.get("x-rate")
        if rate:
            session.limit_rate(int(rate), after=20000)
        return False


def test_limit_rate_paces_the_body_and_does_not_blame_the_upstream():
    size = 200000
    with Harness(Throttled(), upstream_read_timeout_seconds=0.5) as h:
        with httpx.Client(base_url=h.url, timeout=10) as c:
            t0 = time.monotonic()
            r = c.get(f"/big?size={size}", headers={"x-rate": "100000"})
            took = time.monotonic() - t0
            assert r.status_code == 200 and len(r.content) == size
            # 180,000 bytes after the first 20,000, at 100,000 a second
            assert 1.5 < took < 3.5, took
            t0 = time.monotonic()
            assert len(c.get(f"/big?size={size}").content) == size   # no limit: fast
            assert time.monotonic() - t0 < 1.0
