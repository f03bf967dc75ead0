"""Each example runs as its own program (a subprocess) against test origins."""


import httpx
import pytest

from proxy_harness import OriginThread, run_example, stop_proc


@pytest.fixture(scope="module")
def origins():
    with OriginThread(3) as o:
        yield o


def test_router_example(origins):
    a, b, _ = origins.ports
    proc, url = run_example("router.py", {"ROUTER_UPSTREAM_A": f"127.0.0.1:{a}",
                                   "ROUTER_UPSTREAM_B": f"127.0.0.1:{b}"})
    try:
        assert httpx.get(url + "/").status_code == 401
        r = httpx.get(url + "/debug", headers={"x-api-key": "k", "x-tenant-id": "a"})
        assert r.status_code == 200 and r.content == b"dbg"
        assert r.headers["strict-transport-security"] == "max-age=31536000"
        assert "x-debug" not in r.headers
        n_a = origins.origins[0].requests
        httpx.get(url + "/", headers={"x-api-key": "k", "x-tenant-id": "b"})
        assert origins.origins[0].requests == n_a and origins.origins[1].requests >= 1
    finally:
        assert stop_proc(proc) == 0


def test_tenant_routing_example(origins):
    a, b, c = origins.ports
    proc, url = run_example("tenant_routing.py", {"TENANTS": f"acme=127.0.0.1:{a},127.0.0.1:{b};globex=127.0.0.1:{c}"})
    try:
        assert httpx.get(url + "/").status_code == 400
        assert httpx.get(url + "/", headers={"x-tenant-id": "nope"}).status_code == 404
        before = [o.requests for o in origins.origins]
        for _ in range(4):
            got = httpx.get(url + "/headers", headers={"x-tenant-id": "acme"}).json()
            assert ["x-routed-tenant", "acme"] in got["headers"]
        after = [o.requests for o in origins.origins]
        assert after[0] - before[0] == 2 and after[1] - before[1] == 2 and after[2] == before[2]
    finally:
        assert stop_proc(proc) == 0


def test_api_key_auth_example(origins):
    proc, url = run_example("api_key_auth.py", {"API_KEYS": "s3cret=alice", "UPSTREAM": f"127.0.0.1:{origins.ports[0]}"})
    try:
        r = httpx.get(url + "/headers", headers={"x-api-key": "wrong"})
        assert r.status_code == 401 and "bearer" in r.headers["www-authenticate"].lower()
        got = httpx.get(url + "/headers", headers={"x-api-key": "s3cret"}).json()
        names = {n.lower(): v for n, v in got["headers"]}
        assert names["x-client"] == "alice" and "x-api-key" not in names
        got = httpx.get(url + "/headers", headers={"authorization": "Bearer s3cret"}).json()
        assert "authorization" not in {n.lower() for n, v in got["headers"]}
    finally:
        assert stop_proc(proc) == 0


def test_header_rewrite_example(origins):
    proc, url = run_example("header_rewrite.py", {"UPSTREAM": f"127.0.0.1:{origins.ports[0]}"})
    try:
        r = httpx.get(url + "/debug")
        assert "x-debug" not in r.headers
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-request-id"].startswith("req-")
        got = httpx.get(url + "/headers").json()
        assert any(n == "x-request-id" for n, v in got["headers"])
    finally:
        assert stop_proc(proc) == 0


def test_mtls_gate_example(origins, tmp_path):
    from tls_certs import HAVE_OPENSSL, issue, make_certs
    if not HAVE_OPENSSL:
        pytest.skip("openssl not installed")
    import ssl

    d = make_certs(tmp_path)
    issue(d, "mallory", "mallory")
    proc, url = run_example("mtls_gate.py", {
        "CERT": str(d / "srv.pem"), "KEY": str(d / "srv.key"), "CLIENT_CA": str(d / "ca.pem"),
        "ALLOWED": "sluiceway test client", "UPSTREAM": f"127.0.0.1:{origins.ports[0]}"})
    url = url.replace("http://", "https://")

    def client(name=None):
        ctx = ssl.create_default_context(cafile=str(d / "ca.pem"))
        if name:
            ctx.load_cert_chain(str(d / f"{name}.pem"), str(d / f"{name}.key"))
        return httpx.Client(verify=ctx)

    try:
        with client("cli") as c:
            got = c.get(url + "/headers").json()
        names = {n.lower(): v for n, v in got["headers"]}
        assert names["x-client-cn"] == "sluiceway test client"
        assert len(names["x-client-fingerprint"]) == 64
        with client("mallory") as c:
            r = c.get(url + "/headers")
            assert r.status_code == 403 and r.text == "mallory may not call this\n"
        with pytest.raises(httpx.HTTPError):   # no certificate: no handshake
            with client() as c:
                c.get(url + "/headers")
    finally:
        assert stop_proc(proc) == 0
