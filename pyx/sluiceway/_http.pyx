# distutils: sources = csrc/sw_http.c csrc/sw_span.c
"""Compiled HTTP/1.x request and response parsers over llhttp.

Theory of operation
-------------------
llhttp calls C callbacks (csrc/sw_http.c) that record the start line and the
header fields as spans (offset, length) into the bytes being parsed; no
Python object exists per header. The C layer pauses llhttp at each *event*
(head complete, body bytes, message complete, upgrade) and this module turns
the event into one Python object on request:

    parser.feed(data)
    while (ev := parser.next_event()) is not NEED_DATA:
        ...   # RequestHead/ResponseHead, memoryview (body), EndOfMessage, UPGRADED

A head that arrives whole in one ``feed`` is never copied: the head object
keeps a reference to the fed ``bytes`` and reads names and values from it
when asked. A head split across feeds is gathered in a growing buffer (no
quadratic re-copying for byte-at-a-time input) and snapshotted once when it
completes. Body bytes are handed out as memoryviews over the fed bytes.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.unicode cimport PyUnicode_DecodeLatin1
from libc.stdint cimport uint32_t
from libc.string cimport memchr, memcpy

from sluiceway._base.errors import ParseError, DOWNSTREAM, UPSTREAM

cdef extern from "Python.h":
    const char *PyUnicode_AsUTF8AndSize(object s, Py_ssize_t *size) except NULL

cdef extern from "sw_http.h" nogil:
    const char *sw_http_method_name(const sw_http_t *p)
    int llhttp_should_keep_alive(const llhttp_t *ll)


DEFAULT_MAX_HEAD_SIZE = 32768
DEFAULT_MAX_URL_SIZE = 8192
DEFAULT_MAX_HEADERS = 128


class _Sentinel:
    __slots__ = ("_name",)

    def __init__(self, name):
        self._name = name

    def __repr__(self):
        return self._name

    def __reduce__(self):
        return self._name


NEED_DATA = _Sentinel("NEED_DATA")
"""Returned by next_event() when every fed byte is consumed."""
UPGRADED = _Sentinel("UPGRADED")
"""Returned once after an Upgrade/CONNECT message: the rest is not HTTP/1."""
CONNECTION_CLOSED = _Sentinel("CONNECTION_CLOSED")
"""Returned after feed_eof() when the stream ended between messages."""

cdef dict _VERSIONS = {(1, 0): "1.0", (1, 1): "1.1"}
cdef list _METHODS = [None] * 256


cdef inline const char *_name_ptr(object name, Py_ssize_t *n) except NULL:
    if type(name) is str:
        return PyUnicode_AsUTF8AndSize(name, n)
    if isinstance(name, bytes):
        n[0] = PyBytes_GET_SIZE(name)
        return PyBytes_AS_STRING(name)
    raise TypeError(f"header names are str or bytes, not {type(name).__name__}")


@cython.final
@cython.freelist(64)
@cython.no_gc
cdef class Headers:
    """Read-only header fields of a parsed message, in wire order.

    Names keep their original case; lookups (``get``, ``in``, ``[]``) ignore
    case and take ``str`` or ``bytes``. Values come back as ``str`` (decoded
    as Latin-1, so every byte survives) or, from the ``*_bytes`` methods, as
    ``bytes``. Nothing is decoded until asked for.
    """

    def __init__(self):
        raise TypeError("Headers objects are made by the parser")

    def __dealloc__(self):
        if self._h != self._inline:
            PyMem_Free(self._h)

    cdef int _set(self, object buf, const char *base, const sw_header_t *h,
                  uint32_t n) except -1:
        cdef sw_header_t *nh
        if self._h == NULL:
            self._h = self._inline
            self._cap = 16
        if n > self._cap:
            nh = <sw_header_t *>PyMem_Malloc(n * sizeof(sw_header_t))
            if nh == NULL:
                raise MemoryError()
            if self._h != self._inline:
                PyMem_Free(self._h)
            self._h = nh
            self._cap = n
        if n:
            memcpy(self._h, h, n * sizeof(sw_header_t))
        self._n = n
        self._buf = buf
        self._base = base
        return 0

    cdef int _find(self, object name, uint32_t start) except -2:
        cdef Py_ssize_t n
        cdef const char *p = _name_ptr(name, &n)
        return sw_find(self._base, self._h, self._n, p, <size_t>n, start)

    cdef str _value(self, int i):
        return PyUnicode_DecodeLatin1(self._base + self._h[i].value.off,
                                      self._h[i].value.len, NULL)

    cdef str _name(self, int i):
        return PyUnicode_DecodeLatin1(self._base + self._h[i].name.off,
                                      self._h[i].name.len, NULL)

    cdef bytes _value_b(self, int i):
        return PyBytes_FromStringAndSize(self._base + self._h[i].value.off,
                                         self._h[i].value.len)

    cdef bytes _name_b(self, int i):
        return PyBytes_FromStringAndSize(self._base + self._h[i].name.off,
                                         self._h[i].name.len)

    def get(self, name, default=None):
        """Return the first value of field ``name`` as str, or ``default``."""
        cdef int i = self._find(name, 0)
        return default if i < 0 else self._value(i)

    def get_bytes(self, name, default=None):
        """Return the first value of field ``name`` as bytes, or ``default``."""
        cdef int i = self._find(name, 0)
        return default if i < 0 else self._value_b(i)

    def getall(self, name):
        """Return every value of field ``name`` (str), in wire order."""
        cdef list out = []
        cdef int i = self._find(name, 0)
        while i >= 0:
            out.append(self._value(i))
            i = self._find(name, i + 1)
        return out

    def __getitem__(self, name):
        cdef int i = self._find(name, 0)
        if i < 0:
            raise KeyError(name)
        return self._value(i)

    def __contains__(self, name):
        if not isinstance(name, (str, bytes)):
            return False
        return self._find(name, 0) >= 0

    def __len__(self):
        return self._n

    def __iter__(self):
        cdef uint32_t i
        for i in range(self._n):
            yield self._name(i)

    def keys(self):
        """Field names (original case, with repeats) in wire order."""
        return list(self)

    def values(self):
        cdef uint32_t i
        return [self._value(i) for i in range(self._n)]

    def items(self):
        """``(name, value)`` str pairs in wire order, repeats included."""
        cdef uint32_t i
        return [(self._name(i), self._value(i)) for i in range(self._n)]

    def raw_items(self):
        """``(name, value)`` bytes pairs in wire order, exactly as received
        (values without surrounding whitespace)."""
        cdef uint32_t i
        return [(self._name_b(i), self._value_b(i)) for i in range(self._n)]

    def __eq__(self, other):
        if isinstance(other, Headers):
            return self.raw_items() == (<Headers>other).raw_items()
        return NotImplemented

    def __repr__(self):
        return f"Headers({self.items()!r})"


cdef Headers _new_headers(object buf, const char *base, const sw_header_t *h, uint32_t n):
    cdef Headers hs = Headers.__new__(Headers)
    hs._set(buf, base, h, n)
    return hs


@cython.no_gc
cdef class _Head:
    """Fields shared by request and response heads."""

    def __init__(self):
        raise TypeError("heads are made by the parser")

    @property
    def version(self):
        """``"1.1"`` or ``"1.0"``."""
        return _VERSIONS[(self._major, self._minor)]

    @property
    def content_length(self):
        """The Content-Length value as int, or None when absent."""
        return self._content_length

    def raw(self):
        """The head's bytes as received (start line through the blank line)."""
        return PyBytes_FromStringAndSize(self.headers._base + self._head_off, self._head_len)


@cython.final
cdef class RequestHead(_Head):
    """A parsed request head.

    Attributes:
        method: the method as str (``"GET"``).
        target: the request target as str, exactly as sent.
        path, query: the target split at the first ``?`` (query without it);
            for an absolute-form target (``http://host/p``) the path starts
            at the first ``/`` after the authority.
        version: ``"1.0"`` or ``"1.1"``.
        headers: :class:`Headers`.
        content_length: int or None. chunked: bool.
        keep_alive: whether the connection may carry another request after
            this one (HTTP/1.1 without ``Connection: close``, or 1.0 with
            ``Connection: keep-alive``).
        upgrade: an Upgrade or CONNECT request: bytes after it are not HTTP/1.
    """

    @property
    def raw_target(self):
        """The request target as bytes."""
        return PyBytes_FromStringAndSize(self.headers._base + self._target.off, self._target.len)

    @property
    def target(self):
        return PyUnicode_DecodeLatin1(self.headers._base + self._target.off, self._target.len, NULL)

    cdef (size_t, size_t) _path_span(self):
        cdef const char *t = self.headers._base + self._target.off
        cdef size_t n = self._target.len, start = 0, end
        cdef const char *q
        if n > 0 and t[0] != b'/' and t[0] != b'*':
            # absolute-form: skip "scheme://authority"
            q = <const char *>memchr(t, b':', n)
            if q != NULL and <size_t>(q - t) + 2 < n and q[1] == b'/' and q[2] == b'/':
                start = <size_t>(q - t) + 3
                while start < n and t[start] != b'/' and t[start] != b'?':
                    start += 1
        q = <const char *>memchr(t + start, b'?', n - start)
        end = <size_t>(q - t) if q != NULL else n
        q = <const char *>memchr(t + start, b'#', end - start)
        if q != NULL:
            end = <size_t>(q - t)
        return start, end

    @property
    def path(self):
        cdef size_t s, e
        s, e = self._path_span()
        if self._target.len and self.headers._base[self._target.off] != b'/':
            if self.method == "CONNECT":
                return ""
            if s == e and s > 0:
                return "/"
        return PyUnicode_DecodeLatin1(self.headers._base + self._target.off + s, e - s, NULL)

    @property
    def query(self):
        cdef size_t s, e, stop
        cdef const char *t = self.headers._base + self._target.off
        s, e = self._path_span()
        if e >= self._target.len or t[e] != b'?':
            return ""
        stop = e + 1
        while stop < self._target.len and t[stop] != b'#':
            stop += 1
        return PyUnicode_DecodeLatin1(t + e + 1, stop - e - 1, NULL)

    def __repr__(self):
        return f"<RequestHead {self.method} {self.target} HTTP/{self.version} {len(self.headers)} headers>"


@cython.final
cdef class ResponseHead(_Head):
    """A parsed response head: ``status`` (int), ``reason`` (str), and the
    fields of :class:`RequestHead` that apply to responses."""

    @property
    def reason(self):
        return PyUnicode_DecodeLatin1(self.headers._base + self._reason.off, self._reason.len, NULL)

    def __repr__(self):
        return f"<ResponseHead {self.status} {self.reason} HTTP/{self.version} {len(self.headers)} headers>"


@cython.final
cdef class EndOfMessage:
    """The current message is complete. ``trailers`` holds chunked trailers
    (empty for most messages)."""

    def __init__(self):
        raise TypeError("EndOfMessage objects are made by the parser")

    def __repr__(self):
        return f"EndOfMessage(trailers={self.trailers!r})"


cdef Headers _EMPTY_HEADERS = _new_headers(b"", b"", NULL, 0)
cdef EndOfMessage _END = EndOfMessage.__new__(EndOfMessage)
_END.trailers = _EMPTY_HEADERS
END_OF_MESSAGE = _END


cdef class _Parser:
    """Shared machinery; use RequestParser or ResponseParser."""

    def __cinit__(self, *, int max_head_size=DEFAULT_MAX_HEAD_SIZE,
                  int max_url_size=DEFAULT_MAX_URL_SIZE,
                  int max_headers=DEFAULT_MAX_HEADERS):
        cdef sw_http_limits_t lim
        if max_head_size <= 0 or max_url_size <= 0 or max_headers <= 0:
            raise ValueError(
                f"parser limits must be positive (max_head_size={max_head_size}, "
                f"max_url_size={max_url_size}, max_headers={max_headers})")
        if max_head_size > 16 * 1024 * 1024:
            raise ValueError(f"max_head_size={max_head_size} is over the 16 MiB ceiling")
        lim.max_head = max_head_size
        lim.max_url = max_url_size
        lim.max_headers = max_headers
        if sw_http_init(&self._p, isinstance(self, RequestParser), &lim) != 0:
            raise MemoryError()
        self._ready = True
        self._need_data = True
        self._set_data(None)

    def __dealloc__(self):
        if self._ready:
            sw_http_free(&self._p)
        PyMem_Free(self._carry)

    def feed(self, data):
        """Give the parser more bytes.

        Args:
            data: bytes-like. ``b""`` is ignored (use ``feed_eof()``).
        Raises:
            RuntimeError: after ``feed_eof()`` or an upgrade.
        """
        cdef bytes b
        if self._eof:
            raise RuntimeError("feed() after feed_eof(): make a new parser or call reset()")
        if self._upgraded:
            raise RuntimeError("the connection was upgraded; its bytes are no longer HTTP/1 "
                               "(read them from unconsumed())")
        b = data if type(data) is bytes else bytes(data)
        if not b:
            return
        if self._carrying:
            self._append_carry(PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))
        elif self._pos < self._dlen:
            # Events not drained yet: keep the unread tail in front.
            self._fed += self._pos
            self._set_data(self._data[self._pos:] + b)
        else:
            self._fed += self._dlen
            self._set_data(b)
        self._need_data = False

    cdef inline void _set_data(self, object b):
        self._data = b
        self._mv = None
        self._pos = 0
        if b is None:
            self._dptr = b""
            self._dlen = 0
        else:
            self._dptr = PyBytes_AS_STRING(b)
            self._dlen = PyBytes_GET_SIZE(b)

    def feed_eof(self):
        """Signal that the stream ended. The next ``next_event()`` calls
        return what remains, then END_OF_MESSAGE for a close-delimited
        response, CONNECTION_CLOSED between messages, or raise ParseError
        when a message was cut short."""
        self._eof = True

    def reset(self):
        """Forget all state, buffered bytes and errors; keep the limits."""
        sw_http_reset(&self._p)
        self._set_data(None)
        self._clen = self._cpos = 0
        self._carrying = self._eof = self._upgraded = False
        self._need_data = True
        self._fed = self._carry_off = 0

    def unconsumed(self):
        """Bytes fed but not consumed by the parser (after UPGRADED: the
        first bytes of the other protocol)."""
        if self._data is None:
            return b""
        return self._data[self._pos:]

    @property
    def head_request(self):
        """True when the response being parsed answers a HEAD request (so it
        has no body whatever its headers say). Set before its head ends."""
        return bool(self._p.skip_body)

    @head_request.setter
    def head_request(self, bint value):
        self._p.skip_body = value

    cdef int _append_carry(self, const char *src, size_t n) except -1:
        cdef size_t cap
        cdef char *nb
        if self._clen + n > self._ccap:
            cap = self._ccap * 2 if self._ccap else 1024
            while cap < self._clen + n:
                cap *= 2
            nb = <char *>PyMem_Realloc(self._carry, cap)
            if nb == NULL:
                raise MemoryError()
            self._carry = nb
            self._ccap = cap
        memcpy(self._carry + self._clen, src, n)
        self._clen += n
        return 0

    cdef object _make_head(self, object buf, const char *base):
        cdef RequestHead rq
        cdef ResponseHead rs
        cdef _Head h
        cdef sw_http_t *p = &self._p
        cdef int m
        if p.is_request:
            rq = RequestHead.__new__(RequestHead)
            m = p.ll.method
            name = _METHODS[m]
            if name is None:
                name = _METHODS[m] = (<bytes>sw_http_method_name(p)).decode("ascii")
            rq.method = name
            rq._target = p.url
            h = rq
        else:
            rs = ResponseHead.__new__(ResponseHead)
            rs.status = p.ll.status_code
            rs._reason = p.reason
            h = rs
        h.headers = _new_headers(buf, base, p.headers, p.nheaders)
        h.keep_alive = p.keep_alive
        h.upgrade = p.upgrade
        h.chunked = (p.flags & F_CHUNKED) != 0
        h._content_length = p.content_length if (p.flags & F_CONTENT_LENGTH) else None
        h._major = p.ll.http_major
        h._minor = p.ll.http_minor
        h._head_off = p.msg_start
        h._head_len = p.head_len
        return h

    cdef object _error(self, const char *buf, size_t blen, unsigned long long base_off):
        cdef size_t off = self._p.error_offset
        cdef size_t lo = off - 16 if off > 16 else 0
        cdef size_t hi = off + 16 if off + 16 < blen else blen
        reason = (<bytes>self._p.reason_msg).decode("utf-8", "replace") if self._p.reason_msg else "malformed message"
        return ParseError(reason, status=self._p.status, offset=base_off + off,
                          excerpt=PyBytes_FromStringAndSize(buf + lo, hi - lo) if hi > lo else b"",
                          source=DOWNSTREAM if self._p.is_request else UPSTREAM)

    cpdef object next_event(self):
        """Parse up to the next event and return it.

        Returns:
            RequestHead / ResponseHead: a head is complete.
            memoryview: body bytes (chunked framing removed), valid as long
                as you keep it (it holds the fed bytes).
            EndOfMessage: the message is complete (END_OF_MESSAGE when it had
                no trailers).
            NEED_DATA: every fed byte is consumed; feed more.
            UPGRADED: the message was an upgrade; see ``unconsumed()``.
            CONNECTION_CLOSED: after feed_eof(), between messages.
        Raises:
            ParseError: malformed or over-limit input. The parser stays
                failed until ``reset()``.
        """
        cdef size_t consumed, off, n
        cdef int ev
        cdef object head
        cdef bytes snap
        if self._upgraded:
            return UPGRADED
        while True:
            if self._need_data:
                if not self._eof:
                    return NEED_DATA
                ev = sw_http_finish(&self._p)
                if ev == SW_EV_END:
                    return self._end_event()
                if ev == SW_EV_NEED_DATA:
                    return CONNECTION_CLOSED
                raise self._error(b"", 0, self._fed + self._dlen)
            if self._carrying:
                ev = sw_http_execute(&self._p, self._carry, self._clen, self._cpos, &consumed)
                self._cpos = consumed
                if ev == SW_EV_HEAD:
                    snap = PyBytes_FromStringAndSize(self._carry, consumed)
                    head = self._make_head(snap, PyBytes_AS_STRING(snap))
                    # What followed the head in the last piece is parsed in place.
                    self._carrying = False
                    self._fed = self._carry_off + consumed
                    self._set_data(PyBytes_FromStringAndSize(self._carry + consumed, self._clen - consumed)
                                   if consumed < self._clen else None)
                    self._clen = self._cpos = 0
                    return head
                if ev == SW_EV_NEED_DATA:
                    self._need_data = True
                    continue
                if ev == SW_EV_ERROR:
                    raise self._error(self._carry, self._clen, self._carry_off)
                raise AssertionError(f"parser event {ev} while gathering a head")
            ev = sw_http_execute(&self._p, self._dptr, self._dlen, self._pos, &consumed)
            self._pos = consumed
            if ev == SW_EV_HEAD:
                return self._make_head(self._data, self._dptr)
            if ev == SW_EV_BODY:
                if self._mv is None:
                    self._mv = memoryview(self._data)
                off = <size_t>(self._p.body_at - self._dptr)
                n = self._p.body_len
                return self._mv[off:off + n]
            if ev == SW_EV_END:
                return self._end_event()
            if ev == SW_EV_NEED_DATA:
                self._need_data = True
                if sw_http_in_head(&self._p):
                    # Keep the incomplete head, re-based to the carry buffer.
                    off = self._p.msg_start
                    self._carry_off = self._fed + off
                    self._clen = 0
                    self._append_carry(self._dptr + off, self._dlen - off)
                    sw_http_rebase(&self._p, <uint32_t>off)
                    self._cpos = self._clen
                    self._carrying = True
                self._fed += self._dlen
                self._set_data(None)
                continue
            if ev == SW_EV_UPGRADE:
                self._upgraded = True
                return UPGRADED
            raise self._error(self._dptr, self._dlen, self._fed)

    cdef object _end_event(self):
        cdef EndOfMessage e
        if self._p.ntrailers == 0:
            return _END
        e = EndOfMessage.__new__(EndOfMessage)
        tb = PyBytes_FromStringAndSize(self._p.tbuf, self._p.tlen)
        e.trailers = _new_headers(tb, PyBytes_AS_STRING(tb), self._p.trailers, self._p.ntrailers)
        return e

    def events(self):
        """Yield events until NEED_DATA (not included)."""
        while True:
            ev = self.next_event()
            if ev is NEED_DATA or ev is CONNECTION_CLOSED:
                return
            yield ev
            if ev is UPGRADED:
                return


@cython.final
cdef class RequestParser(_Parser):
    """HTTP/1.0 and 1.1 request parser (strict: no llhttp leniency).

    Args (keyword-only):
        max_head_size: bytes of request line plus headers (431 past it).
        max_url_size: bytes of the request target (414 past it).
        max_headers: number of header fields (431 past it).
    """


@cython.final
cdef class ResponseParser(_Parser):
    """HTTP/1.0 and 1.1 response parser. Set ``head_request = True`` before
    parsing a response to a HEAD request. Errors map to status 502."""


# ---- C API for other compiled modules (see csrc/sw_view.h) -----------------
# Added for the engine (sluiceway._engine), which cannot include sw_http.h
# because only this module is built with llhttp's headers. Nothing above
# depends on this block.

from cpython.pycapsule cimport PyCapsule_New
from libc.stdlib cimport free as _c_free, malloc as _c_malloc

from sluiceway._view cimport SW_VIEW_API_VERSION, sw_msg_t, sw_parser_api_t


cdef void *_capi_create(int is_request, uint32_t max_head, uint32_t max_url,
                        uint32_t max_headers) noexcept nogil:
    cdef sw_http_limits_t lim
    cdef sw_http_t *p = <sw_http_t *>_c_malloc(sizeof(sw_http_t))
    if p == NULL:
        return NULL
    lim.max_head = max_head
    lim.max_url = max_url
    lim.max_headers = max_headers
    if sw_http_init(p, is_request, &lim) != 0:
        _c_free(p)
        return NULL
    return p

cdef void _capi_destroy(void *p) noexcept nogil:
    if p != NULL:
        sw_http_free(<sw_http_t *>p)
        _c_free(p)

cdef void _capi_reset(void *p) noexcept nogil:
    sw_http_reset(<sw_http_t *>p)

cdef int _capi_execute(void *p, const char *data, size_t len, size_t resume_at,
                       size_t *consumed) noexcept nogil:
    return sw_http_execute(<sw_http_t *>p, data, len, resume_at, consumed)

cdef int _capi_finish(void *p) noexcept nogil:
    return sw_http_finish(<sw_http_t *>p)

cdef void _capi_rebase(void *p, uint32_t delta) noexcept nogil:
    sw_http_rebase(<sw_http_t *>p, delta)

cdef int _capi_in_head(const void *p) noexcept nogil:
    return sw_http_in_head(<const sw_http_t *>p)

cdef uint32_t _capi_msg_start(const void *p) noexcept nogil:
    return (<const sw_http_t *>p).msg_start

cdef void _capi_view(const void *vp, sw_msg_t *out) noexcept nogil:
    cdef const sw_http_t *p = <const sw_http_t *>vp
    out.msg_start = p.msg_start
    out.head_len = p.head_len
    out.url = p.url
    out.reason = p.reason
    out.target_authority = p.target_authority
    out.headers = p.headers
    out.nheaders = p.nheaders
    out.method = p.ll.method
    out.status_code = p.ll.status_code
    out.major = p.ll.http_major
    out.minor = p.ll.http_minor
    out.keep_alive = p.keep_alive
    out.upgrade = p.upgrade
    out.chunked = (p.flags & F_CHUNKED) != 0
    out.has_content_length = (p.flags & F_CONTENT_LENGTH) != 0
    out.content_length = p.content_length
    out.err_status = p.status
    out.err_reason = p.reason_msg
    out.err_offset = p.error_offset

cdef void _capi_body(const void *vp, const char **at, size_t *n) noexcept nogil:
    cdef const sw_http_t *p = <const sw_http_t *>vp
    at[0] = p.body_at
    n[0] = p.body_len

cdef void _capi_set_skip_body(void *p, int skip) noexcept nogil:
    (<sw_http_t *>p).skip_body = skip

cdef const char *_capi_method_name(const void *p) noexcept nogil:
    return sw_http_method_name(<const sw_http_t *>p)

cdef uint32_t _capi_trailers(const void *vp, const char **base, const sw_header_t **fields,
                             int *keep_alive) noexcept nogil:
    cdef const sw_http_t *p = <const sw_http_t *>vp
    if p.ntrailers:
        base[0] = p.tbuf
        fields[0] = p.trailers
        # llhttp's flags still hold what the trailers said: they are cleared
        # only when parsing resumes after the pause at message complete.
        keep_alive[0] = llhttp_should_keep_alive(&p.ll)
    return p.ntrailers


cdef sw_parser_api_t _SW_CAPI
_SW_CAPI.version = SW_VIEW_API_VERSION
_SW_CAPI.create = _capi_create
_SW_CAPI.destroy = _capi_destroy
_SW_CAPI.reset = _capi_reset
_SW_CAPI.execute = _capi_execute
_SW_CAPI.finish = _capi_finish
_SW_CAPI.rebase = _capi_rebase
_SW_CAPI.in_head = _capi_in_head
_SW_CAPI.msg_start = _capi_msg_start
_SW_CAPI.view = _capi_view
_SW_CAPI.body = _capi_body
_SW_CAPI.set_skip_body = _capi_set_skip_body
_SW_CAPI.method_name = _capi_method_name
_SW_CAPI.trailers = _capi_trailers

_C_API = PyCapsule_New(<void *>&_SW_CAPI, b"sluiceway._http._C_API", NULL)


cdef extern from "llhttp.h":
    int LLHTTP_VERSION_MAJOR
    int LLHTTP_VERSION_MINOR
    int LLHTTP_VERSION_PATCH

LLHTTP_VERSION = f"{LLHTTP_VERSION_MAJOR}.{LLHTTP_VERSION_MINOR}.{LLHTTP_VERSION_PATCH}"
"""The version of llhttp compiled into this module (``sluiceway --version``)."""
