"""Chunked trailers through the proxy, end to end on 127.0.0.1.

The origin here is a raw-socket server (not the harness origin, whose
httptools parser does not report trailers): it records each request's head,
de-chunked body and trailer section as received, and answers with scripted
bytes, optionally in pieces written as separate TCP segments. The client side
is a raw socket too, so every byte the proxy sends is checked.
"""

import asyncio
import socket
import threading
import time

import pytest

from proxy_harness import Harness
from sluiceway.proxy import HttpPeer, ProxyHttp


# ---------------------------------------------------------------- helpers --

class _Reader:
    """Reads HTTP/1.1 messages from a socket (a small, strict test parser)."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.eof = False

    def _more(self):
        data = self.sock.recv(65536)
        if not data:
            self.eof = True
            raise EOFError
        self.buf += data

    def until(self, sep):
        while sep not in self.buf:
            self._more()
        i = self.buf.index(sep) + len(sep)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def exact(self, n):
        while len(self.buf) < n:
            self._more()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def rest(self):
        try:
            while True:
                self._more()
        except EOFError:
            pass
        out, self.buf = self.buf, b""
        return out

    def message(self, no_body=False, is_request=False):
        """One message: (head, body, trailer section or None, raw bytes of the
        body's framing as received). Trailers are b"" for a last chunk without
        fields and None when the body was not chunked."""
        head = self.until(b"\r\n\r\n")
        fields = {}
        for line in head.split(b"\r\n")[1:]:
            if line:
                n, _, v = line.partition(b":")
                fields[n.strip().lower()] = v.strip()
        if no_body:
            return head, b"", None, b""
        if fields.get(b"transfer-encoding", b"").lower() == b"chunked":
            body, raw = b"", b""
            while True:
                line = self.until(b"\r\n")
                raw += line
                size = int(line.split(b";")[0], 16)
                if size == 0:
                    break
                data = self.exact(size + 2)
                assert data.endswith(b"\r\n")
                raw += data
                body += data[:-2]
            trailers = b""
            while True:
                line = self.until(b"\r\n")
                raw += line
                if line == b"\r\n":
                    return head, body, trailers, raw
                trailers += line
        if b"content-length" in fields:
            body = self.exact(int(fields[b"content-length"]))
            return head, body, None, body
        if is_request:
            return head, b"", None, b""
        body = self.rest()
        return head, body, None, body


class RawOrigin:
    """A raw-socket origin on a thread per connection.

    ``answer(path)`` returns the response as a list of byte strings, written
    as separate TCP segments with a short pause between them. ``requests``
    records (head, body, trailers, raw body framing) per request.
    ``drop_reused``: a connection that served a request closes without
    answering the next one (a pooled connection that died).
    """

    def __init__(self, answer, drop_reused=False):
        self.answer = answer
        self.drop_reused = drop_reused
        self.requests = []
        self.connections = 0
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            self.conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        r = _Reader(c)
        served = 0
        try:
            while True:
                head, body, trailers, framing = r.message(is_request=True)
                if self.drop_reused and served:
                    c.close()
                    return
                served += 1
                self.requests.append((head, body, trailers, framing))
                path = head.split(b" ")[1].decode()
                pieces = self.answer(path)
                for i, p in enumerate(pieces):
                    if i:
                        time.sleep(0.02)
                    c.sendall(p)
        except (EOFError, OSError):
            pass
        finally:
            c.close()

    def close(self):
        self.stopped = True
        self.sock.close()
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass


def _chunked_response(trailers=b"", chunks=(b"hello", b" world"), extra_head=b""):
    out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n" + extra_head + b"\r\n"
    for c in chunks:
        out += b"%x\r\n%s\r\n" % (len(c), c)
    return out + b"0\r\n" + trailers + b"\r\n"


RESP_TRAILERS = b"X-Checksum: abc123\r\nGrpc-Status: 0\r\n"
# Trailer fields the proxy drops (a sample of each group in docs/proxy.md).
# Content-Length in trailers, and Transfer-Encoding in request trailers, never
# get this far: the parser refuses them (see the test below).
FORBIDDEN = (b"Host: evil\r\nConnection: x-t\r\nX-T: named-by-a-trailer\r\n"
             b"Keep-Alive: 1\r\nProxy-Connection: x\r\nTE: trailers\r\nTrailer: X\r\nUpgrade: h2c\r\n"
             b"Content-Type: text/evil\r\nAuthorization: Basic x\r\nCookie: a=1\r\nSet-Cookie: a=1\r\n"
             b"Cache-Control: no-store\r\nX-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\n"
             b"Content-Encoding: gzip\r\nLocation: /x\r\nRange: bytes=0-1\r\nExpect: 100-continue\r\n"
             b"If-Match: *\r\nMax-Forwards: 1\r\nDate: x\r\nVary: *\r\ncontent-range: bytes 0-1/2\r\n")
FORBIDDEN_RESP = b"Transfer-Encoding: chunked\r\n" + FORBIDDEN


def _answer(target):
    """The origin's scripted answers, by path (the query is ignored)."""
    path = target.split("?")[0]
    if path == "/trailers":
        return [_chunked_response(RESP_TRAILERS)]
    if path == "/no-trailers":
        return [_chunked_response()]
    if path == "/forbidden":
        return [_chunked_response(b"X-Kept: 1\r\n" + FORBIDDEN_RESP + b"X-Hop: h\r\nX-Also-Kept: 2\r\n",
                                  extra_head=b"Connection: x-hop\r\n")]
    if path == "/only-forbidden":
        return [_chunked_response(FORBIDDEN_RESP)]
    if path == "/trailer-close":
        return [_chunked_response(b"X-Last: 1\r\nConnection: close\r\n")]
    if path == "/trailer-length":
        return [_chunked_response(b"Content-Length: 99\r\n")]
    if path == "/split":
        # The trailer section in pieces: cut inside a name, inside a value,
        # between a field's CR and LF, and before the final CRLF.
        full = _chunked_response(b"X-Long-Trailer-Name: " + b"v" * 200 + b"\r\nX-Second: two\r\n")
        cuts = [full.index(b"0\r\n") + 5, full.index(b"X-Long") + 9, full.index(b"vvv") + 100,
                full.index(b"X-Second") - 1, len(full) - 1]
        pieces, prev = [], 0
        for c in cuts:
            pieces.append(full[prev:c])
            prev = c
        return pieces + [full[prev:]]
    if path == "/length":
        return [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"]
    return [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"]


class App(ProxyHttp):
    """Proxies to the raw origin; records what hooks see of the trailers."""

    def __init__(self, port):
        self.port = port
        self.seen = []

    def upstream_peer(self, session, ctx):
        return HttpPeer(("127.0.0.1", self.port))

    def logging(self, session, error, ctx):
        self.seen.append((session.req_header.uri, (session.request_trailers,
                                                    session.upstream_trailers, error)))

    def logged(self, target):
        """What `logging` saw for the request to target (make it unique). It
        runs just after the response's last bytes are written: wait for it."""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            for t, entry in reversed(self.seen):
                if t == target:
                    return entry
            time.sleep(0.005)
        raise AssertionError(f"logging never ran for {target!r}")


class FilterApp(App):
    """Body filters that change the body (upper case), sync or suspending."""

    def __init__(self, port, suspend=False):
        super().__init__(port)
        self.suspend = suspend
        self.at_end = []

    async def request_body_filter(self, session, body, end, ctx):
        if self.suspend:
            await asyncio.sleep(0.001)
        if end:
            self.at_end.append(("request", session.request_trailers))
        return body.upper()

    async def response_body_filter(self, session, body, end, ctx):
        if self.suspend:
            await asyncio.sleep(0.001)
        if end:
            self.at_end.append(("response", session.upstream_trailers))
        return body.upper()


@pytest.fixture(scope="module")
def origin():
    o = RawOrigin(_answer)
    yield o
    o.close()


@pytest.fixture(scope="module")
def app(origin):
    return App(origin.port)


@pytest.fixture(scope="module")
def h(app):
    with Harness(app) as harness:
        yield harness


def _client(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s, _Reader(s)


def _exchange(port, request, no_body=False):
    s, r = _client(port)
    try:
        s.sendall(request)
        return r.message(no_body=no_body)
    finally:
        s.close()


def _chunked_request(path, trailers=b"", chunks=(b"hello", b" world"), extra_head=b"",
                     method=b"POST"):
    out = (method + b" " + path + b" HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
           + extra_head + b"\r\n")
    for c in chunks:
        out += b"%x\r\n%s\r\n" % (len(c), c)
    return out + b"0\r\n" + trailers + b"\r\n"


def _last_request(origin, path):
    for req in reversed(origin.requests):
        if req[0].split(b" ")[1] == path:
            return req
    raise AssertionError(f"{path!r} never reached the origin")


# ------------------------------------------------------------------ tests --

def test_request_trailers_reach_the_origin(h, origin, app):
    trailers = b"X-Checksum: abc123\r\nX-Count: 2\r\n"
    head, body, _, _ = _exchange(h.port, _chunked_request(b"/req-trailers", trailers))
    assert head.startswith(b"HTTP/1.1 200")
    assert body == b"ok"
    uhead, ubody, utrailers, _ = _last_request(origin, b"/req-trailers")
    assert b"transfer-encoding: chunked" in uhead.lower()
    assert ubody == b"hello world"
    assert utrailers == trailers
    assert app.logged("/req-trailers")[0] == [(b"X-Checksum", b"abc123"), (b"X-Count", b"2")]


def test_response_trailers_reach_an_http11_client(h, app):
    head, body, trailers, raw = _exchange(h.port, b"GET /trailers?v=11 HTTP/1.1\r\nHost: t\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"transfer-encoding: chunked" in head.lower()
    assert body == b"hello world"
    assert trailers == RESP_TRAILERS
    assert raw.endswith(b"0\r\n" + RESP_TRAILERS + b"\r\n")
    seen = app.logged("/trailers?v=11")
    assert seen[1] == [(b"X-Checksum", b"abc123"), (b"Grpc-Status", b"0")]
    assert seen[0] is None  # a request without a body has no trailers


def test_forbidden_response_trailer_fields_are_removed(h):
    _, body, trailers, _ = _exchange(h.port, b"GET /forbidden HTTP/1.1\r\nHost: t\r\n\r\n")
    assert body == b"hello world"
    # X-Hop is named by the response head's Connection header: hop-by-hop.
    assert trailers == b"X-Kept: 1\r\nX-Also-Kept: 2\r\n"


def test_forbidden_request_trailer_fields_are_removed(h, origin):
    _exchange(h.port, _chunked_request(
        b"/req-forbidden", b"X-Kept: 1\r\n" + FORBIDDEN + b"X-Hop: h\r\nX-Also-Kept: 2\r\n",
        extra_head=b"Connection: x-hop\r\n"))
    _, ubody, utrailers, _ = _last_request(origin, b"/req-forbidden")
    assert ubody == b"hello world"
    assert utrailers == b"X-Kept: 1\r\nX-Also-Kept: 2\r\n"


def test_only_forbidden_fields_leave_a_plain_last_chunk(h, origin, app):
    _, body, trailers, raw = _exchange(h.port, b"GET /only-forbidden HTTP/1.1\r\nHost: t\r\n\r\n")
    assert body == b"hello world" and trailers == b""
    assert raw.endswith(b"\r\n0\r\n\r\n")
    assert app.logged("/only-forbidden")[1] is None
    _exchange(h.port, _chunked_request(b"/req-only-forbidden", FORBIDDEN))
    _, _, utrailers, uraw = _last_request(origin, b"/req-only-forbidden")
    assert utrailers == b"" and uraw.endswith(b"\r\n0\r\n\r\n")


def test_http10_client_gets_the_body_without_trailers(h, app):
    s, r = _client(h.port)
    try:
        s.sendall(b"GET /trailers?v=10 HTTP/1.0\r\nHost: t\r\n\r\n")
        head = r.until(b"\r\n\r\n")
        body = r.rest()  # close-delimited: the proxy closes after the body
    finally:
        s.close()
    assert head.startswith(b"HTTP/1.1 200")
    low = head.lower()
    assert b"transfer-encoding" not in low and b"content-length" not in low
    assert b"connection: close" in low
    assert body == b"hello world"
    # Still readable by the hooks, though the client could not get them.
    assert app.logged("/trailers?v=10")[1] == [(b"X-Checksum", b"abc123"), (b"Grpc-Status", b"0")]


def test_bodies_without_trailers_are_byte_identical(h, origin):
    # Response: chunked in, chunked out, the same chunks and a bare last chunk.
    head, body, trailers, raw = _exchange(h.port, b"GET /no-trailers HTTP/1.1\r\nHost: t\r\n\r\n")
    assert raw == b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    assert trailers == b""
    # Response with a length: forwarded as it is.
    head, body, trailers, raw = _exchange(h.port, b"GET /length HTTP/1.1\r\nHost: t\r\n\r\n")
    assert b"content-length: 5" in head.lower() and body == b"hello" and trailers is None
    # Request: the same chunk framing reaches the origin.
    _exchange(h.port, _chunked_request(b"/req-plain"))
    uhead, ubody, utrailers, uraw = _last_request(origin, b"/req-plain")
    assert b"transfer-encoding: chunked" in uhead.lower() and ubody == b"hello world"
    assert uraw == b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    assert utrailers == b""


def test_response_trailer_section_split_across_reads(h):
    _, body, trailers, _ = _exchange(h.port, b"GET /split HTTP/1.1\r\nHost: t\r\n\r\n")
    assert body == b"hello world"
    assert trailers == b"X-Long-Trailer-Name: " + b"v" * 200 + b"\r\nX-Second: two\r\n"


def test_request_trailer_section_sent_byte_by_byte(h, origin):
    trailers = b"X-Checksum: abc123\r\nX-Second: two\r\n"
    req = _chunked_request(b"/req-bytewise", trailers)
    s, r = _client(h.port)
    try:
        cut = req.index(b"0\r\n")
        s.sendall(req[:cut])
        for i in range(cut, len(req)):
            s.sendall(req[i:i + 1])
            time.sleep(0.002)
        _, body, _, _ = r.message()
    finally:
        s.close()
    assert body == b"ok"
    _, ubody, utrailers, _ = _last_request(origin, b"/req-bytewise")
    assert ubody == b"hello world" and utrailers == trailers


def test_keep_alive_continues_after_trailers_both_ways(h, origin):
    before = origin.connections
    s, r = _client(h.port)
    try:
        for i in range(3):
            s.sendall(_chunked_request(b"/trailers", b"X-N: %d\r\n" % i))
            head, body, trailers, _ = r.message()
            assert head.startswith(b"HTTP/1.1 200") and body == b"hello world"
            assert trailers == RESP_TRAILERS
            assert _last_request(origin, b"/trailers")[2] == b"X-N: %d\r\n" % i
        # a pipelined pair, the first with trailers
        s.sendall(_chunked_request(b"/req-pipe", b"X-P: 1\r\n") + b"GET /length HTTP/1.1\r\nHost: t\r\n\r\n")
        assert r.message()[1] == b"ok"
        assert r.message()[1] == b"hello"
    finally:
        s.close()
    # The upstream connection was reused: the trailers were consumed exactly.
    assert origin.connections - before <= 1


@pytest.mark.parametrize("suspend", [False, True], ids=["sync", "suspending"])
def test_body_filters_leave_trailers_unchanged(suspend):
    o = RawOrigin(_answer)
    app = FilterApp(o.port, suspend=suspend)
    try:
        with Harness(app) as h:
            _, body, trailers, _ = _exchange(h.port, _chunked_request(
                b"/trailers", b"X-Checksum: req\r\n"))
            assert body == b"HELLO WORLD"
            assert trailers == RESP_TRAILERS
            _, ubody, utrailers, _ = _last_request(o, b"/trailers")
            assert ubody == b"HELLO WORLD" and utrailers == b"X-Checksum: req\r\n"
            # both end_of_stream calls see the trailers
            assert ("request", [(b"X-Checksum", b"req")]) in app.at_end
            assert ("response", [(b"X-Checksum", b"abc123"), (b"Grpc-Status", b"0")]) in app.at_end
    finally:
        o.close()


def test_trailers_are_sent_again_when_a_pooled_connection_was_dead():
    o = RawOrigin(_answer, drop_reused=True)
    app = App(o.port)
    try:
        with Harness(app) as h:
            assert _exchange(h.port, b"GET /length HTTP/1.1\r\nHost: t\r\n\r\n")[1] == b"hello"
            # (a PUT: idempotent, so it may be sent again)
            _, body, _, _ = _exchange(h.port, _chunked_request(b"/req-replay", b"X-Replayed: yes\r\n",
                                                               method=b"PUT"))
            assert body == b"ok"
            _, ubody, utrailers, _ = _last_request(o, b"/req-replay")
            assert ubody == b"hello world" and utrailers == b"X-Replayed: yes\r\n"
            assert o.connections == 2
    finally:
        o.close()


def test_trailer_values_keep_every_byte(h, origin):
    # obs-text and inner whitespace survive; trailing whitespace is trimmed
    # by the parser, as for header values.
    trailers = b"X-Bin: a\xe9 \tb\r\nx-lower: v\r\nX-Empty:\r\n"
    _exchange(h.port, _chunked_request(b"/req-bytes", trailers + b"X-Trail: t \t\r\n"))
    _, _, utrailers, _ = _last_request(origin, b"/req-bytes")
    assert utrailers == b"X-Bin: a\xe9 \tb\r\nx-lower: v\r\nX-Empty: \r\nX-Trail: t\r\n"


def test_a_connection_close_trailer_ends_the_connection(h, origin):
    # From the upstream: that connection is not pooled (the parser would take
    # no further response on it), and the next request still succeeds.
    _exchange(h.port, b"GET /length HTTP/1.1\r\nHost: t\r\n\r\n")  # one pooled connection
    before = origin.connections
    _, body, trailers, _ = _exchange(h.port, b"GET /trailer-close HTTP/1.1\r\nHost: t\r\n\r\n")
    assert body == b"hello world" and trailers == b"X-Last: 1\r\n"
    assert _exchange(h.port, b"GET /length HTTP/1.1\r\nHost: t\r\n\r\n")[1] == b"hello"
    assert origin.connections == before + 1
    # From the client: answered with Connection: close, then closed.
    s, r = _client(h.port)
    try:
        s.sendall(_chunked_request(b"/req-close", b"X-Last: 1\r\nConnection: close\r\n"))
        head, body, _, _ = r.message()
        assert b"connection: close" in head.lower() and body == b"ok"
        assert r.rest() == b""  # closed
    finally:
        s.close()
    assert _last_request(origin, b"/req-close")[2] == b"X-Last: 1\r\n"


def test_content_length_in_trailers_is_refused(h, origin):
    # The parser refuses a trailer Content-Length as it would in a chunked
    # head: 400 for a request, whose upstream connection is closed before the
    # request is complete...
    out = _exchange(h.port, _chunked_request(b"/req-cl", b"Content-Length: 99\r\n"), no_body=True)
    assert out[0].startswith(b"HTTP/1.1 400")
    assert not any(req[0].split(b" ")[1] == b"/req-cl" for req in origin.requests)
    # ...and an invalid response from the upstream, which the client learns
    # from the connection closing before the end of the chunked body.
    s, r = _client(h.port)
    try:
        s.sendall(b"GET /trailer-length HTTP/1.1\r\nHost: t\r\n\r\n")
        with pytest.raises(EOFError):
            r.message()
    finally:
        s.close()


def test_trailers_follow_a_body_read_before_the_upstream_was_chosen():
    # request_filter reads the whole body first (read_request_body): the end
    # of the request, and its trailers, are seen before the head goes up.
    class Reader(App):
        async def request_filter(self, session, ctx):
            chunks = []
            while True:
                chunk = await session.read_request_body()
                if chunk is None:
                    break
                chunks.append(chunk)
            self.read = b"".join(chunks)
            return False

    o = RawOrigin(_answer)
    app = Reader(o.port)
    try:
        with Harness(app) as h:
            _, body, _, _ = _exchange(h.port, _chunked_request(b"/req-read", b"X-Read: 1\r\n"))
            assert body == b"ok" and app.read == b"hello world"
            _, ubody, utrailers, _ = _last_request(o, b"/req-read")
            assert ubody == b"hello world" and utrailers == b"X-Read: 1\r\n"
            assert app.logged("/req-read")[0] == [(b"X-Read", b"1")]
    finally:
        o.close()
