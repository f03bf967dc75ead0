"""Who the client is when requests come through other proxies: the
reference of the compiled rules (engine/realip.pyx) in plain Python, and
their readable documentation. Tests drive both with the same inputs, and
check them against nginx's realip module.

The rule is nginx's ``real_ip_recursive on``: start from the address the
request came from (the connection's peer, or the client a PROXY protocol
header named). While that address is a trusted proxy, step one address to
the left in the forwarding header; the first address that is not trusted
is the client. When every address is trusted, the leftmost is the client.
A token that is not an address (``unknown``, an obfuscated ``_name``,
garbage) ends the walk: the last trusted address is then the client, as
nothing further left can be believed.

Headers:

- ``X-Forwarded-For``: addresses separated by commas and spaces; several
  fields count as one list, in order.
- ``X-Real-IP``: one address.
- ``Forwarded`` (RFC 7239): the ``for=`` node of each element (quoted or
  not); an element without ``for=`` ends the walk.

An address token is an IPv4 or IPv6 address, optionally with a port:
``1.2.3.4``, ``1.2.3.4:80``, ``2001:db8::1``, ``[2001:db8::1]:80`` (in
``Forwarded`` also ``[2001:db8::1]``). Addresses come back in canonical
form (as ``inet_ntop`` prints them); the port is 0 when none was given.
"""

from __future__ import annotations

import socket
from typing import Callable, List, Optional, Tuple

XFF = 0
X_REAL_IP = 1
FORWARDED = 2

Addr = Tuple[str, int]


def parse_token(tok: str, bracket_alone: bool = False) -> Optional[Addr]:
    """An address token as ``(address, port)``, or None."""
    if not tok or len(tok) > 64:
        return None
    for af in (socket.AF_INET, socket.AF_INET6):
        try:
            return socket.inet_ntop(af, socket.inet_pton(af, tok)), 0
        except (OSError, ValueError):
            pass
    if tok[0] == "[":
        end = tok.find("]")
        if end < 0:
            return None
        host, rest = tok[1:end], tok[end + 1:]
        if rest == "" and bracket_alone:
            port = 0
        elif rest[:1] == ":" and _port_ok(rest[1:]):
            port = int(rest[1:])
        else:
            return None
        try:
            return socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, host)), port
        except (OSError, ValueError):
            return None
    host, sep, port_s = tok.partition(":")
    if not sep or not _port_ok(port_s):
        return None
    try:
        return socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, host)), int(port_s)
    except (OSError, ValueError):
        return None


def _port_ok(s: str) -> bool:
    return 0 < len(s) <= 5 and s.isascii() and s.isdigit() and 1 <= int(s) <= 65535


def xff_tokens(values: List[str]) -> List[str]:
    """The tokens of X-Forwarded-For fields, left to right."""
    out = []
    for v in values:
        out.extend(t for t in v.replace(",", " ").split(" ") if t)
    return out


def _unquote(v: str) -> Optional[str]:
    if v[:1] != '"':
        return v
    if len(v) < 2 or v[-1] != '"':
        return None
    out, i, inner = [], 0, v[1:-1]
    while i < len(inner):
        c = inner[i]
        if c == "\\":
            i += 1
            if i == len(inner):
                return None
            c = inner[i]
        elif c == '"':
            return None
        out.append(c)
        i += 1
    return "".join(out)


def _split_outside_quotes(s: str, sep: str) -> List[str]:
    parts, cur, quoted, esc = [], [], False, False
    for c in s:
        if esc:
            esc = False
        elif quoted and c == "\\":
            esc = True
        elif c == '"':
            quoted = not quoted
        elif c == sep and not quoted:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(c)
    parts.append("".join(cur))
    return parts


def forwarded_for_nodes(values: List[str]) -> List[Optional[str]]:
    """The ``for=`` node of each Forwarded element, left to right (None
    for an element without one, or a malformed one)."""
    out: List[Optional[str]] = []
    for v in values:
        for element in _split_outside_quotes(v, ","):
            if not element.strip(" \t"):
                continue
            node = None
            for pair in _split_outside_quotes(element, ";"):
                name, eq, value = pair.strip(" \t").partition("=")
                if eq and name.lower() == "for":
                    node = _unquote(value)
                    break
            out.append(node)
    return out


def real_client(kind: int, values: List[str], direct,
                trusted: Callable[[object], bool]):
    """``(client, via)``: the client of a request that came from ``direct``
    (an address tuple, or a Unix socket's path) with the forwarding header
    fields ``values`` (of type ``kind``), and the trusted proxy it came
    through last (None when it came from no trusted proxy that named
    anyone: ``direct`` is then the client). ``trusted(addr)`` says whether
    an address tuple (or a Unix socket path) is a trusted proxy."""
    if direct is None or not trusted(direct):
        return direct, None
    if kind == FORWARDED:
        toks = forwarded_for_nodes(values)
    elif kind == X_REAL_IP:
        toks = [values[-1].strip(" \t")] if values else []
    else:
        toks = xff_tokens(values)
    cur, via = direct, None
    for tok in reversed(toks):
        a = parse_token(tok, kind == FORWARDED) if tok is not None else None
        if a is None:
            break
        via, cur = cur, a
        if not trusted(cur):
            break
    return cur, via
