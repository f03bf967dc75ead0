"""TLS options of upstream peers against nginx as the TLS origin: client
certificates (mutual TLS), ALPN, SNI or none, session resumption on new
connections with TLS 1.2 (tickets, and session ids) and TLS 1.3; the pool
never mixes connections made with different options; options that cannot
work are refused when the peer is built, saying what to fix.

nginx (Debian's package, one worker, run from a temp prefix) answers each
request with what it saw of the TLS connection: the protocol, whether the
session was resumed (``r``) or not (``.``), the ALPN protocol, the server
name sent and the client certificate's subject."""

import os
import ssl
import subprocess
import sys

import httpx
import pytest

from proxy_harness import (HAVE_NGINX, REPO, Harness, ThreadOrigin, free_port, recv_head,
                           run_example, run_nginx, stop_proc)
from sluiceway import metrics
from sluiceway.proxy import HttpPeer, ProxyHttp
from tls_certs import HAVE_OPENSSL, make_ca, make_certs, make_client_cert, server_context

pytestmark = [pytest.mark.skipif(not HAVE_OPENSSL, reason="openssl not installed"),
              pytest.mark.skipif(not HAVE_NGINX, reason="nginx is not installed")]

SAW = '"$ssl_protocol|$ssl_session_reused|$ssl_alpn_protocol|$ssl_server_name|$ssl_client_s_dn"'

# name: (nginx directives of that server)
SERVERS = {
    # keepalive_timeout 0: every response closes its connection, so every
    # request makes a new one (which may resume the last one's session)
    "tls13": "ssl_protocols TLSv1.3; keepalive_timeout 0;",
    "tls12": "ssl_protocols TLSv1.2; keepalive_timeout 0;",
    "tls12-ids": "ssl_protocols TLSv1.2; keepalive_timeout 0; ssl_session_tickets off; "
                 "ssl_session_cache shared:ids:1m;",
    # client certificates required (keep-alive on: connections are pooled)
    "mtls": "ssl_protocols TLSv1.2 TLSv1.3; ssl_verify_client on; "
            "ssl_client_certificate {d}/ca.pem;",
}


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = make_certs(tmp_path_factory.mktemp("certs"))
    make_client_cert(d, "cli-b", "client b")
    make_ca(d, "ca2")
    make_client_cert(d, "cli-other", "client of another CA", ca="ca2")
    return d


@pytest.fixture(scope="module")
def nginx(certs, tmp_path_factory):
    """Start nginx; yield {server name: port}."""
    prefix = tmp_path_factory.mktemp("nginx")
    ports = {name: free_port() for name in SERVERS}
    servers = "\n".join(f"""
    server {{
        listen 127.0.0.1:{ports[name]} ssl;
        ssl_certificate {certs}/srv.pem;
        ssl_certificate_key {certs}/srv.key;
        {extra.format(d=certs)}
        location / {{ default_type text/plain; return 200 {SAW}; }}
    }}""" for name, extra in SERVERS.items())
    with run_nginx(prefix, servers, wait=ports.values(), user="root"):
        yield ports


class Saw:
    """What nginx saw of one request's TLS connection."""

    def __init__(self, body):
        self.protocol, reused, self.alpn, self.sni, self.client = body.decode().split("|")
        self.resumed = reused == "r"


class PathApp(ProxyHttp):
    """Peers by the request's first path segment; records each request's
    ``session.upstream_tls`` (in ``logging``)."""

    def __init__(self, peers):
        self.peers = peers
        self.tls = []

    def upstream_peer(self, session, ctx):
        return self.peers[session.req_header.uri.split("/")[1]]

    def logging(self, session, error, ctx):
        t = session.upstream_tls
        self.tls.append(None if t is None else {k: t[k] for k in ("version", "alpn", "resumed")})


def _peer(certs, port, **kw):
    kw.setdefault("sni", "localhost")
    return HttpPeer(("127.0.0.1", port), tls=True, ca_file=str(certs / "ca.pem"), **kw)


@pytest.mark.parametrize("server,version", [("tls13", "TLSv1.3"), ("tls12", "TLSv1.2"),
                                            ("tls12-ids", "TLSv1.2")])
def test_new_connections_resume_the_last_session(certs, nginx, server, version):
    """Every response closes its connection; each new one offers the last
    one's session and nginx resumes it (tickets, or a session id from its
    cache): one full handshake, then only resumed ones, as nginx, the
    pool's counters and ``session.upstream_tls`` all say."""
    app = PathApp({"x": _peer(certs, nginx[server])})
    with Harness(app) as h:
        with httpx.Client(base_url=h.url, timeout=10) as c:
            saw = [Saw(c.get("/x").content) for _ in range(6)]
        st = h.pool_stats()
        h.run(lambda: h.engine().sync_metrics())
        counted = {labels[1]: v for labels, v in metrics.snapshot().get(
            "sluiceway_upstream_tls_handshakes", {}).items() if labels[0] == h.svc.name}
    assert [s.protocol for s in saw] == [version] * 6
    assert [s.resumed for s in saw] == [False] + [True] * 5
    assert (st["created"], st["tls_full"], st["tls_resumed"]) == (6, 1, 5), st
    assert counted == {"false": 1, "true": 5}, counted
    assert app.tls == [{"version": version, "alpn": None, "resumed": r}
                       for r in [False] + [True] * 5]


def test_a_failed_handshake_forgets_the_session(certs):
    """A handshake that fails drops the session kept for that peer: the
    connection after it makes a full handshake. (A Python origin, which
    can stop speaking TLS for a while on the same port.)"""
    def serve(c):
        if isinstance(c, ssl.SSLSocket):
            recv_head(c)
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            c.unwrap()
        else:
            c.recv(65536)   # a client hello, not answered: the connection closes
    sctx = server_context(certs)
    origin = ThreadOrigin(serve, tls=sctx)
    app = PathApp({"x": _peer(certs, origin.port)})
    try:
        with Harness(app) as h:
            with httpx.Client(base_url=h.url, timeout=10) as c:
                assert [c.get("/x").status_code for _ in range(3)] == [200] * 3
                origin.tls = None
                assert c.get("/x").status_code == 502
                origin.tls = sctx
                assert [c.get("/x").status_code for _ in range(2)] == [200] * 2
            st = h.pool_stats()
    finally:
        origin.close()
    assert [t["resumed"] for t in app.tls if t is not None] == [False, True, True, False, True]
    assert (st["tls_full"], st["tls_resumed"]) == (2, 3), st


def test_alpn_offered_and_chosen(certs, nginx):
    app = PathApp({"alpn": _peer(certs, nginx["tls13"], alpn=["http/1.1"]),
                   "none": _peer(certs, nginx["tls13"])})
    with Harness(app) as h:
        with httpx.Client(base_url=h.url, timeout=10) as c:
            assert Saw(c.get("/alpn").content).alpn == "http/1.1"
            assert Saw(c.get("/none").content).alpn == ""
    assert [t["alpn"] for t in app.tls] == ["http/1.1", None]


def test_client_certificates_and_options_never_share_a_connection(certs, nginx):
    """Peers to one mutual-TLS origin that differ in client certificate,
    SNI or verification: each request arrives with its own peer's
    certificate and name, whatever was pooled before; peers with the same
    options share connections (and one SSLContext)."""
    port = nginx["mtls"]
    a = {"client_cert": str(certs / "cli.pem"), "client_key": str(certs / "cli.key")}
    b = {"client_cert": str(certs / "cli-b.pem"), "client_key": str(certs / "cli-b.key")}
    peers = {"a": _peer(certs, port, **a), "b": _peer(certs, port, **b),
             "a-nosni": _peer(certs, port, sni="", verify_hostname=False, **a),
             "a-namecheckoff": _peer(certs, port, verify_hostname=False, **a),
             "a-noverify": _peer(certs, port, verify_cert=False, **a)}
    again = _peer(certs, port, **a)
    assert again.ssl_context is peers["a"].ssl_context and again.reuse_key == peers["a"].reuse_key
    keys = {p.reuse_key for p in peers.values()}
    assert len(keys) == len(peers)
    assert len({id(p.ssl_context) for p in peers.values()}) == len(peers) - 1   # (sni is not in it)
    app = PathApp(peers)
    order = ["a", "b", "a", "b", "a-nosni", "a", "a-namecheckoff", "b", "a-noverify", "a-nosni",
             "a-noverify", "a-namecheckoff"]
    with Harness(app) as h:
        with httpx.Client(base_url=h.url, timeout=10) as c:
            saw = {name: [] for name in peers}
            for name in order:
                r = c.get(f"/{name}")
                assert r.status_code == 200, (name, r.content)
                saw[name].append(Saw(r.content))
        st = h.pool_stats()
    for name, seen in saw.items():
        want_cn = "CN=client b" if name == "b" else "CN=sluiceway test client"
        assert {s.client for s in seen} == {want_cn}, name
        assert {s.sni for s in seen} == {"" if name == "a-nosni" else "localhost"}, name
    assert st["created"] == len(peers) and st["reused"] == len(order) - len(peers), st


def test_origin_requiring_a_client_certificate_and_getting_none(certs, nginx):
    """nginx asks for a certificate and answers 400 without one (it does
    not end the handshake): the peer without client_cert gets that."""
    app = PathApp({"x": _peer(certs, nginx["mtls"])})
    with Harness(app) as h:
        r = httpx.get(h.url + "/x", timeout=10)
    assert r.status_code == 400 and b"No required SSL certificate" in r.content


def test_mtls_example(certs, nginx):
    """examples/mtls_upstream.py, as its docstring runs it, asked with curl."""
    proc, url = run_example("mtls_upstream.py", {
        "UPSTREAM": f"127.0.0.1:{nginx['mtls']}", "UPSTREAM_SNI": "localhost",
        "CA_FILE": str(certs / "ca.pem"), "CLIENT_CERT": str(certs / "cli.pem"),
        "CLIENT_KEY": str(certs / "cli.key")})
    try:
        out = subprocess.run(["curl", "-si", "--max-time", "10", url + "/"], check=True,
                             capture_output=True, timeout=20).stdout.decode()
    finally:
        assert stop_proc(proc) == 0
    head, _, body = out.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 200"), out
    assert "\r\nx-upstream-tls: TLSv1.3 alpn=http/1.1 resumed=False" in head, head
    saw = Saw(body.encode())
    assert (saw.client, saw.sni, saw.alpn) == ("CN=sluiceway test client", "localhost", "http/1.1")


# --- refused when the peer is built ----------------------------------------------

def _bad_options(d):
    """(options, what the message must say) for options that cannot work."""
    (d / "garbage.pem").write_text("not a certificate\n")
    return [
        ({"client_cert": str(d / "missing.pem")}, "client_cert '{d}/missing.pem': no such file"),
        ({"client_cert": str(d / "cli.pem"), "client_key": str(d / "missing.key")},
         "client_key '{d}/missing.key': no such file"),
        ({"client_cert": str(d)}, "is a directory, not a file"),
        ({"client_cert": str(d / "garbage.pem"), "client_key": str(d / "cli.key")},
         "client_cert '{d}/garbage.pem' holds no certificate in PEM form"),
        ({"client_cert": str(d / "cli.pem")},
         "client_cert '{d}/cli.pem' holds no private key in PEM form (\"PRIVATE KEY\" not "
         "found) (pass the key file as client_key)"),
        ({"client_cert": str(d / "cli.pem"), "client_key": str(d / "srv.key")},
         "client_key '{d}/srv.key' does not match client_cert '{d}/cli.pem': pass the key "
         "the certificate was made for"),
        ({"client_cert": str(d / "cli.pem"), "client_key": str(d / "enc.key")},
         "client_key '{d}/enc.key' is encrypted with a passphrase"),
        ({"client_key": str(d / "cli.key")}, "client_key needs client_cert"),
        ({"ca_file": str(d / "missing-ca.pem")}, "ca_file '{d}/missing-ca.pem': no such file"),
        ({"ca_file": str(d / "garbage.pem")}, "ca_file '{d}/garbage.pem': holds no CA "
                                              "certificates in PEM form"),
        ({"alpn": ["h2", "http/1.1"]}, "may offer \"http/1.1\" and \"http/1.0\" only"),
        ({"alpn": "http/1.1"}, "alpn must be a list of protocol names"),
        ({"sni": ""}, "pass verify_hostname=False (the chain is still checked) or an sni"),
    ]


def test_options_that_cannot_work_are_refused_when_the_peer_is_built(certs):
    subprocess.run(["openssl", "pkey", "-in", "cli.key", "-out", "enc.key", "-aes256", "-passout",
                    "pass:secret"], cwd=certs, check=True, capture_output=True)
    for opts, says in _bad_options(certs):
        with pytest.raises(ValueError if "alpn must" not in says else TypeError) as e:
            HttpPeer(("127.0.0.1", 443), tls=True, **opts)
        assert says.format(d=certs) in str(e.value), (opts, str(e.value))
    HttpPeer(("127.0.0.1", 443))    # (a plain peer for that address, cached)
    with pytest.raises(ValueError, match="are TLS options: pass tls=True"):
        HttpPeer(("127.0.0.1", 443), client_cert=str(certs / "cli.pem"))
    # a certificate file that holds its key too needs no client_key
    both = certs / "both.pem"
    both.write_bytes((certs / "cli.pem").read_bytes() + (certs / "cli.key").read_bytes())
    assert HttpPeer(("127.0.0.1", 443), tls=True, client_cert=str(both)).client_key is None


def test_verify_cert_false_warns_once(certs, tmp_path):
    """Turning verification off logs one warning per process, however many
    peers do it."""
    code = (
        "import logging, sys\n"
        "logging.basicConfig(stream=sys.stdout, format='%(name)s %(levelname)s %(message)s')\n"
        "from sluiceway.proxy import HttpPeer\n"
        "for port in (443, 444, 443):\n"
        "    HttpPeer(('127.0.0.1', port), tls=True, verify_cert=False)\n"
        "HttpPeer(('127.0.0.1', 443), tls=True, verify_cert=False, alpn=['http/1.1'])\n"
        "HttpPeer(('127.0.0.1', 443), tls=True)\n"
    )
    from conftest import subprocess_env
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=subprocess_env(),
                         capture_output=True, timeout=30, check=True).stdout.decode()
    lines = out.splitlines()
    assert lines == ["sluiceway.error WARNING sluiceway: HttpPeer(verify_cert=False) for upstream "
                     "127.0.0.1:443: its certificate is not checked, so anyone on the way can "
                     "pose as it (logged once)"], out


def test_docs_mtls_example(certs, nginx):
    """docs/proxy.md's mutual-TLS example, with the test's files and nginx
    in place of the origin."""
    import re
    with open(os.path.join(REPO, "docs", "proxy.md"), encoding="utf-8") as f:
        block = next(b for b in re.findall(r"```python\n(.*?)```", f.read(), re.S)
                     if "client_cert=" in b)
    for doc, ours in ((
            '("origin.internal", 8443)', f'("127.0.0.1", {nginx["mtls"]})'),
            ("/etc/sluiceway/origin-ca.pem", str(certs / "ca.pem")),
            ("/etc/sluiceway/proxy.pem", str(certs / "cli.pem")),
            ("/etc/sluiceway/proxy.key", str(certs / "cli.key"))):
        assert doc in block
        block = block.replace(doc, ours)
    ns = {}
    exec(block, ns)
    with Harness(ns["App"]()) as h:
        saw = Saw(httpx.get(h.url + "/", timeout=10).content)
    assert (saw.client, saw.alpn, saw.sni) == ("CN=sluiceway test client", "http/1.1", "")


def test_tls_over_a_unix_socket_has_its_own_reuse_key(certs):
    plain = HttpPeer("unix:/tmp/sw-x.sock")
    tls = HttpPeer("unix:/tmp/sw-x.sock", tls=True, sni="localhost", ca_file=str(certs / "ca.pem"))
    assert plain.reuse_key == ("unix", "/tmp/sw-x.sock") and tls.reuse_key != plain.reuse_key
    assert tls.reuse_key[0] == plain.reuse_key
