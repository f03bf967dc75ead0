"""Pure-Python reference of how the proxy forwards a message's head.

The engine forwards a head as it was received when it can. Otherwise it
writes a new start line, the received fields that survive, and the fields
it adds itself (framing, ``Host``, ``Connection``, ``Upgrade``,
``X-Forwarded-*``). Which received fields survive is decided by one C
function for every head, whether rebuilt from the received bytes or from
the fields a hook edited, request or response: ``sw_hop_mark`` in
``csrc/sw_proxy.c``; the survivors are written by ``sw_write_fields``, and
trailers are filtered by ``sw_trailer_mark`` under the same Connection rule.

This module is the readable form of those rules. It is slow and exists to
pin them down: ``tests/test_csrc_cffi.py`` holds the C functions to
:func:`mark`, :func:`write_fields` and :func:`trailer_mark`, and
``tests/test_proxy_forward_prop.py`` sends edited and unedited requests and
responses through the proxy and compares the bytes on the wire with
:func:`request_head` and :func:`response_head`.

The rules:

* Hop-by-hop fields (RFC 9110 7.6.1) are never forwarded: ``Connection``,
  ``Keep-Alive``, ``Proxy-Connection``, ``TE``, ``Trailer``, ``Upgrade``
  (the proxy writes ``Upgrade`` itself when it forwards a protocol switch).
* The Connection rule: every field named by an option of a ``Connection``
  field is not forwarded either, except ``Content-Length``,
  ``Transfer-Encoding`` and ``Host``, which a ``Connection`` option never
  removes (framing and the authority are the proxy's to decide). Options
  are separated by commas; spaces and tabs around one are ignored; names
  compare ignoring ASCII case. The same rule holds for requests and
  responses, received or edited, and for trailers.
* The proxy drops what it writes itself: on requests ``Expect`` (the proxy
  answers ``100-continue``), the framing when it re-chunks the body, the
  ``X-Forwarded-*`` set when it adds its own; on responses
  ``Transfer-Encoding`` always and ``Content-Length`` when the body goes to
  the client chunked or close-delimited.
* Everything else is forwarded in order, each field as ``name: value``.

Fields are ``(name, value)`` pairs of ``bytes``, values without the blanks
around them (as the parser and the header map hold them).
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

Field = Tuple[bytes, bytes]

HOP_BY_HOP = frozenset([b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                        b"upgrade"])
#: What a Connection option never removes.
NEVER_BY_CONNECTION = frozenset([b"content-length", b"transfer-encoding", b"host"])

# Flags and drop requests: the values of sw_proxy.h's SW_F_* and SW_DROP_*.
F_DROPPED = 0x0001
F_HOST = 0x0002
F_EXPECT_100 = 0x0004
F_CONN_CLOSE = 0x0008
F_CONN_KA = 0x0010
F_CONN_UPGRADE = 0x0020
F_XFF = 0x0040
DROP_TRANSFER_ENCODING = 0x01
DROP_CONTENT_LENGTH = 0x02
DROP_EXPECT = 0x04
DROP_XFF = 0x08

_CONN_FLAGS = {b"close": F_CONN_CLOSE, b"keep-alive": F_CONN_KA, b"upgrade": F_CONN_UPGRADE}
_XFF_SET = (b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded")

#: Fields never forwarded in a trailer section (docs/proxy.md, "Trailers").
NO_TRAILER = frozenset([
    b"transfer-encoding", b"content-length",
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade",
    b"host", b"max-forwards", b"forwarded", b"x-forwarded-for", b"x-forwarded-host",
    b"x-forwarded-proto", b"x-real-ip",
    b"expect", b"range", b"if-match", b"if-none-match", b"if-modified-since",
    b"if-unmodified-since", b"if-range", b"pragma",
    b"authorization", b"proxy-authorization", b"www-authenticate", b"proxy-authenticate",
    b"cookie", b"set-cookie",
    b"cache-control", b"expires", b"age", b"date", b"vary", b"location", b"retry-after",
    b"warning",
    b"content-type", b"content-encoding", b"content-range",
])

CRLF = b"\r\n"


def connection_options(value: bytes) -> List[bytes]:
    """The options of one ``Connection`` value, lower-cased, in order."""
    return [o.strip(b" \t").lower() for o in value.split(b",") if o.strip(b" \t")]


def named_by_connection(values: Sequence[bytes]) -> set:
    """The field names (lower case) the Connection rule removes, given the
    values of the ``Connection`` fields."""
    return {o for v in values for o in connection_options(v)} - NEVER_BY_CONNECTION


def mark(fields: Sequence[Field], extra: int = 0) -> Tuple[List[bool], int]:
    """Which fields of a head are not forwarded, and what was seen.

    Args:
        fields: the head's fields.
        extra: ``DROP_*`` bits: framing or proxy-written fields to drop too.
    Returns:
        ``(drop, flags)``: ``drop[i]`` is True for each field not to forward;
        ``flags`` holds ``F_*`` bits (as ``sw_hop_mark`` returns them).
    """
    names = [n.lower() for n, _ in fields]
    conn = [v for (n, v), name in zip(fields, names) if name == b"connection"]
    named = named_by_connection(conn)
    flags = 0
    for v in conn:
        for o in connection_options(v):
            flags |= _CONN_FLAGS.get(o, 0)
    drop = []
    for (n, v), name in zip(fields, names):
        if name == b"host":
            flags |= F_HOST
        elif name == b"expect" and v.lower() == b"100-continue":
            flags |= F_EXPECT_100
        elif name == b"x-forwarded-for":
            flags |= F_XFF
        drop.append(name in HOP_BY_HOP or name in named
                    or (name == b"expect" and bool(extra & DROP_EXPECT))
                    or (name == b"content-length" and bool(extra & DROP_CONTENT_LENGTH))
                    or (name == b"transfer-encoding" and bool(extra & DROP_TRANSFER_ENCODING))
                    or (name in _XFF_SET and bool(extra & DROP_XFF)))
    if any(drop):
        flags |= F_DROPPED
    return drop, flags


def trailer_mark(fields: Sequence[Field], head_connection: Optional[bytes] = None) -> List[bool]:
    """Which trailer fields are not forwarded: those in ``NO_TRAILER``, and
    by the Connection rule those named by the head's Connection values
    (``head_connection``, joined by commas) or by a Connection trailer."""
    conn = [v for n, v in fields if n.lower() == b"connection"]
    if head_connection:
        conn.append(head_connection)
    named = named_by_connection(conn)
    return [n.lower() in NO_TRAILER or n.lower() in named for n, _ in fields]


def write_fields(fields: Sequence[Field], drop: Optional[Sequence[bool]] = None) -> bytes:
    """The fields not dropped, in order, as ``name: value`` lines."""
    return b"".join(n + b": " + v + CRLF for i, (n, v) in enumerate(fields)
                    if not (drop and drop[i]))


def status_line(status: int, reason: bytes) -> bytes:
    """``HTTP/1.1 <status> <reason>``; a status outside 100-999 is sent as 500."""
    if not 100 <= status <= 999:
        status = 500
    return b"HTTP/1.1 %d " % status + reason + CRLF


def _first(fields: Sequence[Field], name: bytes) -> Optional[bytes]:
    for n, v in fields:
        if n.lower() == name:
            return v
    return None


def _joined(fields: Sequence[Field], name: bytes) -> Optional[bytes]:
    """Every value of a field joined by ", " (blank ones left out when
    there are several); None when absent."""
    vals = [v.strip(b" \t") for n, v in fields if n.lower() == name]
    if not vals:
        return None
    if len(vals) == 1:
        return vals[0]
    return b", ".join(v for v in vals if v)


_TCHARS = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
                    b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _rfc7239_value(v: bytes) -> bytes:
    if v and all(c in _TCHARS for c in v):
        return v
    return b'"' + v.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def forwarding_fields(fields: Sequence[Field], direct: bytes, trusted: bool,
                      style: str = "x-forwarded", scheme: bytes = b"http") -> bytes:
    """The forwarding fields the proxy adds with ``forwarded_headers`` on
    (the received X-Forwarded-For/-Proto/-Host and Forwarded are dropped
    from the head first).

    Args:
        fields: the head's fields.
        direct: the address the request came from (``b"unix"``: a Unix
            socket peer).
        trusted: that address is in ``trusted_proxies``: the received
            chains go on with it appended; otherwise they are replaced.
        style: ``x-forwarded``, ``rfc7239`` or ``both``.
        scheme: ``b"https"`` when the client came over TLS.
    """
    out = []
    host = _first(fields, b"host")
    if style in ("x-forwarded", "both"):
        prior = _joined(fields, b"x-forwarded-for") if trusted else None
        out.append(b"X-Forwarded-For: " + (prior + b", " + direct if prior else direct) + CRLF)
        proto = _joined(fields, b"x-forwarded-proto") if trusted else None
        out.append(b"X-Forwarded-Proto: " + (proto or scheme) + CRLF)
        fhost = _joined(fields, b"x-forwarded-host") if trusted else None
        if fhost or host is not None:
            out.append(b"X-Forwarded-Host: " + (fhost or host) + CRLF)
    elif trusted:
        for name in (b"X-Forwarded-For", b"X-Forwarded-Proto", b"X-Forwarded-Host"):
            prior = _joined(fields, name.lower())
            if prior:
                out.append(name + b": " + prior + CRLF)
    if style in ("rfc7239", "both"):
        prior = _joined(fields, b"forwarded") if trusted else None
        node = (b"unknown" if direct == b"unix" else
                b'"[' + direct + b']"' if b":" in direct else direct)
        el = b"for=" + node + b";proto=" + scheme
        if host is not None:
            el += b";host=" + _rfc7239_value(host)
        out.append(b"Forwarded: " + (prior + b", " + el if prior else el) + CRLF)
    elif trusted:
        prior = _joined(fields, b"forwarded")
        if prior:
            out.append(b"Forwarded: " + prior + CRLF)
    return b"".join(out)


def request_head(method: bytes, target: bytes, fields: Sequence[Field], *,
                 received: Optional[bytes] = None, minor: int = 1, reframe: bool = False,
                 forwarded_for: Optional[bytes] = None, peer_host: bytes = b"",
                 upgrade: bool = False, trusted: bool = False,
                 style: str = "x-forwarded") -> bytes:
    """The request head the proxy sends upstream.

    Args:
        method, target: the request line's method and target (as a hook
            left them).
        fields: the head's fields, as received or as a hook left them.
        received: the received head's bytes when no hook changed the head
            (method, target or fields); None otherwise.
        minor: the client's HTTP minor version (the upstream gets 1.1).
        reframe: the body goes upstream re-chunked (a request body filter).
        forwarded_for: with ``forwarded_headers`` on, the address the
            request came from (``b"unix"`` for a Unix socket peer); see
            ``forwarding_fields`` with ``trusted`` and ``style``.
        peer_host: the ``Host`` sent when the head has none.
        upgrade: the client asks to switch protocols.
    Returns:
        The head's bytes, the blank line included.
    """
    extra = DROP_EXPECT
    if forwarded_for is not None:
        extra |= DROP_XFF
    if reframe:
        extra |= DROP_CONTENT_LENGTH | DROP_TRANSFER_ENCODING
    drop, flags = mark(fields, extra)
    expect_100 = bool(flags & F_EXPECT_100) and minor == 1
    if received is not None and not flags & F_DROPPED and minor == 1 and flags & F_HOST \
            and forwarded_for is None and not expect_100 and not upgrade:
        return received
    out = [method, b" ", target, b" HTTP/1.1\r\n", write_fields(fields, drop)]
    if not flags & F_HOST:
        out.append(b"Host: " + peer_host + CRLF)
    if reframe:
        out.append(b"Transfer-Encoding: chunked\r\n")
    up = _first(fields, b"upgrade")
    if upgrade and up is not None:
        out.append(b"Connection: upgrade\r\nUpgrade: " + up + CRLF)
    if forwarded_for is not None:
        out.append(forwarding_fields(fields, forwarded_for, trusted, style))
    out.append(CRLF)
    return b"".join(out)


def response_head(status: int, reason: bytes, fields: Sequence[Field], *,
                  received: Optional[bytes] = None, minor: int = 1, framing: str = "length",
                  keep: bool = True, client_minor: int = 1, upgrading: bool = False) -> bytes:
    """The response head the proxy sends to the client.

    Args:
        status, reason: as the upstream sent them or a hook set them.
        fields: the head's fields, as received or as a hook left them.
        received: the received head's bytes when no hook saw the response;
            None otherwise.
        minor: the upstream's HTTP minor version.
        framing: how the body goes to the client: ``"length"`` (as
            received, by Content-Length), ``"none"`` (HEAD, 204, 304),
            ``"chunked"`` (re-chunked) or ``"close"`` (until the connection
            closes, for HTTP/1.0 clients).
        keep: the client connection stays open after the response.
        client_minor: the client's HTTP minor version.
        upgrading: the upstream switches protocols (101).
    Returns:
        The head's bytes, the blank line included.
    """
    extra = DROP_TRANSFER_ENCODING
    if framing in ("chunked", "close"):
        extra |= DROP_CONTENT_LENGTH
    drop, flags = mark(fields, extra)
    if received is not None and not flags & F_DROPPED and minor == 1 and keep \
            and client_minor == 1 and framing in ("length", "none"):
        return received
    out = [status_line(status, reason), write_fields(fields, drop)]
    if framing == "chunked":
        out.append(b"Transfer-Encoding: chunked\r\n")
    up = _first(fields, b"upgrade")
    if upgrading:
        if up is not None:
            out.append(b"Connection: upgrade\r\nUpgrade: " + up + CRLF)
    elif not keep:
        out.append(b"Connection: close\r\n")
    elif client_minor == 0:
        out.append(b"Connection: keep-alive\r\n")
    out.append(CRLF)
    return b"".join(out)


def interim_head(status: int, reason: bytes, fields: Sequence[Field]) -> bytes:
    """An interim (1xx) response as forwarded to an HTTP/1.1 client."""
    drop, _ = mark(fields, DROP_TRANSFER_ENCODING | DROP_CONTENT_LENGTH)
    return status_line(status, reason) + write_fields(fields, drop) + CRLF
