"""TLS to the upstream: certificate checked against a test CA, pooled like
plain connections; an untrusted certificate is a 502."""

import asyncio
import logging
import shutil
import ssl
import subprocess

import httpx
import pytest

from proxy_harness import Harness, Origin, _OriginProto
from sluiceway.proxy import HttpPeer, ProxyHttp

pytestmark = pytest.mark.skipif(not shutil.which("openssl"), reason="openssl not installed")


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")

    def run(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=sluiceway test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "srv.key", "-out", "srv.csr",
        "-subj", "/CN=localhost")
    (d / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "srv.pem", "-days", "2", "-extfile", "ext.cnf")
    return d


class TlsApp(ProxyHttp):
    def __init__(self, **kw):
        self.kw = kw
        self.tls_port = None

    def upstream_peer(self, session, ctx):
        return HttpPeer(("127.0.0.1", self.tls_port), tls=True, sni="localhost", **self.kw)


def _with_tls_origin(app, certs):
    h = Harness(app)
    h.__enter__()
    origin = Origin()
    sctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    sctx.load_cert_chain(str(certs / "srv.pem"), str(certs / "srv.key"))

    async def start():
        loop = asyncio.get_running_loop()
        origin.server = await loop.create_server(lambda: _OriginProto(origin), "127.0.0.1", 0, ssl=sctx)
        return origin.server.sockets[0].getsockname()[1]
    app.tls_port = h.call(start())
    return h, origin


def test_tls_upstream_with_ca_file_and_reuse(certs):
    app = TlsApp(ca_file=str(certs / "ca.pem"))
    h, origin = _with_tls_origin(app, certs)
    try:
        with httpx.Client(base_url=h.url) as c:
            for _ in range(5):
                assert c.get("/").content == b"hello"
            assert c.get("/big?size=200000").content == b"x" * 200000
        st = h.pool_stats()
        assert st["created"] == 1 and st["reused"] == 5
        assert origin.connections == 1
    finally:
        h.call(origin.stop())
        h.__exit__(None, None, None)


def test_untrusted_certificate_is_502(certs, caplog):
    app = TlsApp()  # system trust store: the test CA is unknown
    with caplog.at_level(logging.WARNING, logger="sluiceway.error"):
        h, origin = _with_tls_origin(app, certs)
        try:
            assert httpx.get(h.url + "/").status_code == 502
        finally:
            h.call(origin.stop())
            h.__exit__(None, None, None)
    assert any("CERTIFICATE_VERIFY_FAILED" in r.getMessage() or "certificate verify failed"
               in r.getMessage() for r in caplog.records)


def test_verify_cert_false_accepts_any_certificate(certs):
    app = TlsApp(verify_cert=False)
    h, origin = _with_tls_origin(app, certs)
    try:
        assert httpx.get(h.url + "/").content == b"hello"
    finally:
        h.call(origin.stop())
        h.__exit__(None, None, None)
