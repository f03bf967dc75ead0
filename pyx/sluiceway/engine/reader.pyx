# Included by _engine.pyx: a parser and the bytes it parses; trailers.

# ------------------------------------------------------------------- wire --

@cython.final
@cython.no_gc  # holds only bytes/str/lists of bytes: never in a cycle
cdef class _Reader:
    """A parser and the bytes it parses (see the module docstring)."""

    def __cinit__(self, bint is_request, uint32_t max_head, uint32_t max_url, uint32_t max_headers):
        self.p = API.create(is_request, max_head, max_url, max_headers)
        if self.p == NULL:
            raise MemoryError()
        self.dptr = b""
        self.need = True

    def __dealloc__(self):
        API.destroy(self.p)

    cdef int feed(self, object b) except -1:
        self.need = False
        if self.carrying:
            self.carry += b
        elif self.data is not None and self.pos < self.dlen:
            self.data = self.data[self.pos:] + b
            self.pos = 0
            self.dptr = PyBytes_AS_STRING(self.data)
            self.dlen = PyBytes_GET_SIZE(self.data)
        else:
            self.data = b
            self.pos = 0
            self.dptr = PyBytes_AS_STRING(b)
            self.dlen = PyBytes_GET_SIZE(b)
        return 0

    cdef size_t unread(self):
        if self.carrying:
            return <size_t>PyByteArray_GET_SIZE(self.carry)
        if self.data is None:
            return 0
        return self.dlen - self.pos

    cdef int next(self) except -2:
        cdef size_t consumed, off, clen
        cdef int ev
        cdef const char *cp
        if self.carrying:
            cp = PyByteArray_AS_STRING(self.carry)
            clen = <size_t>PyByteArray_GET_SIZE(self.carry)
            ev = API.execute(self.p, cp, clen, self.cpos, &consumed)
            self.cpos = consumed
            if ev == SW_EV_HEAD:
                self.head_buf = PyBytes_FromStringAndSize(cp, consumed)
                self.head_base = PyBytes_AS_STRING(self.head_buf)
                API.view(self.p, &self.m)
                rest = PyBytes_FromStringAndSize(cp + consumed, clen - consumed) if consumed < clen else None
                self.carrying = False
                self.carry = None
                self.cpos = 0
                self.data = rest
                self.pos = 0
                if rest is None:
                    self.dptr = b""
                    self.dlen = 0
                else:
                    self.dptr = PyBytes_AS_STRING(rest)
                    self.dlen = PyBytes_GET_SIZE(rest)
                return SW_EV_HEAD
            if ev == SW_EV_ERROR:
                API.view(self.p, &self.m)
            elif ev == SW_EV_NEED_DATA:
                self.need = True
            return ev
        if self.need:
            return SW_EV_NEED_DATA
        ev = API.execute(self.p, self.dptr, self.dlen, self.pos, &consumed)
        self.pos = consumed
        if ev == SW_EV_HEAD:
            self.head_buf = self.data
            self.head_base = self.dptr
            API.view(self.p, &self.m)
        elif ev == SW_EV_BODY:
            API.body(self.p, &self.body_at, &self.body_len)
        elif ev == SW_EV_NEED_DATA:
            self.need = True
            if API.in_head(self.p):
                off = API.msg_start(self.p)
                self.carry = bytearray(self.data[off:])
                API.rebase(self.p, <uint32_t>off)
                self.cpos = <size_t>PyByteArray_GET_SIZE(self.carry)
                self.carrying = True
            self.data = None
            self.dptr = b""
            self.dlen = self.pos = 0
        elif ev == SW_EV_ERROR:
            API.view(self.p, &self.m)
        return ev

    cdef object body_bytes(self):
        cdef size_t off = <size_t>(self.body_at - self.dptr)
        if off == 0 and self.body_len == self.dlen:
            return self.data
        return PyBytes_FromStringAndSize(self.body_at, self.body_len)

    cdef int finish(self):
        cdef int ev = API.finish(self.p)
        if ev == SW_EV_ERROR:
            API.view(self.p, &self.m)
        return ev


# --------------------------------------------------------------- trailers --
# A chunked body's trailer section is forwarded after the last chunk when the
# body goes on chunked (see docs/proxy.md, "Trailers"). The parser keeps the
# fields in its own buffer until the next message starts; a body without
# trailers costs one C call at its end and no object.

cdef bytes _connection_options(HeaderMap hm):
    """The values of a head's Connection fields joined by commas, or None."""
    cdef int i = hm._find(b"connection", 0)
    cdef list parts
    if i < 0:
        return None
    parts = []
    while i >= 0:
        parts.append(hm._value_at(i))
        i = hm._find(b"connection", i + 1)
    return b",".join(parts)


cdef bytes _last_chunk(_Reader w, HeaderMap head, bint *keep):
    """The last chunk of the chunked body w's parser just ended, followed by
    its trailer fields minus those a proxy does not forward (sw_trailer_mark;
    the Connection options come from `head`, or from w's head spans when it
    is None); None when no field is left to forward. keep[0] becomes False
    when a trailer closes the connection (`Connection: close`)."""
    cdef const char *tb = NULL
    cdef const sw_header_t *tf = NULL
    cdef int ka = 1
    cdef uint32_t n = API.trailers(w.p, &tb, &tf, &ka)
    cdef bytes conn
    cdef const char *cp = NULL
    cdef size_t clen = 0
    cdef sw_field_t *f
    cdef unsigned char *drop
    cdef char *out
    cdef size_t k
    if n == 0:
        return None
    if not ka:
        keep[0] = False
    if head is None:
        head = _new_map(w.head_buf, w.head_base, w.m.headers, w.m.nheaders)
    conn = _connection_options(head)
    if conn is not None:
        cp = PyBytes_AS_STRING(conn)
        clen = <size_t>PyBytes_GET_SIZE(conn)
    f = _need_fields(n)
    k = sw_fields_from_spans(f, tb, tf, n)
    drop = _need_drop(n)
    if sw_trailer_mark(f, n, cp, clen, drop) == 0:
        return None
    out = _need_scratch(3 + k + 2)
    memcpy(out, b"0\r\n", 3)
    k = 3 + sw_write_fields(out + 3, f, n, drop)
    out[k] = b'\r'
    out[k + 1] = b'\n'
    return PyBytes_FromStringAndSize(out, k + 2)


cdef object _tail_fields(bytes tail):
    """[(name, value), ...] from a _last_chunk() result; None for None."""
    cdef list out = []
    if tail is None:
        return None
    for line in tail[3:len(tail) - 4].split(b"\r\n"):
        name, _, value = line.partition(b":")
        out.append((name, value[1:]))
    return out
