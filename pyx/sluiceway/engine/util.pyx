# Included by _engine.pyx: scratch buffers and small helpers (the clock is in
# engine/clock.pxd).

cdef object _PENDING = object()
cdef object _FAILED = object()
cdef object _MISSING = object()

# One scratch buffer for building heads (the loop is single-threaded).
cdef char *_scratch = NULL
cdef size_t _scratch_cap = 0
cdef unsigned char *_drop = NULL
cdef uint32_t _drop_cap = 0
cdef sw_field_t *_fields = NULL
cdef uint32_t _fields_cap = 0

cdef char *_need_scratch(size_t n) except NULL:
    global _scratch, _scratch_cap
    cdef char *nb
    if n > _scratch_cap:
        nb = <char *>realloc(_scratch, n)
        if nb == NULL:
            raise MemoryError()
        _scratch = nb
        _scratch_cap = n
    return _scratch

cdef unsigned char *_need_drop(uint32_t n) except NULL:
    global _drop, _drop_cap
    cdef unsigned char *nb
    if n == 0:
        n = 1
    if n > _drop_cap:
        nb = <unsigned char *>realloc(_drop, n)
        if nb == NULL:
            raise MemoryError()
        _drop = nb
        _drop_cap = n
    return _drop

cdef sw_field_t *_need_fields(uint32_t n) except NULL:
    """Room for n fields as the C writer reads them (sw_field_t)."""
    global _fields, _fields_cap
    cdef sw_field_t *nb
    if n == 0:
        n = 1
    if n > _fields_cap:
        if n < 32:
            n = 32
        nb = <sw_field_t *>realloc(_fields, n * sizeof(sw_field_t))
        if nb == NULL:
            raise MemoryError()
        _fields = nb
        _fields_cap = n
    return _fields


cdef inline object _steal(PyObject *o):
    """A new reference from the C API as an object (no extra reference)."""
    cdef object r = <object>o
    Py_XDECREF(o)
    return r


cdef int raise_current() except -1:
    """Propagate the exception the C API just set."""
    return -1


cdef list _METHODS = [None] * 256
# RFC 9110 section 9.2.2: a request with one of these methods may be sent
# again after a failure that leaves unknown whether the origin acted on it.
cdef frozenset _IDEMPOTENT = frozenset(["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"])
cdef bytes _CRLF = b"\r\n"
cdef bytes _LAST_CHUNK = b"0\r\n\r\n"
cdef bytes _CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# nginx's answer to plain HTTP on a TLS port (sent in plaintext).
cdef bytes _R400_HTTPS = (b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n"
                          b"Content-Length: 63\r\nConnection: close\r\n\r\n"
                          b"400 Bad Request: The plain HTTP request was sent to HTTPS port\n")
cdef bytes _R408 = (b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 20\r\nConnection: close\r\n\r\n"
                   b"408 Request Timeout\n")


cdef inline bytes _as_name(object name):
    cdef bytes b
    if type(name) is str:
        b = (<str>name).encode("latin-1")
    elif isinstance(name, bytes):
        b = <bytes>name
    else:
        raise TypeError(f"header names are str or bytes, not {type(name).__name__}")
    if not b or b"\r" in b or b"\n" in b or b":" in b or b" " in b or b"\0" in b:
        raise ValueError(f"invalid header name {name!r}: a token without spaces, ':' or CR/LF")
    return b


cdef inline bytes _as_value(object value):
    cdef bytes b
    if type(value) is str:
        b = (<str>value).encode("latin-1")
    elif isinstance(value, (bytes, bytearray)):
        b = bytes(value)
    elif isinstance(value, int):
        b = str(value).encode()
    else:
        raise TypeError(f"header values are str or bytes, not {type(value).__name__}")
    if b"\r" in b or b"\n" in b or b"\0" in b:
        raise ValueError(f"invalid header value {value!r}: CR, LF and NUL are not allowed")
    return b.strip(b" \t")


cdef inline str _latin1(bytes b):
    return PyUnicode_DecodeLatin1(PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b), NULL)


cdef str _fmt_addr(object a):
    if isinstance(a, tuple) and len(a) >= 2:
        return f"{a[0]}:{a[1]}"
    return str(a) if a else "-"


cdef bytes _simple_response(int status, bytes body, bint keep, list headers=None):
    cdef bytes reason = sw_reason(status)
    parts = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
    if headers:
        for n, v in headers:
            parts.append(_as_name(n) + b": " + _as_value(v) + b"\r\n")
    parts.append(b"Content-Length: %d\r\n" % len(body))
    if not keep:
        parts.append(b"Connection: close\r\n")
    parts.append(b"\r\n")
    parts.append(body)
    return b"".join(parts)



cdef object _wrap_hook_error(object exc, str hook):
    if isinstance(exc, Error):
        return exc
    err = Error(f"hook {hook} raised {type(exc).__name__}: {exc}", status=500, source=INTERNAL)
    err.__cause__ = exc
    return err


def _ignore_result(fut):
    if not fut.cancelled():
        exc = fut.exception()
        if exc is not None:
            error_log.error("sluiceway: internal error while connecting upstream (this is a bug)",
                            exc_info=exc)


async def _await_wrapper(aw):
    return await aw
