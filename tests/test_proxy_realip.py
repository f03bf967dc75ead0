"""The client behind other proxies (trusted_proxies, real_ip_header) and
the forwarding fields written upstream: the compiled rule against its
pure-Python reference (sluiceway._realip_py), nginx's realip module as an
oracle, and the proxy end to end."""

import os
import random
import socket
import subprocess

import httpx
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from proxy_harness import HAVE_NGINX, Harness, free_port, run_nginx
from sluiceway import _engine
from sluiceway import _realip_py as ref
from sluiceway.config import ConfigError, ServerConf
from sluiceway.proxy import HttpPeer, ProxyHttp

NETS = ["10.0.0.0/8", "2001:db8::/32", "192.168.1.7", "unix:"]


def trusted_fn(cidrs):
    import ipaddress
    nets = [ipaddress.ip_network(c) for c in cidrs if c != "unix:"]
    unix = "unix:" in cidrs

    def trusted(addr):
        if not isinstance(addr, tuple):
            return unix
        a = ipaddress.ip_address(addr[0])
        if a.version == 6 and a.ipv4_mapped is not None:
            a = a.ipv4_mapped
        return any(a in n for n in nets if n.version == a.version)
    return trusted


# ----------------------------------------------------- compiled vs reference --

trusted_v4 = st.sampled_from(["10.0.0.1", "10.255.3.4", "192.168.1.7", "::ffff:10.1.1.1"])
untrusted_v4 = st.sampled_from(["203.0.113.7", "198.51.100.1", "192.168.1.8", "::ffff:8.8.8.8"])
trusted_v6 = st.sampled_from(["2001:db8::1", "2001:db8:ffff::42"])
untrusted_v6 = st.sampled_from(["2001:db9::1", "fe80::1", "::1"])
addr = st.one_of(trusted_v4, untrusted_v4, trusted_v6, untrusted_v6)


@st.composite
def token(draw):
    a = draw(addr)
    form = draw(st.sampled_from(["plain", "port", "bracket", "garbage"]))
    if form == "port":
        p = draw(st.sampled_from(["1", "80", "65535", "0", "65536", "08", ""]))
        return f"[{a}]:{p}" if ":" in a else f"{a}:{p}"
    if form == "bracket":
        return f"[{a}]"
    if form == "garbage":
        return draw(st.sampled_from(["unknown", "_hidden", "1.2.3", "01.2.3.4", "[::1", "a.b",
                                     "1.2.3.4\t", "x" * 70, "::ffff:1.2.3.4:5"]))
    return a


direct = st.one_of(
    st.tuples(st.one_of(trusted_v4, untrusted_v4).filter(lambda a: "::" not in a),
              st.integers(1, 65535)),
    st.tuples(st.one_of(trusted_v6, untrusted_v6), st.integers(1, 65535),
              st.just(0), st.just(0)),
    st.sampled_from(["", "/run/lb.sock"]),
    st.none())


@settings(max_examples=500, deadline=None)
@given(st.lists(token(), max_size=6), st.lists(st.sampled_from([",", ", ", " ", " , ", ",,"]),
                                              min_size=6, max_size=6),
       direct, st.lists(st.sampled_from(NETS), max_size=4, unique=True), st.integers(1, 3))
@example(["5.6.7.8", "unknown", "10.0.0.1"], [", "] * 6, ("10.0.0.9", 1), NETS, 1)
def test_xff_compiled_matches_the_reference(tokens, seps, d, cidrs, nfields):
    text = "".join(t + s for t, s in zip(tokens, seps)).rstrip(", ")
    # the same list in up to three fields
    cut = sorted(random.Random(len(text)).sample(range(len(text) + 1), min(nfields - 1, len(text))))
    values = [text[a:b] for a, b in zip([0] + cut, cut + [len(text)])] or [""]
    nets = _engine.make_nets(cidrs)
    want = ref.real_client(ref.XFF, values, d, trusted_fn(cidrs))
    assert _engine.realip_resolve(ref.XFF, values, d, nets) == want


@settings(max_examples=300, deadline=None)
@given(st.lists(token(), min_size=1, max_size=4), st.lists(st.sampled_from(
    ["for={}", 'for="{}"', "by=x;for={}", "For={};proto=https", "proto=http", 'for="{}\\"',
     "for={}; host=a"]), min_size=4, max_size=4), direct,
       st.lists(st.sampled_from(NETS), max_size=4, unique=True))
@example(['[2001:db8::1]:80', "unknown"], ['for="{}"', "for={}", "for={}", "for={}"],
         ("10.0.0.1", 5), NETS)
def test_forwarded_and_x_real_ip_compiled_match_the_reference(tokens, forms, d, cidrs):
    nets = _engine.make_nets(cidrs)
    fwd = [", ".join(f.format(t) for f, t in zip(forms, tokens))]
    assert _engine.realip_resolve(ref.FORWARDED, fwd, d, nets) == \
        ref.real_client(ref.FORWARDED, fwd, d, trusted_fn(cidrs))
    xri = [tokens[0], " " + tokens[-1] + " "]
    assert _engine.realip_resolve(ref.X_REAL_IP, xri, d, nets) == \
        ref.real_client(ref.X_REAL_IP, xri, d, trusted_fn(cidrs))


def test_the_rule_on_known_chains():
    t = trusted_fn(NETS)
    lb = ("10.0.0.9", 4000)
    assert ref.real_client(ref.XFF, ["203.0.113.7, 10.0.0.1"], lb, t) == \
        (("203.0.113.7", 0), ("10.0.0.1", 0))
    assert ref.real_client(ref.XFF, ["1.1.1.1, 203.0.113.7, 10.0.0.1"], lb, t)[0] == \
        ("203.0.113.7", 0)                                   # the rightmost untrusted
    assert ref.real_client(ref.XFF, ["10.0.0.2, 10.0.0.1"], lb, t)[0] == ("10.0.0.2", 0)
    assert ref.real_client(ref.XFF, ["5.6.7.8, bad"], lb, t) == (lb, None)
    assert ref.real_client(ref.XFF, ["203.0.113.7"], ("8.8.8.8", 1), t) == (("8.8.8.8", 1), None)
    assert ref.real_client(ref.FORWARDED, ['for="[2001:db9::1]:8080";proto=https, for=10.0.0.3'],
                           lb, t)[0] == ("2001:db9::1", 8080)
    assert ref.real_client(ref.FORWARDED, ["for=_hidden, for=10.0.0.3"], lb, t)[0] == \
        ("10.0.0.3", 0)
    assert ref.real_client(ref.X_REAL_IP, ["203.0.113.7:5"], lb, t)[0] == ("203.0.113.7", 5)
    assert ref.real_client(ref.XFF, ["203.0.113.7"], "/run/lb.sock", t)[0] == ("203.0.113.7", 0)


# ------------------------------------------------------- nginx as an oracle --

REALIP_SERVER = """
    server {{
        listen 127.0.0.1:{port};
        set_real_ip_from 127.0.0.1;
        set_real_ip_from 10.0.0.0/8;
        set_real_ip_from 2001:db8::/32;
        set_real_ip_from 192.168.1.7;
        real_ip_header X-Forwarded-For;
        real_ip_recursive on;
        location / {{ return 200 "$remote_addr $remote_port"; }}
    }}
"""


@pytest.fixture(scope="module")
def realip_nginx(tmp_path_factory):
    if not HAVE_NGINX:
        pytest.skip("nginx is not installed")
    d = tmp_path_factory.mktemp("realip")
    for p in (d.parent, d):
        os.chmod(p, 0o755)
    port = free_port()
    with run_nginx(d, REALIP_SERVER.format(port=port), wait=[port], connections=64):
        yield port


def test_the_client_is_who_nginx_realip_says(realip_nginx):
    """500 random X-Forwarded-For chains: our client is nginx's
    $remote_addr (with real_ip_recursive on), our port its $remote_port.
    (Tokens nginx reads leniently, such as 01.2.3.4, are left out: they are
    not addresses to us.)"""
    rnd = random.Random(7)
    pool = ["10.0.0.1", "10.9.9.9", "192.168.1.7", "::ffff:10.1.1.1", "203.0.113.7",
            "198.51.100.1", "192.168.1.8", "2001:db8::1", "2001:db9::1", "::1",
            "[2001:db8::5]:80", "[2001:db9::5]:443", "203.0.113.9:8080", "10.0.0.3:1",
            "unknown", "_hidden", "[::1]", "1.2.3.4:0", "bad"]
    nets = _engine.make_nets(["127.0.0.1", "10.0.0.0/8", "2001:db8::/32", "192.168.1.7"])
    with httpx.Client(base_url=f"http://127.0.0.1:{realip_nginx}") as c:
        for _ in range(500):
            chain = [rnd.choice(pool) for _ in range(rnd.randint(0, 5))]
            xff = "".join(t + rnd.choice([", ", ",", " "]) for t in chain).rstrip(", ")
            r = c.get("/", headers={"X-Forwarded-For": xff} if xff else {})
            nginx_addr, _, nginx_port = r.text.partition(" ")
            (ours, _via) = _engine.realip_resolve(ref.XFF, [xff], ("127.0.0.1", 1), nets)
            if ours == ("127.0.0.1", 1):
                assert nginx_addr == "127.0.0.1", xff      # nginx keeps the peer's own port
            else:
                assert (nginx_addr, int(nginx_port or 0)) == ours, xff


# ------------------------------------------------------------- end to end --

class Who(ProxyHttp):
    def request_filter(self, session, ctx):
        if session.req_header.path != "/who":
            return False
        c, v = session.client_addr, session.forwarded_by
        session.respond(200, {"x-client": f"{c[0]}:{c[1]}",
                              "x-via": f"{v[0]}" if v else "-"}, b"ok")
        return True

    def upstream_peer(self, session, ctx):
        return HttpPeer(("127.0.0.1", self.port))

    port = None


@pytest.fixture
def who():
    app = Who()
    return app


def test_trusted_proxies_decide_the_client(who):
    with Harness(who, trusted_proxies=["127.0.0.1"]) as h:
        who.port = h.origin.port
        r = httpx.get(h.url + "/who", headers={"X-Forwarded-For": "203.0.113.7, 127.0.0.5"})
        # 127.0.0.5 is not trusted (only 127.0.0.1 is): it is the client
        assert r.headers["x-client"] == "127.0.0.5:0" and r.headers["x-via"] == "127.0.0.1"
    with Harness(who, trusted_proxies=["127.0.0.0/8"]) as h:
        who.port = h.origin.port
        r = httpx.get(h.url + "/who", headers={"X-Forwarded-For": "203.0.113.7, 127.0.0.5"})
        assert r.headers["x-client"] == "203.0.113.7:0" and r.headers["x-via"] == "127.0.0.5"
    with Harness(who) as h:                       # nobody trusted: the header is ignored
        who.port = h.origin.port
        r = httpx.get(h.url + "/who", headers={"X-Forwarded-For": "203.0.113.7"})
        assert r.headers["x-client"].startswith("127.0.0.1:") and r.headers["x-via"] == "-"
    with Harness(who, trusted_proxies=["127.0.0.1"], real_ip_header="Forwarded") as h:
        who.port = h.origin.port
        r = httpx.get(h.url + "/who", headers={
            "Forwarded": 'for="[2001:db8::7]:4711";proto=https, for=unknown'})
        assert r.headers["x-client"].startswith("127.0.0.1:")   # unknown: stop at the peer
        r = httpx.get(h.url + "/who", headers={"Forwarded": 'for="[2001:db8::7]:4711"'})
        assert r.headers["x-client"] == "2001:db8::7:4711"


def upstream_fields(h, path="/x", **headers):
    r = httpx.get(h.url + path, headers=headers)
    assert r.status_code == 200
    got = h.origin.last
    return {k: got.header(k) for k in ("x-forwarded-for", "x-forwarded-proto", "x-forwarded-host",
                                      "forwarded")}


def test_forwarding_fields_replace_what_an_untrusted_client_sent():
    with Harness(forwarded_headers=True) as h:
        f = upstream_fields(h, **{"X-Forwarded-For": "6.6.6.6", "X-Forwarded-Proto": "https",
                                  "X-Forwarded-Host": "evil", "Forwarded": "for=6.6.6.6"})
        host = f"127.0.0.1:{h.port}"
        assert f == {"x-forwarded-for": "127.0.0.1", "x-forwarded-proto": "http",
                     "x-forwarded-host": host, "forwarded": None}


def test_forwarding_fields_extend_what_a_trusted_proxy_sent():
    with Harness(forwarded_headers=True, forwarded_header_style="both",
                 trusted_proxies=["127.0.0.1"]) as h:
        f = upstream_fields(h, **{"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https",
                                  "X-Forwarded-Host": "shop.example",
                                  "Forwarded": 'for=203.0.113.7;proto=https'})
        assert f["x-forwarded-for"] == "203.0.113.7, 127.0.0.1"
        assert f["x-forwarded-proto"] == "https" and f["x-forwarded-host"] == "shop.example"
        assert f["forwarded"] == (f'for=203.0.113.7;proto=https, for=127.0.0.1;proto=http;'
                                  f'host="127.0.0.1:{h.port}"')
    with Harness(forwarded_headers=True, forwarded_header_style="rfc7239",
                 trusted_proxies=["127.0.0.1"]) as h:
        # the X- fields of a trusted proxy go on untouched beside Forwarded
        f = upstream_fields(h, **{"X-Forwarded-For": "203.0.113.7"})
        assert f["x-forwarded-for"] == "203.0.113.7" and f["x-forwarded-proto"] is None
        assert f["forwarded"] == f'for=127.0.0.1;proto=http;host="127.0.0.1:{h.port}"'


def test_configuration_errors_name_the_key():
    with pytest.raises(ConfigError, match="'10.0.0.0/33' is not an IP address"):
        ServerConf(trusted_proxies=["10.0.0.0/33"])
    with pytest.raises(ConfigError, match="real_ip_header must be"):
        ServerConf(real_ip_header="X-Client-IP")
    with pytest.raises(ConfigError, match="forwarded_header_style must be"):
        ServerConf(forwarded_header_style="rfc")
    ServerConf(trusted_proxies=["unix:", "::1"], real_ip_header="forwarded")


def test_the_docs_example_runs():
    import re
    import sys

    from conftest import subprocess_env
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "docs", "client-addresses.md"), encoding="utf-8") as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    example = next(b for b in blocks if "trusted_proxies" in b)
    proc = subprocess.run([sys.executable, "-c", example], capture_output=True, text=True,
                          timeout=60, env=subprocess_env(), cwd=root)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "203.0.113.7 via 127.0.0.4"
