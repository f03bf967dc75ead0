"""Property test: heads forwarded through the real proxy are, byte for byte,
what the rules' reference (sluiceway._forward_py) says, for requests and
responses, as received or edited by a hook (fields added, replaced and
removed, hop-by-hop ones and ones named by Connection included; a
response's status and reason changed).

Requests are checked at a raw origin (the head it receives); responses at
a raw-socket client. Two proxies share the origin: ``plain`` has no
response hook (so a response may go on as received) and
``forwarded_headers`` off; ``hooked`` has both response hooks and
``forwarded_headers`` on. Both edit requests in upstream_request_filter
when the example asks for it.
"""

import socket

from hypothesis import HealthCheck, assume, event, example, given, settings, strategies as st

from proxy_harness import Harness
from raw_peers import RawOrigin, read_head
from sluiceway import _forward_py as ref
from sluiceway.proxy import HttpPeer, ProxyHttp

OK_REPLY = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
PLAN = {"reply": OK_REPLY, "req_ops": [], "resp_ops": [], "status": None, "reason": None}


def apply_ops(headers, ops):
    """A hook's edits: ("add" | "set" | "del", name, value) on a head."""
    for op, name, value in ops:
        if op == "add":
            headers.append_header(name, value)
        elif op == "set":
            headers.insert_header(name, value)
        else:
            headers.remove_header(name)


class Plain(ProxyHttp):
    port = None

    def upstream_peer(self, session, ctx):
        return HttpPeer(("127.0.0.1", self.port))

    def upstream_request_filter(self, session, req, ctx):
        apply_ops(req, PLAN["req_ops"])


class Hooked(Plain):
    def upstream_response_filter(self, session, resp, ctx):
        apply_ops(resp, PLAN["resp_ops"])

    def response_filter(self, session, resp, ctx):
        if PLAN["status"] is not None:
            resp.status = PLAN["status"]
        if PLAN["reason"] is not None:
            resp.reason = PLAN["reason"]


def _serve(conn, origin):
    """Record each request head; answer with PLAN["reply"] (requests here
    carry no body)."""
    buf = b""
    while True:
        head, buf = read_head(conn, buf, timeout=60)
        if head is None:
            return
        with origin.lock:
            origin.received.append(head)
        conn.sendall(PLAN["reply"])
        if b"\r\nconnection: close\r\n" in PLAN["reply"].lower():
            return


ORIGIN = PROXIES = None


def setup_module():
    global ORIGIN, PROXIES
    ORIGIN = RawOrigin(_serve).__enter__()
    PROXIES = {}
    try:
        for name, cls, fwd in (("plain", Plain, False), ("hooked", Hooked, True)):
            app = cls()
            app.port = ORIGIN.port
            PROXIES[name] = Harness(app, forwarded_headers=fwd).__enter__()
    except BaseException:
        teardown_module()
        raise


def teardown_module():
    for h in (PROXIES or {}).values():
        h.__exit__(None, None, None)
    if ORIGIN is not None:
        ORIGIN.__exit__(None, None, None)


# ------------------------------------------------------------------ model --

def model_ops(fields, ops):
    """What HeaderMap makes of ``fields`` after ``ops``, and whether it
    copied them into a list (then the head counts as edited)."""
    f = [list(x) for x in fields]
    edited = False
    for op, name, value in ops:
        ln = name.lower()
        at = [i for i, (n, _) in enumerate(f) if n.lower() == ln]
        if op == "add":
            f.append([name, value])
        elif op == "set":
            if at:
                f[at[0]] = [name, value]
                f = [x for i, x in enumerate(f) if i not in at[1:]]
            else:
                f.append([name, value])
        elif at:
            f = [x for i, x in enumerate(f) if i not in at]
        edited = edited or op != "del" or bool(at)
    return [tuple(x) for x in f], edited


def read_message(sock, head_only=False):
    """(interim heads, final head, body) of one response from the proxy."""
    buf = b""
    interim = []

    def more():
        nonlocal buf
        d = sock.recv(65536)
        if not d:
            raise EOFError
        buf += d

    while True:
        while b"\r\n\r\n" not in buf:
            more()
        i = buf.index(b"\r\n\r\n") + 4
        head, buf = buf[:i], buf[i:]
        if head[9:10] == b"1":
            interim.append(head)
            continue
        break
    lower = head.lower()
    status = int(head[9:12])
    if head_only or status in (204, 304):
        return interim, head, b""
    if b"\r\ntransfer-encoding: chunked\r\n" in lower:
        body = b""
        while True:
            while b"\r\n" not in buf:
                more()
            j = buf.index(b"\r\n")
            n = int(buf[:j], 16)
            while len(buf) < j + 2 + n + 2:
                more()
            body += buf[j + 2:j + 2 + n]
            buf = buf[j + 2 + n + 2:]
            if n == 0:
                return interim, head, body
    for line in lower.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            n = int(line.split(b":", 1)[1])
            while len(buf) < n:
                more()
            return interim, head, buf[:n]
    try:
        while True:
            more()
    except EOFError:
        return interim, head, buf


def exchange(proxy, request):
    s = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    try:
        s.sendall(request)
        return read_message(s)
    finally:
        s.close()


# ------------------------------------------------------------- strategies --

def cases(names):
    return st.sampled_from(names).flatmap(lambda n: st.sampled_from([n, n.lower(), n.upper()]))


TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=6)
VALUE = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABC 0123456789=;,/", max_size=10).map(
    lambda v: v.strip(" ").encode())
OPTIONS = ["close", "keep-alive", "X-Named", "x-a", "Host", "Content-Length",
           "Transfer-Encoding", "TE", "Upgrade", "Server", "Cookie", "Set-Cookie",
           "X-Forwarded-For", "Expect"]
CONN_VALUE = st.lists(st.tuples(st.sampled_from(["", " ", "\t"]), cases(OPTIONS) | TOKEN,
                                st.sampled_from(["", " "])), min_size=1, max_size=3).map(
    lambda opts: ",".join(a + o + z for a, o, z in opts).strip(" \t").encode())

REQ_NAMES = ["X-A", "X-Named", "Keep-Alive", "TE", "Trailer", "Proxy-Connection", "Upgrade",
             "Accept", "Expect", "Cookie", "X-Forwarded-For", "X-Forwarded-Host",
             "X-Forwarded-Proto"]
RESP_NAMES = ["X-A", "X-Named", "Keep-Alive", "TE", "Trailer", "Proxy-Connection", "Upgrade",
              "Server", "Set-Cookie", "Cache-Control", "Host", "Content-Type"]
EDIT_NAMES = ["X-A", "X-Named", "X-New", "Keep-Alive", "TE", "Upgrade", "Proxy-Connection",
              "Host", "Content-Length", "Transfer-Encoding", "Expect", "Server", "Set-Cookie",
              "X-Forwarded-For"]


def field_st(names):
    return st.one_of(st.tuples(cases(names).map(str.encode), VALUE),
                     st.tuples(TOKEN.map(lambda t: ("x-" + t).encode()), VALUE),
                     st.tuples(cases(["Connection"]).map(str.encode), CONN_VALUE))


_OP = st.one_of(
    st.tuples(st.sampled_from(["add", "set"]), cases(EDIT_NAMES).map(str.encode), VALUE),
    st.tuples(st.sampled_from(["add", "set"]), st.just(b"Connection"), CONN_VALUE),
    st.tuples(st.just("del"), cases(EDIT_NAMES + ["Connection"]).map(str.encode), st.just(b"")))
OPS = st.just([]) | st.lists(_OP, min_size=1, max_size=4)


def _no_upgrade(fields):
    # Upgrade + Connection: upgrade is a protocol switch (tested elsewhere).
    return not (any(n.lower() == b"upgrade" for n, _ in fields)
                and any(n.lower() == b"connection" and b"upgrade" in ref.connection_options(v)
                        for n, v in fields))


def _not_closing(fields):
    # (llhttp takes nothing after an interim response that says close)
    return not any(n.lower() == b"connection" and b"close" in ref.connection_options(v)
                   for n, v in fields)


# -------------------------------------------------------------- requests --

@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(fields=st.lists(field_st(REQ_NAMES), max_size=8),
       host=st.booleans(), length=st.booleans(), minor=st.sampled_from([1, 1, 0]),
       absolute=st.booleans(), ops=OPS,
       proxy=st.sampled_from(["plain", "hooked"]))
# The Connection rule, the same received and edited: no option removes
# Host or Content-Length, in any case, with blanks around it.
@example(fields=[(b"Connection", b"host, Content-Length,\tx-named"), (b"X-Named", b"1")],
         host=True, length=True, minor=1, absolute=False, ops=[], proxy="plain")
@example(fields=[(b"X-Named", b"1")], host=True, length=True, minor=1, absolute=False,
         ops=[("set", b"Connection", b"HOST , content-length, X-Named")], proxy="plain")
# A received head the proxy can forward as it is; then edited by one field.
@example(fields=[(b"X-A", b"0")], host=True, length=False, minor=1, absolute=False, ops=[],
         proxy="plain")
@example(fields=[(b"X-A", b"0")], host=True, length=False, minor=1, absolute=False,
         ops=[("add", b"x-edited", b"1")], proxy="plain")
# Removing Host: the upstream's address goes instead.
@example(fields=[], host=True, length=False, minor=1, absolute=False, ops=[("del", b"Host", b"")],
         proxy="hooked")
@example(fields=[(b"Expect", b"100-continue")], host=True, length=False, minor=1,
         absolute=False, ops=[("add", b"x-edited", b"1")], proxy="plain")
def test_request_head_is_the_references(fields, host, length, minor, absolute, ops, proxy):
    assume(_no_upgrade(fields))
    host = host or minor == 1   # (HTTP/1.1 without Host is refused: 400)
    h = PROXIES[proxy]
    target = b"/p?q=1"
    line_target = b"http://a.example:8080" + target if absolute else target
    received = [(b"Host", b"h")] if host else []
    received += fields
    if length:
        received.append((b"Content-Length", b"0"))
    request = b"GET " + line_target + b" HTTP/1.%d\r\n" % minor + b"".join(
        n + b": " + v + b"\r\n" for n, v in received) + b"\r\n"
    # what hooks see: an absolute-form target's authority replaces Host
    seen, edited = received, False
    if absolute:
        seen, edited = model_ops(received, [("set", b"Host", b"a.example:8080")])
    seen, more = model_ops(seen, ops)
    PLAN.update(reply=OK_REPLY, req_ops=ops, resp_ops=[], status=None, reason=None)
    with ORIGIN.lock:
        before = len(ORIGIN.received)
    interim, head, body = exchange(h, request)
    assert head.startswith(b"HTTP/1.1 200 ") and body == b"ok", head
    with ORIGIN.lock:
        got = ORIGIN.received[before:]
    want = ref.request_head(
        b"GET", target, seen, received=None if (edited or more or absolute) else request,
        minor=minor, forwarded_for=b"127.0.0.1" if proxy == "hooked" else None,
        peer_host=b"127.0.0.1:%d" % ORIGIN.port)
    event("as received" if want == request else "edited" if edited or more else "rebuilt")
    assert got == [want]


# ------------------------------------------------------------- responses --

@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(fields=st.lists(field_st(RESP_NAMES), max_size=8),
       at=st.integers(0, 8), chunked=st.booleans(), origin_minor=st.sampled_from([1, 1, 0]),
       client=st.sampled_from(["1.1", "1.1 close", "1.0", "1.0 keep-alive"]),
       interim=st.none() | st.lists(field_st(RESP_NAMES), max_size=3).filter(_not_closing),
       ops=st.lists(_OP, min_size=1, max_size=4), status=st.none() | st.sampled_from([202, 299, 404, 503, 304,
                                                                      1000]),
       reason=st.none() | st.sampled_from(["Fine", "", "Not Here At All"]),
       proxy=st.sampled_from(["plain", "hooked", "hooked"]))
# The Connection rule on responses: Host is kept whether or not a hook
# edited the head (an edited response used to let Connection remove it).
@example(fields=[(b"Host", b"h"), (b"Connection", b"host, x-named"), (b"X-Named", b"1")],
         at=8, chunked=False, origin_minor=1, client="1.1", interim=None,
         ops=[("add", b"X-Edited", b"1")], status=None, reason=None, proxy="hooked")
@example(fields=[(b"Host", b"h"), (b"Connection", b"host, x-named"), (b"X-Named", b"1")],
         at=8, chunked=False, origin_minor=1, client="1.1", interim=None,
         ops=[], status=None, reason=None, proxy="plain")
@example(fields=[(b"X-A", b"1")], at=0, chunked=False, origin_minor=1, client="1.1",
         interim=None, ops=[("set", b"Connection", b"Content-Length, x-a")], status=None,
         reason=None, proxy="hooked")
# A response the proxy can forward as it is; an interim response.
@example(fields=[(b"Server", b"s")], at=0, chunked=False, origin_minor=1, client="1.1",
         interim=[(b"Link", b"</a>"), (b"Connection", b"x-a"), (b"X-A", b"1")], ops=[],
         status=None, reason=None, proxy="plain")
# A status out of range goes out as 500, edited or not.
@example(fields=[], at=0, chunked=True, origin_minor=1, client="1.1", interim=None,
         ops=[("add", b"Content-Length", b"7")], status=1000, reason="Odd", proxy="hooked")
@example(fields=[], at=0, chunked=True, origin_minor=1, client="1.1", interim=None,
         ops=[], status=1000, reason="Odd", proxy="hooked")
# A status that takes the body away: the framing the response ends up with
# decides (a 304 may say how long the body would have been).
@example(fields=[], at=0, chunked=True, origin_minor=1, client="1.1", interim=None,
         ops=[("add", b"Content-Length", b"7")], status=304, reason=None, proxy="hooked")
# A hook turns a chunked 200 into a 304 for an HTTP/1.0 keep-alive client:
# with no body left to delimit by closing, the connection is kept.
@example(fields=[], at=0, chunked=True, origin_minor=1, client="1.0 keep-alive", interim=None,
         ops=[("del", b"X-A", b"")], status=304, reason=None, proxy="hooked")
def test_response_head_is_the_references(fields, at, chunked, origin_minor, client, interim, ops,
                                         status, reason, proxy):
    assume(_no_upgrade(fields))
    h = PROXIES[proxy]
    framing_field = (b"Transfer-Encoding", b"chunked") if chunked else (b"Content-Length", b"2")
    sent = list(fields)
    sent.insert(min(at, len(sent)), framing_field)
    origin_head = b"HTTP/1.%d 200 OK\r\n" % origin_minor + b"".join(
        n + b": " + v + b"\r\n" for n, v in sent) + b"\r\n"
    reply = origin_head + (b"2\r\nrb\r\n0\r\n\r\n" if chunked else b"rb")
    if interim is not None:
        reply = b"HTTP/1.1 103 Early Hints\r\n" + b"".join(
            n + b": " + v + b"\r\n" for n, v in interim) + b"\r\n" + reply
    if proxy == "plain":   # no response hook
        ops, status, reason = [], None, None
    version, _, conn = client.partition(" ")
    client_minor = int(version[-1])
    seen, edited = model_ops(sent, ops)
    out_status = 200 if status is None else status
    out_reason = b"OK" if reason is None else reason.encode()
    if out_status in (204, 304):
        framing = "none"
    elif not chunked:
        framing = "length"
    else:
        framing = "chunked" if client_minor == 1 else "close"
    keep = (conn != "close" if client_minor == 1 else conn == "keep-alive") and framing != "close"
    if framing == "length":
        # a hook that changes Content-Length breaks the framing it promises
        assume(not any(n.lower() == b"content-length" for _, n, _ in ops))
    PLAN.update(reply=reply, req_ops=[], resp_ops=ops, status=status, reason=reason)
    request = b"GET /r HTTP/" + version.encode() + b"\r\nHost: h\r\n" + (
        b"Connection: " + conn.encode() + b"\r\n" if conn else b"") + b"\r\n"
    interims, head, body = exchange(h, request)
    want = ref.response_head(out_status, out_reason, seen,
                             received=origin_head if proxy == "plain" else None,
                             minor=origin_minor,
                             framing=framing, keep=keep, client_minor=client_minor)
    event("as received" if want == origin_head else "edited" if edited else "rebuilt")
    assert head == want
    assert body == (b"" if framing == "none" else b"rb")
    if interim is not None and client_minor == 1:
        assert interims == [ref.interim_head(103, b"Early Hints", interim)]
    else:
        assert interims == []
