# Included by _engine.pyx: writing the heads that go on (request upstream,
# response and interim responses to the client), and the response bytes
# held back to go out in one write.

cdef bytes _request_head(Session s, bint reframe):
    """The request head for the upstream. Untouched by hooks, HTTP/1.1, with
    a Host and no hop-by-hop field: the received bytes as they are. Else
    rebuilt from the spans by C (sw_hop_mark/sw_write_fields) behind a new
    request line, or from the field list a hook edited."""
    cdef RequestHeader rq = s.req_header
    cdef HeaderMap hm = rq.headers
    cdef bint forwarded = s.eng.cfg.forwarded_headers
    cdef unsigned extra = SW_DROP_EXPECT
    cdef unsigned flags
    cdef unsigned char *drop
    cdef char *out
    cdef char *o
    cdef size_t need
    if forwarded:
        extra |= SW_DROP_XFF
    if reframe:
        extra |= SW_DROP_CONTENT_LENGTH | SW_DROP_TRANSFER_ENCODING
    if hm._items is not None:
        return _request_head_from_items(s, reframe)
    drop = _need_drop(hm._n)
    flags = sw_hop_mark(hm._base, hm._h, hm._n, drop, extra)
    s.expect_100 = (flags & SW_F_EXPECT_100) != 0 and rq._minor == 1
    if not (flags & SW_F_DROPPED) and rq._minor == 1 and (flags & SW_F_HOST) \
            and not forwarded and not rq._edited_line and not s.expect_100 \
            and not s.want_upgrade and not s.rid_new:
        # Untouched: forward the received head as it is.
        if rq._head.off == 0 and rq._head.len == PyBytes_GET_SIZE(rq._buf):
            return rq._buf
        return PyBytes_FromStringAndSize(PyBytes_AS_STRING(rq._buf) + rq._head.off, rq._head.len)
    uri = rq.raw_uri
    meth = rq._method.encode("ascii")
    extras = _extra_fields(s, flags, reframe)
    need = len(meth) + len(uri) + 16 + sw_fields_size(hm._h, hm._n) + len(extras) + 2
    out = _need_scratch(need)
    o = out
    memcpy(o, PyBytes_AS_STRING(meth), len(meth)); o += len(meth)
    o[0] = b' '; o += 1
    memcpy(o, PyBytes_AS_STRING(uri), len(uri)); o += len(uri)
    memcpy(o, b" HTTP/1.1\r\n", 11); o += 11
    o += sw_write_fields(o, hm._base, hm._h, hm._n, drop)
    memcpy(o, PyBytes_AS_STRING(extras), len(extras)); o += len(extras)
    o[0] = b'\r'; o[1] = b'\n'; o += 2
    return PyBytes_FromStringAndSize(out, o - out)


cdef bytes _extra_fields(Session s, unsigned flags, bint reframe):
    """Fields the proxy adds to the request: Host (an HTTP/1.0 client may
    send none, or a hook removed it), the new framing, the upgrade, the
    X-Forwarded-* set."""
    cdef list parts = []
    cdef HeaderMap hm = s.req_header.headers
    if not (flags & SW_F_HOST):
        parts.append(b"Host: " + (<HttpPeer>s.peer)._host_hdr() + _CRLF)
    if reframe:
        parts.append(b"Transfer-Encoding: chunked\r\n")
    if s.rid_new:
        parts.append(_rid_field(s))
    if s.want_upgrade:
        i = hm._find(b"upgrade", 0)
        if i >= 0:
            parts.append(b"Connection: upgrade\r\nUpgrade: " + hm._value_at(i) + _CRLF)
    if s.eng.cfg.forwarded_headers:
        addr = s.client_addr
        client = addr[0] if isinstance(addr, tuple) else "unix"
        prior = hm.getall("x-forwarded-for")
        xff = ", ".join(prior + [client]) if prior else client
        parts.append(b"X-Forwarded-For: " + _as_value(xff) + _CRLF)
        parts.append(b"X-Forwarded-Proto: http\r\n")
        host = hm.get_bytes("host")
        if host is not None:
            parts.append(b"X-Forwarded-Host: " + host + _CRLF)
    return b"".join(parts)


cdef bytes _request_head_from_items(Session s, bint reframe):
    """The request head when a hook edited the fields."""
    cdef RequestHeader rq = s.req_header
    cdef list items = rq.headers._items
    cdef set named = set()
    cdef unsigned flags = 0
    cdef bint forwarded = s.eng.cfg.forwarded_headers
    for n, v in items:
        ln = (<bytes>n).lower()
        if ln == b"connection":
            for tok in (<bytes>v).split(b","):
                tok = tok.strip().lower()
                if tok and tok not in (b"content-length", b"transfer-encoding", b"host"):
                    named.add(tok)
        elif ln == b"host":
            flags |= SW_F_HOST
        elif ln == b"expect" and (<bytes>v).strip().lower() == b"100-continue" and rq._minor == 1:
            s.expect_100 = True
    parts = [rq._method.encode("ascii"), b" ", rq.raw_uri, b" HTTP/1.1\r\n"]
    for n, v in items:
        ln = (<bytes>n).lower()
        if ln in _HOP and ln != b"transfer-encoding":
            continue
        if ln in named or ln == b"expect":
            continue
        if reframe and ln in (b"content-length", b"transfer-encoding"):
            continue
        if forwarded and ln in (b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"):
            continue
        parts.append(n + b": " + v + _CRLF)
    parts.append(_extra_fields(s, flags, reframe))
    parts.append(_CRLF)
    return b"".join(parts)


cdef int _send_response_head(Session s) except -1:
    """Write the response head to the client (after the response hooks, if
    any). Unchanged when it can be (HTTP/1.1 both ways, kept alive, framed
    by length, no hop-by-hop field, no hook): the received bytes, held back
    when body bytes follow them in the same read so both go out in one
    write. Else rebuilt (new framing, Connection, the upgrade)."""
    cdef _Reader r = s.resp_r
    cdef sw_msg_t *m
    cdef ResponseHeader rs = s.resp
    cdef HeaderMap hm
    cdef unsigned extra = SW_DROP_TRANSFER_ENCODING
    cdef unsigned flags
    cdef unsigned char *drop
    cdef const char *base
    cdef const sw_header_t *hh
    cdef uint32_t nh
    cdef char *out
    cdef char *o
    cdef size_t need
    cdef bytes reason
    cdef int status, mode
    cdef bint keep
    if s.finished or r is None:
        return 0
    m = &r.m
    mode = s.resp_mode
    if mode == M_CHUNKED or mode == M_CLOSE:
        extra |= SW_DROP_CONTENT_LENGTH
    keep = s.client_keep and not s.eng.closing and s._body_allows_keep()
    if rs is not None:
        status = rs.status
        if status != m.status_code:
            s.status = status
            if status == 204 or status == 304:
                s.resp_mode = mode = M_NONE
    else:
        status = m.status_code
    s.client_keep = keep
    s.resp_started = True
    if rs is not None and rs.headers._items is not None:
        return _head_out(s, _response_head_from_items(s, rs, keep), r)
    if rs is not None:
        hm = rs.headers
        base = hm._base
        hh = hm._h
        nh = hm._n
    else:
        base = r.head_base
        hh = m.headers
        nh = m.nheaders
    drop = _need_drop(nh)
    flags = sw_hop_mark(base, hh, nh, drop, extra)
    if not (flags & SW_F_DROPPED) and m.major == 1 and m.minor == 1 and keep and \
            s.req_header._minor == 1 and rs is None and (mode == M_RAW or mode == M_NONE) and \
            (s.rid is None or not s.eng.cfg.request_id):
        # Forward the received head unchanged.
        if r.head_buf is r.data and mode == M_RAW and not _has(s.eng, H_RESP_BODY):
            s.held_data = r.data
            s.held_off = m.msg_start
            s.held_len = m.head_len
        elif m.msg_start == 0 and m.head_len == PyBytes_GET_SIZE(r.head_buf):
            s._to_client(r.head_buf)
        else:
            s._to_client(PyBytes_FromStringAndSize(r.head_base + m.msg_start, m.head_len))
        return 0
    reason = rs._reason if rs is not None else \
        PyBytes_FromStringAndSize(r.head_base + m.reason.off, m.reason.len)
    upgrade_lines = b""
    if s.upgrading:
        ui = sw_find(base, hh, nh, b"upgrade", 7, 0)
        if ui >= 0:
            upgrade_lines = b"Connection: upgrade\r\nUpgrade: " + PyBytes_FromStringAndSize(
                base + hh[ui].value.off, hh[ui].value.len) + _CRLF
    rid_line = b""
    if s.rid is not None and s.eng.cfg.request_id and \
            sw_find(base, hh, nh, PyBytes_AS_STRING(s.eng.cfg.rid_lname),
                    PyBytes_GET_SIZE(s.eng.cfg.rid_lname), 0) < 0:
        rid_line = _rid_field(s)
    need = 64 + len(reason) + sw_fields_size(hh, nh) + 64 + len(upgrade_lines) + len(rid_line)
    out = _need_scratch(need)
    o = out
    o += sw_write_status_line(o, status, PyBytes_AS_STRING(reason), len(reason))
    o += sw_write_fields(o, base, hh, nh, drop)
    if rid_line:
        memcpy(o, PyBytes_AS_STRING(rid_line), len(rid_line)); o += len(rid_line)
    if mode == M_CHUNKED:
        memcpy(o, b"Transfer-Encoding: chunked\r\n", 28); o += 28
    if s.upgrading:
        memcpy(o, PyBytes_AS_STRING(upgrade_lines), len(upgrade_lines)); o += len(upgrade_lines)
    elif not keep:
        memcpy(o, b"Connection: close\r\n", 19); o += 19
    elif s.req_header._minor == 0:
        memcpy(o, b"Connection: keep-alive\r\n", 24); o += 24
    o[0] = b'\r'; o[1] = b'\n'; o += 2
    return _head_out(s, PyBytes_FromStringAndSize(out, o - out), r)


cdef bytes _response_head_from_items(Session s, ResponseHeader rs, bint keep):
    """The response head when a hook edited the fields."""
    cdef list items = rs.headers._items
    cdef set named = set()
    for n, v in items:
        if (<bytes>n).lower() == b"connection":
            for tok in (<bytes>v).split(b","):
                tok = tok.strip().lower()
                if tok and tok not in (b"content-length", b"transfer-encoding"):
                    named.add(tok)
    parts = [b"HTTP/1.1 %d " % rs.status, rs._reason, _CRLF]
    for n, v in items:
        ln = (<bytes>n).lower()
        if ln in _HOP or ln in named:
            continue
        if ln == b"content-length" and (s.resp_mode == M_CHUNKED or s.resp_mode == M_CLOSE):
            continue
        parts.append(n + b": " + v + _CRLF)
    if s.rid is not None and s.eng.cfg.request_id and \
            rs.headers._find(s.eng.cfg.rid_lname, 0) < 0:
        parts.append(_rid_field(s))
    if s.resp_mode == M_CHUNKED:
        parts.append(b"Transfer-Encoding: chunked\r\n")
    if s.upgrading:
        i = rs.headers._find(b"upgrade", 0)
        if i >= 0:
            parts.append(b"Connection: upgrade\r\nUpgrade: " + rs.headers._value_at(i) + _CRLF)
    elif not keep:
        parts.append(b"Connection: close\r\n")
    elif s.req_header._minor == 0:
        parts.append(b"Connection: keep-alive\r\n")
    parts.append(_CRLF)
    return b"".join(parts)


cdef int _head_out(Session s, bytes head, _Reader r) except -1:
    """Send a rebuilt response head, or hold it back so that body bytes
    following it in the same buffer go out in the same (vectored) write."""
    if r.head_buf is r.data and s.resp_mode == M_RAW and not _has(s.eng, H_RESP_BODY):
        s.held_prefix = head
        s.held_data = r.data
        s.held_off = r.m.msg_start + r.m.head_len
        s.held_len = 0
    else:
        s._to_client(head)
    return 0


cdef bytes _informational_head(_Reader r):
    """An interim response head as forwarded: as received, minus the
    hop-by-hop fields."""
    cdef sw_msg_t *m = &r.m
    cdef unsigned char *drop = _need_drop(m.nheaders)
    cdef char *out
    cdef char *o
    sw_hop_mark(r.head_base, m.headers, m.nheaders, drop,
                SW_DROP_TRANSFER_ENCODING | SW_DROP_CONTENT_LENGTH)
    out = _need_scratch(64 + m.reason.len + sw_fields_size(m.headers, m.nheaders) + 2)
    o = out
    o += sw_write_status_line(o, m.status_code, r.head_base + m.reason.off, m.reason.len)
    o += sw_write_fields(o, r.head_base, m.headers, m.nheaders, drop)
    o[0] = b'\r'; o[1] = b'\n'; o += 2
    return PyBytes_FromStringAndSize(out, o - out)


cdef bint _hold_more(Session s, _Reader r):
    """Body bytes the upstream's parser just gave: when they follow the
    held-back bytes in the same buffer, they join them (no write yet)."""
    if s.held_data is not None and s.held_data is r.data and \
            r.body_at == r.dptr + s.held_off + s.held_len:
        s.held_len += r.body_len
        s.response_body_bytes += r.body_len
        return True
    return False


cdef int _flush_held(Session s) except -1:
    """Write the held-back head and slice of the upstream's bytes: one
    vectored write, no copy."""
    cdef object d = s.held_data
    cdef object prefix = s.held_prefix
    if d is None:
        return 0
    s.held_data = None
    s.held_prefix = None
    if s.client is not None and not s.client_gone and s.client.is_open():
        s.client.send_slice(prefix, d, <Py_ssize_t>s.held_off, <Py_ssize_t>s.held_len)
    return 0
