"""The proxy in front of a real nginx (Debian's package) as the upstream."""

import os
import shutil

import httpx
import pytest

from proxy_harness import HAVE_NGINX, Harness, free_port, run_nginx
from sluiceway.proxy import HttpPeer, ProxyHttp

pytestmark = pytest.mark.skipif(not HAVE_NGINX, reason="nginx is not installed")

SERVER = """
    keepalive_requests 100000;
    server {{
        listen 127.0.0.1:{port};
        root {d}/www;
        location = /small {{ default_type text/plain; return 200 "hello"; }}
        location = /echo-method {{ default_type text/plain; return 200 "$request_method $http_x_kept $http_connection"; }}
        location = /teapot {{ return 418; }}
        location = /redirect {{ return 302 /small; }}
    }}
"""


@pytest.fixture(scope="module")
def nginx():
    # nginx's workers run unprivileged: every directory on the path must be
    # traversable, which pytest's tmp_path is not.
    import pathlib
    import tempfile
    d = pathlib.Path(tempfile.mkdtemp(prefix="sw-nginx-"))
    os.chmod(d, 0o755)
    (d / "www").mkdir()
    os.chmod(d / "www", 0o755)
    (d / "www" / "16k").write_bytes(b"b" * 16384)
    (d / "www" / "big").write_bytes(os.urandom(5 * 1024 * 1024))
    for f in ("16k", "big"):
        os.chmod(d / "www" / f, 0o644)
    port = free_port()
    try:
        with run_nginx(d, SERVER.format(d=d, port=port), wait=[port], connections=1024):
            yield port, d
    finally:
        shutil.rmtree(d, ignore_errors=True)


class ToNginx(ProxyHttp):
    port = None

    def request_filter(self, session, ctx):
        session.req_header.get("x-api-key")
        return False

    def upstream_peer(self, session, ctx):
        return HttpPeer(("127.0.0.1", self.port))


@pytest.fixture(scope="module")
def h(nginx):
    app = ToNginx()
    with Harness(app) as harness:
        app.port = nginx[0]
        yield harness


def test_small_and_16k(h):
    with httpx.Client(base_url=h.url) as c:
        assert c.get("/small").content == b"hello"
        r = c.get("/16k")
        assert r.status_code == 200 and r.content == b"b" * 16384


def test_big_file_and_head(h, nginx):
    r = httpx.get(h.url + "/big")
    assert r.content == (nginx[1] / "www" / "big").read_bytes()
    r = httpx.head(h.url + "/big")
    assert r.status_code == 200 and r.headers["content-length"] == str(5 * 1024 * 1024)
    assert r.content == b""


def test_statuses_pass_through(h):
    assert httpx.get(h.url + "/teapot").status_code == 418
    assert httpx.get(h.url + "/missing").status_code == 404
    r = httpx.get(h.url + "/redirect")
    assert r.status_code == 302 and r.headers["location"].endswith("/small")


def test_hop_by_hop_not_forwarded_to_nginx(h):
    r = httpx.get(h.url + "/echo-method", headers={"connection": "x-kept", "x-kept": "secret"})
    assert r.content.startswith(b"GET ")
    assert b"secret" not in r.content  # named by Connection: dropped


def test_keepalive_to_nginx_is_reused(h):
    before = h.pool_stats()
    with httpx.Client(base_url=h.url) as c:
        for _ in range(100):
            assert c.get("/small").status_code == 200
    after = h.pool_stats()
    assert after["created"] - before["created"] <= 1
    assert after["reused"] - before["reused"] >= 99


def test_post_to_nginx_static_gets_its_405(h):
    r = httpx.post(h.url + "/16k", content=b"x" * 100000)
    assert r.status_code == 405
