"""Invalid request heads through the real proxy: the client gets the status
with the reason, the origin receives nothing, the refusal is logged, and
nothing is left behind. Also: what hooks and the upstream see of an
absolute-form target, and a response head over the limit."""

import json
import logging
import time

import pytest

from proxy_harness import Harness, SimpleApp, raw


class Recording(SimpleApp):
    """Sends everything to the harness origin; records what request_filter
    saw (target and Host) and the error of each request."""

    def __init__(self):
        super().__init__()
        self.seen = []
        self.errors = []

    def request_filter(self, session, ctx):
        rq = session.req_header
        self.seen.append((rq.uri, rq.headers.getall("host")))
        return False

    def logging(self, session, error, ctx):
        self.errors.append(error)


@pytest.fixture
def h():
    with Harness(Recording()) as hh:
        yield hh


def _settled(h):
    """Wait until the proxy holds no client connection."""
    deadline = time.monotonic() + 3
    while h.engine().connections and time.monotonic() < deadline:
        time.sleep(0.01)
    return h.engine().connections


REFUSED = [
    # (request head, status, reason)
    (b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n", 400, "more than one Host header"),
    (b"GET / HTTP/1.1\r\nHost: a.example\r\nhost: a.example\r\n\r\n", 400, "more than one Host header"),
    (b"GET / HTTP/1.0\r\nHost: a.example\r\nHost: b.example\r\n\r\n", 400, "more than one Host header"),
    (b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", 400, "missing Host header (required in HTTP/1.1)"),
    (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400, "invalid Host header (expected host[:port], RFC 3986)"),
    (b"GET / HTTP/1.1\r\nHost: a.example:80:80\r\n\r\n", 400,
     "invalid Host header (expected host[:port], RFC 3986)"),
    (b"GET http://a.example/ HTTP/1.1\r\nHost:\r\n\r\n", 400,
     "empty Host header with a request target that names an authority"),
    (b"GET http://u:p@a.example/ HTTP/1.1\r\nHost: a.example\r\n\r\n", 400,
     "userinfo (user@) in the request target"),
    (b"POST / HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding:\r\nContent-Type: x\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
     501, "empty Transfer-Encoding"),
    (b"POST / HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: gzip\r\n\r\n", 501,
     "unsupported Transfer-Encoding (only a single `chunked` is accepted)"),
    (b"POST / HTTP/1.0\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 400,
     "Transfer-Encoding in an HTTP/1.0 request"),
]


@pytest.mark.parametrize("data,status,reason", REFUSED, ids=[r for _, _, r in REFUSED])
def test_invalid_request_is_refused_before_the_origin(h, caplog, data, status, reason):
    with caplog.at_level(logging.INFO, logger="sluiceway.error"):
        out = raw(h.port, data)
        assert _settled(h) == 0
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status), out
    assert b"Connection: close" in head
    assert reason.encode() in body
    assert h.origin.requests == 0 and h.origin.connections == 0  # nothing went upstream
    assert h.app.seen == []  # no hook ran
    assert h.pool_stats()["created"] == 0
    lines = [r.getMessage() for r in caplog.records if r.name == "sluiceway.error"]
    assert any(f"{status} from client 127.0.0.1:" in m and reason in m for m in lines), lines


def test_pipelined_request_with_two_hosts_is_refused_after_the_good_one(h):
    out = raw(h.port, b"GET /headers?a HTTP/1.1\r\nHost: a.example\r\n\r\n"
                      b"GET /headers?b HTTP/1.1\r\nHost: a.example\r\nHost: evil.example\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200") and b"HTTP/1.1 400 " in out
    assert b"more than one Host header" in out
    assert h.origin.requests == 1
    assert _settled(h) == 0


def _origin_saw(out):
    return json.loads(out.partition(b"\r\n\r\n")[2])


def test_absolute_form_target_one_authority_for_hooks_and_upstream(h):
    # RFC 9112 3.2.2: the target's authority replaces the Host. The upstream
    # gets origin-form and that Host, as nginx sends it; hooks see the same.
    out = raw(h.port, b"GET http://a.example:8080/headers?x=1 HTTP/1.1\r\nHost: other.example\r\n"
                      b"X-A: 1\r\nConnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200")
    got = _origin_saw(out)
    assert got["uri"] == "/headers?x=1"
    assert [v for n, v in got["headers"] if n.lower() == "host"] == ["a.example:8080"]
    assert ["X-A", "1"] in got["headers"]
    assert h.app.seen == [("/headers?x=1", ["a.example:8080"])]


def test_absolute_form_without_path_becomes_slash(h):
    out = raw(h.port, b"GET http://a.example HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200") and out.endswith(b"hello")
    assert h.app.seen == [("/", ["a.example"])]


def test_absolute_form_http10_without_host_gets_the_target_authority(h):
    out = raw(h.port, b"GET http://a.example/headers HTTP/1.0\r\n\r\n")
    got = _origin_saw(out)
    assert got["uri"] == "/headers"
    assert [v for n, v in got["headers"] if n.lower() == "host"] == ["a.example"]


def test_empty_host_with_origin_form_is_forwarded_as_sent(h):
    out = raw(h.port, b"GET /headers HTTP/1.1\r\nHost:\r\nConnection: close\r\n\r\n")
    got = _origin_saw(out)
    assert [v for n, v in got["headers"] if n.lower() == "host"] == [""]


def test_http10_without_host_gets_the_upstream_address(h):
    out = raw(h.port, b"GET /headers HTTP/1.0\r\n\r\n")
    got = _origin_saw(out)
    assert [v for n, v in got["headers"] if n.lower() == "host"] == [f"127.0.0.1:{h.origin.port}"]


def test_http10_close_wins_over_keep_alive(h):
    out = raw(h.port, b"GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n"
                      b"GET /second HTTP/1.0\r\n\r\n", timeout=3)
    assert out.count(b"HTTP/1.1 ") == 1 and out.endswith(b"hello")
    assert h.origin.requests == 1


def test_response_head_over_the_limit_is_a_502_from_the_upstream(h, caplog):
    with caplog.at_level(logging.WARNING, logger="sluiceway.error"):
        out = raw(h.port, b"GET /big-head?size=102400 HTTP/1.1\r\nHost: x\r\n\r\n", timeout=5)
        assert _settled(h) == 0
    assert out.startswith(b"HTTP/1.1 502 ")
    err = h.app.errors[0]
    assert err.status == 502 and err.source == "upstream"
    assert "response head too large (status line and headers over the limit)" in str(err)
    assert "request head" not in str(err)
    lines = [r.getMessage() for r in caplog.records if r.name == "sluiceway.error"]
    assert any("response head too large" in m for m in lines), lines
    stats = h.pool_stats()
    assert stats["idle"] == 0  # the upstream connection was closed, not pooled
