# Included by _engine.pyx: what the engine tells operators. Its metrics
# cells (csrc/sw_metrics.h, reached through sluiceway._metrics' capsule;
# the series are registered by sluiceway.metrics), request ids, and the
# access-log records written through the buffered writer
# (sluiceway._accesslog; JSON records are formatted by csrc/sw_alog.c into
# the engine's own buffer). Nothing here runs when it is off: the callers test
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
    cdef bytes b = PyBytes_FromStringAndSize(NULL, PyBytes_GET_SIZE(name) +
                                             PyBytes_GET_SIZE(rid) + 4)
    _put_rid_field(s, PyBytes_AS_STRING(b))
    return b


cdef char *_put_rid_field(Session s, char *o) noexcept:
    """Write the request-id field line at o (room for the name, the id and
    4 bytes); the end."""
    cdef bytes name = s.eng.cfg.rid_name, rid = <bytes>s.rid
    o = _put(o, PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name))
    o = _put(o, b": ", 2)
    o = _put(o, PyBytes_AS_STRING(rid), PyBytes_GET_SIZE(rid))
    return _put(o, b"\r\n", 2)


cdef bytes _head_with_rid(Session s, const char *head, Py_ssize_t n):
    """A received head with the request-id field line added last, without
    rebuilding it: its bytes up to the final CRLF, the field line, CRLF.
    None when the head does not end in CRLF CRLF (then the caller rebuilds)."""
    cdef bytes name = s.eng.cfg.rid_name, rid = <bytes>s.rid
    cdef Py_ssize_t nn = PyBytes_GET_SIZE(name), nr = PyBytes_GET_SIZE(rid)
    cdef bytes b
    cdef char *o
    if n < 4 or memcmp(head + n - 4, b"\r\n\r\n", 4) != 0:
        return None
    b = PyBytes_FromStringAndSize(NULL, n + nn + nr + 4)
    o = PyBytes_AS_STRING(b)
    o = _put(o, head, n - 2)
    o = _put_rid_field(s, o)
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
cdef bytes _t_clf = b""     # 07/Dec/2026:10:00:00 +0000 (nginx's $time_local, in UTC)


cdef int _wall(long *ms) except -1:
    """Read the wall clock; refresh the second's string when it turned."""
    global _t_sec, _t_clf
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    if ts.tv_sec != _t_sec:
        tm = time.gmtime(ts.tv_sec)
        _t_clf = time.strftime("%d/%b/%Y:%H:%M:%S +0000", tm).encode()
        _t_sec = ts.tv_sec
    ms[0] = ts.tv_nsec // 1000000
    return 0


cdef bytes _ctx_fields(Session s):
    """The access_log_ctx_fields found in ctx, as ',"key":value' pairs
    (None: none)."""
    fields = s.eng.cfg.access_log_ctx_fields
    parts = []
    if fields and isinstance(s.ctx, dict):
        for f in fields:
            if f in s.ctx:
                parts.append(b',' + json.dumps(f).encode() + b':' +
                             json.dumps(s.ctx[f], default=str).encode())
    return b"".join(parts) if parts else None


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


cdef inline char *_put(char *o, const char *p, Py_ssize_t n) noexcept:
    memcpy(o, p, n)
    return o + n


cdef char *_put_hex16(char *o, unsigned long long v) noexcept:
    cdef int k
    for k in range(15, -1, -1):
        o[k] = b"0123456789abcdef"[v & 15]
        v >>= 4
    return o + 16


cdef bytes _utf8(object v):
    """A str (or bytes) value of a record as bytes."""
    if isinstance(v, bytes):
        return <bytes>v
    v = str(v)
    try:
        return (<str>v).encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return (<str>v).encode("utf-8", "backslashreplace")


cdef inline sw_str_t _sv(bytes b) noexcept:
    cdef sw_str_t v
    v.s = PyBytes_AS_STRING(b)
    v.n = <size_t>PyBytes_GET_SIZE(b)
    return v


cdef int _json_record(Session s) except -1:
    """Format this request's JSON record (csrc/sw_alog.c) into the engine's
    buffer: no Python object for a plain request; the bytes objects below
    (a Unix address, an error, ctx fields) only when there is one."""
    cdef _Engine eng = s.eng
    cdef RequestHeader rq = s.req_header
    cdef sw_alog_rec_t r
    cdef timespec ts
    cdef char rid[32]
    cdef Py_ssize_t n
    cdef object a = s._client()
    cdef HttpPeer peer
    cdef bytes keep_client = None, keep_up = None, keep_err = None, extra = None
    clock_gettime(CLOCK_REALTIME, &ts)
    r.time_sec = ts.tv_sec
    r.time_ms = <int>(ts.tv_nsec // 1000000)
    if s.rid is not None:
        r.request_id = _sv(<bytes>s.rid)
    else:
        # made as _new_rid makes it, but without an object: nobody asked
        if eng.rid_prefix is None:
            eng.rid_prefix = os.urandom(8).hex().encode()
        eng.rid_next += 1
        memcpy(rid, PyBytes_AS_STRING(eng.rid_prefix), 16)
        _put_hex16(rid + 16, eng.rid_next)
        r.request_id.s = rid
        r.request_id.n = 32
    if type(a) is tuple and type((<tuple>a)[0]) is str:
        r.client.s = PyUnicode_AsUTF8AndSize(<str>(<tuple>a)[0], &n)
        r.client.n = <size_t>n
        r.client_port = <int>(<tuple>a)[1]
    else:
        keep_client = _utf8(a or "-")
        r.client = _sv(keep_client)
        r.client_port = -1
    r.method.s = PyUnicode_AsUTF8AndSize(rq._method, &n)
    r.method.n = <size_t>n
    if rq._uri is not None:
        r.path = _sv(rq._uri)
    else:
        r.path.s = PyBytes_AS_STRING(<bytes>rq._buf) + rq._target.off
        r.path.n = rq._target.len
    r.minor = rq._minor
    r.status = s.status if s.resp_started else 0
    r.request_bytes = <uint64_t>s.request_body_bytes
    r.response_bytes = <uint64_t>s.response_body_bytes
    r.upstream.s = NULL
    r.upstream.n = 0
    r.upstream_port = -1
    if s.peer is not None:
        peer = <HttpPeer>s.peer
        if peer.path is None:
            r.upstream.s = PyUnicode_AsUTF8AndSize(peer.host, &n)
            r.upstream.n = <size_t>n
            r.upstream_port = peer.port
        else:
            keep_up = _utf8(str(peer))
            r.upstream = _sv(keep_up)
    r.upstream_status = s.up_status
    r.duration = s.t_end - s.t_start
    r.upstream_connect = -1.0
    if s.t_connect > 0.0 and s.t_connected >= s.t_connect:
        r.upstream_connect = s.t_connected - s.t_connect
    r.upstream_first_byte = -1.0
    if s.t_resp > 0.0 and s.t_connected > 0.0:
        r.upstream_first_byte = max(s.t_resp - s.t_connected, 0.0)
    r.upstream_reused = s.upstream_reused
    r.retries = <uint64_t>(s.retries + s.retried_reused)
    r.error.s = NULL
    r.error.n = 0
    if s.error is not None:
        keep_err = _utf8(s.error.message if isinstance(s.error, Error) else str(s.error))
        r.error = _sv(keep_err)
    r.extra.s = NULL
    r.extra.n = 0
    if eng.cfg.access_log_ctx_fields:
        extra = _ctx_fields(s)
        if extra is not None:
            r.extra = _sv(extra)
    if sw_alog_json(&eng.alog_cb, &r) < 0:
        raise MemoryError()
    return 0


cdef int _alog_put(_Engine eng, bytes line) except -1:
    """Append a record made in Python (combined) to the engine's buffer."""
    cdef size_t n = <size_t>PyBytes_GET_SIZE(line)
    if sw_buf_reserve(&eng.alog_cb, n) < 0:
        raise MemoryError()
    memcpy(eng.alog_cb.p + eng.alog_cb.len, PyBytes_AS_STRING(line), n)
    eng.alog_cb.len += n
    return 0


cdef int _alog_move(_Engine eng) except -1:
    """Hand the batch in the engine's buffer to the writer: written straight
    from it when the writer holds nothing (the lines stay in order), and
    what the descriptor did not take copied into the writer's buffer. The
    engine's buffer is empty after."""
    cdef Py_ssize_t n = <Py_ssize_t>eng.alog_cb.len, done = 0, n0
    cdef object w = eng.alog_writer
    if n == 0 or w is None:
        return 0
    buf = <bytearray>w.buf
    if PyByteArray_GET_SIZE(buf) == 0:
        done = w.write(PyMemoryView_FromMemory(eng.alog_cb.p, n, PyBUF_READ))
        if done < 0 or done > n:
            done = n
    if done < n:
        n0 = PyByteArray_GET_SIZE(buf)
        PyByteArray_Resize(buf, n0 + n - done)
        memcpy(PyByteArray_AS_STRING(buf) + n0, eng.alog_cb.p + done, n - done)
    eng.alog_cb.len = 0
    return 0


cdef int _access_record(Session s) except -1:
    """Write this request's line into the access log's buffer (sampled:
    failed requests and 5xx always, others with access_log_sample's odds);
    the batch moves to the writer, which writes it out, when the buffer
    holds access_log_buffer_bytes; the writer's timer takes it too."""
    cdef _Engine eng = s.eng
    cdef double sample = eng.cfg.access_log_sample
    if sample < 1.0 and s.error is None and s.status < 500 and \
            <double>rand() >= sample * (<double>RAND_MAX + 1.0):
        return 0
    try:
        if eng.cfg.al_format == AL_JSON:
            _json_record(s)
        else:
            _alog_put(eng, _combined_line(s))
        if <Py_ssize_t>eng.alog_cb.len >= eng.alog_limit:
            _alog_move(eng)
            if PyByteArray_GET_SIZE(<bytearray>eng.alog_writer.buf):
                eng.alog_writer.flush()   # (it keeps what it cannot write yet)
    except Exception:
        eng.log.exception("sluiceway: could not write the access log line")
    return 0
