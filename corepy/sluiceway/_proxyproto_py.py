"""The PROXY protocol (HAProxy's versions 1 and 2) in plain Python: the
reference of the compiled parser and writers (csrc/sw_pp.c) and their
readable documentation. Tests drive both with the same bytes.

A load balancer that speaks the PROXY protocol starts each connection with
a short header naming the client it came from::

    PROXY TCP4 203.0.113.7 192.0.2.1 51234 443\\r\\n          (version 1, text)
    \\r\\n\\r\\n\\0\\r\\nQUIT\\n + version/command + family + length + addresses
                                                          (version 2, binary)

``parse(data)`` reads one from the start of ``data``:

- ``(n, header, None)`` with ``n > 0``: the header is the first ``n``
  bytes; the HTTP request starts after them.
- ``(NEED, None, None)``: too few bytes to tell yet.
- ``(BAD, None, reason)``: not a PROXY header, or a malformed one.

``header.local`` is true when the header carries no client address: a v1
``UNKNOWN``, a v2 ``LOCAL`` command (the balancer's own health check), or a
v2 family other than IPv4/IPv6. Addresses are canonical text (as
``inet_ntop`` prints them). v2 TLVs after the addresses are skipped.
"""

from __future__ import annotations

import socket
from typing import NamedTuple, Optional, Tuple

NEED = 0
BAD = -1
MAX = 4096          # header bytes accepted at most
V1_MAX = 107        # the longest v1 line, CRLF included

V1_SIG = b"PROXY "
V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


class ProxyHeader(NamedTuple):
    version: int            # 1 or 2
    local: bool             # carries no client address (see the module's doc)
    family: int             # 4 or 6 (0 when local)
    src: str                # the client's address ("" when local)
    dst: str                # the address the client connected to
    src_port: int
    dst_port: int


def _canon(family: int, text: bytes) -> Optional[str]:
    if not text or len(text) >= 64:
        return None
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    try:
        return socket.inet_ntop(af, socket.inet_pton(af, text.decode("latin-1")))
    except (OSError, ValueError, UnicodeError):
        return None


def _port(text: bytes) -> Optional[int]:
    if not 0 < len(text) <= 5 or (len(text) > 1 and text[:1] == b"0"):
        return None
    if not all(48 <= b <= 57 for b in text):
        return None
    v = int(text)
    return v if v <= 65535 else None


def _bad(reason: str) -> Tuple[int, None, str]:
    return BAD, None, reason


def _parse_v1(data: bytes):
    lim = min(len(data), V1_MAX)
    eol = -1
    for i in range(lim - 1):
        if data[i] == 13 and data[i + 1] == 10:
            eol = i
            break
        if data[i] in (10, 13):
            return _bad("stray CR or LF in a PROXY v1 line")
    if eol < 0:
        if len(data) >= V1_MAX:
            return _bad("PROXY v1 line longer than 107 bytes")
        if data[-1:] == b"\n":
            return _bad("stray CR or LF in a PROXY v1 line")
        return NEED, None, None
    parts = data[:eol].split(b" ")
    if parts[1] == b"UNKNOWN":          # whatever follows is ignored
        return eol + 2, ProxyHeader(1, True, 0, "", "", 0, 0), None
    if len(parts) > 6:
        return _bad("too many fields in a PROXY v1 line")
    if parts[1] == b"TCP4":
        family = 4
    elif parts[1] == b"TCP6":
        family = 6
    else:
        return _bad("PROXY v1 protocol is not TCP4, TCP6 or UNKNOWN")
    if len(parts) != 6:
        return _bad("PROXY v1 line needs two addresses and two ports")
    src, dst = _canon(family, parts[2]), None
    if src is None:
        return _bad("bad source address in a PROXY v1 line")
    dst = _canon(family, parts[3])
    if dst is None:
        return _bad("bad destination address in a PROXY v1 line")
    sport, dport = _port(parts[4]), None
    if sport is None:
        return _bad("bad source port in a PROXY v1 line")
    dport = _port(parts[5])
    if dport is None:
        return _bad("bad destination port in a PROXY v1 line")
    return eol + 2, ProxyHeader(1, False, family, src, dst, sport, dport), None


def _parse_v2(data: bytes):
    if len(data) < 16:
        return NEED, None, None
    ver, cmd = data[12] >> 4, data[12] & 0x0F
    fam, proto = data[13] >> 4, data[13] & 0x0F
    body = (data[14] << 8) | data[15]
    if ver != 2:
        return _bad("PROXY v2 header with a version other than 2")
    if cmd > 1:
        return _bad("PROXY v2 command is neither LOCAL nor PROXY")
    if fam > 3 or proto > 2:
        return _bad("PROXY v2 header with an unknown family or transport")
    if 16 + body > MAX:
        return _bad("PROXY v2 header longer than 4096 bytes")
    if len(data) < 16 + body:
        return NEED, None, None
    if cmd == 0 or fam in (0, 3):
        return 16 + body, ProxyHeader(2, True, 0, "", "", 0, 0), None
    if proto != 1:
        return _bad("PROXY v2 transport is not a stream")
    alen = 4 if fam == 1 else 16
    if body < 2 * alen + 4:
        return _bad("PROXY v2 header too short for its addresses")
    af = socket.AF_INET if fam == 1 else socket.AF_INET6
    a = data[16:16 + 2 * alen + 4]
    src = socket.inet_ntop(af, a[:alen])
    dst = socket.inet_ntop(af, a[alen:2 * alen])
    sport = (a[2 * alen] << 8) | a[2 * alen + 1]
    dport = (a[2 * alen + 2] << 8) | a[2 * alen + 3]
    return 16 + body, ProxyHeader(2, False, 4 if fam == 1 else 6, src, dst, sport, dport), None


def parse(data: bytes):
    """Read a PROXY header at the start of ``data``: ``(n, header, None)``,
    ``(NEED, None, None)`` or ``(BAD, None, reason)`` (see the module's
    doc)."""
    data = bytes(data)
    if V1_SIG.startswith(data[:6]):
        return (NEED, None, None) if len(data) < 6 else _parse_v1(data)
    if V2_SIG.startswith(data[:12]):
        return (NEED, None, None) if len(data) < 12 else _parse_v2(data)
    return _bad("the connection did not start with a PROXY protocol header")


def _pton(family: int, addr: str) -> bytes:
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    try:
        return socket.inet_pton(af, addr)
    except (OSError, ValueError, UnicodeError):
        raise ValueError(f"{addr!r} is not an IPv{family} address") from None


def write_v1(family: int, src: str, dst: str, sport: int, dport: int) -> bytes:
    """The v1 line for a connection from ``src:sport`` to ``dst:dport``
    (numeric addresses of IP version ``family``, 4 or 6)."""
    if family not in (4, 6):
        raise ValueError(f"family must be 4 or 6, got {family!r}")
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    s = socket.inet_ntop(af, _pton(family, src))
    d = socket.inet_ntop(af, _pton(family, dst))
    return f"PROXY TCP{family} {s} {d} {sport} {dport}\r\n".encode("ascii")


def write_v2(family: int, src: str, dst: str, sport: int, dport: int) -> bytes:
    """The v2 header (PROXY command, stream transport, no TLVs) for a
    connection from ``src:sport`` to ``dst:dport``."""
    if family not in (4, 6):
        raise ValueError(f"family must be 4 or 6, got {family!r}")
    alen = 4 if family == 4 else 16
    return (V2_SIG + bytes((0x21, 0x11 if family == 4 else 0x21, 0, 2 * alen + 4))
            + _pton(family, src) + _pton(family, dst)
            + sport.to_bytes(2, "big") + dport.to_bytes(2, "big"))
