"""Consistent hashing places keys exactly where nginx's `hash $key consistent` does,
and least connections shares idle backends in nginx's `least_conn` order.

One nginx process (Debian's package, run from a temp prefix) serves as both
the balancer and the upstreams: several `server` blocks on 127.0.0.1, [::1]
and a Unix socket answer with their own `server` text, and an `upstream` with
`hash $arg_k consistent` proxies to them.  We ask nginx for 1,000 keys and
require sluiceway's ring to pick the same upstream for each, with weights,
and also when one upstream is marked `down` (nginx walks the ring to the next
server, as sluiceway's fallbacks do).  With `least_conn` and one request at a
time (every backend idle, all tied) nginx shares requests by smooth weighted
round robin, and so must LeastConnections.
"""

import http.client
import random
import socket
import string

import pytest

from proxy_harness import HAVE_NGINX, run_nginx
from sluiceway import _lb_py
from sluiceway.lb import Backend, Consistent, LeastConnections, LoadBalancer

pytestmark = pytest.mark.skipif(not HAVE_NGINX, reason="nginx is not installed")


def _free_port(family=socket.AF_INET, host="127.0.0.1"):
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _have_ipv6():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def nginx(tmp_path_factory):
    """Start nginx; yield (port, upstream list of (server text, weight), down server)."""
    prefix = tmp_path_factory.mktemp("nginx")
    sock = prefix / "u.sock"
    ups = [(f"127.0.0.1:{_free_port()}", 1) for _ in range(4)]
    ups[1] = (ups[1][0], 3)
    ups.append((f"unix:{sock}", 2))
    if _have_ipv6():
        ups.append((f"[::1]:{_free_port(socket.AF_INET6, '::1')}", 1))
    down = ups[2][0]
    front = _free_port()

    servers = "\n".join(f"        server {addr} weight={w};" for addr, w in ups)
    servers_down = "\n".join(
        f"        server {addr} weight={w}{' down' if addr == down else ''};" for addr, w in ups)
    echo = "\n".join(
        f"    server {{ listen {addr}; location / {{ return 200 '{addr}'; }} }}"
        for addr, _ in ups)
    http = f"""
    upstream chash {{
        hash $arg_k consistent;
{servers}
    }}
    upstream chash_down {{
        hash $arg_k consistent;
{servers_down}
    }}
    upstream lc {{
        least_conn;
{servers}
    }}
    upstream lc_down {{
        least_conn;
{servers_down}
    }}
    server {{
        listen 127.0.0.1:{front};
        location /lc-down {{ proxy_pass http://lc_down; }}
        location /lc {{ proxy_pass http://lc; }}
        location /down {{ proxy_pass http://chash_down; }}
        location / {{ proxy_pass http://chash; }}
    }}
{echo}
"""
    wait = [front] + [_where(a) for a, _ in ups]
    with run_nginx(prefix, http, wait=wait, user="root"):
        yield front, ups, down


def _where(addr):
    """An upstream's server text as an address run_nginx waits for."""
    if addr.startswith("unix:"):
        return addr[5:]
    host, port = addr.rsplit(":", 1)
    return host.strip("[]"), int(port)


def _keys(n, seed=20261127):
    rng = random.Random(seed)
    alphabet = string.ascii_letters + string.digits + "-_.~"
    # No empty key: nginx round-robins requests whose key is empty (sluiceway
    # hashes it like any other key; docs/load-balancing.md says so).
    keys = {"a", "0", "user-1", "index.html"}
    while len(keys) < n:
        keys.add("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))))
    return sorted(keys)


def _ask_nginx(port, path, keys):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    out = {}
    try:
        for k in keys:
            conn.request("GET", f"{path}?k={k}")
            resp = conn.getresponse()
            body = resp.read().decode()
            assert resp.status == 200, (k, resp.status, body)
            out[k] = body
    finally:
        conn.close()
    return out


def test_consistent_matches_nginx_for_1000_keys(nginx):
    port, ups, _ = nginx
    keys = _keys(1000)
    via_nginx = _ask_nginx(port, "/", keys)
    backends = [Backend(addr, weight=w) for addr, w in ups]
    lb = LoadBalancer.from_iter(backends, Consistent)
    ref = _lb_py.Consistent(backends)
    mismatched = [(k, via_nginx[k], lb.select(k).addr) for k in keys
                  if lb.select(k).addr != via_nginx[k]]
    assert not mismatched, f"{len(mismatched)} of {len(keys)} keys differ: {mismatched[:5]}"
    assert all(backends[ref.next(k)].addr == via_nginx[k] for k in keys)
    # Every upstream got some keys, so the comparison covered them all.
    assert set(via_nginx.values()) == {a for a, _ in ups}


def test_failover_matches_nginx_when_a_server_is_down(nginx):
    port, ups, down = nginx
    keys = _keys(1000, seed=7)
    via_nginx = _ask_nginx(port, "/down", keys)
    lb = LoadBalancer.from_iter([Backend(a, weight=w) for a, w in ups], Consistent)
    lb.set_enable(down, False)
    moved = sum(1 for k in keys if lb.select(k, 1) is None)
    assert moved > 0, "no key had the down server as first choice; the test proves nothing"
    mismatched = [(k, via_nginx[k], lb.select(k).addr) for k in keys
                  if lb.select(k).addr != via_nginx[k]]
    assert not mismatched, f"{len(mismatched)} of {len(keys)} keys differ: {mismatched[:5]}"
    assert down not in via_nginx.values()


@pytest.mark.parametrize("path", ["/lc", "/lc-down"])
def test_least_conn_shares_idle_backends_like_nginx(nginx, path):
    port, ups, down = nginx
    n = 60
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    theirs = []
    try:
        for _ in range(n):
            conn.request("GET", path)
            resp = conn.getresponse()
            theirs.append(resp.read().decode())
            assert resp.status == 200
    finally:
        conn.close()
    for impl in (LeastConnections, _lb_py.LeastConnections):
        lb = LoadBalancer.from_iter([Backend(a, w) for a, w in ups], impl)
        if path == "/lc-down":
            lb.set_enable(down, False)
        assert [lb.select().addr for _ in range(n)] == theirs, impl
