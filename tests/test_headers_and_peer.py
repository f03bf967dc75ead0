"""The objects hooks handle: HeaderMap (lookups, edits, repeats, bytes and
str) and HttpPeer (address forms, validation, the shared reuse key)."""

import json

import pytest

from proxy_harness import Harness, raw
from sluiceway.proxy import HttpPeer, ProxyHttp


def _headers(out):
    return {n.lower(): v for n, v in json.loads(out.split(b"\r\n\r\n", 1)[1])["headers"]}


def test_header_map_api():
    seen = {}

    class Probe(ProxyHttp):
        port = None

        def upstream_peer(self, session, ctx):
            return HttpPeer(("127.0.0.1", self.port))

        def upstream_request_filter(self, session, req, ctx):
            hm = req.headers
            seen["get"] = (hm.get("X-MULTI"), hm.get(b"x-multi"), hm.getall("x-multi"), hm.get_bytes("x-multi"))
            seen["len"] = len(hm)
            seen["contains"] = ("x-multi" in hm, "nope" in hm, 3 in hm)
            with pytest.raises(KeyError):
                hm["nope"]
            with pytest.raises(ValueError):
                hm["bad name"] = "x"
            with pytest.raises(ValueError):
                hm["x-ok"] = "a\r\nb"
            hm.add("x-multi", "3")
            assert hm.getall("x-multi") == ["1", "2", "3"]
            hm["x-multi"] = "only"
            assert hm.getall("x-multi") == ["only"]
            assert hm.pop("x-multi") == "only"
            assert hm.pop("x-multi", None) is None
            del hm["x-del"]
            req.append_header("x-new", "n")
            seen["items"] = hm.items()

    app = Probe()
    with Harness(app) as h:
        got = _headers(raw(h.port, b"GET /headers HTTP/1.1\r\nHost: e\r\nX-Multi: 1\r\nx-multi: 2\r\n"
                                   b"X-Del: d\r\nConnection: close\r\n\r\n"))
    assert seen["get"] == ("1", "1", ["1", "2"], b"1")
    assert seen["len"] == 5
    assert seen["contains"] == (True, False, False)
    assert seen["items"] == [("Host", "e"), ("Connection", "close"), ("x-new", "n")]
    assert "x-multi" not in got and "x-del" not in got and got["x-new"] == "n"
    assert "connection" not in got  # still hop-by-hop after an edit


def test_http_peer_validation():
    with pytest.raises(ValueError, match="port"):
        HttpPeer(("127.0.0.1", 70000))
    with pytest.raises(ValueError):
        HttpPeer("nocolon")
    p = HttpPeer("10.0.0.1:8080")
    assert (p.host, p.port, p.reuse_key) == ("10.0.0.1", 8080, ("10.0.0.1", 8080, False, "10.0.0.1"))
    assert HttpPeer("unix:/tmp/x.sock").reuse_key == ("unix", "/tmp/x.sock")


def test_http_peer_plain_address_cache():
    """Plain peers given the same address share one reuse_key object (the
    pool then matches it by identity); the cache never skips validation."""
    a = HttpPeer(("10.1.2.3", 8080))
    b = HttpPeer(("10.1.2.3", 8080))
    assert a.reuse_key is b.reuse_key == ("10.1.2.3", 8080, False, "10.1.2.3")
    assert (b.host, b.port, b.path, b.sni, b.address) == ("10.1.2.3", 8080, None, "10.1.2.3", ("10.1.2.3", 8080))
    c = HttpPeer(("10.1.2.3", 8080), idle_timeout=3, read_timeout=1)
    assert c.reuse_key is a.reuse_key and (c.idle_timeout, c.read_timeout) == (3, 1)
    with pytest.raises(ValueError):
        HttpPeer(("10.1.2.3", 8080.0))  # equal to a cached key, still refused
    s1, s2 = HttpPeer("unix:/tmp/a.sock"), HttpPeer("unix:/tmp/a.sock")
    assert s1.reuse_key is s2.reuse_key and s2.path == "/tmp/a.sock" and s2.host is None
    t = HttpPeer(("10.1.2.3", 8080), tls=True)
    assert t.reuse_key != a.reuse_key and t.tls
    n = HttpPeer(("10.1.2.3", 8080), sni="example.com")
    assert n.sni == "example.com" and n.reuse_key != a.reuse_key
    for i in range(10000):  # many distinct addresses: the cache stays bounded
        HttpPeer(("10.0.%d.%d" % (i // 256, i % 256), 80))
    assert HttpPeer(("10.1.2.3", 8080)).reuse_key == a.reuse_key
