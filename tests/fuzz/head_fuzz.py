"""Request-head fuzzer: mutated requests through the real proxy, judged by h11.

What it does
------------
Each *case* is one client connection carrying one to three pipelined
requests, built valid and then mutated (see ``mutate``): byte flips,
inserted CR/LF/NUL, obs-fold, duplicated and conflicting framing
(Content-Length with Transfer-Encoding, two Content-Lengths, Transfer-Encoding
variants), odd methods, versions and targets, huge values, Host variants,
truncation. The proxy (``sluiceway run fuzz_app:FuzzApp``) runs in a child
process; recording origins (one per *lane*) run here and parse what they
receive with h11.

Lanes run concurrently; each sends its cases one after another from its own
loopback address (127.0.0.X), and the app sends each lane to its own origin,
so what an origin receives belongs to its lane's current case.

What it checks (each failure is a *finding*, counted by kind):

* ``forwarded_h11_rejects``: the origin received request *i* of a case
  whose bytes h11 rejects at or before request *i*'s head (or never saw
  as a request). The kind names h11's message, e.g. "Found multiple Host".
* ``forwarded_<rule>``: h11 accepts the request but a rule of ours refuses
  it (RFC 9112/3986 checks h11 does not make: Host syntax, Transfer-Encoding
  on HTTP/1.0, Content-Length with Transfer-Encoding, userinfo in the
  target).
* ``mismatch_<field>``: a forwarded request differs from what h11 read
  from the client in method, target, Host (the one effective authority)
  or body: a desync.
* ``origin_rejects``: the origin's h11 rejects what the proxy sent it
  (the kind names h11's message).
* ``left_open``: the proxy neither answered nor closed the connection within
  its own timeouts (header, keep-alive, request) plus a margin.
* ``proxy_died``, ``proxy_internal_error`` (a "this is a bug" line in its
  log), ``fd_leak`` (a TCP connection of the proxy still open after the run
  and its idle timeouts), ``rss_growth`` (resident memory of the proxy grew by
  more than the allowed bound between the end of the warm-up and the end).

Run ``python tests/fuzz/head_fuzz.py --help`` for the long run (see
docs/fuzzing.md); ``tests/test_fuzz_head.py`` runs a bounded, seeded run.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import ipaddress
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time

import h11

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

# ---------------------------------------------------------------- grammar --

_UNRESERVED = rb"A-Za-z0-9\-._~"
_SUB_DELIMS = rb"!$&'()*+,;="
_REG_NAME = re.compile(rb"(?:[" + _UNRESERVED + _SUB_DELIMS + rb"]|%[0-9A-Fa-f]{2})*")
_IPVFUTURE = re.compile(rb"[vV][0-9A-Fa-f]+\.[" + _UNRESERVED + _SUB_DELIMS + rb":]+")
_ABSOLUTE = re.compile(rb"^[A-Za-z][A-Za-z0-9+\-.]*://([^/?#]*)")


def valid_host(value: bytes, allow_empty: bool) -> bool:
    """RFC 3986 ``host [ ":" port ]`` (the reference for the C check):
    reg-name, IPv4 or IP-literal, a non-empty host, a port of digits."""
    if not value:
        return allow_empty
    if value[:1] == b"[":
        end = value.find(b"]")
        if end < 0:
            return False
        lit, rest = value[1:end], value[end + 1:]
        if _IPVFUTURE.fullmatch(lit) is None:
            try:
                if b"%" in lit or not lit.isascii():
                    return False
                ipaddress.IPv6Address(lit.decode("ascii"))
            except ValueError:
                return False
    else:
        colon = value.find(b":")
        host, rest = (value, b"") if colon < 0 else (value[:colon], value[colon:])
        if not host or _REG_NAME.fullmatch(host) is None:
            return False
    return rest == b"" or (rest[:1] == b":" and rest[1:].isdigit() and rest[1:].isascii()) or rest == b":"


def target_authority(target: bytes):
    """The authority of an absolute-form target, or None for other forms."""
    m = _ABSOLUTE.match(target)
    return None if m is None else m.group(1)


def origin_form(target: bytes) -> bytes:
    """What an absolute-form target becomes upstream: the path and query
    after the authority, "/" when there is no path."""
    m = _ABSOLUTE.match(target)
    rest = target[m.end():]
    return rest if rest[:1] == b"/" else b"/" + rest


# ------------------------------------------------------------ generation --

METHODS = [b"GET"] * 4 + [b"POST"] * 3 + [b"PUT", b"HEAD", b"DELETE", b"OPTIONS", b"PATCH"]
HOSTS = [b"example.test", b"a.example:8080", b"127.0.0.1", b"[::1]:8080", b"xn--bcher-kva.example",
         b"localhost:80", b"A.Example"]
EXTRA = [(b"User-Agent", b"fz/1"), (b"Accept", b"*/*"), (b"Cookie", b"a=b; c=d"),
         (b"X-Req", b"1"), (b"Accept-Encoding", b"gzip, br"), (b"X-Empty", b"")]

HOST_VARIANTS = [b"", b" ", b"a b", b"a@b", b"[::1", b"::1", b"a:80:80", b"a/b", b"a\\b", b"a:65536",
                 b"%zz", b"a%41b", b"a,b", b"a;b", b"a:", b":80", b"[v1.x]", b"[::1]x", b"a\tb",
                 b"example.test.", b"x" * 300, b"\xff", b"a_b", b"1.2.3.4:0", b"[::ffff:1.2.3.4]",
                 b"[fe80::1%25eth0]", b"a:8o", b"a?b", b"a#b", b"[]", b"[::1]:", b"a\x00b"]
HOST_NAMES = [b"host", b"HOST", b"Host ", b" Host", b"Ho st", b"Host\t", b"Hostt", b"X-Host"]
AUTHORITIES = [b"a.example", b"a.example:81", b"", b"u@a.example", b"u:p@a.example", b"[::1]:80",
               b"[::1", b"a b", b"a:x", b"a.example:", b"%41.example"]
TE_VARIANTS = [b"chunked", b"Chunked", b"", b" ", b"gzip", b"gzip, chunked", b"chunked, chunked",
               b"chunked, gzip", b"identity", b"chunked;q=1", b",chunked", b"chunked,", b"xchunked",
               b"chunke", b"\x0bchunked", b"chunked\x00", b"CHUNKED"]
TE_NAMES = [b"Transfer-Encoding ", b"Transfer_Encoding", b"transfer-encoding", b"Transfer-Encoding\t",
            b"Transfer-Encodings"]
CL_VARIANTS = [b"0", b"5", b"+5", b"-1", b"5, 5", b"05", b"0x5", b"99999999999999999999", b"", b"5 5",
               b"1" * 25]
METHOD_VARIANTS = [b"get", b"FOO", b"G ET", b"", b"M-SEARCH", b"PRI", b"CONNECT", b"TRACE", b"GET\x00",
                   b"X" * 100, b"PROPFIND", b"GET\t", b"POST"]
VERSION_VARIANTS = [b"HTTP/1.2", b"HTTP/2.0", b"HTTP/0.9", b"http/1.1", b"HTTP/1.10", b"HTTP/1",
                    b"HTTP/01.1", b"", b"HTTP/1.1 ", b"HTTP/3", b"HTTP/1.0", b"HTTP/1.1\x00"]
TARGET_VARIANTS = [b"/a b", b"/a#f", b"*", b"//x", b"/%00", b"/\xff", b"http://a", b"a.example:80", b"",
                   b"/a?b c", b"/" + b"a" * 9000, b"/a\tb", b"http://a.example/x?y", b"HTTP://A/"]
INSERTS = [b"\r", b"\n", b"\0", b"\r\n", b" ", b"\t", b":", b"\x7f", b"\x80", b"\r\n\r\n", b","]


@dataclasses.dataclass
class Req:
    method: bytes
    target: bytes
    version: bytes
    headers: list      # [name, value] lists, in order
    body: bytes        # as framed on the wire (chunked encoding included)
    sep: bytes = b": "


@dataclasses.dataclass
class Case:
    id: int
    data: bytes
    ops: list
    wait_close: bool   # wait for the proxy to close (exercise its timeouts)


def _base_request(rng, cid, i, last):
    method = rng.choice(METHODS)
    version = b"HTTP/1.0" if rng.random() < 0.15 else b"HTTP/1.1"
    path = b"/fz/%d/%d" % (cid, i) + (b"?q=%d" % rng.randrange(100) if rng.random() < 0.3 else b"")
    host = rng.choice(HOSTS)
    r = rng.random()
    target = b"http://" + host + path if r < 0.1 else (b"*" if method == b"OPTIONS" and r < 0.2 else path)
    headers = [[n, v] for n, v in rng.sample(EXTRA, rng.randrange(0, 4))]
    if version == b"HTTP/1.1" or rng.random() < 0.7:
        headers.insert(rng.randrange(len(headers) + 1), [b"Host", host])
    body = b""
    if method in (b"POST", b"PUT", b"PATCH"):
        payload = bytes(rng.randrange(97, 123) for _ in range(rng.randrange(0, 40)))
        if version == b"HTTP/1.1" and rng.random() < 0.4:
            headers.append([b"Transfer-Encoding", b"chunked"])
            out, pos = b"", 0
            while pos < len(payload):
                n = rng.randrange(1, 16)
                out += b"%x\r\n%s\r\n" % (len(payload[pos:pos + n]), payload[pos:pos + n])
                pos += n
            trailer = b"T: 1\r\n" if rng.random() < 0.2 else b""
            body = out + b"0\r\n" + trailer + b"\r\n"
        else:
            headers.append([b"Content-Length", b"%d" % len(payload)])
            body = payload
    if version == b"HTTP/1.0" and rng.random() < 0.5:
        headers.append([b"Connection", b"keep-alive"])
    if last and version == b"HTTP/1.1" and rng.random() < 0.3:
        headers.append([b"Connection", b"close"])
    return Req(method, target, version, headers, body)


def _pick_header(rng, r, name=None):
    idx = [k for k, (n, _) in enumerate(r.headers) if name is None or n.lower() == name]
    return rng.choice(idx) if idx else None


def _structured(rng, reqs, op):
    r = rng.choice(reqs)
    if op == "dup_host":
        k = _pick_header(rng, r, b"host")
        v = r.headers[k][1] if k is not None and rng.random() < 0.5 else rng.choice(HOSTS)
        r.headers.insert(rng.randrange(len(r.headers) + 1), [b"Host", v])
    elif op == "no_host":
        r.headers = [h for h in r.headers if h[0].lower() != b"host"]
    elif op == "host_value":
        k = _pick_header(rng, r, b"host")
        if k is None:
            r.headers.append([b"Host", rng.choice(HOST_VARIANTS)])
        else:
            r.headers[k][1] = rng.choice(HOST_VARIANTS)
    elif op == "host_name":
        k = _pick_header(rng, r, b"host")
        if k is not None:
            r.headers[k][0] = rng.choice(HOST_NAMES)
    elif op == "absolute_form":
        path = r.target if r.target.startswith(b"/") else b"/"
        r.target = rng.choice([b"http://", b"https://", b"HTTP://", b"ftp://"]) + rng.choice(AUTHORITIES) + \
            rng.choice([path, b"", b"?x=1"])
    elif op == "add_cl":
        r.headers.insert(rng.randrange(len(r.headers) + 1), [b"Content-Length", rng.choice(CL_VARIANTS)])
    elif op == "add_te":
        r.headers.insert(rng.randrange(len(r.headers) + 1), [b"Transfer-Encoding", rng.choice(TE_VARIANTS)])
        if rng.random() < 0.5:
            r.body = b"5\r\nhello\r\n0\r\n\r\n"
    elif op == "te_value":
        k = _pick_header(rng, r, b"transfer-encoding")
        if k is None:
            r.headers.append([b"Transfer-Encoding", rng.choice(TE_VARIANTS)])
        else:
            r.headers[k][1] = rng.choice(TE_VARIANTS)
    elif op == "te_name":
        k = _pick_header(rng, r, b"transfer-encoding")
        if k is None:
            r.headers.append([rng.choice(TE_NAMES), b"chunked"])
        else:
            r.headers[k][0] = rng.choice(TE_NAMES)
    elif op == "dup_cl":
        k = _pick_header(rng, r, b"content-length")
        v = r.headers[k][1] if k is not None else b"3"
        r.headers.append([b"Content-Length", v if rng.random() < 0.5 else rng.choice(CL_VARIANTS)])
    elif op == "method":
        r.method = rng.choice(METHOD_VARIANTS)
    elif op == "version":
        r.version = rng.choice(VERSION_VARIANTS)
    elif op == "target":
        r.target = rng.choice(TARGET_VARIANTS)
    elif op == "obs_fold":
        k = _pick_header(rng, r)
        if k is not None:
            r.headers[k][1] += rng.choice([b"\r\n folded", b"\r\n\tfolded", b"\r\n "])
    elif op == "huge":
        kind = rng.randrange(3)
        if kind == 0:
            r.headers.append([b"X-Huge", b"v" * rng.choice([20000, 40000])])
        elif kind == 1:
            r.headers.extend([b"X-%d" % j, b"v"] for j in range(rng.choice([100, 130])))
        else:
            k = _pick_header(rng, r, b"host")
            if k is not None:
                r.headers[k][1] = b"h" * rng.choice([5000, 40000])
    elif op == "body_len":
        r.body = r.body[:rng.randrange(len(r.body) + 1)] if rng.random() < 0.5 else r.body + b"GET / HTTP/1.1\r\n"
    elif op == "separator":
        r.sep = rng.choice([b":", b" : ", b":\t", b"::", b": \x00", b"\x00: "])
    elif op == "expect":
        r.headers.append([b"Expect", b"100-continue"])
    elif op == "upgrade":
        r.headers.extend([[b"Connection", b"Upgrade"], [b"Upgrade", b"websocket"]])
    elif op == "connection":
        r.headers.append([b"Connection", rng.choice([b"close", b"keep-alive", b"Host", b"Transfer-Encoding",
                                                    b"Content-Length", b"close, close", b""])])


def _bytes_op(rng, data, op):
    if not data:
        return data
    pos = rng.randrange(len(data) + 1)
    if op == "flip":
        b = bytearray(data)
        for _ in range(rng.randrange(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        return bytes(b)
    if op == "insert":
        return data[:pos] + rng.choice(INSERTS) + data[pos:]
    if op == "delete":
        return data[:pos] + data[pos + rng.randrange(1, 5):]
    if op == "truncate":
        return data[:max(1, pos)]
    if op == "dup_slice":
        end = min(len(data), pos + rng.randrange(1, 40))
        return data[:end] + data[pos:end] + data[end:]
    if op == "line_ending":
        crlf = [m.start() for m in re.finditer(rb"\r\n", data)]
        if crlf:
            k = rng.choice(crlf)
            return data[:k] + rng.choice([b"\n", b"\r", b"\r\r\n", b"\n\r"]) + data[k + 2:]
    return data


STRUCTURED = ["dup_host"] * 3 + ["no_host"] * 2 + ["host_value"] * 4 + [
    "host_name", "absolute_form", "absolute_form", "add_cl", "add_te", "add_te", "te_value", "te_value",
    "te_name", "dup_cl", "method", "version", "target", "obs_fold", "huge", "body_len", "separator",
    "expect", "upgrade", "connection"]
BYTE_OPS = ["flip", "flip", "insert", "insert", "delete", "truncate", "dup_slice", "line_ending"]


def serialize(reqs):
    out = []
    for r in reqs:
        head = [r.method + b" " + r.target + b" " + r.version if r.version else r.method + b" " + r.target]
        head += [n + r.sep + v for n, v in r.headers]
        out.append(b"\r\n".join(head) + b"\r\n\r\n" + r.body)
    return b"".join(out)


def make_case(rng: random.Random, cid: int) -> Case:
    """One case: 1-3 valid requests, then 0-3 mutations (10% stay valid)."""
    n = rng.choice([1, 1, 1, 2, 2, 3])
    reqs = [_base_request(rng, cid, i, i == n - 1) for i in range(n)]
    ops = []
    if rng.random() >= 0.1:
        for _ in range(rng.choice([1, 1, 1, 2, 2, 3])):
            if rng.random() < 0.65:
                op = rng.choice(STRUCTURED)
                _structured(rng, reqs, op)
                ops.append(op)
            else:
                ops.append(rng.choice(BYTE_OPS))
    data = serialize(reqs)
    for op in ops:
        if op in BYTE_OPS:
            data = _bytes_op(rng, data, op)
    return Case(cid, data, ops, wait_close=rng.random() < 0.05)


# ------------------------------------------------------------ the oracle --

@dataclasses.dataclass
class SeenReq:
    method: bytes
    target: bytes
    version: bytes
    headers: list      # (lower-case name, value)
    body: bytes = b""
    complete: bool = False


@dataclasses.dataclass
class Verdict:
    reqs: list              # SeenReq per head h11 accepted
    error: str | None       # h11's message when it rejected
    clean: bool             # every byte made complete requests
    strict: list            # per accepted head: the rule of ours it breaks, or None


def _rule(r: SeenReq):
    """A rule of ours (stricter than h11) that request r breaks, or None."""
    names = [n for n, _ in r.headers]
    if b"transfer-encoding" in names:
        if r.version == b"1.0":
            return "te_http10"
        if b"content-length" in names:
            return "cl_te"
    auth = target_authority(r.target)
    if r.method == b"CONNECT":
        # authority-form only: host ":" port (RFC 9112 3.2.3)
        m = re.fullmatch(rb"(\[[^\]]*\]|[^:\[\]]*):[0-9]+", r.target)
        if m is None or not valid_host(r.target, False):
            return "bad_connect_target"
    elif auth is not None and (b"@" in auth or not valid_host(auth, False)):
        return "bad_target_authority"
    hosts = [v for n, v in r.headers if n == b"host"]
    if hosts and not valid_host(hosts[0], auth is None and r.method != b"CONNECT"):
        return "bad_host"
    return None


def _keeps_alive(r: SeenReq) -> bool:
    """Whether another request may follow r on the connection (RFC 9112 9.3;
    HTTP/1.0 keep-alive included, which h11 does not speak)."""
    tokens = {t.strip().lower() for n, v in r.headers if n == b"connection" for t in v.split(b",")}
    upgrade = b"upgrade" in tokens and any(n == b"upgrade" for n, _ in r.headers)
    if b"close" in tokens or upgrade or r.method == b"CONNECT":
        return False  # after an upgrade, the bytes are another protocol's
    return r.version == b"1.1" or b"keep-alive" in tokens


def h11_verdict(data: bytes) -> Verdict:
    """What h11, as a server, makes of a client's bytes, one request at a
    time. Two things h11 does not do are done here, as the proxy does them:
    CR and LF before a request line are skipped (RFC 9112 2.2: empty lines
    before a request; they are not forwarded), and an HTTP/1.0 request with
    ``Connection: keep-alive`` may be followed by another."""
    reqs, error, rest = [], None, data
    while True:
        rest = rest.lstrip(b"\r\n")
        if not rest:
            break
        conn = h11.Connection(h11.SERVER)
        conn.receive_data(rest)
        cur = None
        while True:
            try:
                ev = conn.next_event()
            except h11.RemoteProtocolError as exc:
                error = str(exc) or type(exc).__name__
                break
            if ev is h11.NEED_DATA or ev is h11.PAUSED or isinstance(ev, (h11.ConnectionClosed, h11.EndOfMessage)):
                if isinstance(ev, h11.EndOfMessage):
                    cur.complete = True
                break
            if isinstance(ev, h11.Request):
                cur = SeenReq(bytes(ev.method), bytes(ev.target), bytes(ev.http_version),
                              [(bytes(n), bytes(v)) for n, v in ev.headers])
                reqs.append(cur)
            elif isinstance(ev, h11.Data):
                cur.body += bytes(ev.data)
        rest = conn.trailing_data[0]
        if error is not None or cur is None or not cur.complete or not _keeps_alive(cur):
            break
    clean = error is None and not rest and bool(reqs) and all(r.complete for r in reqs)
    return Verdict(reqs, error, clean, [_rule(r) for r in reqs])


# ------------------------------------------------------------ the origin --

class Lane:
    """One client address, one origin, one case at a time."""

    def __init__(self, k, fuzz):
        self.k = k
        self.ip = f"127.0.0.{10 + k}"
        self.fuzz = fuzz
        self.port = None
        self.server = None
        self.cases = collections.OrderedDict()   # recent case id -> [Case, Verdict, received count]
        self.current = None

    def case_for(self, target):
        m = re.search(rb"/fz/(\d+)/", target)
        if m is not None and int(m.group(1)) in self.cases:
            return self.cases[int(m.group(1))]
        return self.cases.get(self.current)


class OriginConn(asyncio.Protocol):
    """Parses what the proxy sends with h11, answers 200 with an empty body,
    and checks each request against its case's verdict."""

    def __init__(self, lane):
        self.lane = lane
        self.h = h11.Connection(h11.SERVER)
        self.t = None
        self.cur = None   # (entry, index, h11 Request)
        self.body = b""

    def connection_made(self, t):
        self.t = t

    def data_received(self, data):
        fz = self.lane.fuzz
        self.h.receive_data(data)
        while True:
            try:
                ev = self.h.next_event()
            except h11.RemoteProtocolError as exc:
                entry = self.lane.cases.get(self.lane.current)
                fz.finding("origin_rejects: " + _kind(str(exc)), str(exc), entry[0] if entry else None)
                self.t.close()
                return
            if ev is h11.NEED_DATA or ev is h11.PAUSED or isinstance(ev, h11.ConnectionClosed):
                return
            if isinstance(ev, h11.Request):
                entry = self.lane.case_for(bytes(ev.target))
                fz.forwarded += 1
                if entry is None:
                    fz.finding("forwarded_unknown", repr(bytes(ev.target)[:60]), None)
                    self.cur = None
                else:
                    i = entry[2]
                    entry[2] += 1
                    self.cur = (entry, i, ev)
                    fz.check_head(entry[0], entry[1], i, ev, self.lane)
                self.body = b""
            elif isinstance(ev, h11.Data):
                self.body += bytes(ev.data)
            elif isinstance(ev, h11.EndOfMessage):
                if self.cur is not None:
                    entry, i, _ = self.cur
                    fz.check_body(entry[0], entry[1], i, self.body)
                try:
                    out = self.h.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
                    out += self.h.send(h11.EndOfMessage())
                except h11.LocalProtocolError:
                    self.t.close()
                    return
                self.t.write(out)
                if self.h.our_state is h11.MUST_CLOSE:
                    self.t.close()
                    return
                self.h.start_next_cycle()


# ---------------------------------------------------------------- runner --

@dataclasses.dataclass
class Settings:
    header_timeout: float = 0.3
    keepalive_timeout: float = 0.3
    request_timeout: float = 1.0
    idle_timeout: float = 1.0
    max_header_bytes: int = 32768
    margin: float = 1.5


class Fuzz:
    def __init__(self, cases, seed, lanes, sluiceway=None, log_level="INFO", settings=None, out=None,
                 rss_bound=8 << 20, progress=0):
        self.n = cases
        self.seed = seed
        self.nlanes = lanes
        self.sluiceway = sluiceway
        self.log_level = log_level
        self.st = settings or Settings()
        self.out = out
        self.rss_bound = rss_bound
        self.progress = progress
        self.findings = collections.Counter()
        self.examples = {}
        self.details = {}
        self.statuses = collections.Counter()
        self.reasons = collections.Counter()
        self.outcomes = collections.Counter()
        self.ops = collections.Counter()
        self.forwarded = 0
        self.sent_heads = 0
        self.done = 0
        self.rss = []
        self.proc = None

    # -- findings ---------------------------------------------------------
    def finding(self, kind, detail, case):
        self.findings[kind] += 1
        if case is None:
            self.details.setdefault(kind, detail)
        elif kind not in self.examples:
            self.examples[kind] = (detail, case.data, case.ops)
        if self.out is not None:
            self.out.write(json.dumps({"kind": kind, "detail": detail,
                                       "case": None if case is None else case.data.decode("latin-1"),
                                       "ops": None if case is None else case.ops}) + "\n")

    def check_head(self, case, v, i, ev, lane):
        if i >= len(v.reqs):
            msg = v.error or "no such request (per h11)"
            self.finding("forwarded_h11_rejects: " + _kind(msg), msg, case)
            return
        if v.strict[i] is not None:
            self.finding("forwarded_" + v.strict[i], "", case)
        want = v.reqs[i]
        hosts = [bytes(val) for n, val in ev.headers if n == b"host"]
        if bytes(ev.method) != want.method:
            self.finding("mismatch_method", f"{bytes(ev.method)!r} vs {want.method!r}", case)
        auth = target_authority(want.target)
        exp_target = origin_form(want.target) if auth is not None else want.target
        if bytes(ev.target) != exp_target:
            self.finding("mismatch_target", f"{bytes(ev.target)!r} vs {exp_target!r}", case)
        client_hosts = [val for n, val in want.headers if n == b"host"]
        exp_host = auth if auth is not None else (client_hosts[0] if client_hosts
                                                   else b"127.0.0.1:%d" % lane.port)
        if hosts != [exp_host]:
            self.finding("mismatch_host", f"{hosts!r} vs {exp_host!r}", case)
        elif not valid_host(hosts[0], True):
            self.finding("origin_bad_host", repr(hosts[0]), case)
        names = [n for n, _ in ev.headers]
        if b"transfer-encoding" in names and b"content-length" in names:
            self.finding("origin_cl_te", "", case)

    def check_body(self, case, v, i, body):
        if i < len(v.reqs) and v.reqs[i].complete and body != v.reqs[i].body:
            self.finding("mismatch_body", f"{len(body)} vs {len(v.reqs[i].body)} bytes", case)

    # -- the proxy ---------------------------------------------------------
    def _start_proxy(self, tmp, lanes):
        from proxy_harness import free_port, wait_port  # tests/ is on sys.path
        port = free_port()
        conf = os.path.join(tmp, "fuzz.yaml")
        self.log_path = os.path.join(tmp, "error.log")
        st = self.st
        with open(conf, "w") as f:
            f.write(f"version: 1\nthreads: 1\nerror_log: {self.log_path}\n"
                    f"downstream_header_timeout_seconds: {st.header_timeout}\n"
                    f"downstream_keepalive_timeout_seconds: {st.keepalive_timeout}\n"
                    f"request_timeout_seconds: {st.request_timeout}\n"
                    f"upstream_idle_timeout_seconds: {st.idle_timeout}\n"
                    f"upstream_read_timeout_seconds: 5\nupstream_connect_timeout_seconds: 2\n"
                    f"downstream_write_timeout_seconds: 2\n"
                    f"max_request_header_bytes: {st.max_header_bytes}\n")
        env = dict(os.environ, SW_FUZZ_ORIGINS=json.dumps({ln.ip: ln.port for ln in lanes}),
                   SW_FUZZ_LOG_LEVEL=self.log_level)
        # The proxy imports the sluiceway this process imports (or the one
        # built in --sluiceway DIR); it runs elsewhere, so paths are absolute.
        import sluiceway
        here = os.path.dirname(os.path.dirname(os.path.abspath(sluiceway.__file__)))
        path = [HERE, os.path.join(self.sluiceway, "corepy") if self.sluiceway else here]
        path += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p) for p in path)
        self.proc = subprocess.Popen([sys.executable, "-m", "sluiceway.cli", "run", "fuzz_app:FuzzApp",
                                      "-c", conf, "-l", f"127.0.0.1:{port}"],
                                     env=env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_port(port, self.proc)
        self.port = port

    def _rss(self):
        from proxy_harness import rss_bytes  # tests/ is on sys.path
        return rss_bytes(self.proc.pid)

    def _connections(self):
        """The proxy's TCP sockets other than its listener, as
        "local port->remote port st=<state>" (from /proc/net/tcp)."""
        inodes = set()
        for fd in os.listdir(f"/proc/{self.proc.pid}/fd"):
            try:
                link = os.readlink(f"/proc/{self.proc.pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
        out = []
        with open("/proc/net/tcp") as f:
            for line in f.readlines()[1:]:
                parts = line.split()
                if parts[9] in inodes and parts[3] != "0A":  # 0A: LISTEN
                    out.append(f"{int(parts[1].split(':')[1], 16)}->{int(parts[2].split(':')[1], 16)} "
                               f"st={parts[3]}")
        return out

    # -- one case ----------------------------------------------------------
    async def _case(self, lane, case):
        v = h11_verdict(case.data)
        lane.cases[case.id] = [case, v, 0]
        while len(lane.cases) > 8:
            lane.cases.popitem(last=False)
        lane.current = case.id
        self.sent_heads += len(v.reqs)
        for op in case.ops:
            self.ops[op] += 1
        st = self.st
        deadline = st.header_timeout + st.keepalive_timeout + st.request_timeout + st.margin
        expect = len(v.reqs) if v.clean and not case.wait_close else None
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port, local_addr=(lane.ip, 0))
        except OSError as exc:
            self.finding("connect_failed", str(exc), case)
            return
        buf = b""
        closed = False
        t_end = time.monotonic() + deadline
        try:
            writer.write(case.data)
            while True:
                left = t_end - time.monotonic()
                if left <= 0:
                    break
                try:
                    chunk = await asyncio.wait_for(reader.read(65536), left)
                except asyncio.TimeoutError:
                    break
                except (ConnectionError, OSError):
                    closed = True
                    break
                if not chunk:
                    closed = True
                    break
                buf += chunk
                if expect is not None and _final_responses(buf) >= expect:
                    closed = True  # everything answered: we close, as a client would
                    break
        finally:
            writer.transport.abort()
        if not closed:
            self.finding("left_open", f"no close within {deadline:.1f}s", case)
        for head, body in _responses(buf):
            m = _STATUS.match(head)
            if m is None:
                continue
            self.statuses[int(m.group(1))] += 1
            if int(m.group(1)) >= 400:  # the proxy's answer: "400 Bad Request: <reason>"
                self.reasons[f"{m.group(1).decode()} {body.partition(b': ')[2].strip().decode(errors='replace')}"] += 1
        fwd = lane.cases[case.id][2] if case.id in lane.cases else 0
        self.outcomes[("h11_ok" if v.clean else "h11_err" if v.error else "h11_partial",
                       "forwarded" if fwd else "not_forwarded")] += 1

    async def _lane(self, lane, ids):
        rng = random.Random(f"{self.seed}-{lane.k}")
        for cid in ids:
            if self.proc.poll() is not None:
                return
            await self._case(lane, make_case(rng, cid))
            self.done += 1
            if self.done % 500 == 0:
                self.rss.append((self.done, self._rss()))
            if self.progress and self.done % self.progress == 0:
                self._print_progress()

    def _print_progress(self):
        el = time.monotonic() - self.t0
        print(f"{self.done:,} cases in {el:,.0f}s ({self.done / el:,.0f}/s), forwarded {self.forwarded:,}, "
              f"proxy RSS {self.rss[-1][1] / 1048576 if self.rss else 0:.1f} MiB, "
              f"findings {dict(self.findings)}", flush=True)

    async def _run(self):
        loop = asyncio.get_running_loop()
        lanes = [Lane(k, self) for k in range(self.nlanes)]
        for ln in lanes:
            ln.server = await loop.create_server(lambda ln=ln: OriginConn(ln), "127.0.0.1", 0)
            ln.port = ln.server.sockets[0].getsockname()[1]
        with tempfile.TemporaryDirectory() as tmp:
            self._start_proxy(tmp, lanes)
            try:
                self.t0 = time.monotonic()
                ids = list(range(self.n))
                await asyncio.gather(*(self._lane(ln, ids[ln.k::self.nlanes]) for ln in lanes))
                self.elapsed = time.monotonic() - self.t0
                if self.proc.poll() is not None:
                    self.finding("proxy_died", f"exit status {self.proc.returncode}: "
                                 f"{self.proc.stderr.read().decode(errors='replace')[-2000:]}", None)
                    return
                self.rss.append((self.done, self._rss()))
                # Idle: every client and pooled connection must go at its timeout.
                wait = max(self.st.keepalive_timeout, self.st.idle_timeout) + 1.0
                await asyncio.sleep(wait)
                left = self._connections()
                if left:
                    self.finding("fd_leak", f"{len(left)} connections open after {wait:.1f}s idle: "
                                 f"{', '.join(left)}", None)
                warm = [r for d, r in self.rss if d >= self.n // 5]
                if len(warm) >= 2 and warm[-1] - warm[0] > self.rss_bound:
                    self.finding("rss_growth", f"{(warm[-1] - warm[0]) / 1048576:.1f} MiB after warm-up", None)
            finally:
                if self.proc.poll() is None:
                    self.proc.send_signal(signal.SIGINT)
                    try:
                        self.proc.wait(10)
                    except subprocess.TimeoutExpired:
                        self.proc.kill()
                        self.proc.wait(5)
                for ln in lanes:
                    ln.server.close()
                with open(self.log_path, errors="replace") as f:
                    for line in f:
                        if "this is a bug" in line or "Traceback" in line:
                            self.finding("proxy_internal_error", line.strip()[:300], None)

    def run(self):
        """Run the cases; return self (see report())."""
        import uvloop
        uvloop.run(self._run())
        return self

    def report(self, verbose=False):
        el = getattr(self, "elapsed", 0.0) or 1e-9
        rss = self.rss
        lines = [f"cases {self.done:,} (seed {self.seed}, {self.nlanes} lanes) in {el:,.1f}s: "
                 f"{self.done / el:,.0f} cases/s",
                 f"requests h11 read {self.sent_heads:,}; forwarded to origins {self.forwarded:,}",
                 f"outcomes {dict(sorted(self.outcomes.items()))}",
                 f"client statuses {dict(sorted(self.statuses.items()))}"]
        if verbose:
            lines.append("proxy's reasons:")
            lines += [f"  {n:8,}  {r}" for r, n in self.reasons.most_common(40)]
        if rss:
            lines.append(f"proxy RSS {rss[0][1] / 1048576:.1f} MiB at {rss[0][0]:,} cases, "
                         f"{rss[-1][1] / 1048576:.1f} MiB at the end")
        lines.append("findings: none" if not self.findings else "findings:")
        for kind, n in self.findings.most_common():
            lines.append(f"  {n:8,}  {kind}")
            if kind in self.details:
                lines.append(f"            {self.details[kind][:600]}")
            if kind in self.examples:
                detail, data, ops = self.examples[kind]
                lines.append(f"            e.g. {data[:200]!r} ops={ops} {detail[:200]}")
        return "\n".join(lines)


def _kind(msg):
    """h11's message without the bytes it quotes."""
    return re.sub(r"[\d'\"(].*", "", msg).strip()


_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3})")


def _responses(buf):
    """(head, body) of the responses in buf (origin answers have no body;
    the proxy's own error answers close the connection after theirs)."""
    out, pos = [], 0
    while True:
        end = buf.find(b"\r\n\r\n", pos)
        if end < 0:
            return out
        m = re.search(rb"\r\ncontent-length: *(\d+)", buf[pos:end], re.I)
        n = int(m.group(1)) if m else 0
        out.append((buf[pos:end], buf[end + 4:end + 4 + n]))
        pos = end + 4 + n


def _statuses(buf):
    return [int(m.group(1)) for h, _ in _responses(buf) if (m := _STATUS.match(h))]


def _final_responses(buf):
    return sum(1 for s in _statuses(buf) if s >= 200)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Fuzz the proxy's request-head handling (see docs/fuzzing.md).")
    ap.add_argument("--cases", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--lanes", type=int, default=24, help="concurrent client connections (<= 200)")
    ap.add_argument("--sluiceway", metavar="DIR", help="run the sluiceway built in this checkout "
                    "(its corepy/ first on PYTHONPATH); default: the one this Python imports")
    ap.add_argument("--findings", metavar="FILE", help="append every finding as a JSON line")
    ap.add_argument("--log-level", default="WARNING", help="sluiceway.error level in the proxy")
    ap.add_argument("--progress", type=int, default=100_000, help="print a line every N cases")
    ns = ap.parse_args(argv)
    sys.path.insert(0, os.path.join(REPO, "tests"))
    out = open(ns.findings, "a") if ns.findings else None
    try:
        fz = Fuzz(ns.cases, ns.seed, min(ns.lanes, 200), ns.sluiceway, ns.log_level, out=out,
                  progress=ns.progress).run()
    finally:
        if out is not None:
            out.close()
    print(fz.report(verbose=True))
    return 1 if fz.findings else 0


if __name__ == "__main__":
    sys.exit(main())
