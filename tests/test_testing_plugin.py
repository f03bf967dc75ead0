"""The pytest plugin (sluiceway.pytest_plugin) and sluiceway.testing, used
the way users use them; the examples in docs/testing.md run as written."""

import os
import re
import socket
import subprocess
import sys

import pytest

from conftest import subprocess_env
from sluiceway import HttpPeer, ProxyHttp
from sluiceway.testing import Reply, assert_response, free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class TagAndRoute(ProxyHttp):
    """Adds a header upstream; /b/* goes to a second origin."""

    def __init__(self, a, b):
        self.a, self.b = a, b

    def upstream_request_filter(self, session, req, ctx):
        req.insert_header("x-via", "sw")

    def upstream_peer(self, session, ctx):
        return HttpPeer(self.b if session.req_header.path.startswith("/b/") else self.a)


@pytest.fixture
def second(start_origin):
    return start_origin()


@pytest.fixture
def proxy_app(origin, second):
    return TagAndRoute(origin.address, second.address)


@pytest.fixture
def proxy_conf():
    return {"upstream_read_timeout_seconds": 0.5}


def test_origin_records_what_the_proxy_sent(client, origin, second):
    r = client.post("/a?x=1", content=b"payload", headers={"x-k": "v"})
    assert_response(r, 200)
    got = origin.assert_received("/a", method="POST", headers={"x-via": "sw", "x-k": "v"},
                                 body=b"payload")
    assert got.query == "x=1" and got.version == "1.1" and got.header("X-VIA") == "sw"
    second.assert_not_received()
    client.get("/b/1")
    second.assert_received("/b/*")


def test_scripted_status_headers_body_and_function(client, origin):
    origin.route("/s", status=418, headers={"x-t": "1"}, body="teapot")
    assert_response(client.get("/s"), 418, headers={"x-t": "1"}, body="teapot")
    origin.route("/f", lambda req: Reply(body=req.header("x-via", "")))
    assert client.get("/f").text == "sw"

    async def later(req):
        return Reply(status=201)
    origin.route("/g", later)
    assert client.get("/g").status_code == 201


def test_scripted_delay_reset_and_chunked_trailers(client, origin):
    origin.route("/slow", delay=2.0)
    assert client.get("/slow").status_code == 504
    origin.route("/rst", reset=True)
    assert client.get("/rst").status_code == 502
    origin.route("/c", chunks=[b"ab", b"", b"cd"], trailers=[("x-sum", "4")], chunk_delay=0.01)
    assert_response(client.get("/c"), 200, body=b"abcd")
    raw = socket.create_connection(("127.0.0.1", int(client.base_url.port)), timeout=5)
    raw.sendall(b"GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    buf = b""
    while chunk := raw.recv(65536):
        buf += chunk
    raw.close()
    assert b"x-sum: 4" in buf.lower() and b"transfer-encoding: chunked" in buf.lower()


def test_assertion_messages_list_what_arrived(client, origin):
    client.get("/seen")
    with pytest.raises(AssertionError, match=r"(?s)no request with path='/other'.*GET /seen"):
        origin.assert_received("/other")
    with pytest.raises(AssertionError, match="received 1 request"):
        origin.assert_not_received("/seen")
    with pytest.raises(AssertionError, match="status 200, expected 404"):
        assert_response(client.get("/"), 404)


def test_start_proxy_runs_a_second_app(start_proxy, origin):
    class Fixed(ProxyHttp):
        def request_filter(self, session, ctx):
            session.respond(203, body="fixed")
            return True

        def upstream_peer(self, session, ctx):
            return HttpPeer(origin.address)

    h = start_proxy(Fixed(), access_log=False)
    assert h.get("/").status_code == 203
    origin.assert_not_received()


@pytest.mark.anyio
async def test_async_helpers(proxy, origin):
    r = await proxy.apost("/echo", content=b"abc")
    assert r.content == b"abc"
    origin.assert_received("/echo", body=b"abc")


def test_free_port_is_not_handed_out_again_at_once():
    p = free_port()
    others = set()
    for _ in range(200):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        others.add(s.getsockname()[1])
        s.close()
    assert p not in others
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", p))          # a server with SO_REUSEADDR can take it
    s.close()


def _plugin_args():
    """-p for the plugin unless the installed package registers it."""
    from importlib.metadata import entry_points

    eps = entry_points(group="pytest11")
    return [] if any(ep.value == "sluiceway.pytest_plugin" for ep in eps) else ["-p", "sluiceway.pytest_plugin"]


def test_docs_testing_examples_pass_as_written(tmp_path):
    with open(os.path.join(ROOT, "docs", "testing.md")) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    assert len(blocks) >= 5
    for i, block in enumerate(blocks):
        (tmp_path / f"test_doc_{i}.py").write_text(block)
        body = [ln for ln in block.splitlines() if ln.strip()]
        if "class " in block and "ProxyHttp" in block:
            assert len(body) <= 30, f"docs/testing.md example {i} is {len(body)} lines"
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          *_plugin_args(), str(tmp_path)], capture_output=True, text=True,
                         timeout=120, cwd=str(tmp_path), env=subprocess_env())
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert " passed" in out.stdout and "skipped" not in out.stdout


def test_benchmarks_collect_the_way_users_run_them():
    out = subprocess.run([sys.executable, "-m", "pytest", "bench", "--collect-only", "-q",
                          "-p", "no:cacheprovider"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env=subprocess_env())
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    for name in ("bench_nginx.py::test_proxy_throughput[nginx-small]",
                 "bench_nginx.py::test_proxy_throughput[sluiceway-16k]",
                 "bench_nginx.py::test_idle_keepalive_memory[sluiceway]", "bench_parser.py::"):
        assert name in out.stdout, out.stdout[-2000:]
