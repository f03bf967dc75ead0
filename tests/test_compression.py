"""Response compression and decompression: negotiation by Accept-Encoding,
the rules (types, sizes, never twice, 206, no-transform, HEAD), the header
changes, streaming, per-request control from hooks; round trips with curl
--compressed and httpx, both framings, HTTP/1.0."""

import gzip
import logging
import shutil
import subprocess

import brotli
import httpx
import pytest
import zstandard

from proxy_harness import Harness
from raw_peers import RawOrigin, Upload, content_length, read_exact, read_head
from sluiceway.compression import CompressionPolicy, choose_encoding, parse_accept_encoding
from sluiceway.config import ConfigError, ServerConf
from sluiceway.proxy import HttpPeer, ProxyHttp

TEXT = b"".join(b"line %d: the quick brown fox jumps over the lazy dog\n" % i for i in range(3000))


def text_origin(conn, origin):
    """GET /text?...: TEXT as text/html, framed by length (default) or
    chunked (/text/chunked), plus headers from the query; /gz: gzip-encoded
    TEXT; /small: 50 bytes; /range: a 206; /notransform."""
    buf = b""
    while True:
        head, buf = read_head(conn, buf)
        if head is None:
            return
        _, buf = read_exact(conn, content_length(head), buf)
        origin.received.append(head)
        target = head.split(b" ")[1]
        extra = b""
        body = TEXT
        if target.startswith(b"/gz"):
            body = gzip.compress(TEXT)
            extra += b"Content-Encoding: gzip\r\n"
        elif target.startswith(b"/small"):
            body = b"x" * 50
        elif target.startswith(b"/range"):
            extra += b"Content-Range: bytes 0-%d/99999\r\n" % (len(TEXT) - 1)
        elif target.startswith(b"/notransform"):
            extra += b"Cache-Control: no-transform\r\n"
        elif target.startswith(b"/png"):
            extra += b"X-Type: image\r\n"
        status = b"206 Partial Content" if target.startswith(b"/range") else b"200 OK"
        ctype = b"image/png" if target.startswith(b"/png") else b"text/html; charset=utf-8"
        head_out = (b"HTTP/1.1 " + status + b"\r\nContent-Type: " + ctype + b"\r\n"
                    b"ETag: \"v1\"\r\nVary: Cookie\r\n" + extra)
        if b"/chunked" in target:
            out = head_out + b"Transfer-Encoding: chunked\r\n\r\n"
            for i in range(0, len(body), 7000):
                piece = body[i:i + 7000]
                out += b"%x\r\n%s\r\n" % (len(piece), piece)
            conn.sendall(out + b"0\r\n\r\n")
        else:
            conn.sendall(head_out + b"Content-Length: %d\r\n\r\n" % len(body) + body)


class ToOrigin(ProxyHttp):
    def __init__(self, addr):
        self.addr = addr

    def upstream_peer(self, session, ctx):
        return HttpPeer(self.addr)


@pytest.fixture(scope="module")
def h():
    with RawOrigin(text_origin) as o, Harness(ToOrigin(o.addr), compression=True) as h:
        yield h


def _get(h, path, accept, version=b"1.1"):
    got, err, _ = Upload(h.port, b"GET " + path + b" HTTP/" + version + b"\r\nHost: x\r\n"
                         + (b"Accept-Encoding: " + accept + b"\r\n" if accept else b"")
                         + b"Connection: close\r\n\r\n").result()
    assert err is None
    head, _, body = got.partition(b"\r\n\r\n")
    fields = {}
    for line in head.split(b"\r\n")[1:]:
        n, _, v = line.partition(b":")
        fields.setdefault(n.strip().lower(), []).append(v.strip())
    if fields.get(b"transfer-encoding") == [b"chunked"]:
        out, rest = b"", body
        while True:
            size, _, rest = rest.partition(b"\r\n")
            n = int(size, 16)
            if n == 0:
                break
            out, rest = out + rest[:n], rest[n + 2:]
        body = out
    return head.split(b"\r\n")[0], fields, body


@pytest.mark.parametrize("coding, decode", [(b"gzip", gzip.decompress), (b"br", brotli.decompress),
                                            (b"zstd", lambda b: zstandard.ZstdDecompressor()
                                             .decompressobj().decompress(b))])
@pytest.mark.parametrize("path", [b"/text", b"/text/chunked"])
def test_each_coding_round_trips(h, coding, decode, path):
    status, f, body = _get(h, path, coding)
    assert status == b"HTTP/1.1 200 OK"
    assert f[b"content-encoding"] == [coding]
    assert b"content-length" not in f and f[b"transfer-encoding"] == [b"chunked"]
    assert f[b"vary"] == [b"Cookie, Accept-Encoding"]
    assert f[b"etag"] == [b'W/"v1"']
    assert decode(body) == TEXT
    assert len(body) < len(TEXT) / 5


def test_q_values_pick_the_coding(h):
    assert _get(h, b"/text", b"gzip;q=0.5, br;q=0.9")[1][b"content-encoding"] == [b"br"]
    assert _get(h, b"/text", b"gzip, br, zstd")[1][b"content-encoding"] == [b"zstd"]  # server's order
    assert _get(h, b"/text", b"*;q=0.1, zstd;q=0")[1][b"content-encoding"] == [b"br"]
    assert b"content-encoding" not in _get(h, b"/text", b"identity")[1]
    assert b"content-encoding" not in _get(h, b"/text", b"")[1]      # no Accept-Encoding


def test_what_is_not_compressed(h):
    for path in (b"/small", b"/png", b"/range", b"/notransform"):
        status, f, body = _get(h, path, b"gzip")
        assert b"content-encoding" not in f, path
        assert f[b"etag"] == [b'"v1"'] and int(f[b"content-length"][0]) == len(body)
    # already encoded: passed on as it is, never compressed twice
    _, f, body = _get(h, b"/gz", b"gzip, br")
    assert f[b"content-encoding"] == [b"gzip"] and gzip.decompress(body) == TEXT


def test_http10_client_gets_a_close_delimited_compressed_body(h):
    status, f, body = _get(h, b"/text", b"gzip", version=b"1.0")
    assert f[b"content-encoding"] == [b"gzip"] and b"transfer-encoding" not in f
    assert gzip.decompress(body) == TEXT


def test_head_requests_are_not_compressed(h):
    got, _, _ = Upload(h.port, b"HEAD /text HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n"
                       b"Connection: close\r\n\r\n").result()
    assert b"Content-Encoding" not in got and b"Content-Length: %d" % len(TEXT) in got


def test_curl_and_httpx_decode_it(h):
    if shutil.which("curl"):
        out = subprocess.run(["curl", "-s", "--compressed", f"{h.url}/text"], capture_output=True,
                             timeout=20).stdout
        assert out == TEXT
    with httpx.Client() as c:
        r = c.get(h.url + "/text/chunked")
        assert r.headers["content-encoding"] in ("zstd", "br", "gzip")
        assert r.content == TEXT


class PerRequest(ToOrigin):
    """Compression decided by a header of the request, and the upstream's
    gzip undone for a body filter that counts plain bytes."""

    def __init__(self, addr):
        super().__init__(addr)
        self.seen = []

    def request_filter(self, session, ctx):
        mode = session.req_header.get("x-compress")
        if mode == "off":
            session.compress_response(False)
        elif mode == "fast":
            session.compress_response(True, level=1)
        if session.req_header.get("x-plain-body") is not None:
            session.decompress_response()
        return False

    def response_body_filter(self, session, body, end, ctx):
        self.seen.append(len(body))
        return None


def test_hooks_turn_it_on_and_off_and_decompress():
    with RawOrigin(text_origin) as o:
        app = PerRequest(o.addr)
        with Harness(app) as h:  # compression off by default
            with httpx.Client(base_url=h.url) as c:
                assert "content-encoding" not in c.get("/text").headers
                r = c.get("/text", headers={"x-compress": "fast"})
                assert r.headers["content-encoding"] == "zstd" and r.content == TEXT
                app.seen.clear()
                r = c.get("/gz", headers={"x-plain-body": "1", "accept-encoding": "identity"})
                assert "content-encoding" not in r.headers and r.content == TEXT
                assert sum(app.seen) == len(TEXT)  # the filter saw the plain body
        with Harness(PerRequest(o.addr), compression=True) as h:
            with httpx.Client(base_url=h.url) as c:
                assert "content-encoding" not in c.get("/text", headers={"x-compress": "off"}).headers
                r = c.get("/gz", headers={"x-plain-body": "1", "accept-encoding": "br"})
                assert r.headers["content-encoding"] == "br" and r.content == TEXT


def test_a_corrupt_upstream_coding_ends_the_response(caplog):
    def bad(conn, origin):
        head, _ = read_head(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Encoding: gzip\r\n"
                     b"Content-Length: 10\r\n\r\nnot-a-gzip")

    class Plain(ToOrigin):
        def request_filter(self, session, ctx):
            session.decompress_response()
            return False
    with RawOrigin(bad) as o, Harness(Plain(o.addr)) as h:
        with caplog.at_level(logging.WARNING, logger="sluiceway.error"):
            got, err, _ = Upload(h.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").result()
        # The head went out before the body could be decoded: the client
        # learns it from the connection closing before the last chunk.
        assert err is None and got.startswith(b"HTTP/1.1 200") and not got.endswith(b"0\r\n\r\n")
    assert any("does not decode" in r.getMessage() and "502" in r.getMessage()
               for r in caplog.records)


def test_negotiation_rules():
    assert parse_accept_encoding("gzip;q=0.5, BR, x-gzip;q=0.7, zstd;q=bad") == \
        {"gzip": 0.7, "br": 1.0, "zstd": 0.0}
    assert choose_encoding(None, ["zstd", "gzip"]) is None
    assert choose_encoding("gzip", ["zstd", "br", "gzip"]) == "gzip"
    assert choose_encoding("*", ["zstd", "gzip"]) == "zstd"
    assert choose_encoding("*;q=0", ["zstd", "gzip"]) is None
    assert choose_encoding("gzip;q=0, *", ["gzip", "br"]) == "br"
    assert choose_encoding("gzip;q=1.5", ["gzip"]) is None


def test_configuration_is_checked():
    with pytest.raises(ConfigError, match="unknown compression algorithm 'lzma'"):
        ServerConf(compression_algorithms=["lzma"])
    with pytest.raises(ConfigError, match="gzip must be 1..9"):
        ServerConf(compression_gzip_level=12)
    p = CompressionPolicy.from_conf(ServerConf(compression=True))
    assert p.enabled and p.algorithms == ["zstd", "br", "gzip"]


def test_docs_example_runs():
    import os
    import re
    import sys
    from conftest import subprocess_env
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "docs", "compression.md"), encoding="utf-8") as f:
        example = re.findall(r"```python\n(.*?)```", f.read(), re.S)[-1]
    out = subprocess.run([sys.executable, "-c", example], capture_output=True, text=True,
                         timeout=60, env=subprocess_env())
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["gzip -> gzip 335 bytes on the wire",
                                       "identity -> plain 102300 bytes on the wire"]
