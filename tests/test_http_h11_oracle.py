"""Differential test: sluiceway's compiled parser against h11.

Hypothesis builds valid requests and responses (random methods, targets,
header sets, bodies in both framings, trailers) and, on some of them, one
defect. Both parsers read the same bytes, ours in random fragments. They must
agree on accept/reject and, when both accept, on every parsed field and on the
body bytes.

Where we are stricter than h11 by design, the generator knows which rule it
broke and the test requires our rejection and names the rule (``STRICTER``).
"""

import h11
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sluiceway._http import NEED_DATA, EndOfMessage, RequestParser, ResponseParser
from sluiceway.errors import ParseError

# Rules where we reject what h11 accepts, each with the reason.
STRICTER = {
    "unknown_method": "an unknown method is answered 501 (llhttp knows the registered methods)",
    "bad_version": "only HTTP/1.0 and 1.1 are spoken (505); h11 takes any d.d",
    "obs_fold": "obsolete line folding is a smuggling vector (RFC 9112 5.2 allows rejecting it)",
    "dup_cl_same": "any repeated Content-Length is rejected, even with equal values",
    "cl_te": "Content-Length with Transfer-Encoding is rejected, not resolved (RFC 9112 6.3)",
    "bare_lf": "line endings must be CRLF; h11 accepts a bare LF",
    "bad_chunk_size": "a chunk size over 2**64-1 is rejected at once; h11 waits for that many bytes",
    "target_chars": "request-target bytes outside RFC 3986 (\", <, >, {, }, |, \\, ^, `) are rejected",
    "bad_host": "a Host that is not RFC 3986 host[:port] is rejected (RFC 9112 3.2); h11 checks only its count",
    "te_http10": "Transfer-Encoding in an HTTP/1.0 request is rejected (RFC 9112 6.1: its framing is faulty)",
    "target_userinfo": "userinfo in an absolute-form target is rejected (RFC 9110 4.2.4)",
}

# Rules where h11 rejects what we accept, each with the reason. (None now: a
# missing Host on HTTP/1.1, two Hosts and an empty Transfer-Encoding are
# rejected by both.)
LAXER = {}

TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-", min_size=1,
                max_size=12).filter(lambda s: s.lower() not in (
                    "content-length", "transfer-encoding", "host", "connection", "upgrade", "expect",
                    "te", "trailer", "keep-alive"))
VALUE_CHARS = [chr(c) for c in range(0x21, 0x7F)] + [" ", "\t"] + [chr(c) for c in (0x80, 0xA0, 0xE9, 0xFF)]
VALUE = st.text(alphabet=VALUE_CHARS, max_size=24).map(lambda s: s.strip(" \t"))
PATH_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@%/"
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "PURGE", "PROPFIND"]
DEFECTS = ["none"] * 6 + [
    "unknown_method", "bad_version", "obs_fold", "dup_cl_same", "dup_cl_diff", "cl_te",
    "bare_lf", "space_before_colon", "nul_in_value", "te_gzip", "missing_host", "target_chars",
    "truncate", "bad_chunk_size", "ctl_in_name", "dup_host", "empty_host", "bad_host", "absolute_form",
    "te_empty", "te_http10", "target_userinfo",
]
# Host values that are not RFC 3986 host[:port] (h11 takes any field value).
BAD_HOSTS = ["a b", "a@b", "[::1", "a:80:80", "a/b", "%zz", ":80", "a:8o", "[::1]x", "\xe9.example",
             "a\tb", "[v1]", "a?b"]
HOSTS = ["example.test", "a.example:8080", "127.0.0.1", "[::1]:8080", "[v1.x]", "a%41.example", "x:"]


def enc(s):
    return s.encode("latin-1")


@st.composite
def messages(draw, kind):
    """Return (bytes, defect, is_request)."""
    defect = draw(st.sampled_from(DEFECTS))
    if kind == "response" and defect in ("unknown_method", "missing_host", "target_chars", "dup_host",
                                         "empty_host", "bad_host", "absolute_form", "te_http10",
                                         "target_userinfo"):
        defect = "none"
    headers = draw(st.lists(st.tuples(TOKEN, VALUE), max_size=8))
    framing = draw(st.sampled_from(["none", "cl", "chunked"]))
    body = draw(st.binary(max_size=200))
    version = "1.1" if draw(st.booleans()) else "1.0"
    if defect == "bad_version":
        version = draw(st.sampled_from(["1.2", "2.0", "0.9", "3.1"]))
    if kind == "request":
        method = draw(st.sampled_from(METHODS))
        if defect == "unknown_method":
            method = draw(st.sampled_from(["FROB", "GETX", "BREW", "XYZZY"]))
        target = "/" + draw(st.text(alphabet=PATH_CHARS.replace("%", ""), max_size=30))
        if draw(st.booleans()):
            target += "?" + draw(st.text(alphabet=PATH_CHARS.replace("%", "") + "?", max_size=20))
        if defect == "target_chars":
            target += draw(st.sampled_from(['"', "<", ">", "{", "}", "|", "\\", "^", "`"]))
        host = draw(st.sampled_from(HOSTS))
        if defect in ("absolute_form", "target_userinfo"):
            userinfo = "u:p@" if defect == "target_userinfo" else ""
            target = draw(st.sampled_from(["http", "https", "HTTP"])) + "://" + userinfo + host + target
        start = f"{method} {target} HTTP/{version}"
        if defect == "empty_host":
            host = ""  # allowed: an origin-form target names no authority
        elif defect == "bad_host":
            host = draw(st.sampled_from(BAD_HOSTS))
        if defect != "missing_host":
            headers.insert(draw(st.integers(0, len(headers))), ("Host", host))
        if defect == "dup_host":
            headers.insert(draw(st.integers(0, len(headers))),
                           ("Host", draw(st.sampled_from([host, "other.example"]))))
        if method in ("GET", "HEAD", "OPTIONS", "DELETE") and framing == "none":
            body = b""
    else:
        status = draw(st.sampled_from([200, 201, 301, 404, 500, 503]))
        start = f"HTTP/{version} {status} {draw(st.sampled_from(['OK', 'Not Found', 'Whatever it says', '']))}"
        if framing == "none":
            framing = "cl"  # close-delimited bodies are tested separately
    if defect == "missing_host" and version != "1.1":
        defect = "none"  # only HTTP/1.1 requires Host
    if defect == "te_http10":
        if kind == "request" and version == "1.0":
            framing = "chunked"
        else:
            defect = "none"
    if version != "1.1" and framing == "chunked" and defect != "te_http10":
        framing = "cl"
    if framing == "none" and kind == "request":
        body = b""
    trailers = []
    if framing == "cl":
        headers.append(("Content-Length", str(len(body))))
        payload = body
    elif framing == "chunked":
        headers.append(("Transfer-Encoding", draw(st.sampled_from(["chunked", "Chunked", "CHUNKED"]))))
        sizes = draw(st.lists(st.integers(1, 64), max_size=5))
        payload, pos = b"", 0
        for n in sizes:
            piece = body[pos:pos + n]
            if not piece:
                break
            ext = draw(st.sampled_from(["", ";ext=1", ";a"]))
            payload += b"%x%s\r\n%s\r\n" % (len(piece), enc(ext), piece)
            pos += n
        body = body[:pos]
        trailers = draw(st.lists(st.tuples(TOKEN, VALUE), max_size=2))
        payload += b"0\r\n" + b"".join(enc(f"{k}: {v}\r\n") for k, v in trailers) + b"\r\n"
    else:
        payload = b""
    if defect == "dup_cl_same" and framing == "cl":
        headers.append(("Content-Length", str(len(body))))
    elif defect == "dup_cl_diff" and framing == "cl":
        headers.append(("Content-Length", str(len(body) + 1)))
    elif defect == "cl_te" and framing == "chunked":
        headers.insert(0, ("Content-Length", "3"))
    elif defect in ("te_gzip", "te_empty"):
        headers = [(k, v) for k, v in headers if k.lower() not in ("content-length", "transfer-encoding")]
        headers.append(("Transfer-Encoding", "gzip" if defect == "te_gzip" else ""))
        payload = b""
    elif defect in ("dup_cl_same", "dup_cl_diff", "cl_te"):
        defect = "none"
    lines = [enc(start)] + [enc(f"{k}: {v}") for k, v in headers]
    if defect == "obs_fold" and len(lines) > 1:
        lines.insert(2, b" folded")
    elif defect == "obs_fold":
        defect = "none"
    if defect == "space_before_colon":
        lines.append(b"X-Bad : 1")
    if defect == "nul_in_value":
        lines.append(b"X-Bad: a\x00b")
    if defect == "ctl_in_name":
        lines.append(b"X-B\x01d: 1")
    eol = b"\r\n"
    head = eol.join(lines) + eol + eol
    if defect == "bare_lf":
        head = head.replace(b"\r\n", b"\n", 1)
    if defect == "bad_chunk_size":
        if framing == "chunked":
            payload = b"fffffffffffffffffff\r\n" + payload
        else:
            defect = "none"
    data = head + payload
    if defect == "truncate":
        data = data[: draw(st.integers(1, len(data) - 1))]
    return data, defect, kind == "request", trailers


def h11_parse(data, is_request):
    conn = h11.Connection(h11.SERVER if is_request else h11.CLIENT)
    if not is_request:
        conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
        conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    head, body, trailers = None, b"", None
    while True:
        try:
            ev = conn.next_event()
        except h11.RemoteProtocolError as exc:
            return ("error", str(exc))
        if ev is h11.NEED_DATA or ev is h11.PAUSED:
            break
        if isinstance(ev, (h11.Request, h11.Response)):
            head = ev
        elif isinstance(ev, h11.Data):
            body += bytes(ev.data)
        elif isinstance(ev, h11.EndOfMessage):
            trailers = _raw(ev.headers)
            break
    if trailers is None:
        return ("incomplete", None)
    return ("ok", head, body, trailers)


def _raw(headers):
    # h11's Headers.raw_items() gives (original-case name, value).
    return [(bytes(k), bytes(v)) for k, v in headers.raw_items()]


def _norm(items):
    # h11 lower-cases Transfer-Encoding values; we hand them out as sent.
    return [(k, v.lower() if k.lower() == b"transfer-encoding" else v) for k, v in items]


def ours_parse(data, is_request, cuts):
    p = RequestParser() if is_request else ResponseParser()
    head, body, trailers = None, b"", None
    pieces, last = [], 0
    for c in sorted(set(cuts)) + [len(data)]:
        if last < c <= len(data):
            pieces.append(data[last:c])
            last = c
    try:
        for piece in pieces:
            p.feed(piece)
            while True:
                ev = p.next_event()
                if ev is NEED_DATA:
                    break
                if isinstance(ev, memoryview):
                    body += bytes(ev)
                elif isinstance(ev, EndOfMessage):
                    trailers = ev.trailers.raw_items()
                    raise StopIteration
                else:
                    head = ev
    except StopIteration:
        pass
    except ParseError as exc:
        return ("error", exc)
    if trailers is None:
        return ("incomplete", None)
    return ("ok", head, body, trailers)


def check(data, defect, is_request, cuts):
    theirs = h11_parse(data, is_request)
    ours = ours_parse(data, is_request, cuts)
    if defect in STRICTER:
        assert ours[0] == "error", f"we must reject ({STRICTER[defect]}): {data!r}"
        return
    if defect in LAXER:
        assert theirs[0] == "error", f"h11 expected to reject ({LAXER[defect]})"
        assert ours[0] == "ok", f"we accept ({LAXER[defect]}): {ours!r}"
        return
    assert ours[0] == theirs[0], f"accept/reject differ on {data!r}: ours={ours!r} h11={theirs!r}"
    if ours[0] != "ok":
        if ours[0] == "error":
            assert ours[1].status in (400, 414, 431, 501, 502, 505)
        return
    _, oh, obody, otrailers = ours
    _, th, tbody, ttrailers = theirs
    if is_request:
        assert enc(oh.method) == th.method
        assert oh.raw_target == th.target
    else:
        assert oh.status == th.status_code
        assert enc(oh.reason) == th.reason
    assert enc(oh.version) == th.http_version
    assert _norm(oh.headers.raw_items()) == _norm(_raw(th.headers))
    assert obody == tbody
    assert otrailers == ttrailers


@settings(max_examples=1200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(msg=messages("request"), cuts=st.lists(st.integers(0, 600), max_size=6))
@example(msg=(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", "obs_fold", True, []), cuts=[1, 2, 3])
@example(msg=(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1;a\r\nx\r\n0\r\nT: 1\r\n\r\n",
              "none", True, [("T", "1")]), cuts=list(range(70)))
def test_requests_agree_with_h11(msg, cuts):
    data, defect, is_request, _ = msg
    check(data, defect, is_request, cuts)


@settings(max_examples=900, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(msg=messages("response"), cuts=st.lists(st.integers(0, 600), max_size=6))
def test_responses_agree_with_h11(msg, cuts):
    data, defect, is_request, _ = msg
    check(data, defect, is_request, cuts)


@pytest.mark.parametrize("step", [1, 3, 1000])
def test_close_delimited_response_agrees_with_h11(step):
    data = b"HTTP/1.1 200 OK\r\nServer: t\r\n\r\n" + bytes(range(256)) * 4
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    conn.receive_data(b"")
    theirs = b""
    while True:
        ev = conn.next_event()
        if isinstance(ev, h11.Data):
            theirs += bytes(ev.data)
        if isinstance(ev, h11.EndOfMessage):
            break
    p = ResponseParser()
    ours = b""
    for i in range(0, len(data), step):
        p.feed(data[i:i + step])
        for ev in p.events():
            if isinstance(ev, memoryview):
                ours += bytes(ev)
    p.feed_eof()
    assert isinstance(p.next_event(), EndOfMessage)
    assert ours == theirs
