"""Property test: the C header rewriting (sw_hop_mark/sw_write_fields, and the
edited-headers path) forwards exactly what a plain Python reference says,
for random header sets, through the real proxy."""

import json
import socket

from hypothesis import HealthCheck, assume, example, given, settings, strategies as st

from proxy_harness import Harness, count_responses
from sluiceway.proxy import HttpPeer, ProxyHttp

HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade"}
NAMES = ["X-A", "x-b", "Keep-Alive", "TE", "Trailer", "Proxy-Connection", "Upgrade",
         "X-Named", "x-named", "Accept", "Expect", "Content-Type", "X-Forwarded-For", "Cookie"]
TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=8)
VALUE = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABC 0123456789=;,/", min_size=0, max_size=12)


def reference(headers, conn_tokens, edited):
    named = {t.strip().lower() for t in conn_tokens if t.strip()}
    named -= {"content-length", "transfer-encoding", "host"}
    out = []
    for n, v in headers:
        ln = n.lower()
        if ln in HOP or ln in named or ln == "expect":
            continue
        out.append([n, v.strip(" \t")])
    return out


class App(ProxyHttp):
    port = None
    edit = False

    def upstream_peer(self, session, ctx):
        return HttpPeer(("127.0.0.1", self.port))

    def upstream_request_filter(self, session, req, ctx):
        if self.edit:
            req.append_header("x-edited", "1")


APP = App()
H = None


def setup_module():
    global H
    H = Harness(APP).__enter__()


def teardown_module():
    H.__exit__(None, None, None)


def _send(headers, conn_tokens):
    lines = [b"GET /headers HTTP/1.1", b"Host: h"]
    for n, v in headers:
        lines.append(f"{n}: {v}".encode())
    if conn_tokens:
        lines.append(("Connection: " + ", ".join(conn_tokens)).encode())
    req = b"\r\n".join(lines) + b"\r\n\r\n"
    s = socket.create_connection(("127.0.0.1", H.port), timeout=5)
    try:
        s.sendall(req)
        buf = b""
        while count_responses(buf) < 1:
            c = s.recv(65536)
            if not c:
                break
            buf += c
    finally:
        s.close()
    assert buf.startswith(b"HTTP/1.1 200"), buf[:200]
    # Whitespace around a value is not part of it (RFC 9110 5.5): a head
    # forwarded as received keeps it, the origin's parser reports it.
    return [[n, v.strip(" \t")] for n, v in json.loads(buf.split(b"\r\n\r\n", 1)[1])["headers"]]


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(headers=st.lists(st.tuples(st.sampled_from(NAMES) | TOKEN.map(lambda t: "x-" + t), VALUE),
                        max_size=10),
       conn_tokens=st.lists(st.sampled_from(["close", "keep-alive", "x-named", "X-A", "upgrade",
                                             "content-length", "host", "te"]) | TOKEN, max_size=4),
       edit=st.booleans())
@example(headers=[("X-Named", "1"), ("x-named", "2"), ("X-A", "a")], conn_tokens=["x-named"], edit=False)
@example(headers=[("Expect", "100-continue")], conn_tokens=[], edit=True)
@example(headers=[("X-A", "0 ")], conn_tokens=[], edit=False)
def test_forwarded_headers_match_reference(headers, conn_tokens, edit):
    # Upgrade + Connection: upgrade is a protocol switch (tested elsewhere).
    assume(not (any(n.lower() == "upgrade" for n, v in headers)
                and any(t.strip().lower() == "upgrade" for t in conn_tokens)))
    APP.edit = edit
    got = _send(headers, conn_tokens)
    want = [["Host", "h"]] + reference(headers, conn_tokens, edit)
    if edit:
        want.append(["x-edited", "1"])
    assert got == want


RESP_NAMES = ["X-A", "x-b", "Keep-Alive", "TE", "Trailer", "Proxy-Connection", "Upgrade",
              "X-Named", "Server", "Content-Type", "Set-Cookie", "Cache-Control"]


def _get_raw(path):
    s = socket.create_connection(("127.0.0.1", H.port), timeout=5)
    try:
        s.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: h\r\n\r\n")
        buf = b""
        while count_responses(buf) < 1:
            c = s.recv(65536)
            if not c:
                break
            buf += c
    finally:
        s.close()
    return buf


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(headers=st.lists(st.tuples(st.sampled_from(RESP_NAMES) | TOKEN.map(lambda t: "x-" + t),
                                  VALUE.map(lambda v: v.strip())), max_size=8),
       conn_tokens=st.lists(st.sampled_from(["keep-alive", "x-named", "X-A", "server"]) | TOKEN,
                            max_size=3))
@example(headers=[("X-Named", "1"), ("Server", "s")], conn_tokens=["x-named", "server"])
def test_response_headers_match_reference(headers, conn_tokens):
    from urllib.parse import quote
    APP.edit = False
    hdrs = [list(h) for h in headers]
    if conn_tokens:
        hdrs.append(["Connection", ", ".join(conn_tokens)])
    buf = _get_raw("/resp-headers?h=" + quote(json.dumps(hdrs)))
    head = buf.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    assert head[0].startswith("HTTP/1.1 200")
    got = [line.split(": ", 1) if ": " in line else [line.rstrip(":"), ""] for line in head[1:]]
    got = [[n, v] for n, v in got]
    want = reference(headers, conn_tokens, False) + [["Content-Length", "2"]]
    assert got == want
    assert buf.endswith(b"rh")
