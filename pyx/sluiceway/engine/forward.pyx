# Included by _engine.pyx: writing the heads that go on (request upstream,
# response and interim responses to the client), and the response bytes
# held back to go out in one write.

cdef sw_field_t *_fields_of(HeaderMap hm, uint32_t *n, size_t *size) except NULL:
    """hm's fields as the C filter and writer read them (sw_proxy.h): for a
    head no hook changed, pointers into the received bytes; for an edited
    one, into the bytes objects of its field list. n[0] gets their number,
    size[0] the most sw_write_fields() writes for them. Valid until hm
    changes or the next call (one scratch array per loop)."""
    cdef sw_field_t *f
    cdef list items = hm._items
    cdef list it
    cdef bytes k, v
    cdef Py_ssize_t i, c
    if items is None:
        f = _need_fields(hm._n)
        size[0] = sw_fields_from_spans(f, hm._base, hm._h, hm._n)
        n[0] = hm._n
        return f
    c = len(items)
    f = _need_fields(<uint32_t>c)
    for i in range(c):
        it = <list>items[i]
        k = <bytes>it[0]
        v = <bytes>it[1]
        if PyBytes_GET_SIZE(k) > 0xFFFFFFFF or PyBytes_GET_SIZE(v) > 0xFFFFFFFF:
            raise ValueError("a header field of 4 GiB or more cannot be forwarded")
        f[i].name = PyBytes_AS_STRING(k)
        f[i].name_len = <uint32_t>PyBytes_GET_SIZE(k)
        f[i].value = PyBytes_AS_STRING(v)
        f[i].value_len = <uint32_t>PyBytes_GET_SIZE(v)
    n[0] = <uint32_t>c
    size[0] = sw_fields_size(f, <uint32_t>c)
    return f


cdef bytes _request_head(Session s, bint reframe):
    """The request head for the upstream. Untouched by hooks, HTTP/1.1, with
    a Host and no field to drop: the received bytes as they are. Else a new
    request line, the received (or edited) fields that survive
    (sw_hop_mark, sw_write_fields) and the fields the proxy adds."""
    cdef RequestHeader rq = s.req_header
    cdef HeaderMap hm = rq.headers
    cdef bint forwarded = s.eng.cfg.forwarded_headers
    cdef unsigned extra = SW_DROP_EXPECT
    cdef unsigned flags
    cdef uint32_t n
    cdef size_t fsize
    cdef sw_field_t *f
    cdef unsigned char *drop
    cdef char *out
    cdef char *o
    cdef size_t need
    if forwarded:
        extra |= SW_DROP_XFF
    if reframe:
        extra |= SW_DROP_CONTENT_LENGTH | SW_DROP_TRANSFER_ENCODING
    f = _fields_of(hm, &n, &fsize)
    drop = _need_drop(n)
    flags = sw_hop_mark(f, n, drop, extra)
    s.expect_100 = (flags & SW_F_EXPECT_100) != 0 and rq._minor == 1
    if hm._items is None and not (flags & SW_F_DROPPED) and rq._minor == 1 \
            and (flags & SW_F_HOST) and not forwarded and not rq._edited_line \
            and not s.expect_100 and not s.want_upgrade:
        # Untouched: forward the received head as it is (with a request id
        # made here, that field line added last).
        if s.rid_new:
            head = _head_with_rid(s, PyBytes_AS_STRING(rq._buf) + rq._head.off, rq._head.len)
            if head is not None:
                return head
        elif rq._head.off == 0 and rq._head.len == PyBytes_GET_SIZE(rq._buf):
            return rq._buf
        else:
            return PyBytes_FromStringAndSize(PyBytes_AS_STRING(rq._buf) + rq._head.off,
                                             rq._head.len)
    uri = rq.raw_uri
    meth = rq._method.encode("ascii")
    # (reads hm, changes nothing: f and drop stay valid)
    extras = _extra_fields(s, flags, reframe)
    need = len(meth) + len(uri) + 16 + fsize + len(extras) + 2
    out = _need_scratch(need)
    o = out
    memcpy(o, PyBytes_AS_STRING(meth), len(meth)); o += len(meth)
    o[0] = b' '; o += 1
    memcpy(o, PyBytes_AS_STRING(uri), len(uri)); o += len(uri)
    memcpy(o, b" HTTP/1.1\r\n", 11); o += 11
    o += sw_write_fields(o, f, n, drop)
    memcpy(o, PyBytes_AS_STRING(extras), len(extras)); o += len(extras)
    o[0] = b'\r'; o[1] = b'\n'; o += 2
    return PyBytes_FromStringAndSize(out, o - out)


cdef bytes _extra_fields(Session s, unsigned flags, bint reframe):
    """Fields the proxy adds to the request: Host (an HTTP/1.0 client may
    send none, or a hook removed it), the new framing, the upgrade, the
    forwarding fields (realip.pyx)."""
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
        _forwarding_fields(s, parts)
    return b"".join(parts)


cdef int _send_response_head(Session s) except -1:
    """Write the response head to the client (after the response hooks, if
    any). Unchanged when it can be (HTTP/1.1 both ways, kept alive, framed
    by length, no field to drop, no hook): the received bytes, held back
    when body bytes follow them in the same read so both go out in one
    write. Else a status line, the received (or edited) fields that survive
    (sw_hop_mark, sw_write_fields), and the framing and Connection fields
    the proxy decides."""
    cdef _Reader r = s.resp_r
    cdef sw_msg_t *m
    cdef ResponseHeader rs = s.resp
    cdef unsigned extra = SW_DROP_TRANSFER_ENCODING
    cdef unsigned flags
    cdef uint32_t n
    cdef size_t fsize
    cdef sw_field_t *f
    cdef unsigned char *drop
    cdef const char *reason
    cdef size_t rlen
    cdef char *out
    cdef char *o
    cdef size_t need
    cdef int status, mode, ui = -1
    cdef bint keep, add_rid
    if s.finished or r is None:
        return 0
    m = &r.m
    mode = s.resp_mode
    if rs is not None:
        status = rs.status
        if status != m.status_code:
            s.status = status
            if status == 204 or status == 304:
                s.resp_mode = mode = M_NONE
        f = _fields_of(rs.headers, &n, &fsize)
        reason = PyBytes_AS_STRING(<bytes>rs._reason)
        rlen = <size_t>PyBytes_GET_SIZE(<bytes>rs._reason)
    else:
        status = m.status_code
        n = m.nheaders
        f = _need_fields(n)
        fsize = sw_fields_from_spans(f, r.head_base, m.headers, n)
        reason = r.head_base + m.reason.off
        rlen = m.reason.len
    keep = s.client_keep and not s.eng.closing and mode != M_CLOSE and s._body_allows_keep()
    s.client_keep = keep
    s.resp_started = True
    if mode == M_CHUNKED or mode == M_CLOSE:
        extra |= SW_DROP_CONTENT_LENGTH
    drop = _need_drop(n)
    flags = sw_hop_mark(f, n, drop, extra)
    if not (flags & SW_F_DROPPED) and m.major == 1 and m.minor == 1 and keep and \
            s.req_header._minor == 1 and rs is None and (mode == M_RAW or mode == M_NONE):
        if s.rid is not None and s.eng.cfg.request_id and \
                sw_field_find(f, n, PyBytes_AS_STRING(s.eng.cfg.rid_lname),
                              PyBytes_GET_SIZE(s.eng.cfg.rid_lname), 0) < 0:
            # Unchanged but for the request id, added last.
            head = _head_with_rid(s, r.head_base + m.msg_start, m.head_len)
            if head is not None:
                return _head_out(s, head, r)
        else:
            # Forward the received head unchanged.
            return _forward_head(s, r, mode)
    need = 64 + rlen + fsize + 64
    if s.upgrading:
        ui = sw_field_find(f, n, b"upgrade", 7, 0)
        if ui >= 0:
            need += f[ui].value_len
    add_rid = s.rid is not None and s.eng.cfg.request_id and \
        sw_field_find(f, n, PyBytes_AS_STRING(s.eng.cfg.rid_lname),
                      PyBytes_GET_SIZE(s.eng.cfg.rid_lname), 0) < 0
    if add_rid:
        need += PyBytes_GET_SIZE(s.eng.cfg.rid_name) + PyBytes_GET_SIZE(<bytes>s.rid) + 4
    out = _need_scratch(need)
    o = out
    o += sw_write_status_line(o, status, reason, rlen)
    o += sw_write_fields(o, f, n, drop)
    if add_rid:
        o = _put_rid_field(s, o)
    if mode == M_CHUNKED:
        memcpy(o, b"Transfer-Encoding: chunked\r\n", 28); o += 28
    if s.upgrading:
        if ui >= 0:
            memcpy(o, b"Connection: upgrade\r\nUpgrade: ", 30); o += 30
            memcpy(o, f[ui].value, f[ui].value_len); o += f[ui].value_len
            o[0] = b'\r'; o[1] = b'\n'; o += 2
    elif not keep:
        memcpy(o, b"Connection: close\r\n", 19); o += 19
    elif s.req_header._minor == 0:
        memcpy(o, b"Connection: keep-alive\r\n", 24); o += 24
    o[0] = b'\r'; o[1] = b'\n'; o += 2
    return _head_out(s, PyBytes_FromStringAndSize(out, o - out), r)


cdef int _forward_head(Session s, _Reader r, int mode) except -1:
    """Send the received response head unchanged: held back when body bytes
    follow it in the same buffer, so both go out in one write."""
    cdef sw_msg_t *m = &r.m
    if r.head_buf is r.data and mode == M_RAW and not _has(s.eng, H_RESP_BODY):
        s.held_data = r.data
        s.held_off = m.msg_start
        s.held_len = m.head_len
    elif m.msg_start == 0 and m.head_len == PyBytes_GET_SIZE(r.head_buf):
        s._to_client(r.head_buf)
    else:
        s._to_client(PyBytes_FromStringAndSize(r.head_base + m.msg_start, m.head_len))
    return 0


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
    fields sw_hop_mark drops."""
    cdef sw_msg_t *m = &r.m
    cdef sw_field_t *f = _need_fields(m.nheaders)
    cdef size_t fsize = sw_fields_from_spans(f, r.head_base, m.headers, m.nheaders)
    cdef unsigned char *drop = _need_drop(m.nheaders)
    cdef char *out
    cdef char *o
    sw_hop_mark(f, m.nheaders, drop, SW_DROP_TRANSFER_ENCODING | SW_DROP_CONTENT_LENGTH)
    out = _need_scratch(64 + m.reason.len + fsize + 2)
    o = out
    o += sw_write_status_line(o, m.status_code, r.head_base + m.reason.off, m.reason.len)
    o += sw_write_fields(o, f, m.nheaders, drop)
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
