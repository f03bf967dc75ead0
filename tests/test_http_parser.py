"""The compiled HTTP/1.x parser: API, framing, fragmentation, limits, errors."""

import gc
import subprocess
import sys
import textwrap

import pytest

from sluiceway._http import (CONNECTION_CLOSED, END_OF_MESSAGE, NEED_DATA, UPGRADED, EndOfMessage,
                             Headers, RequestHead, RequestParser, ResponseHead, ResponseParser)
from sluiceway.errors import Error, ParseError

from sluiceway.testing import BROWSER_REQUEST as BROWSER


def parse_all(parser, data, step=None):
    """Feed data (whole, or `step` bytes at a time); return the events with
    bodies as bytes and heads summarised."""
    out = []
    chunks = [data] if step is None else [data[i:i + step] for i in range(0, len(data), step)]
    for chunk in chunks:
        parser.feed(chunk)
        for ev in parser.events():
            out.append(ev)
    return out


def summary(events):
    res = []
    body = b""
    for ev in events:
        if isinstance(ev, memoryview):
            body += bytes(ev)
            continue
        if body:
            res.append(("body", body))
            body = b""
        if isinstance(ev, RequestHead):
            res.append(("req", ev.method, ev.target, ev.version, ev.headers.raw_items(),
                        ev.content_length, ev.chunked, ev.keep_alive, ev.upgrade))
        elif isinstance(ev, ResponseHead):
            res.append(("resp", ev.status, ev.reason, ev.version, ev.headers.raw_items(),
                        ev.content_length, ev.chunked, ev.keep_alive))
        elif isinstance(ev, EndOfMessage):
            res.append(("end", ev.trailers.raw_items()))
        else:
            res.append(ev)
    if body:
        res.append(("body", body))
    return res


def req_error(data, **limits):
    p = RequestParser(**limits)
    with pytest.raises(ParseError) as info:
        parse_all(p, data)
    return info.value


# ---- heads ----------------------------------------------------------------

def test_browser_request_fields():
    p = RequestParser()
    p.feed(BROWSER)
    head = p.next_event()
    assert isinstance(head, RequestHead)
    assert head.method == "GET"
    assert head.target == "/search/results?q=sluiceway&page=2"
    assert head.raw_target == b"/search/results?q=sluiceway&page=2"
    assert head.path == "/search/results"
    assert head.query == "q=sluiceway&page=2"
    assert head.version == "1.1"
    assert len(head.headers) == 12
    assert head.headers.get("x-api-key") == "k-123"
    assert head.headers.get(b"X-API-KEY") == "k-123"
    assert head.headers.get_bytes("host") == b"www.example.com"
    assert head.headers["COOKIE"] == "session=4f2a9c1e; theme=dark"
    assert "sec-fetch-mode" in head.headers and "nope" not in head.headers and 3 not in head.headers
    assert head.headers.get("missing", "dflt") == "dflt"
    with pytest.raises(KeyError):
        head.headers["missing"]
    assert list(head.headers)[:2] == ["Host", "User-Agent"]  # wire order, original case
    assert head.keep_alive and not head.upgrade and not head.chunked
    assert head.content_length is None
    assert head.raw() == BROWSER
    assert p.next_event() is END_OF_MESSAGE
    assert p.next_event() is NEED_DATA


def test_header_api_repeats_and_latin1():
    p = RequestParser()
    p.feed(b"GET / HTTP/1.1\r\nHost: h\r\nSet: a\r\nset: b\r\nX-L: caf\xe9\r\nEmpty:\r\n\r\n")
    h = p.next_event().headers
    assert h.getall("SET") == ["a", "b"]
    assert h.get("x-l") == "caf\u00e9" and h.get_bytes("x-l") == b"caf\xe9"
    assert h.get("empty") == ""
    assert h.items()[1] == ("Set", "a")
    assert h.keys() == ["Host", "Set", "set", "X-L", "Empty"]
    with pytest.raises(TypeError, match="str or bytes"):
        h.get(12)
    with pytest.raises(TypeError):
        Headers()


def test_header_value_whitespace_is_trimmed_and_inner_kept():
    p = RequestParser()
    p.feed(b"GET / HTTP/1.1\r\nHost: h\r\nX:  a \t b \t \r\n\r\n")
    assert p.next_event().headers.get("x") == "a \t b"


def test_absolute_form_target_and_asterisk():
    p = RequestParser()
    p.feed(b"GET http://example.com:8080/a/b?c=d HTTP/1.1\r\nHost: example.com\r\n\r\n"
           b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n"
           b"GET http://example.com HTTP/1.1\r\nHost: example.com\r\n\r\n")
    a = p.next_event()
    assert (a.path, a.query) == ("/a/b", "c=d")
    assert p.next_event() is END_OF_MESSAGE
    star = p.next_event()
    assert star.path == "*" and star.query == ""
    p.next_event()
    assert p.next_event().path == "/"


def test_http10_keep_alive_rules():
    heads = []
    for data in (b"GET / HTTP/1.0\r\n\r\n", b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
                 b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"):
        p = RequestParser()
        p.feed(data)
        heads.append(p.next_event())
    assert [h.keep_alive for h in heads] == [False, True, False]
    assert heads[0].version == "1.0"


def test_bytes_after_a_closing_message_are_rejected():
    # After "Connection: close" nothing may follow on that connection.
    err = req_error(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\n\r\n")
    assert err.status == 400


def test_response_fields_and_reason():
    p = ResponseParser()
    p.feed(b"HTTP/1.1 404 Not Found\r\nServer: x\r\nContent-Length: 3\r\n\r\nabc")
    assert summary(p.events()) == [
        ("resp", 404, "Not Found", "1.1", [(b"Server", b"x"), (b"Content-Length", b"3")], 3, False, True),
        ("body", b"abc"), ("end", [])]


# ---- bodies ----------------------------------------------------------------

def test_content_length_body_is_a_view_not_a_copy():
    data = b"POST /u HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
    p = RequestParser()
    p.feed(data)
    p.next_event()
    body = p.next_event()
    assert isinstance(body, memoryview) and body.readonly and bytes(body) == b"hello"
    assert body.obj is data  # no copy of the fed bytes


def test_chunked_with_extensions_and_trailers():
    data = (b"POST /u HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;name=val\r\nhello\r\n6\r\n world\r\n0\r\nChecksum: abc\r\nX-T:  two \r\n\r\n")
    for step in (None, 1, 2, 7):
        ev = summary(parse_all(RequestParser(), data, step))
        assert ev[0][0] == "req" and ev[0][6] is True
        assert ev[1:] == [("body", b"hello world"), ("end", [(b"Checksum", b"abc"), (b"X-T", b"two")])]


def test_close_delimited_response_and_eof():
    p = ResponseParser()
    p.feed(b"HTTP/1.0 200 OK\r\n\r\npart one, ")
    p.feed(b"part two")
    evs = summary(p.events())
    assert evs[0][0] == "resp" and evs[0][7] is False  # not keep-alive
    assert evs[1] == ("body", b"part one, part two")
    p.feed_eof()
    assert p.next_event() is END_OF_MESSAGE
    assert p.next_event() is CONNECTION_CLOSED
    with pytest.raises(RuntimeError, match="feed_eof"):
        p.feed(b"x")


def test_eof_between_messages_and_mid_message():
    p = RequestParser()
    p.feed(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    list(p.events())
    p.feed_eof()
    assert p.next_event() is CONNECTION_CLOSED
    p = RequestParser()
    p.feed(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc")
    list(p.events())
    p.feed_eof()
    with pytest.raises(ParseError, match="closed before the request was complete") as info:
        p.next_event()
    assert info.value.status == 400
    p = ResponseParser()
    p.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    list(p.events())
    p.feed_eof()
    with pytest.raises(ParseError) as info:
        p.next_event()
    assert info.value.status == 502 and info.value.source == "upstream"


@pytest.mark.parametrize("status", [204, 304, 100, 103])
def test_responses_without_body(status):
    p = ResponseParser()
    p.feed(b"HTTP/1.1 %d X\r\nContent-Length: 3\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" % status)
    evs = summary(p.events())
    assert [e[0] for e in evs] == ["resp", "end", "resp", "body", "end"]
    assert evs[0][1] == status and evs[3] == ("body", b"ok")


def test_response_to_head_has_no_body():
    p = ResponseParser()
    p.head_request = True
    p.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    evs = summary(p.events())
    assert [e[0] for e in evs] == ["resp", "end"] and evs[0][5] == 1000
    assert p.head_request


def test_upgrade_and_connect_leave_the_rest_unparsed():
    p = RequestParser()
    p.feed(b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x05hello")
    head = p.next_event()
    assert head.upgrade
    assert p.next_event() is END_OF_MESSAGE
    assert p.next_event() is UPGRADED
    assert p.unconsumed() == b"\x81\x05hello"
    with pytest.raises(RuntimeError, match="upgraded"):
        p.feed(b"more")
    p = RequestParser()
    p.feed(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n\x16\x03")
    head = p.next_event()
    assert head.method == "CONNECT" and head.upgrade and head.target == "example.com:443" and head.path == ""
    assert p.next_event() is END_OF_MESSAGE and p.next_event() is UPGRADED
    assert p.unconsumed() == b"\x16\x03"


# ---- pipelining and fragmentation ----------------------------------------

PIPELINE = (
    b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n"
    b"POST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nbody"
    b"PUT /3 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nT: 1\r\n\r\n"
    + BROWSER
)


def test_pipelined_requests_come_out_in_order():
    evs = summary(parse_all(RequestParser(), PIPELINE))
    heads = [e for e in evs if e[0] == "req"]
    assert [h[2] for h in heads] == ["/1", "/2", "/3", "/search/results?q=sluiceway&page=2"]
    assert ("body", b"body") in evs and ("body", b"abc") in evs
    assert [e for e in evs if e[0] == "end"][2] == ("end", [(b"T", b"1")])


def test_every_split_point_gives_the_same_result():
    whole = summary(parse_all(RequestParser(), PIPELINE))
    for cut in range(1, len(PIPELINE)):
        p = RequestParser()
        evs = parse_all(p, PIPELINE[:cut]) + parse_all(p, PIPELINE[cut:])
        assert summary(evs) == whole, cut


@pytest.mark.parametrize("step", [1, 2, 3, 5, 13, 64])
def test_fragmented_feeds_match_whole(step):
    assert summary(parse_all(RequestParser(), PIPELINE, step)) == summary(parse_all(RequestParser(), PIPELINE))
    resp = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nServer: s\r\n\r\n"
            b"4\r\nwiki\r\n5\r\npedia\r\n0\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n")
    assert summary(parse_all(ResponseParser(), resp, step)) == summary(parse_all(ResponseParser(), resp))


def test_feeding_before_draining_keeps_order():
    p = RequestParser()
    p.feed(b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HT")
    assert p.next_event().target == "/1"
    p.feed(b"TP/1.1\r\nHost: h\r\n\r\n")  # the unread tail stays in front
    evs = summary(p.events())
    assert evs[0] == ("end", []) and evs[1][2] == "/2"


def test_byte_at_a_time_head_is_not_quadratic():
    # A 30 KiB head fed byte by byte: the gather buffer grows geometrically.
    data = b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X-Pad: " + b"a" * 30000 + b"\r\n\r\n"
    p = RequestParser()
    for i in range(len(data)):
        p.feed(data[i:i + 1])
        for ev in p.events():
            if isinstance(ev, RequestHead):
                assert len(ev.headers.get("x-pad")) == 30000
                assert ev.raw() == data


# ---- limits ----------------------------------------------------------------

def test_uri_too_long_is_414():
    err = req_error(b"GET /" + b"a" * 100 + b" HTTP/1.1\r\nHost: h\r\n\r\n", max_url_size=64)
    assert err.status == 414 and "URI" in str(err)


def test_head_too_large_is_431_whole_and_fragmented():
    data = b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"a" * 2000 + b"\r\n\r\n"
    err = req_error(data, max_head_size=1024)
    assert err.status == 431 and err.reason.startswith("request head too large")
    p = RequestParser(max_head_size=1024)
    with pytest.raises(ParseError) as info:
        for i in range(0, len(data), 10):
            p.feed(data[i:i + 10])
            list(p.events())
    assert info.value.status == 431
    # A head still incomplete at the limit is refused without waiting for more.
    p = RequestParser(max_head_size=1024)
    p.feed(b"GET / HTTP/1.1\r\nX: " + b"a" * 1100)
    with pytest.raises(ParseError, match="too large"):
        p.next_event()


def test_too_many_headers_is_431():
    data = b"GET / HTTP/1.1\r\nHost: h\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(19)) + b"\r\n"
    err = req_error(data, max_headers=10)
    assert err.status == 431 and "too many header fields" in err.reason
    assert len(parse_all(RequestParser(max_headers=20), data)) == 2


@pytest.mark.parametrize("step", [1, 7, 100000])
def test_many_fields_grow_the_field_array(step):
    """A parser starts with room for a few fields and grows to the limit:
    fields and trailers past the first arrays come out right, however the
    bytes are split, and message after message on one parser."""
    fields = b"".join(b"X-%d: v%d\r\n" % (i, i) for i in range(120))
    head = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n" + fields + b"\r\n"
    trailers = b"".join(b"T-%d: t%d\r\n" % (i, i) for i in range(60))
    data = (head + b"1\r\na\r\n0\r\n" + trailers + b"\r\n") * 2
    p = RequestParser(max_headers=128)
    heads, ends = [], []
    for i in range(0, len(data), step):
        p.feed(data[i:i + step])
        for ev in p.events():
            if isinstance(ev, RequestHead):
                heads.append(ev)
            elif isinstance(ev, EndOfMessage):
                ends.append(ev)
    assert len(heads) == 2 and len(ends) == 2
    for h in heads:
        assert len(h.headers) == 122
        assert h.headers.get("x-0") == "v0" and h.headers.get("x-119") == "v119"
    for e in ends:
        assert len(e.trailers) == 60 and e.trailers.get("t-59") == "t59"


def test_limits_are_validated():
    with pytest.raises(ValueError, match="max_headers=0"):
        RequestParser(max_headers=0)
    with pytest.raises(ValueError, match="16 MiB"):
        ResponseParser(max_head_size=1 << 30)


# ---- request smuggling and malformed input: one test per shape -----------

def test_reject_content_length_with_transfer_encoding():
    for data in (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                 b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"):
        err = req_error(data)
        assert err.status == 400 and "Content-Length" in err.reason


def test_reject_differing_content_lengths():
    err = req_error(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd")
    assert err.status == 400 and "Content-Length" in err.reason


def test_reject_repeated_equal_content_length():
    assert req_error(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc").status == 400


def test_reject_content_length_list_and_sign():
    for v in (b"3, 3", b"+3", b"-1", b"0x10", b"3 3"):
        assert req_error(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: " + v + b"\r\n\r\nabc").status == 400


@pytest.mark.parametrize("te", [b"gzip", b"gzip, chunked", b"chunked, gzip", b"identity", b"chunked, chunked"])
def test_reject_transfer_encoding_other_than_final_chunked(te):
    err = req_error(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: " + te + b"\r\n\r\n")
    assert err.status == 501 and "Transfer-Encoding" in err.reason


def test_reject_two_transfer_encoding_fields():
    err = req_error(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert err.status in (400, 501)


def test_reject_obsolete_line_folding():
    err = req_error(b"GET / HTTP/1.1\r\nHost: h\r\nX-A: one\r\n two\r\n\r\n")
    assert err.status == 400
    assert req_error(b"GET / HTTP/1.1\r\nHost: h\r\nX-A: one\r\n\ttwo\r\n\r\n").status == 400


def test_reject_whitespace_between_name_and_colon():
    for data in (b"GET / HTTP/1.1\r\nHost : h\r\n\r\n", b"GET / HTTP/1.1\r\nHost\t: h\r\n\r\n",
                 b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n"):
        assert req_error(data).status == 400


def test_reject_leading_whitespace_before_first_header():
    assert req_error(b"GET / HTTP/1.1\r\n Host: h\r\n\r\n").status == 400


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\nHost: h\r\n\r\n",            # bare LF after the start line
    b"GET / HTTP/1.1\r\nHost: h\n\r\n",            # bare LF after a header
    b"GET / HTTP/1.1\r\nHost: h\r\n\n",            # bare LF ending the head
    b"GET / HTTP/1.1\r\nX: a\rb\r\nHost: h\r\n\r\n",  # bare CR inside a value
    b"GET / HTTP/1.1\rHost: h\r\n\r\n",             # bare CR after the start line
])
def test_reject_bare_cr_or_lf(data):
    assert req_error(data).status == 400


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x00b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x01b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x7fb\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX\x00Y: 1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX\x01: 1\r\n\r\n",
    b"GET /\x00 HTTP/1.1\r\nHost: h\r\n\r\n",
])
def test_reject_nul_and_control_bytes(data):
    assert req_error(data).status == 400


def test_reject_chunk_size_overflow():
    err = req_error(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"10000000000000000\r\n")
    assert err.status == 400 and "overflow" in err.reason.lower()


def test_reject_bad_chunk_framing():
    for body in (b"zz\r\n", b"3\r\nabcX\r\n0\r\n\r\n", b"-1\r\n"):
        assert req_error(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n" + body).status == 400


def test_reject_extra_spaces_in_request_line():
    for data in (b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n", b"GET /  HTTP/1.1\r\nHost: h\r\n\r\n"):
        err = req_error(data)
        assert err.status == 400 and "space" in err.reason


def test_unknown_method_is_501_and_garbage_is_400():
    assert req_error(b"BREW /pot HTTP/1.1\r\nHost: h\r\n\r\n").status == 501
    assert req_error(b"G\x01T / HTTP/1.1\r\n\r\n").status == 400


@pytest.mark.parametrize("version", [b"1.2", b"2.0", b"0.9", b"3.0"])
def test_unsupported_version_is_505(version):
    assert req_error(b"GET / HTTP/" + version + b"\r\nHost: h\r\n\r\n").status == 505


def test_tls_on_plain_port_has_its_own_message():
    err = req_error(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
    assert err.status == 400 and "TLS handshake" in str(err) and err.offset == 0


def test_error_carries_offset_excerpt_and_is_an_error():
    err = req_error(b"GET / HTTP/1.1\r\nHost: h\r\nBad Header: x\r\n\r\n")
    assert isinstance(err, Error) and err.source == "downstream" and not err.retryable
    assert err.offset == 28  # the space inside the name
    assert b"Bad Header" in err.excerpt and "at byte 28" in str(err)
    # Offsets count from the first byte ever fed, across pipelined messages.
    p = RequestParser()
    first = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"
    p.feed(first)
    list(p.events())
    p.feed(b"GET / HTTP/1.1\r\nX\x01: 1\r\n\r\n")
    with pytest.raises(ParseError) as info:
        list(p.events())
    assert info.value.offset == len(first) + 17


def test_parser_stays_failed_until_reset():
    p = RequestParser()
    p.feed(b"GET / HTTP/1.1\r\nX: \x00\r\n\r\n")
    with pytest.raises(ParseError):
        p.next_event()
    with pytest.raises(ParseError):
        p.next_event()
    p.reset()
    p.feed(b"GET /ok HTTP/1.1\r\nHost: h\r\n\r\n")
    assert p.next_event().target == "/ok"


def test_response_errors_map_to_502():
    p = ResponseParser()
    p.feed(b"HTTP/1.1 2x0 OK\r\n\r\n")
    with pytest.raises(ParseError) as info:
        p.next_event()
    assert info.value.status == 502 and info.value.source == "upstream"
    p = ResponseParser()
    p.feed(b"garbage\r\n\r\n")
    with pytest.raises(ParseError) as info:
        p.next_event()
    assert info.value.status == 502


def test_heads_outlive_their_parser():
    p = RequestParser()
    p.feed(b"GET /keep HTTP/1.1\r\nHost: h\r\nX: y\r\n\r\n")
    head = p.next_event()
    del p
    gc.collect()
    assert head.headers.get("x") == "y" and head.target == "/keep"


def test_no_memory_growth_over_many_messages():
    # Run in a subprocess so other tests' allocations do not blur the numbers.
    code = textwrap.dedent("""
        import tracemalloc
        from sluiceway._http import RequestParser, ResponseParser
        req = %r
        resp = b"HTTP/1.1 200 OK\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n3\\r\\nabc\\r\\n0\\r\\nT: v\\r\\n\\r\\n"
        def run(n):
            for i in range(n):
                p = RequestParser()
                for k in range(0, len(req), 97):
                    p.feed(req[k:k + 97])
                    for ev in p.events():
                        getattr(ev, "headers", None) and ev.headers.items()
                r = ResponseParser()
                r.feed(resp)
                list(r.events())
        run(2000)
        tracemalloc.start()
        a = tracemalloc.take_snapshot()
        run(20000)
        b = tracemalloc.take_snapshot()
        grown = sum(s.size_diff for s in b.compare_to(a, "filename"))
        print(grown)
    """ % BROWSER)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) < 64 * 1024


def test_crlf_between_pipelined_requests_is_not_part_of_the_next_head():
    """RFC 9112 2.2: a server skips CRLFs before a request line. They do not
    belong to the next head, whether it arrives whole or split anywhere."""
    req = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
    data = req + b"\r\n" + req + b"\r\n\r\n" + req
    for cut in range(len(data) + 1):
        p = RequestParser()
        heads = []
        for part in (data[:cut], data[cut:]):
            p.feed(part)
            heads += [e for e in p.events() if isinstance(e, RequestHead)]
        assert [h.raw() for h in heads] == [req, req, req], cut


# ---- Host, authority and Transfer-Encoding (RFC 9112 3.2, 6.1): one test per shape

def req_error_every_way(data, **limits):
    """The ParseError for data fed whole and byte at a time: the same status,
    reason and offset both ways."""
    whole = req_error(data, **limits)
    p = RequestParser(**limits)
    with pytest.raises(ParseError) as info:
        parse_all(p, data, step=1)
    assert (info.value.status, info.value.reason, info.value.offset) == (whole.status, whole.reason, whole.offset)
    return whole


def heads_every_way(data):
    """The request heads of data fed whole and byte at a time (they must agree)."""
    whole = summary(parse_all(RequestParser(), data))
    assert summary(parse_all(RequestParser(), data, step=1)) == whole
    return [e for e in whole if e[0] == "req"]


def test_reject_http11_request_without_host():
    err = req_error_every_way(b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n")
    assert err.status == 400 and err.reason == "missing Host header (required in HTTP/1.1)"


def test_http10_request_without_host_is_accepted():
    assert len(heads_every_way(b"GET / HTTP/1.0\r\nAccept: */*\r\n\r\n")) == 1


@pytest.mark.parametrize("version", [b"1.1", b"1.0"])
@pytest.mark.parametrize("second", [b"a.example", b"b.example", b""])
def test_reject_more_than_one_host(version, second):
    data = b"GET / HTTP/" + version + b"\r\nHost: a.example\r\nX: 1\r\nhost: " + second + b"\r\n\r\n"
    err = req_error_every_way(data)
    assert err.status == 400 and err.reason == "more than one Host header"
    assert err.offset == data.index(b"host:")  # points at the second one


@pytest.mark.parametrize("host", [
    b"a b", b"a@b", b"a/b", b"a\\b", b"a?b", b"a#b", b"a:80:80", b"a:8o", b":80", b"[::1", b"::1",
    b"[::1]x", b"[::1]:x", b"[]", b"[v1]", b"[v.x]", b"[fe80::1%25eth0]", b"[1.2.3.4]", b"%zz", b"a%4",
    b"\xe9.example", b"a\tb", b"a\"b", b"a<b",
])
def test_reject_invalid_host(host):
    data = b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n"
    err = req_error_every_way(data)
    assert err.status == 400 and err.reason == "invalid Host header (expected host[:port], RFC 3986)"
    assert err.offset == data.index(b"Host: ") + 6


@pytest.mark.parametrize("host", [
    b"example.test", b"example.test:8080", b"EXAMPLE.test.", b"127.0.0.1", b"127.0.0.1:80", b"999.1.1.1",
    b"[::1]", b"[::1]:8443", b"[2001:db8::ffff:1.2.3.4]", b"[v7.x:y]", b"a%41.example", b"a_b-c~d",
    b"a!$&'()*+,;=b", b"x:", b"localhost:65536",
])
def test_accept_valid_host(host):
    (head,) = heads_every_way(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    assert head[4] == [(b"Host", host)]


@pytest.mark.parametrize("target", [b"/", b"*"])
def test_empty_host_is_accepted_when_the_target_has_no_authority(target):
    method = b"OPTIONS" if target == b"*" else b"GET"
    (head,) = heads_every_way(method + b" " + target + b" HTTP/1.1\r\nHost:\r\n\r\n")
    assert head[4] == [(b"Host", b"")]


def test_reject_empty_host_with_an_absolute_form_target():
    err = req_error_every_way(b"GET http://a.example/x HTTP/1.1\r\nHost: \r\n\r\n")
    assert err.status == 400 and "empty Host" in err.reason


def test_absolute_form_target_is_accepted_with_any_valid_host():
    # RFC 9112 3.2.2: the target's authority is the request's; the Host (valid,
    # possibly different) is replaced by the proxy.
    heads = heads_every_way(b"GET http://a.example:81/x?y HTTP/1.1\r\nHost: b.example\r\n\r\n"
                            b"GET https://[::1]:8443 HTTP/1.1\r\nHost: a\r\n\r\n"
                            b"GET http://a.example/x HTTP/1.0\r\n\r\n")
    assert [h[2] for h in heads] == ["http://a.example:81/x?y", "https://[::1]:8443", "http://a.example/x"]


@pytest.mark.parametrize("target", [b"http://u@a.example/x", b"http://u:p@a.example", b"http://@a.example/"])
def test_reject_userinfo_in_the_target(target):
    data = b"GET " + target + b" HTTP/1.1\r\nHost: a.example\r\n\r\n"
    err = req_error_every_way(data)
    assert err.status == 400 and err.reason == "userinfo (user@) in the request target"
    assert err.offset == data.index(b"@")


@pytest.mark.parametrize("target", [b"http://", b"http:///x", b"http://:80/x", b"http://[::1/x", b"http://a:x/",
                                    b"http://a%zz/"])
def test_reject_invalid_authority_in_the_target(target):
    err = req_error_every_way(b"GET " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n")
    assert err.status == 400 and "invalid authority in the request target" in err.reason


@pytest.mark.parametrize("target", [b"http://u:p@a.example?x=1", b"http://a.example:443", b"a.example",
                                    b"a.example:", b"u@a.example:443", b"[::1]", b"a.example:443/x",
                                    b"/x"])
def test_reject_connect_target_that_is_not_authority_form(target):
    err = req_error_every_way(b"CONNECT " + target + b" HTTP/1.1\r\nHost: a.example\r\n\r\n")
    assert err.status == 400 and err.reason == "CONNECT request target is not host:port (authority-form)"


@pytest.mark.parametrize("target", [b"a.example:443", b"[::1]:443", b"127.0.0.1:8080"])
def test_accept_connect_authority_form(target):
    p = RequestParser()
    p.feed(b"CONNECT " + target + b" HTTP/1.1\r\nHost: " + target + b"\r\n\r\n")
    assert p.next_event().raw_target == target


@pytest.mark.parametrize("value", [b"", b" ", b"\t  "])
def test_reject_empty_transfer_encoding(value):
    data = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:" + value + b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    err = req_error_every_way(data)
    assert err.status == 501 and err.reason == "empty Transfer-Encoding"
    assert err.offset == data.index(b"Transfer-Encoding")


def test_reject_empty_transfer_encoding_in_a_response():
    p = ResponseParser()
    with pytest.raises(ParseError) as info:
        parse_all(p, b"HTTP/1.1 200 OK\r\nTransfer-Encoding:\r\n\r\nabc", step=1)
    assert info.value.status == 502 and info.value.source == "upstream"
    assert info.value.reason == "empty Transfer-Encoding"


@pytest.mark.parametrize("te", [b"chunked", b"gzip", b""])
def test_reject_transfer_encoding_in_http10_request(te):
    err = req_error_every_way(b"POST / HTTP/1.0\r\nTransfer-Encoding: " + te + b"\r\n\r\n0\r\n\r\n")
    assert err.status == 400 and err.reason == "Transfer-Encoding in an HTTP/1.0 request"


def test_http10_close_wins_over_keep_alive():
    # RFC 9112 9.3: with both options, the connection does not persist (llhttp
    # alone would keep it).
    for conn in (b"Connection: keep-alive\r\nConnection: close\r\n", b"Connection: close, keep-alive\r\n"):
        p = RequestParser()
        p.feed(b"GET / HTTP/1.0\r\n" + conn + b"\r\nGET / HTTP/1.0\r\n\r\n")
        assert p.next_event().keep_alive is False
        assert p.next_event() is END_OF_MESSAGE
        with pytest.raises(ParseError):  # nothing may follow, as after 1.1's close
            p.next_event()


def test_response_head_too_large_is_a_response_error():
    data = b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 2000 + b"\r\nContent-Length: 0\r\n\r\n"
    for step in (None, 1, 100):
        p = ResponseParser(max_head_size=1024)
        with pytest.raises(ParseError) as info:
            parse_all(p, data, step)
        err = info.value
        assert err.status == 502 and err.source == "upstream"
        assert err.reason == "response head too large (status line and headers over the limit)"
