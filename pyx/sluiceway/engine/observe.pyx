# Included by _engine.pyx: what the engine tells operators. Its metrics
# cells (csrc/sw_metrics.h, reached through sluiceway._metrics' capsule;
# the series are registered by sluiceway.metrics), request ids, and the
# access-log records written through the buffered writer
# (sluiceway._accesslog). Nothing here runs when it is off: the callers test
# a pointer (mslab), a flag (cfg.request_id) or the writer first.

# Upper bounds of the engine's duration histograms (seconds); the same as
# sluiceway.metrics.DEFAULT_BUCKETS.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0)
cdef double _DUR_B[N_DURATION_BUCKETS]
for _i, _b in enumerate(DURATION_BUCKETS):
    _DUR_B[_i] = _b

from sluiceway._base.limits import LoadShedError as _LoadShedError


# ----------------------------------------------------------------- metrics --

cdef int _m_request(Session s) except -1:
    """Count a finished request in this process's slab: its status class,
    duration, the upstream's connect and first-byte times (from the
    timestamps the session has), body bytes, retries and its error's kind."""
    cdef _Engine eng = s.eng
    cdef double *c = eng.mslab[0]
    cdef int st = s.status if s.resp_started else 0
    cdef int k = st // 100 - 1 if 100 <= st < 600 else 5
    sw_ms_add(c, eng.mc[MC_REQ + k], 1.0)
    sw_ms_observe(c, eng.mc[MC_DURATION], _DUR_B, N_DURATION_BUCKETS, s.t_end - s.t_start)
    if s.t_connect > 0.0 and s.t_connected >= s.t_connect:
        sw_ms_observe(c, eng.mc[MC_CONNECT], _DUR_B, N_DURATION_BUCKETS,
                      s.t_connected - s.t_connect)
    if s.t_resp > 0.0 and s.t_connected > 0.0 and s.t_resp >= s.t_connected:
        sw_ms_observe(c, eng.mc[MC_TTFB], _DUR_B, N_DURATION_BUCKETS, s.t_resp - s.t_connected)
    if s.request_body_bytes:
        sw_ms_add(c, eng.mc[MC_RX], <double>s.request_body_bytes)
    if s.response_body_bytes:
        sw_ms_add(c, eng.mc[MC_TX], <double>s.response_body_bytes)
    if s.retries or s.retried_reused:
        sw_ms_add(c, eng.mc[MC_RETRIES], <double>(s.retries + s.retried_reused))
    if s.error is not None:
        sw_ms_add(c, eng.mc[MC_ERR + _error_kind(s)], 1.0)
    return 0


cdef int _error_kind(Session s) except -1:
    """The EK_* kind a failed request is counted as."""
    err = s.error
    kind = getattr(err, "kind", None)
    if kind == "connect":
        return EK_CONNECT
    if kind == "invalid_response":
        return EK_INVALID_RESPONSE
    if isinstance(err, _LoadShedError):
        return EK_LOAD_SHED
    if isinstance(err, Error) and (<object>err).status in (504, 408):
        return EK_TIMEOUT
    if s.client_gone:
        return EK_CLIENT_ABORT
    if isinstance(err, Error):
        if (<object>err).source == UPSTREAM:
            return EK_UPSTREAM
        if (<object>err).source == DOWNSTREAM:
            return EK_CLIENT
    return EK_INTERNAL


cdef int _m_conn(_Engine eng, int k) except -1:
    sw_ms_add(eng.mslab[0], eng.mc[k], 1.0)
    return 0


# ------------------------------------------------------------- request ids --

cdef bint _valid_rid(bytes v):
    """1 to 200 bytes of letters, digits and -_.:/+=@ (no space, quote or
    control byte: safe in a log line and a header)."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(v), i
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(v)
    cdef unsigned char ch
    if n < 1 or n > 200:
        return False
    for i in range(n):
        ch = p[i]
        if not ((ch >= b'0' and ch <= b'9') or (ch >= b'a' and ch <= b'z') or
                (ch >= b'A' and ch <= b'Z') or ch in b"-_.:/+=@"):
            return False
    return True


cdef bytes _new_rid(_Engine eng):
    """An id no other request of any worker, before or after a restart,
    gets: 64 random bits drawn when the engine starts, and a counter."""
    if eng.rid_prefix is None:
        eng.rid_prefix = os.urandom(8).hex().encode()
    eng.rid_next += 1
    cdef bytes b = PyBytes_FromStringAndSize(NULL, 32)
    cdef char *o = PyBytes_AS_STRING(b)
    memcpy(o, PyBytes_AS_STRING(eng.rid_prefix), 16)
    _put_hex16(o + 16, eng.rid_next)
    return b


cdef int _observe_start(Session s) except -1:
    """A new request, with request ids on: keep the client's id when it is
    valid, else make one (sent upstream in place of an invalid one)."""
    cdef Settings cfg = s.eng.cfg
    cdef HeaderMap hm = s.req_header.headers
    cdef int i = hm._find(cfg.rid_lname, 0)
    if i >= 0:
        v = hm._value_at(i)
        if _valid_rid(v) and hm._find(cfg.rid_lname, i + 1) < 0:
            s.rid = v
            return 0
        while hm.pop(cfg.rid_name, None) is not None:
            pass
    s.rid = _new_rid(s.eng)
    s.rid_new = True
    return 0


cdef bytes _rid_field(Session s):
    """The request-id field line for a head going to the client."""
    cdef bytes name = s.eng.cfg.rid_name, rid = <bytes>s.rid
    cdef Py_ssize_t nn = PyBytes_GET_SIZE(name), nr = PyBytes_GET_SIZE(rid)
    cdef bytes b = PyBytes_FromStringAndSize(NULL, nn + nr + 4)
    cdef char *o = PyBytes_AS_STRING(b)
    o = _put(o, PyBytes_AS_STRING(name), nn)
    o = _put(o, b": ", 2)
    o = _put(o, PyBytes_AS_STRING(rid), nr)
    _put(o, b"\r\n", 2)
    return b


# -------------------------------------------------------------- access log --

cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clk, timespec *ts)
    enum:
        CLOCK_REALTIME

from libc.stdlib cimport rand, RAND_MAX

cdef time_t _t_sec = -1
cdef bytes _t_iso = b""     # 2026-12-07T10:00:00 (UTC), for this second
cdef bytes _t_clf = b""     # 07/Dec/2026:10:00:00 +0000 (nginx's $time_local, in UTC)


cdef int _wall(long *ms) except -1:
    """Read the wall clock; refresh the second's strings when it turned."""
    global _t_sec, _t_iso, _t_clf
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    if ts.tv_sec != _t_sec:
        tm = time.gmtime(ts.tv_sec)
        _t_iso = time.strftime("%Y-%m-%dT%H:%M:%S", tm).encode()
        _t_clf = time.strftime("%d/%b/%Y:%H:%M:%S +0000", tm).encode()
        _t_sec = ts.tv_sec
    ms[0] = ts.tv_nsec // 1000000
    return 0


cdef bytes _js(object v):
    """``v`` (bytes or str) as the inside of a JSON string: as it is when it
    needs no escape (the common case), else escaped by json (bytes that are
    not UTF-8 shown as \\xNN)."""
    cdef bytes b = v if isinstance(v, bytes) else (<str>v).encode("utf-8", "surrogateescape")
    cdef Py_ssize_t n = PyBytes_GET_SIZE(b), i
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(b)
    for i in range(n):
        if p[i] < 0x20 or p[i] >= 0x7f or p[i] == b'"' or p[i] == b'\\':
            d = json.dumps(b.decode("utf-8", "backslashreplace"))
            return (<str>d)[1:len(d) - 1].encode()
    return b


cdef bytes _secs(double t):
    return b"%.6f" % t


cdef bytes _json_line(Session s):
    cdef RequestHeader rq = s.req_header
    cdef long ms = 0
    cdef object a = s.client_addr
    _wall(&ms)
    if isinstance(a, tuple):
        client = (b"%s:%d" % ((<str>a[0]).encode(), a[1]))
    else:
        client = _js(a or "-")
    rid = s.rid if s.rid is not None else s.request_id.encode()
    parts = [b'{"time":"', _t_iso, b".%03dZ" % ms, b'","request_id":"', rid,
             b'","client":"', client, b'","method":"', _js(rq._method),
             b'","path":"', _js(rq.raw_uri), b'","protocol":"HTTP/1.', b"1" if rq._minor else b"0",
             b'","status":%d,"request_bytes":%d,"response_bytes":%d' %
             (s.status if s.resp_started else 0, s.request_body_bytes, s.response_body_bytes)]
    if s.peer is not None:
        parts.append(b',"upstream":"' + _js(str(s.peer)) + b'"')
    else:
        parts.append(b',"upstream":null')
    parts.append(b',"upstream_status":%d' % s.up_status if s.up_status else
                 b',"upstream_status":null')
    parts.append(b',"duration":' + _secs(s.t_end - s.t_start))
    parts.append(b',"upstream_connect":' + (_secs(s.t_connected - s.t_connect)
                                            if s.t_connect > 0.0 and s.t_connected >= s.t_connect
                                            else b"null"))
    parts.append(b',"upstream_first_byte":' + (_secs(s.t_resp - s.t_connected)
                                               if s.t_resp > 0.0 and s.t_connected > 0.0
                                               else b"null"))
    parts.append(b',"upstream_reused":' + (b"true" if s.upstream_reused else b"false"))
    parts.append(b',"retries":%d' % (s.retries + s.retried_reused))
    if s.error is not None:
        msg = s.error.message if isinstance(s.error, Error) else str(s.error)
        parts.append(b',"error":"' + _js(msg) + b'"')
    else:
        parts.append(b',"error":null')
    parts.append(_ctx_fields(s))
    return b"".join(parts)


cdef bytes _ctx_fields(Session s):
    """The record's end: the access_log_ctx_fields found in ctx, and '}'."""
    fields = s.eng.cfg.access_log_ctx_fields
    parts = []
    if fields and isinstance(s.ctx, dict):
        for f in fields:
            if f in s.ctx:
                parts.append(b',' + json.dumps(f).encode() + b':' +
                             json.dumps(s.ctx[f], default=str).encode())
    parts.append(b"}\n")
    return b"".join(parts)


cdef bytes _clf_esc(object v):
    """A value inside nginx's quotes: '"', '\\' and bytes outside printable
    ASCII as \\xNN (as nginx escapes them)."""
    cdef bytes b = v if isinstance(v, bytes) else (<str>v).encode("utf-8", "surrogateescape")
    cdef Py_ssize_t n = PyBytes_GET_SIZE(b), i
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(b)
    for i in range(n):
        if p[i] < 0x20 or p[i] >= 0x7f or p[i] == b'"' or p[i] == b'\\':
            return b"".join(bytes([c]) if 0x20 <= c < 0x7f and c not in b'"\\'
                            else b"\\x%02X" % c for c in b)
    return b


cdef bytes _combined_line(Session s):
    cdef RequestHeader rq = s.req_header
    cdef HeaderMap hm = rq.headers
    cdef long ms = 0
    cdef object a = s.client_addr
    _wall(&ms)
    host = (<str>a[0]).encode() if isinstance(a, tuple) else b"unix:"
    ref = hm.get_bytes("referer")
    ua = hm.get_bytes("user-agent")
    return b'%s - - [%s] "%s %s HTTP/1.%s" %d %d "%s" "%s"\n' % (
        host, _t_clf, _clf_esc(rq._method), _clf_esc(rq.raw_uri), b"1" if rq._minor else b"0",
        s.status if s.resp_started else 0, s.response_body_bytes,
        _clf_esc(ref) if ref is not None else b"-", _clf_esc(ua) if ua is not None else b"-")


# The JSON record of a plain request (no error, every value printable ASCII
# without quote or backslash: nearly all) is written here byte by byte, then
# copied once into the writer's buffer; anything else goes through
# _json_line, which makes the same record with Python objects.
cdef enum:
    AL_SCRATCH = 4096
cdef char _al[AL_SCRATCH]


cdef inline bint _plain(const char *p, Py_ssize_t n) noexcept:
    cdef Py_ssize_t i
    cdef unsigned char c
    for i in range(n):
        c = <unsigned char>p[i]
        if c < 0x20 or c >= 0x7f or c == 34 or c == 92:   # '"', '\\'
            return False
    return True


cdef inline char *_put(char *o, const char *p, Py_ssize_t n) noexcept:
    memcpy(o, p, n)
    return o + n


cdef char *_put_u(char *o, unsigned long long v) noexcept:
    cdef char tmp[24]
    cdef int n = 0
    if v == 0:
        o[0] = 48
        return o + 1
    while v:
        tmp[n] = <char>(48 + v % 10)
        v //= 10
        n += 1
    while n:
        n -= 1
        o[0] = tmp[n]
        o += 1
    return o


cdef char *_put_secs(char *o, double t) noexcept:
    """``t`` seconds with 6 decimals (as _secs)."""
    cdef unsigned long long us
    cdef int k
    if not t > 0.0:
        t = 0.0
    us = <unsigned long long>(t * 1e6 + 0.5)
    o = _put_u(o, us // 1000000)
    o[0] = 46   # '.'
    us %= 1000000
    for k in range(6, 0, -1):
        o[k] = <char>(48 + us % 10)
        us //= 10
    return o + 7


cdef char *_put_hex16(char *o, unsigned long long v) noexcept:
    cdef int k
    for k in range(15, -1, -1):
        o[k] = b"0123456789abcdef"[v & 15]
        v >>= 4
    return o + 16


cdef Py_ssize_t _json_fast(Session s) except -2:
    """Write the record into _al; its length, or -1 when this request needs
    _json_line (an error, a value to escape, a unix client or peer)."""
    cdef _Engine eng = s.eng
    cdef RequestHeader rq = s.req_header
    cdef object a = s.client_addr
    cdef HttpPeer peer = <HttpPeer>s.peer if s.peer is not None else None
    cdef const char *rid
    cdef const char *host
    cdef const char *meth
    cdef const char *uri
    cdef const char *phost = NULL
    cdef Py_ssize_t nrid, nhost, nmeth, nuri, nphost = 0
    cdef long ms = 0
    cdef char *o = _al
    if s.error is not None or type(a) is not tuple or (peer is not None and peer.path is not None):
        return -1
    if s.rid is not None:
        rid = PyBytes_AS_STRING(<bytes>s.rid)
        nrid = PyBytes_GET_SIZE(<bytes>s.rid)
    else:
        if eng.rid_prefix is None:
            eng.rid_prefix = os.urandom(8).hex().encode()
        rid = NULL
        nrid = 32
    host = PyUnicode_AsUTF8AndSize(<str>(<tuple>a)[0], &nhost)
    meth = PyUnicode_AsUTF8AndSize(rq._method, &nmeth)
    if rq._uri is not None:
        uri = PyBytes_AS_STRING(rq._uri)
        nuri = PyBytes_GET_SIZE(rq._uri)
    else:
        uri = PyBytes_AS_STRING(<bytes>rq._buf) + rq._target.off
        nuri = rq._target.len
    if peer is not None:
        phost = PyUnicode_AsUTF8AndSize(peer.host, &nphost)
    if nrid + nhost + nmeth + nuri + nphost > AL_SCRATCH - 600 or \
            not _plain(host, nhost) or not _plain(meth, nmeth) or not _plain(uri, nuri) or \
            not _plain(phost, nphost) or (rid != NULL and not _plain(rid, nrid)):
        return -1
    _wall(&ms)
    o = _put(o, b'{"time":"', 9)
    o = _put(o, PyBytes_AS_STRING(_t_iso), PyBytes_GET_SIZE(_t_iso))
    o[0] = 46
    o[1] = <char>(48 + ms // 100)
    o[2] = <char>(48 + ms // 10 % 10)
    o[3] = <char>(48 + ms % 10)
    o = _put(o + 4, b'Z","request_id":"', 17)
    if rid != NULL:
        o = _put(o, rid, nrid)
    else:
        # made as _new_rid makes it, but without an object: nobody asked
        eng.rid_next += 1
        o = _put(o, PyBytes_AS_STRING(eng.rid_prefix), 16)
        o = _put_hex16(o, eng.rid_next)
    o = _put(o, b'","client":"', 12)
    o = _put(o, host, nhost)
    o[0] = 58   # ':'
    o = _put_u(o + 1, <unsigned long long>(<tuple>a)[1])
    o = _put(o, b'","method":"', 12)
    o = _put(o, meth, nmeth)
    o = _put(o, b'","path":"', 10)
    o = _put(o, uri, nuri)
    o = _put(o, b'","protocol":"HTTP/1.', 21)
    o[0] = 49 if rq._minor else 48
    o = _put(o + 1, b'","status":', 11)
    o = _put_u(o, <unsigned long long>(s.status if s.resp_started else 0))
    o = _put(o, b',"request_bytes":', 17)
    o = _put_u(o, <unsigned long long>s.request_body_bytes)
    o = _put(o, b',"response_bytes":', 18)
    o = _put_u(o, <unsigned long long>s.response_body_bytes)
    if peer is not None:
        o = _put(o, b',"upstream":"', 13)
        o = _put(o, phost, nphost)
        o[0] = 58
        o = _put_u(o + 1, <unsigned long long>peer.port)
        o[0] = 34
        o += 1
    else:
        o = _put(o, b',"upstream":null', 16)
    if s.up_status:
        o = _put(o, b',"upstream_status":', 19)
        o = _put_u(o, <unsigned long long>s.up_status)
    else:
        o = _put(o, b',"upstream_status":null', 23)
    o = _put(o, b',"duration":', 12)
    o = _put_secs(o, s.t_end - s.t_start)
    o = _put(o, b',"upstream_connect":', 20)
    if s.t_connect > 0.0 and s.t_connected >= s.t_connect:
        o = _put_secs(o, s.t_connected - s.t_connect)
    else:
        o = _put(o, b"null", 4)
    o = _put(o, b',"upstream_first_byte":', 23)
    if s.t_resp > 0.0 and s.t_connected > 0.0:
        o = _put_secs(o, s.t_resp - s.t_connected)
    else:
        o = _put(o, b"null", 4)
    if s.upstream_reused:
        o = _put(o, b',"upstream_reused":true', 23)
    else:
        o = _put(o, b',"upstream_reused":false', 24)
    o = _put(o, b',"retries":', 11)
    o = _put_u(o, <unsigned long long>(s.retries + s.retried_reused))
    o = _put(o, b',"error":null', 13)
    return o - _al


cdef int _buf_append(_Engine eng, const char *p, Py_ssize_t n) except -1:
    """Append to the writer's buffer; write it out when full."""
    cdef bytearray buf = eng.alog_buf
    cdef Py_ssize_t n0 = PyByteArray_GET_SIZE(buf)
    PyByteArray_Resize(buf, n0 + n)
    memcpy(PyByteArray_AS_STRING(buf) + n0, p, n)
    if n0 + n >= eng.alog_limit:
        eng.alog_writer.flush()
    return 0


cdef int _access_record(Session s) except -1:
    """Write this request's line into the access log's buffer (sampled:
    failed requests and 5xx always, others with access_log_sample's odds);
    the writer flushes by size here and by time from its timer."""
    cdef _Engine eng = s.eng
    cdef double sample = eng.cfg.access_log_sample
    cdef Py_ssize_t n
    if sample < 1.0 and s.error is None and s.status < 500 and \
            <double>rand() >= sample * (<double>RAND_MAX + 1.0):
        return 0
    try:
        if eng.cfg.al_format == AL_JSON:
            n = _json_fast(s)
            if n >= 0:
                if eng.cfg.access_log_ctx_fields:
                    line = PyBytes_FromStringAndSize(_al, n) + _ctx_fields(s)
                    _buf_append(eng, PyBytes_AS_STRING(line), PyBytes_GET_SIZE(line))
                else:
                    _al[n] = 125       # '}'
                    _al[n + 1] = 10    # '\n'
                    _buf_append(eng, _al, n + 2)
                return 0
            line = _json_line(s)
        else:
            line = _combined_line(s)
        _buf_append(eng, PyBytes_AS_STRING(line), PyBytes_GET_SIZE(line))
    except Exception:
        eng.log.exception("sluiceway: could not write the access log line")
    return 0
