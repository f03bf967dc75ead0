# distutils: sources = csrc/sw_proxy.c csrc/sw_span.c csrc/sw_io.c
"""The compiled proxy engine: downstream and upstream protocols, the
connection pool and the per-request state machine that runs the hooks.

Theory of operation
-------------------
A worker runs one uvloop loop. Every accepted connection gets a
``_Downstream`` object; every upstream connection an ``_Upstream``. Both are
``_Conn``s: they do their own socket I/O on one epoll set per loop
(``_IoLoop``, watched by the loop with a single add_reader), except TLS
upstreams, which use an asyncio transport with the same object as protocol.
Both feed received ``bytes`` to a ``_Wire``: the compiled HTTP/1.x parser of
``sluiceway._http`` (reached through the C function table in its capsule, see
csrc/sw_view.h) plus the buffer the parser's spans point into. No Python
object is created per header: heads are forwarded from their spans by C
(csrc/sw_proxy.c), which drops the hop-by-hop fields.

A request is a ``Session`` that walks through stages (``_advance``):

    HEAD -> early_request_filter -> request_filter -> upstream_peer
         -> (pool or connect) -> connected_to_upstream
         -> upstream_request_filter -> send head -> forward body
    upstream head -> upstream_response_filter -> response_filter -> send head
         -> forward body (response_body_filter) -> end -> logging

Hooks the application does not override are ``None`` here and skipped. A
hook's result is used at once when it is a plain value or a coroutine that
completes on its first ``send(None)``; only a coroutine that really suspends
is wrapped in a Task, and the stage machine resumes from its done callback.
During that first step a stand-in is the loop's current task, so asyncio
code that needs one works from a hook's first line (_hook_task.pxi).
While a stage waits, the side that feeds it stops parsing (``blocked``) and,
past a high-water mark of buffered bytes, stops reading.

Backpressure: when one side's write queue passes its high-water mark
(``on_pause_writing``) the other side stops reading until
``on_resume_writing``.

Timeouts are deadlines on the connection objects, checked by one periodic
timer per engine (no timer object per request).

Pipelined requests are parsed one at a time: the next head is not parsed
until the current response is complete, so responses go out in order.
"""

cimport cython
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.pycapsule cimport PyCapsule_GetPointer
from cpython.unicode cimport PyUnicode_DecodeLatin1
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from libc.errno cimport (EAGAIN, ECONNABORTED, EINTR, EMFILE, ENFILE, ENOBUFS, ENOMEM,
                         EPERM, EPROTO)
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy
from posix.uio cimport iovec

cdef extern from "<sys/socket.h>":
    enum:
        AF_INET
        AF_INET6
        AF_UNIX

import asyncio
import logging
import os
import socket

from sluiceway import _http as _httpmod
from sluiceway.errors import DOWNSTREAM, INTERNAL, UPSTREAM, Error, ParseError

from cpython.ref cimport PyObject, Py_INCREF, Py_XDECREF

cdef extern from "Python.h":
    ctypedef enum PySendResult:
        PYGEN_RETURN
        PYGEN_ERROR
        PYGEN_NEXT
    PySendResult PyIter_Send(object iter, object arg, PyObject **presult)
    bint PyCoro_CheckExact(object o)
    bint PyUnicode_IS_ASCII(object o)
    const char *PyUnicode_AsUTF8AndSize(object s, Py_ssize_t *size) except NULL
    Py_ssize_t Py_REFCNT(object o)
    int _PyBytes_Resize(PyObject **bytes, Py_ssize_t newsize) except -1


cdef sw_parser_api_t *API = <sw_parser_api_t *>PyCapsule_GetPointer(
    _httpmod._C_API, b"sluiceway._http._C_API")
if API.version != SW_VIEW_API_VERSION:
    raise ImportError("sluiceway._http and sluiceway._engine were built from different "
                      "sources (parser C API version mismatch): rebuild both")

error_log = logging.getLogger("sluiceway.error")
access_log = logging.getLogger("sluiceway.access")

# Bytes buffered from one side before reading from it pauses.
DEF HIGH_WATER = 65536
DEF LOW_WATER = 16384

# Why reading is paused (bit flags).
DEF R_BUFFERED = 1      # our own buffer is over the high-water mark
DEF R_PEER_FULL = 2     # the other side's write buffer is full

# Deadline kinds.
DEF DL_NONE = 0
DEF DL_HEAD = 1
DEF DL_IDLE = 2
DEF DL_TOTAL = 3
DEF DL_READ = 4
DEF DL_WRITE = 5
DEF DL_POOL = 6
DEF DL_DISCARD = 7  # reading and dropping the rest of an answered request's body
DEF DL_LINGER = 8   # closing: our side shut down, reading and dropping what still comes

# A request body still on its way when the response is decided: up to this
# many bytes left (by Content-Length) are read and dropped after the response
# and the connection is kept; more, or an unknown length, and the response
# says `Connection: close` and the connection closes lingering.
DEF DISCARD_MAX = 65536

# Informational (1xx) responses an upstream may send before its final one;
# each counts as progress for the read timeout, so the total is bounded.
DEF MAX_INFORMATIONAL = 16

# During a graceful stop a client connection is closed between requests once
# it has been idle this long (seconds): a request the client sent just before
# is then answered (with `Connection: close`) instead of racing the close.
DEF DRAIN_IDLE = 0.5

# Connections whose deadline passed, acted on per loop iteration (the rest
# wait for the next one, after the ready I/O).
DEF TICK_SLICE = 64

# Stages of a session.
DEF S_EARLY = 1
DEF S_REQ_FILTER = 2
DEF S_REQ_FILTER_DONE = 3
DEF S_PEER = 4
DEF S_PEER_DONE = 5
DEF S_CONNECT = 6
DEF S_CONNECTED = 7
DEF S_UP_REQ = 8
DEF S_SEND = 9
DEF S_REQ_BODY_DONE = 10
DEF S_UP_RESP = 11
DEF S_RESP = 12
DEF S_RESP_SEND = 13
DEF S_RESP_BODY_DONE = 14
DEF S_FAIL_CONNECT_DONE = 15
DEF S_ERR_PROXY_DONE = 16
DEF S_FAIL_PROXY_DONE = 17
DEF S_LOG_DONE = 18
DEF S_NEW_CTX = 19

# How the response body goes to the client.
DEF M_NONE = 0      # no body (HEAD, 1xx, 204, 304)
DEF M_RAW = 1       # as received, Content-Length kept
DEF M_CHUNKED = 2   # re-chunked
DEF M_CLOSE = 3     # delimited by closing the connection

# The time, read once per batch of ready descriptors (as nginx caches it
# per event-loop iteration): deadlines and request timings taken while a
# batch is handled share one clock reading. Outside a batch (timers, hook
# tasks) the clock is read each time.
cdef double _batch_now = 0.0
cdef bint _in_batch = False

cdef inline double _now() noexcept:
    if _in_batch:
        return _batch_now
    return sw_now()


cdef object _PENDING = object()
cdef object _FAILED = object()
cdef object _MISSING = object()

# One scratch buffer for building heads (the loop is single-threaded).
cdef char *_scratch = NULL
cdef size_t _scratch_cap = 0
cdef unsigned char *_drop = NULL
cdef uint32_t _drop_cap = 0

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


cdef bytes _concat(bytes a, const char *b, size_t n):
    cdef Py_ssize_t na = PyBytes_GET_SIZE(a)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, na + <Py_ssize_t>n)
    cdef char *o = PyBytes_AS_STRING(out)
    memcpy(o, PyBytes_AS_STRING(a), na)
    memcpy(o + na, b, n)
    return out


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
cdef bytes _R408 = (b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 20\r\nConnection: close\r\n\r\n"
                   b"408 Request Timeout\n")
cdef frozenset _HOP = frozenset([b"connection", b"keep-alive", b"proxy-connection", b"te",
                                 b"trailer", b"upgrade", b"transfer-encoding"])


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


# ---------------------------------------------------------------- headers --

@cython.final
@cython.freelist(64)
@cython.no_gc  # holds only bytes/str/lists of bytes: never in a cycle
cdef class HeaderMap:
    """Header fields of a request or response, mutable by hooks.

    Lookups ignore case and take ``str`` or ``bytes``; values come back as
    ``str`` (Latin-1, so every byte survives) or from ``get_bytes`` as bytes.
    Until a hook changes something the fields are read straight from the
    received bytes; the first change copies them into a list.

    Mapping-style: ``h["name"]`` (first value; KeyError when absent),
    ``h["name"] = v`` (replace every field of that name), ``del h["name"]``,
    ``h.pop(name, default)``, ``name in h``, ``len(h)``, iteration over names.
    """

    def __init__(self):
        raise TypeError("HeaderMap objects are made by the proxy")

    def __dealloc__(self):
        free(self._h)

    cdef int _set_spans(self, object buf, const char *base, const sw_header_t *h,
                        uint32_t n) except -1:
        free(self._h)
        self._h = NULL
        if n:
            self._h = <sw_header_t *>malloc(n * sizeof(sw_header_t))
            if self._h == NULL:
                raise MemoryError()
            memcpy(self._h, h, n * sizeof(sw_header_t))
        self._n = n
        self._buf = buf
        self._base = base
        self._items = None
        return 0

    cdef int _materialize(self) except -1:
        cdef uint32_t i
        cdef list items
        if self._items is not None:
            return 0
        items = []
        for i in range(self._n):
            items.append([PyBytes_FromStringAndSize(self._base + self._h[i].name.off, self._h[i].name.len),
                          PyBytes_FromStringAndSize(self._base + self._h[i].value.off, self._h[i].value.len)])
        self._items = items
        free(self._h)
        self._h = NULL
        self._n = 0
        self._buf = None
        self._base = NULL
        return 0

    cdef int _find(self, bytes lname, int start) except -2:
        cdef Py_ssize_t i, n
        cdef list it
        if self._items is None:
            return sw_find(self._base, self._h, self._n, PyBytes_AS_STRING(lname),
                           PyBytes_GET_SIZE(lname), start)
        it = self._items
        n = len(it)
        for i in range(start, n):
            if (<bytes>(<list>it[i])[0]).lower() == lname:
                return i
        return -1

    cdef bytes _value_at(self, int i):
        if self._items is None:
            return PyBytes_FromStringAndSize(self._base + self._h[i].value.off, self._h[i].value.len)
        return <bytes>(<list>self._items[i])[1]

    cdef bytes _name_at(self, int i):
        if self._items is None:
            return PyBytes_FromStringAndSize(self._base + self._h[i].name.off, self._h[i].name.len)
        return <bytes>(<list>self._items[i])[0]

    cdef object _get(self, object name, object default):
        cdef Py_ssize_t n
        cdef const char *p
        cdef int i
        if self._items is None and type(name) is str and PyUnicode_IS_ASCII(name):
            # No allocation: the name's own bytes, case-insensitive C search.
            p = PyUnicode_AsUTF8AndSize(name, &n)
            i = sw_find(self._base, self._h, self._n, p, <size_t>n, 0)
            if i < 0:
                return default
            return PyUnicode_DecodeLatin1(self._base + self._h[i].value.off, self._h[i].value.len, NULL)
        i = self._find(_as_name(name).lower(), 0)
        return default if i < 0 else _latin1(self._value_at(i))

    def get(self, name, default=None):
        """First value of ``name`` as str, or ``default``."""
        return self._get(name, default)

    def get_bytes(self, name, default=None):
        """First value of ``name`` as bytes, or ``default``."""
        cdef int i = self._find(_as_name(name).lower(), 0)
        return default if i < 0 else self._value_at(i)

    def getall(self, name):
        """Every value of ``name`` (str) in order."""
        cdef bytes ln = _as_name(name).lower()
        cdef list out = []
        cdef int i = self._find(ln, 0)
        while i >= 0:
            out.append(_latin1(self._value_at(i)))
            i = self._find(ln, i + 1)
        return out

    def __getitem__(self, name):
        cdef int i = self._find(_as_name(name).lower(), 0)
        if i < 0:
            raise KeyError(name)
        return _latin1(self._value_at(i))

    def __contains__(self, name):
        if not isinstance(name, (str, bytes)):
            return False
        return self._find(_as_name(name).lower(), 0) >= 0

    def __len__(self):
        return self._n if self._items is None else len(self._items)

    def __iter__(self):
        return iter([_latin1(self._name_at(i)) for i in range(len(self))])

    def keys(self):
        return [_latin1(self._name_at(i)) for i in range(len(self))]

    def items(self):
        """``(name, value)`` str pairs in order, repeats included."""
        return [(_latin1(self._name_at(i)), _latin1(self._value_at(i))) for i in range(len(self))]

    def raw_items(self):
        """``(name, value)`` bytes pairs in order."""
        return [(self._name_at(i), self._value_at(i)) for i in range(len(self))]

    def add(self, name, value):
        """Append a field, keeping any others of the same name."""
        cdef bytes n = _as_name(name), v = _as_value(value)
        self._materialize()
        self._items.append([n, v])

    def __setitem__(self, name, value):
        """Replace every field called ``name`` with one field (added last
        when it was absent, in place of the first one otherwise)."""
        cdef bytes n = _as_name(name), v = _as_value(value)
        cdef bytes ln = n.lower()
        cdef int i
        self._materialize()
        i = self._find(ln, 0)
        if i < 0:
            self._items.append([n, v])
            return
        self._items[i] = [n, v]
        j = self._find(ln, i + 1)
        while j >= 0:
            del self._items[j]
            j = self._find(ln, j)

    def __delitem__(self, name):
        if self.pop(name, _MISSING) is _MISSING:
            raise KeyError(name)

    def pop(self, name, default=_MISSING):
        """Remove every field called ``name``; return the first value (str),
        or ``default`` when absent (KeyError when no default is given)."""
        cdef bytes ln = _as_name(name).lower()
        cdef int i = self._find(ln, 0)
        if i < 0:
            if default is _MISSING:
                raise KeyError(name)
            return default
        self._materialize()
        first = _latin1(<bytes>(<list>self._items[i])[1])
        while i >= 0:
            del self._items[i]
            i = self._find(ln, i)
        return first

    def __repr__(self):
        return f"HeaderMap({self.items()!r})"


cdef HeaderMap _new_map(object buf, const char *base, const sw_header_t *h, uint32_t n):
    cdef HeaderMap m = HeaderMap.__new__(HeaderMap)
    m._set_spans(buf, base, h, n)
    return m


@cython.final
@cython.freelist(64)
@cython.no_gc  # holds only bytes/str/lists of bytes: never in a cycle
cdef class RequestHeader:
    """A request head, readable and mutable by hooks.

    Attributes:
        method: the method (str); settable.
        uri: the request target as str (``/path?query``); settable.
        path, query: the target split at ``?``.
        version: ``"1.1"`` or ``"1.0"`` as received.
        headers: :class:`HeaderMap`.

    Pingora-style helpers: ``get``, ``insert_header`` (replace),
    ``append_header`` (add), ``remove_header`` (returns the removed value or
    None).
    """

    def __init__(self):
        raise TypeError("RequestHeader objects are made by the proxy")

    @property
    def method(self):
        return self._method

    @method.setter
    def method(self, value):
        if not isinstance(value, str) or not value or not value.isascii() or " " in value:
            raise ValueError(f"invalid method {value!r}")
        self._method = value
        self._edited_line = True

    @property
    def raw_uri(self):
        """The request target as bytes."""
        if self._uri is not None:
            return self._uri
        return PyBytes_FromStringAndSize(PyBytes_AS_STRING(<bytes>self._buf) + self._target.off, self._target.len)

    @property
    def uri(self):
        return _latin1(self.raw_uri)

    @uri.setter
    def uri(self, value):
        cdef bytes b = value.encode("latin-1") if isinstance(value, str) else bytes(value)
        if not b or b" " in b or b"\r" in b or b"\n" in b:
            raise ValueError(f"invalid request target {value!r}")
        self._uri = b
        self._edited_line = True

    @property
    def path(self):
        u = self.uri
        i = u.find("?")
        return u if i < 0 else u[:i]

    @property
    def query(self):
        u = self.uri
        i = u.find("?")
        return "" if i < 0 else u[i + 1:]

    @property
    def version(self):
        return f"{self._major}.{self._minor}"

    def get(self, name, default=None):
        """First value of header ``name`` (str), or ``default``."""
        return self.headers._get(name, default)

    def insert_header(self, name, value):
        """Set header ``name`` to ``value``, replacing any others."""
        self.headers[name] = value

    def append_header(self, name, value):
        """Add a header field, keeping existing ones of that name."""
        self.headers.add(name, value)

    def remove_header(self, name):
        """Remove every field called ``name``; return the first value or None."""
        return self.headers.pop(name, None)

    def __repr__(self):
        return f"<RequestHeader {self._method} {self.uri} HTTP/{self.version}>"

    cdef int _take_authority(self, sw_span_t auth) except -1:
        """An absolute-form target (RFC 9112 3.2.2): its authority (``auth``,
        in the target) is the request's. Hooks and the upstream see one
        authority: the target becomes origin-form (what follows the
        authority, "/" when that is empty or only a query) and the Host
        field is set to the authority, replacing the one the client sent."""
        cdef const char *b = PyBytes_AS_STRING(<bytes>self._buf)
        cdef uint32_t rest = auth.off + auth.len
        cdef bytes tail = PyBytes_FromStringAndSize(b + rest, self._target.off + self._target.len - rest)
        self._uri = tail if tail.startswith(b"/") else b"/" + tail
        self._edited_line = True
        self.headers[b"Host"] = PyBytes_FromStringAndSize(b + auth.off, auth.len)


@cython.final
@cython.freelist(64)
@cython.no_gc  # holds only bytes/str/lists of bytes: never in a cycle
cdef class ResponseHeader:
    """A response head as received from the upstream, mutable by hooks.

    Attributes:
        status: int; settable.
        reason: the reason phrase (str); settable.
        version: the upstream's HTTP version.
        headers: :class:`HeaderMap`.

    Helpers as on :class:`RequestHeader`: ``get``, ``insert_header``,
    ``append_header``, ``remove_header``.
    """

    def __init__(self):
        raise TypeError("ResponseHeader objects are made by the proxy")

    @property
    def reason(self):
        return _latin1(self._reason)

    @reason.setter
    def reason(self, value):
        self._reason = _as_value(value)

    @property
    def version(self):
        return f"{self._major}.{self._minor}"

    def get(self, name, default=None):
        return self.headers._get(name, default)

    def insert_header(self, name, value):
        self.headers[name] = value

    def append_header(self, name, value):
        self.headers.add(name, value)

    def remove_header(self, name):
        return self.headers.pop(name, None)

    def __repr__(self):
        return f"<ResponseHeader {self.status} {self.reason}>"


# ------------------------------------------------------------------- peer --

# Plain (no TLS, default SNI) peers by the address they were given:
# (host, port, path, reuse_key). See HttpPeer.__init__.
cdef dict _PLAIN_PEERS = {}


@cython.final
cdef class HttpPeer:
    """An upstream to send a request to.

    Args:
        address: ``("host", port)``, ``"host:port"`` or ``"unix:/path"``.
        tls: connect with TLS (``sni`` defaults to the host).
        sni: the TLS server name (also the name the certificate must match).
        verify_cert: check the upstream's certificate (default True).
        ca_file: PEM file of the CAs to trust instead of the system store.
        connect_timeout, read_timeout, write_timeout, idle_timeout: seconds;
            None uses the service's configured value.

    Connections are pooled by ``reuse_key`` (address, TLS, SNI and the
    certificate options).
    """

    def __init__(self, address, tls=False, sni=None, *, connect_timeout=None,
                 read_timeout=None, write_timeout=None, idle_timeout=None,
                 verify_cert=True, ca_file=None):
        cdef str host
        cdef tuple known = None
        cdef bint plain = not tls and sni is None and (
            type(address) is str or (type(address) is tuple and len(address) == 2 and
                                     type(address[0]) is str and type(address[1]) is int))
        self.address = address
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        self.idle_timeout = idle_timeout
        if plain:
            # A plain peer seen before: its checked fields and the one
            # reuse_key object for it (the pool's lookups then match by
            # identity instead of comparing tuples).
            known = _PLAIN_PEERS.get(address)
            if known is not None:
                self.host, self.port, self.path, self.reuse_key = known
                self.sni = self.host or ""
                return
        if isinstance(address, tuple) and len(address) == 2:
            host, port = address
            if not isinstance(host, str) or not isinstance(port, int) or not (0 < port < 65536):
                raise ValueError(f"HttpPeer address must be (host: str, port: 1..65535), got {address!r}")
            self.host = host
            self.port = port
        elif isinstance(address, str) and address.startswith("unix:"):
            self.path = address[5:]
            if not self.path:
                raise ValueError("HttpPeer address 'unix:' needs a socket path, e.g. 'unix:/run/app.sock'")
        elif isinstance(address, str) and ":" in address:
            host, _, port_s = address.rpartition(":")
            if not port_s.isdigit() or not (0 < int(port_s) < 65536):
                raise ValueError(f"HttpPeer address {address!r}: the port must be 1..65535")
            self.host = host.strip("[]")
            self.port = int(port_s)
        else:
            raise ValueError(f"HttpPeer address must be (host, port), 'host:port' or "
                             f"'unix:/path', got {address!r}")
        self.tls = bool(tls)
        self.sni = sni if sni is not None else (self.host or "")
        if self.path is not None:
            self.reuse_key = ("unix", self.path)
        else:
            if self.tls:
                self.verify_cert = bool(verify_cert)
                self.ca_file = ca_file
                self.reuse_key = (self.host, self.port, True, self.sni, self.verify_cert, ca_file)
            else:
                self.reuse_key = (self.host, self.port, False, self.sni)
        if plain:
            if len(_PLAIN_PEERS) >= 4096:
                _PLAIN_PEERS.clear()  # many distinct addresses: start over
            _PLAIN_PEERS[address] = (self.host, self.port, self.path, self.reuse_key)

    cdef bytes _host_hdr(self):
        """The Host value for requests that came without one."""
        if self._host_header is None:
            if self.path is not None:
                self._host_header = b"localhost"
            else:
                h = f"[{self.host}]" if ":" in self.host else self.host
                self._host_header = (h if self.port in (80, 443) else f"{h}:{self.port}").encode("idna")
        return self._host_header

    def __repr__(self):
        where = f"unix:{self.path}" if self.path is not None else f"{self.host}:{self.port}"
        return f"HttpPeer({where}{', tls' if self.tls else ''})"

    def __str__(self):
        return f"unix:{self.path}" if self.path is not None else f"{self.host}:{self.port}"


cdef dict _SSL_CONTEXTS = {}

cdef object _ssl_context(bint verify, object ca_file):
    """One client SSLContext per (verify, ca_file), made once (loading
    the trust store per connection would cost milliseconds)."""
    key = (verify, ca_file)
    ctx = _SSL_CONTEXTS.get(key)
    if ctx is None:
        import ssl
        ctx = ssl.create_default_context(cafile=ca_file)
        if not verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        _SSL_CONTEXTS[key] = ctx
    return ctx


# ------------------------------------------------------------------- wire --

@cython.final
@cython.no_gc  # holds only bytes/str/lists of bytes: never in a cycle
cdef class _Wire:
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


cdef bytes _last_chunk(_Wire w, HeaderMap head, bint *keep):
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
    drop = _need_drop(n)
    if sw_trailer_mark(tb, tf, n, cp, clen, drop) == 0:
        return None
    out = _need_scratch(3 + sw_fields_size(tf, n) + 2)
    memcpy(out, b"0\r\n", 3)
    k = 3 + sw_write_fields(out + 3, tb, tf, n, drop)
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


# ------------------------------------------------------------------- pool --

@cython.final
cdef class _Pool:
    """Idle upstream connections of one worker, by the peer's reuse key.

    Each key has a LIFO stack (the most recently used connection is reused
    first, so extra connections idle out). Counters: ``created`` (new
    connections), ``reused`` (requests sent on a pooled connection),
    ``closed`` (connections closed for any reason) and ``evicted`` (idle
    connections the pool closed: over ``max_idle`` or idle too long).
    """

    def __cinit__(self, int max_idle=128, double idle_timeout=60.0):
        self.idle = {}
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout

    cdef _Upstream take(self, object key):
        cdef list stack = self.idle.get(key)
        cdef _Upstream c
        while stack:
            c = stack.pop()
            c.idle = False
            if not c.closed:
                self.reused += 1
                return c
        return None

    cdef int put(self, _Upstream c) except -1:
        cdef list stack
        cdef _Upstream old
        if c.closed or not c.reusable or self.max_idle <= 0:
            c._close()
            return 0
        stack = self.idle.get(c.key)
        if stack is None:
            stack = self.idle[c.key] = []
        c.idle = True
        c.s = None
        idle = c.peer.idle_timeout
        c.deadline = _now() + (self.idle_timeout if idle is None else <double>idle)
        c.dl_kind = DL_POOL
        stack.append(c)
        if len(stack) > self.max_idle:
            old = stack.pop(0)
            old.idle = False
            self.evicted += 1
            old._close()

    cdef int drop(self, _Upstream c) except -1:
        cdef list stack
        if not c.idle:
            return 0
        c.idle = False
        stack = self.idle.get(c.key)
        if stack is not None:
            try:
                stack.remove(c)
            except ValueError:
                pass
            if not stack:
                del self.idle[c.key]

    cdef int sweep(self, double now) except -1:
        cdef list stack
        cdef _Upstream c
        cdef list dead = []
        for key, stack in self.idle.items():
            for c in stack:
                if c.deadline and now >= c.deadline:
                    dead.append(c)
        for c in dead:
            self.drop(c)
            self.evicted += 1
            c._close()

    def stats(self):
        """Counters and the number of idle connections, as a dict."""
        return {"created": self.created, "reused": self.reused, "closed": self.closed,
                "evicted": self.evicted,
                "idle": sum(len(s) for s in self.idle.values())}

    def close_idle(self):
        """Close every idle connection (at shutdown)."""
        cdef _Upstream c
        for stack in list(self.idle.values()):
            for c in list(stack):
                self.drop(c)
                c._close()


cdef dict _POOLS = {}

cdef _Pool _pool_for(object loop, int max_idle, double idle_timeout):
    cdef _Pool p = _POOLS.get(loop)
    if p is None:
        p = _POOLS[loop] = _Pool(max_idle, idle_timeout)
    else:
        p.max_idle = max_idle
        p.idle_timeout = idle_timeout
    return p


def pool_stats(loop=None):
    """Counters of the connection pool of ``loop`` (the running loop by
    default): created, reused, closed, evicted, idle."""
    if loop is None:
        loop = asyncio.get_running_loop()
    p = _POOLS.get(loop)
    if p is None:
        return {"created": 0, "reused": 0, "closed": 0, "evicted": 0, "idle": 0}
    return p.stats()


def forget_pool(loop):
    """Drop ``loop``'s pool (its idle connections are closed) and its I/O
    set (connections still open on it are aborted)."""
    p = _POOLS.pop(loop, None)
    if p is not None:
        p.close_idle()
    cdef _IoLoop io = _IOS.pop(loop, None)
    if io is not None:
        io.close()


def io_connections(loop=None):
    """Connections open on the engine's own I/O of ``loop`` (the running
    loop by default), both sides."""
    if loop is None:
        loop = asyncio.get_running_loop()
    cdef _IoLoop io = _IOS.get(loop)
    return len(io.live) if io is not None else 0


# ------------------------------------------------------- upstream connect --

cdef object _numeric_addr(str host, int port):
    """(family, address) when ``host`` is a numeric IP address, else None."""
    for fam in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(fam, host)
        except OSError:
            continue
        return fam, (host, port)
    return None


async def _connect_plain(_Engine eng, _Upstream u, HttpPeer peer):
    """Connect ``u`` to a plain TCP or Unix socket peer on the engine's own
    I/O (the loop's sock_connect does the waiting; names are resolved with
    the loop's getaddrinfo and tried in order)."""
    loop = eng.loop
    if peer.path is not None:
        targets = [(socket.AF_UNIX, peer.path)]
    else:
        t = _numeric_addr(peer.host, peer.port)
        if t is not None:
            targets = [t]
        else:
            infos = await loop.getaddrinfo(peer.host, peer.port, type=socket.SOCK_STREAM)
            if not infos:
                raise OSError(f"{peer.host} resolved to no address")
            targets = [(fam, addr) for fam, _, _, _, addr in infos]
    last = None
    for fam, addr in targets:
        sock = socket.socket(fam, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            if fam != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await loop.sock_connect(sock, addr)
        except BaseException as exc:
            sock.close()
            if not isinstance(exc, OSError):
                raise
            last = exc
            continue
        fd = sock.detach()
        try:
            eng.io.register(u, fd)
        except BaseException:
            sw_io_close(fd)
            raise
        u._made()
        return
    raise last


# -------------------------------------------------------- hooks and tasks --

include "_hook_task.pxi"


cdef object _wrap_hook_error(object exc, str hook):
    if isinstance(exc, Error):
        return exc
    err = Error(f"hook {hook} raised {type(exc).__name__}: {exc}", status=500, source=INTERNAL)
    err.__cause__ = exc
    return err


# ------------------------------------------------------------ log floods --

DEF LOG_BURST = 5   # lines of one kind written per second before they are counted


@cython.final
cdef class _LogKind:
    pass


@cython.final
cdef class _LogGate:
    """Rate limit for log lines that repeat per connection or per request
    (refused connections, timeouts, bad requests, failed requests): of each
    kind, the first LOG_BURST lines of a second are written; the rest are
    counted, and one line a second says how many were dropped, with the
    last of them. A flood of clients then costs a few lines a second."""

    def __cinit__(self, object log):
        self.log = log
        self.kinds = {}

    cdef int emit(self, int level, str kind, str fmt, tuple args, object exc=None) except -1:
        cdef _LogKind k = self.kinds.get(kind)
        cdef double now
        if not self.log.isEnabledFor(level):
            return 0
        now = sw_now()
        if k is None:
            k = _LogKind.__new__(_LogKind)
            k.since = now
            self.kinds[kind] = k
        elif now - k.since >= 1.0:
            self._summary(kind, k)
            k.since = now
            k.written = 0
        if k.written < LOG_BURST:
            k.written += 1
            self.log.log(level, fmt, *args, exc_info=exc)
            return 0
        k.dropped += 1
        if level > k.level:
            k.level = level
        k.fmt = fmt
        k.args = args
        return 0

    cdef int _summary(self, str kind, _LogKind k) except -1:
        cdef long long n = k.dropped
        if n == 0:
            return 0
        k.dropped = 0
        try:
            last = k.fmt % k.args
        except Exception:
            last = k.fmt
        self.log.log(k.level, "sluiceway: %d more lines like this in the last %.1fs (%s): %s",
                     n, sw_now() - k.since, kind, last)
        k.level = 0
        return 0

    cdef int flush(self, double now) except -1:
        """Write the summaries of the windows that are over (the timer)."""
        cdef _LogKind k
        for kind, k in self.kinds.items():
            if k.dropped and now - k.since >= 1.0:
                self._summary(kind, k)
                k.since = now
                k.written = 0
        return 0


# ----------------------------------------------------------------- engine --

@cython.final
cdef class _Engine:
    """Per-loop state of one proxy service: the app's hooks, the settings,
    the live connections and the timer that enforces deadlines."""

    def __cinit__(self, object app, object base_class, object loop=None, *,
                  double head_timeout=10.0, double keepalive_timeout=60.0,
                  double request_timeout=0.0, double connect_timeout=5.0,
                  double read_timeout=60.0, double write_timeout=60.0,
                  double downstream_write_timeout=60.0,
                  double body_timeout=60.0, double body_min_rate=100.0,
                  double linger_time=30.0, double linger_timeout=5.0,
                  int max_connections=0, bint pause_accept=False, int max_retries=1,
                  long long max_body_size=0,
                  bint forwarded=False, bint access_log=False,
                  int pool_size=128, double pool_idle_timeout=60.0,
                  int max_head_size=32768, int max_url_size=8192, int max_headers=128):
        self.loop = loop if loop is not None else asyncio.get_event_loop()
        self.app = app
        self.conns = set()
        self.wires = []
        self.head_timeout = head_timeout
        self.keepalive_timeout = keepalive_timeout
        self.request_timeout = request_timeout
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        self.ds_write_timeout = downstream_write_timeout
        self.body_timeout = body_timeout
        self.body_min_rate = body_min_rate
        self.linger_time = linger_time
        self.linger_timeout = linger_timeout
        self.max_connections = max_connections
        self.pause_accept = pause_accept
        self.listeners = []
        self.max_retries = max_retries
        self.max_body_size = max_body_size
        self.forwarded = forwarded
        self.access_log = access_log
        if max_head_size <= 0 or max_url_size <= 0 or max_headers <= 0:
            raise ValueError("max_head_size, max_url_size and max_headers must be positive")
        self.max_head = max_head_size
        self.max_url = max_url_size
        self.max_headers = max_headers
        self.pool = _pool_for(self.loop, pool_size, pool_idle_timeout)
        self.io = _io_for(self.loop)
        self.log = logging.getLogger("sluiceway.error")
        self.alog = logging.getLogger("sluiceway.access")  # (the access_log argument is a bool)
        self.gate = _LogGate(self.log)
        self.due = []

        def hook(name):
            fn = getattr(type(app), name, None)
            if fn is None or fn is getattr(base_class, name, None):
                return None
            return getattr(app, name)

        self.h_new_ctx = hook("new_ctx")
        self.h_early = hook("early_request_filter")
        self.h_req_filter = hook("request_filter")
        self.h_req_body = hook("request_body_filter")
        self.h_peer = getattr(app, "upstream_peer", None)
        if self.h_peer is None or hook("upstream_peer") is None:
            raise TypeError(f"{type(app).__name__} must override upstream_peer(session, ctx) "
                            "to say where each request goes (return an HttpPeer)")
        self.h_connected = hook("connected_to_upstream")
        self.h_up_req = hook("upstream_request_filter")
        self.h_up_resp = hook("upstream_response_filter")
        self.h_resp = hook("response_filter")
        self.h_resp_body = hook("response_body_filter")
        self.h_logging = hook("logging")
        self.h_fail_connect = hook("fail_to_connect")
        self.h_err_proxy = hook("error_while_proxy")
        self.h_fail_proxy = hook("fail_to_proxy")
        ts = [t for t in (head_timeout, keepalive_timeout, request_timeout, read_timeout,
                          write_timeout, downstream_write_timeout, pool_idle_timeout,
                          body_timeout, linger_timeout) if t > 0]
        self.tick = min(1.0, max(0.02, min(ts) / 4.0)) if ts else 1.0
        self._schedule()

    @property
    def overridden_hooks(self):
        """Names of the hooks the app overrides (the others cost nothing)."""
        names = ["new_ctx", "early_request_filter", "request_filter", "request_body_filter",
                 "upstream_peer", "connected_to_upstream", "upstream_request_filter",
                 "upstream_response_filter", "response_filter", "response_body_filter",
                 "logging", "fail_to_connect", "error_while_proxy", "fail_to_proxy"]
        vals = [self.h_new_ctx, self.h_early, self.h_req_filter, self.h_req_body, self.h_peer,
                self.h_connected, self.h_up_req, self.h_up_resp, self.h_resp, self.h_resp_body,
                self.h_logging, self.h_fail_connect, self.h_err_proxy, self.h_fail_proxy]
        return [n for n, v in zip(names, vals) if v is not None]

    @property
    def pool_stats(self):
        return self.pool.stats()

    @property
    def connections(self):
        """Number of open downstream connections."""
        return len(self.conns)

    def active_requests(self):
        """Number of requests in progress (until their logging hook ends)."""
        return self.inflight

    def stats(self):
        """Counters of this service on this loop, as a dict: ``requests``
        (heads received), ``active`` (in progress), ``connections`` (client
        connections open), ``replayed`` (requests sent again after a pooled
        upstream connection died before answering)."""
        return {"requests": self.requests, "active": self.inflight,
                "connections": len(self.conns), "replayed": self.replayed}

    cdef int _schedule(self) except -1:
        self.timer = self.loop.call_later(self.tick, self._on_tick)

    def _on_tick(self):
        """The periodic sweep: finds the connections whose deadline has
        passed (the scan only reads) and hands them to ``_expire``, which
        acts on TICK_SLICE of them per loop iteration, so that thousands of
        slow clients timing out together do not stall everyone else."""
        cdef double now = _now()
        cdef _Downstream d
        cdef _Upstream u
        cdef Py_ssize_t n
        cdef list due = self.due
        try:
            for d in self.conns:
                if (d.wdeadline and now >= d.wdeadline) or (d.deadline and now >= d.deadline):
                    due.append(d)
                elif d.cur is not None:
                    if d._body_due(now):
                        due.append(d)
                elif d.dl_kind == DL_IDLE and d.w is not None and d.w.unread() == 0 and \
                        not d.w.carrying and not d.discard_body and not d.closed:
                    # Idle since the last tick: its parser goes back to the
                    # free list (an idle keep-alive connection holds none).
                    self._give_wire(d.w)
                    d.w = None
                if d.cur is not None and d.cur.us is not None:
                    u = d.cur.us
                    if u.deadline and now >= u.deadline:
                        due.append(u)
            if due and not self.expiring:
                self._expire()
            if self.closing:
                self._close_idle(now)
            self.pool.sweep(now)
            self.gate.flush(now)
            n = len(self.conns)
            if n > self.peak_conns:
                self.peak_conns = n
            elif self.peak_conns - n >= 1024 and n * 2 < self.peak_conns:
                # Many connections went away (a flood, a slowloris run):
                # hand the memory they used back to the system.
                sw_mem_trim()
                self.peak_conns = n
        except BaseException:
            self.log.exception("sluiceway: error in the timeout sweep (this is a bug)")
        if self.timer is not None:
            self._schedule()

    cdef int _expire(self) except -1:
        """Act on up to TICK_SLICE connections found due by the sweep (each
        checked again: it may have moved on); the rest wait for the next
        loop iteration, after the I/O that is ready."""
        cdef list due = self.due
        cdef Py_ssize_t k = len(due)
        cdef Py_ssize_t i, stop = k - TICK_SLICE if k > TICK_SLICE else 0
        cdef double now = _now()
        cdef _Downstream d
        cdef _Upstream u
        cdef object c
        for i in range(k - 1, stop - 1, -1):
            c = due[i]
            try:
                if type(c) is _Downstream:
                    d = <_Downstream>c
                    if d.wdeadline and now >= d.wdeadline:
                        d._write_timeout()
                    if d.deadline and now >= d.deadline:
                        d._timeout(now)
                    elif d.cur is not None and d._body_due(now):
                        d._body_timeout(now)
                else:
                    u = <_Upstream>c
                    if u.deadline and now >= u.deadline:
                        u._timeout(now)
            except BaseException:
                self.log.exception("sluiceway: error in a timeout (this is a bug)")
        del due[stop:]
        self.expiring = stop > 0
        if self.expiring:
            self.loop.call_soon(self._expire_more)
        return 0

    def _expire_more(self):
        self._expire()

    cdef _Wire _take_wire(self):
        if self.wires:
            return <_Wire>self.wires.pop()
        return _Wire(True, self.max_head, self.max_url, self.max_headers)

    cdef int _give_wire(self, _Wire w, bint reset=True) except -1:
        """Put a client parser on the free list. ``reset`` may be False only
        when it stopped right after a complete keep-alive message (llhttp is
        then back in its start state, as after a reset)."""
        if len(self.wires) < 256:
            if reset:
                API.reset(w.p)
            w.data = None
            w.head_buf = None
            w.dptr = b""
            w.dlen = w.pos = 0
            w.need = True
            self.wires.append(w)

    def protocol_factory(self):
        """Return a new downstream protocol, for serving through asyncio
        transports (``loop.create_server``); ``serve`` is the fast way."""
        return _Downstream(self)

    def serve(self, sock):
        """Accept connections from the listening socket ``sock`` (TCP or
        Unix, non-blocking) on the engine's own I/O. Returns the listener
        (``close()`` stops accepting; the socket stays the caller's)."""
        cdef _Listener l = _Listener(self, sock)
        self.listeners.append(l)
        return l

    cdef bint _full(self):
        """At max_connections in "pause" mode: accepting stops (every
        listener) until a connection closes (``_conn_closed``)."""
        cdef _Listener l
        if self.pause_accept and self.max_connections and len(self.conns) >= self.max_connections:
            if not self.accept_paused:
                self.accept_paused = True
                for l in self.listeners:
                    l._stop()
                if self.log.isEnabledFor(logging.WARNING):
                    self.log.warning("sluiceway: %d connections open (max_connections): not "
                                     "accepting until one closes", len(self.conns))
            return True
        return False

    cdef int _conn_closed(self) except -1:
        cdef _Listener l
        if self.accept_paused and len(self.conns) < self.max_connections:
            self.accept_paused = False
            for l in self.listeners:
                l._start()
        return 0

    cdef int _accepted(self, int fd) except -1:
        cdef _Downstream d = _Downstream(self)
        try:
            self.io.register(d, fd)
        except BaseException:
            sw_io_close(fd)
            raise
        d._made()
        return 0

    def stop(self):
        """Stop the deadline timer."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def begin_shutdown(self):
        """Graceful stop: no more keep-alive. Every request whose head
        arrives is still answered, with `Connection: close`; a connection
        closes after such a response, or between requests once it has been
        idle for DRAIN_IDLE (at once when it was idle before). Stop
        accepting first (``_Listener.close``)."""
        if self.closing:
            return
        self.closing = True
        self._close_idle(_now())
        if self.timer is not None and self.tick > 0.1:
            self.timer.cancel()
            self.tick = 0.1
            self._schedule()

    cdef int _close_idle(self, double now) except -1:
        cdef _Downstream d
        for d in list(self.conns):
            if d._idle() and now - d.idle_since >= DRAIN_IDLE:
                d._close()
        return 0

    def close_all(self):
        """Close every connection at once (the end of a grace period, or a
        fast exit); a request still in progress is logged as cut."""
        cdef _Downstream d
        cdef Session s
        for d in list(self.conns):
            s = d.cur
            if s is not None and not s.finished and not d.closed and \
                    self.log.isEnabledFor(logging.WARNING):
                self.gate.emit(logging.WARNING, "cut at shutdown",
                               "sluiceway: %s %s from %s cut at shutdown (still in progress "
                               "at the end of the grace period)",
                               (s.req_header._method, s.req_header.uri, _fmt_addr(d._addr())))
            d._close()
        self.pool.close_idle()


@cython.final
cdef class _Listener:
    """Accepts connections from one listening socket for an engine."""

    def __cinit__(self, _Engine eng, object sock):
        self.eng = eng
        self.sock = sock
        self.fd = sock.fileno()
        self._start()

    cdef int _start(self) except -1:
        if not self.active and not self.closed:
            self.eng.loop.add_reader(self.fd, self._accept)
            self.active = True

    cdef int _stop(self) except -1:
        if self.active:
            self.active = False
            try:
                self.eng.loop.remove_reader(self.fd)
            except Exception:
                pass  # the loop is closed already

    def _resume(self):
        self.retry = None
        self._start()

    def _accept(self):
        self._accept_some(64)

    cdef int _accept_some(self, int limit) except -1:
        """Accept up to ``limit`` waiting connections."""
        cdef int i, fd
        for i in range(limit):
            if self.eng._full():
                return 0
            fd = sw_io_accept(self.fd)
            if fd >= 0:
                self.eng._accepted(fd)
                continue
            if fd == -EAGAIN:
                return 0
            if fd in (-EMFILE, -ENFILE, -ENOBUFS, -ENOMEM):
                # Out of descriptors or memory: stop accepting for a while
                # (the waiting connections stay in the kernel's backlog).
                self.eng.log.error("sluiceway: cannot accept connections on %s: %s; pausing "
                                   "accept for 0.5 s (raise the open-files limit, `ulimit -n`, "
                                   "or lower max_connections)", self.sock.getsockname(),
                                   os.strerror(-fd))
                self._stop()
                self.retry = self.eng.loop.call_later(0.5, self._resume)
                return 0
            if fd in (-ECONNABORTED, -EPROTO, -EPERM, -EINTR):
                continue  # that connection went away before we took it
            self.eng.log.error("sluiceway: accept failed on %s: %s", self.sock.getsockname(),
                               os.strerror(-fd))
            return 0
        return 0

    def close(self, bint drain=False):
        """Stop accepting. With ``drain``, first take every connection
        already waiting in the listen queue (closing a listening socket
        resets those), so that they are served; the caller then closes the
        socket."""
        if drain and not self.closed and self.fd >= 0:
            self._accept_some(1 << 30)
        self.closed = True
        self._stop()
        try:
            self.eng.listeners.remove(self)
        except ValueError:
            pass
        if self.retry is not None:
            self.retry.cancel()
            self.retry = None

    async def wait_closed(self):
        pass


def make_engine(app, base_class, loop=None, **settings):
    """Build the engine for ``app`` (a ProxyHttp instance) on ``loop``."""
    return _Engine(app, base_class, loop, **settings)


# ------------------------------------------------------------ connections --
#
# Connections do their own I/O on one epoll set per event loop (``_IoLoop``),
# which the loop watches with a single add_reader: when it is readable,
# ``_IoLoop._on_ready`` takes every ready descriptor from it and calls the
# connection's C-level ``_io_event`` (no Python call, transport object or
# libuv handle per connection or per read). An idle connection is one
# ``_Downstream`` object and its descriptor. TLS upstreams use an asyncio
# transport instead; ``_Conn``'s ``t_*`` methods serve both.

DEF RBUF_SIZE = 65536   # bytes asked of one recv (into a bytes object, see _IoLoop.recv)
DEF COPY_MAX = 4096     # reads up to this size are copied out of the receive buffer
DEF MAX_READY = 256     # descriptors handled per wake-up
DEF MAX_IOV = 64        # buffers written by one writev


cdef object _os_error(Py_ssize_t neg_errno):
    cdef int e = <int>-neg_errno
    return OSError(e, os.strerror(e))


@cython.final
cdef class _IoLoop:
    """One epoll set, watched by ``loop``, for the connections of that loop."""

    def __cinit__(self, object loop):
        self.loop = loop
        self.epfd = -1
        self.live = set()
        self.dead = []
        self.ready = <sw_ready_t *>malloc(MAX_READY * sizeof(sw_ready_t))
        if self.ready == NULL:
            raise MemoryError()
        cdef int fd = sw_io_open()
        if fd < 0:
            raise _os_error(fd)
        self.epfd = fd
        loop.add_reader(fd, self._on_ready)

    def __dealloc__(self):
        if self.epfd >= 0:
            sw_io_close(self.epfd)
        free(self.ready)
        Py_XDECREF(self.rbig)
        self.rbig = NULL

    cdef object recv(self, int fd):
        """One read from ``fd`` as a new bytes object; None when nothing was
        waiting (EAGAIN), b"" at EOF; raises OSError.

        The bytes are received straight into a preallocated RBUF_SIZE bytes
        object. A large read hands that object over, shrunk in place (no
        copy of the data); a small one is copied out and the buffer kept."""
        cdef Py_ssize_t r
        cdef PyObject *o
        cdef object fresh
        if self.rbig == NULL:
            fresh = PyBytes_FromStringAndSize(NULL, RBUF_SIZE)
            Py_INCREF(fresh)  # owned by rbig from now on
            self.rbig = <PyObject *>fresh
            fresh = None      # rbig's is the only reference (resizing needs that)
        r = sw_io_recv(fd, PyBytes_AS_STRING(<object>self.rbig), RBUF_SIZE)
        if r > COPY_MAX:
            o = self.rbig
            self.rbig = NULL
            if _PyBytes_Resize(&o, r) < 0:
                return None  # (the exception is set; not reached: shrinking does not fail)
            return _steal(o)
        if r > 0:
            return PyBytes_FromStringAndSize(PyBytes_AS_STRING(<object>self.rbig), r)
        if r == 0:
            return b""
        if r == -EAGAIN:
            return None
        raise _os_error(r)

    cdef int register(self, _Conn c, int fd) except -1:
        cdef int r = sw_io_add(self.epfd, fd, SW_IO_IN, <void *>c)
        if r < 0:
            raise _os_error(r)
        self.live.add(c)
        c.io = self
        c.fd = fd
        c.evmask = SW_IO_IN
        return 0

    cdef int unregister(self, _Conn c) except -1:
        sw_io_del(self.epfd, c.fd)
        if self.dispatching:
            # Events for it may still be in this batch: keep it alive.
            self.dead.append(c)
        self.live.discard(c)

    def _on_ready(self):
        cdef int i, n
        cdef _Conn c
        if self.epfd < 0:
            return
        global _batch_now, _in_batch
        n = sw_io_ready(self.epfd, self.ready, MAX_READY)
        if n <= 0:
            return
        self.dispatching = True
        _batch_now = sw_now()
        _in_batch = True
        try:
            for i in range(n):
                c = <_Conn>self.ready[i].obj
                if c.fd < 0:
                    continue  # closed earlier in this batch
                try:
                    c._io_event(self.ready[i].events)
                except BaseException:
                    error_log.exception("sluiceway: internal error in connection I/O (this is a bug)")
                    c.t_abort(None)
        finally:
            _in_batch = False
            self.dispatching = False
            if self.dead:
                self.dead.clear()

    def close(self):
        """Abort every connection still open and stop watching."""
        cdef _Conn c
        for c in list(self.live):
            c.t_abort(None)
        if self.epfd >= 0:
            try:
                self.loop.remove_reader(self.epfd)
            except Exception:
                pass  # the loop is closed already
            sw_io_close(self.epfd)
            self.epfd = -1


cdef dict _IOS = {}

cdef _IoLoop _io_for(object loop):
    cdef _IoLoop io = _IOS.get(loop)
    if io is None or io.epfd < 0:
        io = _IOS[loop] = _IoLoop(loop)
    return io


cdef class _Conn:
    """The I/O of one connection, shared by both sides of the proxy.

    Writes go out at once when nothing is queued; what the socket does not
    take is queued (as bytes) and written when epoll says the socket is
    writable. Past HIGH_WATER queued bytes ``on_pause_writing`` is called,
    at LOW_WATER ``on_resume_writing``, as asyncio transports do.
    ``t_close`` flushes the queue, then closes; ``on_lost`` follows on the
    next loop iteration (as ``connection_lost`` does with asyncio).
    """

    def __cinit__(self, *args, **kwargs):
        self.fd = -1
        self.flush_timeout = 60.0

    # --- used by the proxy -------------------------------------------------

    cdef int t_write(self, object data) except -1:
        cdef Py_ssize_t n, r
        cdef Py_buffer view
        if self.io is None:
            if self.transport is not None:
                self.transport.write(data)
            return 0
        if self.fd < 0 or self.io_closing:
            return 0
        if self.wq is not None:
            self._queue(data, 0)
            return 0
        if type(data) is bytes:
            n = PyBytes_GET_SIZE(data)
            if n == 0:
                return 0
            r = sw_io_send(self.fd, PyBytes_AS_STRING(data), n)
        else:
            PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
            n = view.len
            r = sw_io_send(self.fd, <char *>view.buf, n) if n > 0 else 0
            PyBuffer_Release(&view)
            if n == 0:
                return 0
        r = self._sent(r)
        if 0 <= r < n:
            self._queue(data, r)

    cdef int t_writev(self, tuple parts) except -1:
        cdef iovec iov[8]
        cdef Py_buffer views[8]
        cdef int k = 0, nv = 0, i
        cdef Py_ssize_t total = 0, r, left
        cdef object p
        if self.io is None:
            if self.transport is not None:
                self.transport.writelines(parts)
            return 0
        if self.fd < 0 or self.io_closing:
            return 0
        if self.wq is not None or len(parts) > 8:
            for p in parts:
                self.t_write(p)
            return 0
        try:
            for p in parts:
                if type(p) is bytes:
                    iov[k].iov_base = PyBytes_AS_STRING(p)
                    iov[k].iov_len = <size_t>PyBytes_GET_SIZE(p)
                else:
                    PyObject_GetBuffer(p, &views[nv], PyBUF_SIMPLE)
                    nv += 1
                    iov[k].iov_base = views[nv - 1].buf
                    iov[k].iov_len = <size_t>views[nv - 1].len
                total += <Py_ssize_t>iov[k].iov_len
                k += 1
            r = sw_io_writev(self.fd, iov, k) if total > 0 else 0
        finally:
            for i in range(nv):
                PyBuffer_Release(&views[i])
        r = self._sent(r)
        if r < 0 or r == total:
            return 0
        # Queue what was not written: the rest of the part it stopped in,
        # then the parts after it.
        left = r
        for p in parts:
            n = len(p)
            if left >= n:
                left -= n
                continue
            self._queue(p, left)
            left = 0

    cdef int t_send(self, object head, object owner, Py_ssize_t off, Py_ssize_t n) except -1:
        """Write ``head`` (bytes, or None), then bytes ``off``..``off+n`` of
        ``owner`` (bytes) in one vectored write, without joining them; only
        what the socket does not take is copied (into the queue)."""
        cdef iovec iov[2]
        cdef int k = 0
        cdef Py_ssize_t r, hl = 0
        if self.io is None or self.wq is not None or self.fd < 0 or self.io_closing:
            if head is not None:
                self.t_write(head)
            if n > 0:
                self.t_write(owner if off == 0 and n == PyBytes_GET_SIZE(owner) else
                             PyBytes_FromStringAndSize(PyBytes_AS_STRING(owner) + off, n))
            return 0
        if head is not None:
            hl = PyBytes_GET_SIZE(head)
            iov[0].iov_base = PyBytes_AS_STRING(head)
            iov[0].iov_len = <size_t>hl
            k = 1
        if n > 0:
            iov[k].iov_base = PyBytes_AS_STRING(owner) + off
            iov[k].iov_len = <size_t>n
            k += 1
        if hl + n == 0:
            return 0
        r = self._sent(sw_io_writev(self.fd, iov, k))
        if r < 0 or r == hl + n:
            return 0
        if r < hl:
            self._queue(head, r)
            r = 0
        else:
            r -= hl
        if r < n:
            if off == 0 and n == PyBytes_GET_SIZE(owner):
                self._queue(owner, r)
            else:
                self._queue(PyBytes_FromStringAndSize(PyBytes_AS_STRING(owner) + off + r, n - r), 0)
        return 0

    cdef int t_pause_reading(self) except -1:
        if self.io is None:
            if self.transport is not None:
                self.transport.pause_reading()
            return 0
        self.rd_paused = True
        self._set_mask(self.evmask & ~SW_IO_IN)

    cdef int t_resume_reading(self) except -1:
        if self.io is None:
            if self.transport is not None:
                self.transport.resume_reading()
            return 0
        self.rd_paused = False
        if not self.io_closing:
            self._set_mask(self.evmask | SW_IO_IN)

    cdef int t_close(self) except -1:
        if self.io is None:
            if self.transport is not None:
                self.transport.close()
            return 0
        if self.fd < 0 or self.io_closing:
            return 0
        self.io_closing = True
        if self.wq is None:
            self._finalize(None)
        else:
            self._set_mask(SW_IO_OUT)   # flush, then close
            if self.flush_timeout > 0:
                # A peer that does not read the rest does not keep it open.
                self.io.loop.call_later(self.flush_timeout, self._flush_expired)

    cdef int t_close_linger(self) except -1:
        """Close without making the kernel reset the connection: write the
        queue, shut down our side (the peer reads EOF after the last byte),
        then read and drop whatever the peer still sends until its EOF.

        Closing a socket with unread input makes the kernel answer with a
        reset, and a reset can destroy the response in the peer's buffers
        before the peer reads it (a client still sending a request body
        when we answer early). The owner bounds the reading (``t_abort``)."""
        if self.io is None:
            if self.transport is not None:
                self.transport.close()
            return 0
        if self.fd < 0 or self.io_closing:
            return 0
        self.io_closing = True
        self.linger = True
        if self.wq is None:
            self._linger()
        else:
            self._set_mask(SW_IO_OUT | SW_IO_IN)   # flush, and keep dropping input
            if self.flush_timeout > 0:
                self.io.loop.call_later(self.flush_timeout, self._flush_expired)
        return 0

    cdef int _linger(self) except -1:
        """Everything is written: shut down our side and wait for EOF."""
        if self.rd_eof or sw_io_shutdown_wr(self.fd) < 0:
            self._finalize(None)
            return 0
        self._set_mask(SW_IO_IN)
        return 0

    def _flush_expired(self):
        if self.fd >= 0 and self.io_closing:
            self.t_abort(TimeoutError(f"the peer did not read the last {self.wq_size} bytes "
                                      f"within {self.flush_timeout:.3g}s of the close"))

    cdef int t_abort(self, object exc) except -1:
        """Close at once, dropping anything queued; ``exc`` goes to on_lost."""
        if self.io is None:
            if self.transport is not None:
                self.transport.abort()
            return 0
        if self.fd >= 0:
            self.wq = None
            self.wq_size = 0
            self._finalize(exc)

    cdef object t_peername(self):
        cdef char host[256]
        cdef int port = 0, fam
        cdef unsigned flow = 0, scope = 0
        if self.io is None:
            if self.transport is None:
                return None
            return self.transport.get_extra_info("peername")
        if self.fd < 0:
            return None
        fam = sw_io_peername(self.fd, host, sizeof(host), &port, &flow, &scope)
        if fam == AF_INET:
            return (host.decode("ascii"), port)
        if fam == AF_INET6:
            return (host.decode("ascii"), port, flow, scope)
        if fam == AF_UNIX:
            return host.decode("utf-8", "surrogateescape")
        return None

    # --- inside --------------------------------------------------------------

    cdef Py_ssize_t _sent(self, Py_ssize_t r) except -2:
        """What a send or writev returned: the bytes written (0 when the
        socket took none), or -1 when it failed (the connection is then
        aborted)."""
        if r >= 0:
            return r
        if r == -EAGAIN:
            return 0
        self.t_abort(_os_error(r))
        return -1

    cdef int _queue(self, object data, Py_ssize_t off) except -1:
        cdef Py_ssize_t n
        if type(data) is not bytes:
            data = bytes(memoryview(data)[off:])
            off = 0
        n = PyBytes_GET_SIZE(data) - off
        if n <= 0:
            return 0
        if self.wq is None:
            self.wq = [data]
            self.wq_off = off
            self._set_mask(self.evmask | SW_IO_OUT)
        elif off:
            self.wq.append(data[off:])
        else:
            self.wq.append(data)
        self.wq_size += n
        if not self.wr_paused and self.wq_size > HIGH_WATER:
            self.wr_paused = True
            self.on_pause_writing()

    cdef int _set_mask(self, unsigned mask) except -1:
        if mask != self.evmask and self.fd >= 0:
            self.evmask = mask
            sw_io_mod(self.io.epfd, self.fd, mask, <void *>self)

    cdef int _io_event(self, unsigned events) except -1:
        cdef int err
        if events & SW_IO_IN and self.evmask & SW_IO_IN:
            try:
                data = self.io.recv(self.fd)
            except OSError as exc:
                self.t_abort(exc)
                return 0
            if data is not None:
                if PyBytes_GET_SIZE(data):
                    self.on_data(data)
                else:
                    self.rd_eof = True
                    self._set_mask(self.evmask & ~SW_IO_IN)
                    if self.io_closing:
                        # Closing already: a lingering close is over once
                        # the queue is written.
                        if self.wq is None:
                            self._finalize(None)
                        return 0
                    self.on_eof()
                    self.t_close()
                    return 0
        elif events & (SW_IO_ERR | SW_IO_HUP) and self.wq is None:
            # Reset or hung up while we neither read nor write.
            err = sw_io_soerror(self.fd)
            self.t_abort(OSError(err, os.strerror(err)) if err else
                         ConnectionResetError("the peer closed the connection"))
            return 0
        if self.fd >= 0 and self.wq is not None and events & (SW_IO_OUT | SW_IO_ERR | SW_IO_HUP):
            self._flush()

    cdef int _flush(self) except -1:
        cdef iovec iov[MAX_IOV]
        cdef int k = 0
        cdef Py_ssize_t r, n
        cdef object b
        for b in self.wq:
            if k == MAX_IOV:
                break
            iov[k].iov_base = PyBytes_AS_STRING(b)
            iov[k].iov_len = <size_t>PyBytes_GET_SIZE(b)
            k += 1
        iov[0].iov_base = PyBytes_AS_STRING(self.wq[0]) + self.wq_off
        iov[0].iov_len -= <size_t>self.wq_off
        r = sw_io_writev(self.fd, iov, k)
        if r < 0:
            if r != -EAGAIN:
                self.t_abort(_os_error(r))
            return 0
        self.wq_size -= r
        r += self.wq_off
        k = 0
        for b in self.wq:
            n = PyBytes_GET_SIZE(b)
            if r < n:
                break
            r -= n
            k += 1
        if k:
            del self.wq[:k]
        self.wq_off = r
        if not self.wq:
            self.wq = None
            self.wq_off = 0
            if self.io_closing:
                if self.linger:
                    self._linger()
                else:
                    self._finalize(None)
                return 0
            self._set_mask(self.evmask & ~SW_IO_OUT)
        if self.wr_paused and self.wq_size <= LOW_WATER:
            self.wr_paused = False
            self.on_resume_writing()

    cdef int _finalize(self, object exc) except -1:
        cdef int fd = self.fd
        if fd < 0:
            return 0
        self.on_closing()
        self.io.unregister(self)
        self.fd = -1
        self.wq = None
        self.wq_size = 0
        sw_io_close(fd)
        if not self.lost_sent:
            self.lost_sent = True
            self.io.loop.call_soon(self._lost, exc)

    def _lost(self, exc):
        self.on_lost(exc)

    # --- the protocol (overridden) --------------------------------------------

    cdef int on_data(self, object data) except -1:
        pass

    cdef int on_eof(self) except -1:
        pass

    cdef int on_lost(self, object exc) except -1:
        pass

    cdef int on_pause_writing(self) except -1:
        pass

    cdef int on_resume_writing(self) except -1:
        pass

    cdef int on_closing(self) except -1:
        pass

    # --- the asyncio protocol, for a transport (TLS) -----------------------------

    def data_received(self, data):
        self.on_data(data)

    def eof_received(self):
        self.on_eof()
        return False

    def connection_lost(self, exc):
        self.on_lost(exc)

    def pause_writing(self):
        self.on_pause_writing()

    def resume_writing(self):
        self.on_resume_writing()


@cython.final
cdef class _IoProbe(_Conn):
    """A connection with no protocol, for tests of the write path: the
    ``t_*`` methods as Python methods, and a list of what the I/O called
    (``("data", bytes)``, ``("eof",)``, ``("pause", queued)``,
    ``("resume", queued)``, ``("lost", exc)``). See _io_py.WriteQueue, its
    pure-Python reference."""
    cdef public list events

    def __cinit__(self, *args, **kwargs):
        self.events = []

    def attach(self, loop, int fd):
        """Take over the connected socket ``fd`` (non-blocking) on ``loop``."""
        _io_for(loop).register(self, fd)

    def write(self, data):
        self.t_write(data)

    def writev(self, parts):
        self.t_writev(tuple(parts))

    def send(self, head, bytes owner, Py_ssize_t off, Py_ssize_t n):
        if off < 0 or n < 0 or off + n > len(owner):
            raise ValueError("the slice is outside owner")
        self.t_send(head, owner, off, n)

    def close(self, flush_timeout=None):
        """Close after writing the queue; ``flush_timeout`` (seconds) is
        how long the peer may take to read it (60 by default)."""
        if flush_timeout is not None:
            self.flush_timeout = flush_timeout
        self.t_close()

    def abort(self):
        self.t_abort(None)

    def pause_reading(self):
        self.t_pause_reading()

    def resume_reading(self):
        self.t_resume_reading()

    @property
    def queued(self):
        """Bytes waiting in the write queue."""
        return self.wq_size

    @property
    def fileno(self):
        return self.fd

    cdef int on_data(self, object data) except -1:
        self.events.append(("data", data))
        return 0

    cdef int on_eof(self) except -1:
        self.events.append(("eof",))
        return 0

    cdef int on_lost(self, object exc) except -1:
        self.events.append(("lost", exc))
        return 0

    cdef int on_pause_writing(self) except -1:
        self.events.append(("pause", self.wq_size))
        return 0

    cdef int on_resume_writing(self) except -1:
        self.events.append(("resume", self.wq_size))
        return 0


# ------------------------------------------------------------- downstream --

@cython.final
cdef class _Downstream(_Conn):
    """The protocol of one client connection."""

    def __cinit__(self, _Engine eng):
        self.eng = eng
        self.flush_timeout = eng.ds_write_timeout

    def connection_made(self, transport):
        self.transport = transport
        transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)
        self._made()

    cdef int _made(self) except -1:
        """The connection is open (accepted on our own I/O, or
        connection_made from a transport)."""
        cdef _Engine eng = self.eng
        if eng.max_connections and len(eng.conns) >= eng.max_connections:
            # Over the limit: answer politely and close.
            # Close once the client's first bytes are read (closing with
            # unread input would reset the connection and lose the 503).
            self.t_write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                            b"Connection: close\r\nRetry-After: 1\r\n\r\n")
            self.rejected = True
            eng.loop.call_later(1.0, self._reject_close)
            eng.gate.emit(logging.WARNING, "max_connections",
                          "sluiceway: connection refused: %d connections open (max_connections)",
                          (len(eng.conns),))
            return 0
        eng.conns.add(self)
        self.idle_since = _now()
        # The parser is taken from the engine's free list when bytes arrive
        # and given back while the connection idles (see _request_done).
        self.w = None
        if eng.head_timeout > 0:
            self.deadline = _now() + eng.head_timeout
            self.dl_kind = DL_HEAD

    cdef int on_data(self, object data) except -1:
        cdef double now
        if self.closed:
            if self.dl_kind == DL_LINGER:
                # Lingering: dropped; the client is still sending.
                self.deadline = min(_now() + self.eng.linger_timeout, self.linger_until)
            return 0
        if self.rejected:
            self._close()
            return 0
        if self.tunnel:
            if self.cur is not None and self.cur.us is not None and not self.cur.us.closed:
                self.cur.request_body_bytes += len(data)
                self.cur.us.t_write(data)
            return 0
        if self.cur is not None:
            self.rd_last = _now()
            self.rd_bytes += PyBytes_GET_SIZE(data)
        elif self.dl_kind == DL_IDLE:
            self.deadline = _now() + self.eng.head_timeout if self.eng.head_timeout > 0 else 0.0
            self.dl_kind = DL_HEAD
        elif self.dl_kind == DL_DISCARD:
            self.deadline = min(_now() + self.eng.linger_timeout, self.linger_until)
        if self.w is None:
            self.w = self.eng._take_wire()
        self.w.feed(data)
        self._process()

    cdef int on_eof(self) except -1:
        # As nginx does (without proxy_ignore_client_abort): a client that
        # shuts down its side has abandoned the request; the upstream request
        # is aborted and the connection closed (the caller closes it).
        pass

    cdef int on_closing(self) except -1:
        # Keep the client's address for the logging of a request in
        # progress: it cannot be asked once the socket is closed.
        if self.cur is not None and self.client_addr is None:
            self.client_addr = self.t_peername()

    cdef int on_lost(self, object exc) except -1:
        cdef Session s = None
        self.closed = True
        self.eng.conns.discard(self)
        if self.eng.accept_paused:
            self.eng._conn_closed()
        if self.cur is not None:
            s = self.cur
            self.cur = None
            s._ds_lost(exc)
        if self.w is not None and self.w.unread() == 0 and not self.w.carrying and \
                not self.discard_body and s is None:
            self.eng._give_wire(self.w)
        self.w = None

    cdef int on_pause_writing(self) except -1:
        self.write_paused = True
        if self.eng.ds_write_timeout > 0:
            self.wdeadline = _now() + self.eng.ds_write_timeout
        if self.cur is not None and self.cur.us is not None:
            self.cur.us._pause_read(R_PEER_FULL)

    cdef int on_resume_writing(self) except -1:
        self.write_paused = False
        self.wdeadline = 0.0
        if self.cur is not None and self.cur.us is not None:
            self.cur.us._resume_read(R_PEER_FULL)
            self.cur.us._process()

    cdef object _addr(self):
        """The client's address, asked of the transport on first use (an
        idle connection keeps no address objects)."""
        if self.client_addr is None:
            self.client_addr = self.t_peername()
        return self.client_addr

    cdef int _pause_read(self, int why) except -1:
        if self.read_pause == 0 and not self.closed:
            self.t_pause_reading()
        self.read_pause |= why

    cdef int _resume_read(self, int why) except -1:
        if self.read_pause & why:
            self.read_pause &= ~why
            if self.read_pause == 0 and not self.closed:
                self._wait_resumed()
                self.t_resume_reading()

    cdef int _process(self) except -1:
        cdef int ev
        cdef Session s
        cdef _Engine eng = self.eng
        if self.in_process or self.closed or self.w is None or self.tunnel:
            return 0
        self.in_process = True
        try:
            while not self.blocked and not self.closed:
                if self.read_pause & R_PEER_FULL:
                    break
                ev = self.w.next()
                if ev == SW_EV_NEED_DATA:
                    break
                if ev == SW_EV_HEAD:
                    if self.w.m.method == 5:  # CONNECT: not for a reverse proxy
                        self.t_write(_simple_response(
                            405, b"405 Method Not Allowed: CONNECT is not supported\n", False))
                        self._close(True)
                        break
                    self.blocked = True
                    self.discard_body = False
                    self.nreq += 1
                    eng.requests += 1
                    s = Session._new(self, self.w)
                    self.cur = s
                    self.rd_start = self.rd_last = s.t_start
                    self.rd_bytes = 0
                    if eng.request_timeout > 0:
                        self.deadline = s.t_start + eng.request_timeout
                        self.dl_kind = DL_TOTAL
                    else:
                        self.deadline = 0.0
                        self.dl_kind = DL_NONE
                    s._advance(S_NEW_CTX, None)
                elif ev == SW_EV_BODY:
                    if self.cur is not None and not self.discard_body:
                        self.cur._on_req_body(self.w.body_bytes())
                elif ev == SW_EV_END:
                    if self.cur is not None and not self.discard_body:
                        self.cur._keep_req_trailers(self.w)
                        self.cur._on_req_end()
                    elif self.cur is None and self.dl_kind == DL_DISCARD:
                        # The answered request's body is all dropped: the
                        # connection waits for its next request.
                        if self.w.unread() > 0:
                            self.deadline = _now() + self.eng.head_timeout if self.eng.head_timeout > 0 else 0.0
                            self.dl_kind = DL_HEAD
                        else:
                            self.deadline = _now() + self.eng.keepalive_timeout if self.eng.keepalive_timeout > 0 else 0.0
                            self.dl_kind = DL_IDLE
                    self.discard_body = False
                elif ev == SW_EV_UPGRADE:
                    # The request asked to switch protocols (or was CONNECT):
                    # it was proxied without Upgrade; nothing after it is HTTP/1.
                    if self.cur is not None and not self.discard_body:
                        self.cur.client_keep = False
                        self.cur._on_req_end()
                    else:
                        self._close()
                    self.blocked = True
                    break
                else:  # SW_EV_ERROR
                    self._bad_request()
                    break
        except BaseException as exc:
            self.eng.log.exception("sluiceway: internal error on a client connection (this is a bug)")
            self._close()
        finally:
            self.in_process = False
        if not self.closed and self.w is not None:
            if self.blocked and self.w.unread() > HIGH_WATER:
                self._pause_read(R_BUFFERED)
            elif self.cur is None and not self.blocked and self.w.unread() == 0 and \
                    not self.w.carrying and not self.discard_body and self.w.need:
                self.eng._give_wire(self.w)
                self.w = None

    cdef int _unblock(self) except -1:
        if self.closed:
            return 0
        self.blocked = False
        self._wait_resumed()
        self._resume_read(R_BUFFERED)
        if not self.in_process:
            self._process()

    cdef int _wait_resumed(self) except -1:
        """The request may be waiting for the client again (parsing was
        unblocked, or reading resumed): the time it was not is not the
        client's, for the body timeout and the minimum rate."""
        cdef double now
        if self.cur is not None:
            now = _now()
            if now > self.rd_last:
                self.rd_start += now - self.rd_last
                self.rd_last = now
        return 0

    cdef bint _body_due(self, double now):
        """Whether the request body the proxy is waiting for (parsing not
        blocked, reading not paused) has not advanced for body_timeout, or
        has averaged under body_min_rate bytes/s since body_timeout after
        the wait began."""
        cdef Session s = self.cur
        cdef _Engine eng = self.eng
        cdef double waited
        if s is None or self.closed or self.blocked or self.read_pause or self.tunnel or \
                not s.req_has_body or s.req_end_seen or s.finished or eng.body_timeout <= 0:
            return False
        if now - self.rd_last >= eng.body_timeout:
            return True
        if eng.body_min_rate > 0:
            waited = now - self.rd_start - eng.body_timeout
            return waited > 0 and self.rd_bytes < eng.body_min_rate * waited
        return False

    cdef int _body_timeout(self, double now) except -1:
        """The body is overdue (``_body_due``): 408, the client to blame."""
        cdef Session s = self.cur
        cdef _Engine eng = self.eng
        if eng.body_timeout > 0 and now - self.rd_last >= eng.body_timeout:
            what = f"no request body bytes for {eng.body_timeout:.3g}s (downstream_body_timeout)"
        else:
            what = (f"request body too slow: {self.rd_bytes} bytes in "
                    f"{now - self.rd_start:.3g}s (downstream_body_min_rate is "
                    f"{eng.body_min_rate:.6g} bytes/s)")
        s._fail(Error(f"client {_fmt_addr(self._addr())} timed out: {what}", status=408,
                      source=DOWNSTREAM))
        return 0

    cdef int _request_done(self, bint keep, bint linger, bint discard) except -1:
        """The current request is over (response sent or aborted). With
        ``keep``, the connection waits for the next request, after reading
        and dropping the rest of the request's body when ``discard``;
        otherwise it closes, lingering when the client may still be
        sending."""
        cdef double now
        self.cur = None
        if self.closed:
            return 0
        if not keep:
            # (While stopping, the response said `Connection: close`; a
            # response that began before keeps the connection until the
            # client's next request or DRAIN_IDLE.)
            self._close(linger)
            return 0
        self.idle_since = _now()
        if discard:
            self.discard_body = True
            now = _now()
            self.linger_until = now + (self.eng.linger_time if self.eng.linger_time > 0 else 3600.0)
            self.deadline = min(now + self.eng.linger_timeout, self.linger_until) \
                if self.eng.linger_timeout > 0 else self.linger_until
            self.dl_kind = DL_DISCARD
        elif self.w.unread() > 0:
            self.deadline = _now() + self.eng.head_timeout if self.eng.head_timeout > 0 else 0.0
            self.dl_kind = DL_HEAD
        else:
            self.deadline = _now() + self.eng.keepalive_timeout if self.eng.keepalive_timeout > 0 else 0.0
            self.dl_kind = DL_IDLE
        self.blocked = False
        self._resume_read(R_BUFFERED | R_PEER_FULL)
        if self.w.unread() == 0 and not self.w.carrying and \
                not self.discard_body and not self.in_process:
            # Idle: the parser goes back to the free list at once, so the
            # parsers in use are bounded by the requests in flight, not by
            # the open connections (an idle keep-alive connection holds none).
            self.eng._give_wire(self.w, False)
            self.w = None
        elif self.w.unread() > 0 and not self.in_process:
            # Pipelined bytes: parse them on the next loop iteration, not
            # deep inside the upstream's callback.
            self.eng.loop.call_soon(self._kick)

    def _reject_close(self):
        self._close()

    cdef bint _idle(self):
        """Between requests, with nothing of the next one received."""
        return self.cur is None and not self.closed and not self.rejected and not self.tunnel and \
            (self.w is None or (self.w.unread() == 0 and not self.w.carrying and
                                not self.discard_body))

    def _kick(self):
        self._process()

    cdef int _close(self, bint linger=False) except -1:
        """Close the connection after writing what is queued; with
        ``linger``, shut down our side and read and drop what the client
        still sends, for at most linger_time (quiet for linger_timeout
        ends it), so that its unread bytes do not make the kernel reset the
        connection under the response."""
        cdef double now
        if not self.closed:
            self.closed = True
            if linger and self.eng.linger_time > 0 and self.io is not None:
                now = _now()
                self.linger_until = now + self.eng.linger_time
                self.deadline = min(now + self.eng.linger_timeout, self.linger_until) \
                    if self.eng.linger_timeout > 0 else self.linger_until
                self.dl_kind = DL_LINGER
                self.t_close_linger()
            else:
                self.t_close()

    cdef int _bad_request(self) except -1:
        cdef sw_msg_t *m = &self.w.m
        cdef int status = m.err_status if m.err_status >= 400 else 400
        reason = (<bytes>m.err_reason).decode("utf-8", "replace") if m.err_reason != NULL else "malformed request"
        if self.eng.log.isEnabledFor(logging.INFO):
            self.eng.gate.emit(logging.INFO, "bad_request",
                               "sluiceway: %d from client %s: %s (at byte %d of the buffered data)",
                               (status, _fmt_addr(self._addr()), reason, m.err_offset))
        cdef Session s
        if self.cur is not None:
            # A malformed body of a request in progress.
            s = self.cur
            s._fail(ParseError(reason, status=status, offset=m.err_offset, source=DOWNSTREAM))
            self._close(True)
            return 0
        body = (f"{status} {(<bytes>sw_reason(status)).decode()}: {reason}\n").encode("utf-8", "replace")
        self.t_write(_simple_response(status, body, False))
        self._close(True)  # the rest of what the client sends is not read

    cdef int _write_timeout(self) except -1:
        """The client has not read what we sent for downstream_write_timeout."""
        cdef Session s = self.cur
        self.wdeadline = 0.0
        if self.closed:
            return 0  # closing: t_close's flush timeout ends it
        if self.eng.log.isEnabledFor(logging.INFO):
            self.eng.gate.emit(logging.INFO, "write_timeout",
                               "sluiceway: closing client %s: it read nothing for %.3gs "
                               "(downstream_write_timeout)",
                               (_fmt_addr(self._addr()), self.eng.ds_write_timeout))
        if s is not None:
            s._fail(Error(f"client did not read the response within {self.eng.ds_write_timeout:.3g}s "
                          "(downstream_write_timeout)", status=408, source=DOWNSTREAM))
        # As nginx on send_timeout: the connection goes at once, without
        # waiting for the client to take what is queued.
        self.closed = True
        self.t_abort(None)

    cdef int _timeout(self, double now) except -1:
        cdef int kind = self.dl_kind
        self.deadline = 0.0
        self.dl_kind = DL_NONE
        if kind == DL_LINGER:
            if self.wq is not None and now < self.linger_until:
                # Still writing the last response: its flush timeout rules.
                self.deadline = self.linger_until
                self.dl_kind = DL_LINGER
            else:
                self.t_abort(None)
            return 0
        if self.closed:
            return 0
        if kind == DL_IDLE:
            self._close()
        elif kind == DL_DISCARD:
            # The rest of an answered request's body did not come in time.
            self._close(True)
        elif kind == DL_HEAD:
            if self.eng.log.isEnabledFor(logging.INFO):
                self.eng.gate.emit(logging.INFO, "head_timeout",
                                   "sluiceway: closing client %s: no complete request head within "
                                   "%.3gs (head_timeout)",
                                   (_fmt_addr(self._addr()), self.eng.head_timeout))
            if self.w is not None and self.w.unread() > 0:
                self.t_write(_R408)
            self._close()
        elif kind == DL_TOTAL and self.cur is not None:
            self.cur._fail(Error(f"request not complete within {self.eng.request_timeout:.3g}s "
                                 "(request_timeout)", status=504, source=UPSTREAM))


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


# --------------------------------------------------------------- upstream --

@cython.final
cdef class _Upstream(_Conn):
    """The protocol of one upstream connection (pooled between requests)."""

    def __cinit__(self, _Engine eng, HttpPeer peer):
        self.eng = eng
        self.peer = peer
        self.key = peer.reuse_key
        self.reusable = True
        self.w = _Wire(False, max(eng.max_head, 65536), eng.max_url, max(eng.max_headers, 256))
        self.read_timeout = peer.read_timeout if peer.read_timeout is not None else eng.read_timeout
        self.write_timeout = peer.write_timeout if peer.write_timeout is not None else eng.write_timeout
        self.flush_timeout = self.write_timeout

    def connection_made(self, transport):
        self.transport = transport
        transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)
        self._made()

    cdef int _made(self) except -1:
        """Connected (on our own I/O, or connection_made of a TLS transport)."""
        self.eng.pool.created += 1

    cdef int on_data(self, object data) except -1:
        if self.closed:
            return 0
        if self.tunnel:
            if self.s is not None and self.s.ds is not None and not self.s.ds.closed:
                self.s.response_body_bytes += len(data)
                self.s.ds.t_write(data)
            return 0
        if self.s is None:
            # Bytes on an idle connection: the peer is confused; never reuse.
            self.reusable = False
            self.eng.pool.drop(self)
            self._close()
            return 0
        self.got_bytes = True
        if self.dl_kind == DL_READ:
            self.deadline = _now() + self.read_timeout if self.read_timeout > 0 else 0.0
        self.w.feed(data)
        self._process()

    cdef int on_eof(self) except -1:
        cdef int ev
        self.reusable = False
        if self.tunnel:
            return 0
        if self.s is not None and not self.closed:
            self._process()
            if self.s is not None and not self.blocked:
                ev = self.w.finish()
                if ev == SW_EV_END and self.s is not None:
                    self.s._on_resp_end()
                elif ev == SW_EV_ERROR and self.s is not None:
                    self.s._us_lost(None)
        return 0

    cdef int on_lost(self, object exc) except -1:
        cdef Session s
        self.closed = True
        self.reusable = False
        self.eng.pool.closed += 1
        if self.idle:
            self.eng.pool.drop(self)
        if self.s is not None:
            s = self.s
            s._us_lost(exc)

    cdef int on_pause_writing(self) except -1:
        self.write_paused = True
        if self.s is not None:
            if self.write_timeout > 0:
                self.deadline = _now() + self.write_timeout
                self.dl_kind = DL_WRITE
            if self.s.ds is not None:
                self.s.ds._pause_read(R_PEER_FULL)

    cdef int on_resume_writing(self) except -1:
        self.write_paused = False
        if self.s is not None:
            if self.dl_kind == DL_WRITE:
                self.deadline = 0.0
                self.dl_kind = DL_NONE
                if self.s.req_body_done and self.read_timeout > 0:
                    self.deadline = _now() + self.read_timeout
                    self.dl_kind = DL_READ
            if self.s.ds is not None:
                self.s.ds._resume_read(R_PEER_FULL)
                self.s.ds._process()

    cdef int _pause_read(self, int why) except -1:
        if self.read_pause == 0 and not self.closed:
            self.t_pause_reading()
            if self.dl_kind == DL_READ:
                # The client is slow, not the upstream: no read deadline now.
                self.deadline = 0.0
        self.read_pause |= why

    cdef int _resume_read(self, int why) except -1:
        if self.read_pause & why:
            self.read_pause &= ~why
            if self.read_pause == 0 and not self.closed:
                self.t_resume_reading()
                if self.dl_kind == DL_READ and self.read_timeout > 0:
                    self.deadline = _now() + self.read_timeout

    cdef int _process(self) except -1:
        cdef int ev
        cdef Session s
        if self.in_process or self.closed or self.tunnel:
            return 0
        self.in_process = True
        try:
            while not self.blocked and self.s is not None and not self.closed:
                if self.read_pause & R_PEER_FULL:
                    break
                s = self.s
                ev = self.w.next()
                if ev == SW_EV_NEED_DATA:
                    break
                if ev == SW_EV_HEAD:
                    if 100 <= self.w.m.status_code < 200 and self.w.m.status_code != 101:
                        self.in_1xx = True
                        s._on_informational(self.w)
                        continue
                    if self.w.m.status_code == 101:
                        self.reusable = False
                        if not s.want_upgrade:
                            s._fail(Error(f"upstream {self.peer} switched protocols (101) for a "
                                          "request that did not ask to upgrade", status=502, source=UPSTREAM))
                            break
                        s.upgrading = True
                    s._on_resp_head(self.w)
                elif ev == SW_EV_BODY:
                    if s.pend_data is not None and s.pend_data is self.w.data and \
                            self.w.body_at == self.w.dptr + s.pend_off + s.pend_len:
                        s.pend_len += self.w.body_len
                        s.response_body_bytes += self.w.body_len
                        continue
                    s._flush_pending()
                    s._on_resp_body(self.w.body_bytes())
                elif ev == SW_EV_END:
                    if self.in_1xx:
                        self.in_1xx = False
                        continue
                    if s.upgrading:
                        continue  # the UPGRADE event follows
                    if self.w.unread() > 0:
                        self.reusable = False  # bytes after the response
                    s._keep_resp_trailers(self.w)
                    s._on_resp_end()
                    break
                elif ev == SW_EV_UPGRADE:
                    self.reusable = False
                    if s.upgrading and s.resp_started:
                        s._start_tunnel()
                    else:
                        s._fail(Error(f"upstream {self.peer} switched protocols (status "
                                      f"{self.w.m.status_code}) unasked", status=502, source=UPSTREAM))
                    break
                else:
                    self.reusable = False
                    reason = (<bytes>self.w.m.err_reason).decode("utf-8", "replace") \
                        if self.w.m.err_reason != NULL else "malformed response"
                    s._fail(Error(f"upstream {self.peer} sent an invalid response: {reason}",
                                  status=502, source=UPSTREAM))
                    break
        except BaseException:
            self.eng.log.exception("sluiceway: internal error on an upstream connection (this is a bug)")
            self.reusable = False
            if self.s is not None:
                self.s._fail(Error("internal error while reading the upstream response",
                                   status=500, source=INTERNAL))
            self._close()
        finally:
            self.in_process = False
            if self.s is not None:
                self.s._flush_pending()
        if self.blocked and not self.closed and self.w.unread() > HIGH_WATER:
            self._pause_read(R_BUFFERED)

    cdef int _close(self) except -1:
        self.reusable = False
        if not self.closed:
            self.closed = True
            self.t_close()

    cdef int _timeout(self, double now) except -1:
        cdef int kind = self.dl_kind
        self.deadline = 0.0
        self.dl_kind = DL_NONE
        if self.s is None or self.closed:
            return 0
        if kind == DL_READ:
            what = f"no response data within {self.read_timeout:.3g}s (read_timeout)"
        elif kind == DL_WRITE:
            what = f"request not accepted within {self.write_timeout:.3g}s (write_timeout)"
        else:
            return 0
        self.reusable = False
        self.s._fail(Error(f"upstream {self.peer} timed out: {what}", status=504, source=UPSTREAM))


# ---------------------------------------------------------------- session --

@cython.final
@cython.freelist(64)
cdef class Session:
    """One request's life in the proxy, given to every hook.

    Attributes:
        req_header: the request head (:class:`RequestHeader`); hooks may
            change it before ``upstream_request_filter`` sends it on.
        client_addr: the client's address (``(host, port)``).
        ctx: the per-request context ``new_ctx()`` returned.
        peer: the HttpPeer chosen by ``upstream_peer`` (None before).
        error: the Error that ended the request, or None.
        retries: how many times ``upstream_peer`` was asked again.
        upstream_reused: whether the upstream connection came from the pool.
        status: the status sent to the client (0 before the response).
        request_body_bytes, response_body_bytes: body bytes proxied.
    """

    def __init__(self):
        raise TypeError("Session objects are made by the proxy")

    @staticmethod
    cdef Session _new(_Downstream ds, _Wire w):
        cdef Session s = Session.__new__(Session)
        cdef RequestHeader rq = RequestHeader.__new__(RequestHeader)
        cdef sw_msg_t *m = &w.m
        cdef int mi = m.method
        name = _METHODS[mi]
        if name is None:
            name = _METHODS[mi] = (<bytes>API.method_name(w.p)).decode("ascii")
        rq._method = name
        rq._buf = w.head_buf
        rq._target = m.url
        rq._head.off = m.msg_start
        rq._head.len = m.head_len
        rq._major = m.major
        rq._minor = m.minor
        rq.keep_alive = m.keep_alive
        rq.chunked = m.chunked
        rq.has_cl = m.has_content_length
        rq.content_length = m.content_length
        rq.upgrade = m.upgrade
        rq.headers = _new_map(w.head_buf, w.head_base, m.headers, m.nheaders)
        if m.target_authority.len:
            rq._take_authority(m.target_authority)
        s.req_header = rq
        s.eng = ds.eng
        s.ds = ds
        s.t_start = _now()
        ds.eng.inflight += 1
        s.client_keep = m.keep_alive and not m.upgrade
        s.want_upgrade = m.upgrade and mi != 5  # 5: CONNECT in llhttp
        s.req_has_body = m.chunked or (m.has_content_length and m.content_length > 0)
        s.head_request = mi == 2  # HTTP_HEAD in llhttp
        s.body_filter_up = ds.eng.h_req_body is not None
        s.resp_hooks = ds.eng.h_up_resp is not None or ds.eng.h_resp is not None
        return s

    # --- public API for hooks ---------------------------------------------

    def respond(self, int status, headers=None, body=b""):
        """Write a complete response to the client now (the request is then
        not proxied when done from ``request_filter``; return True there).

        Args:
            status: the HTTP status.
            headers: optional ``[(name, value), ...]`` or dict.
            body: bytes or str (UTF-8).
        Raises:
            RuntimeError: a response was already started.
        """
        if self.resp_started:
            raise RuntimeError("a response was already sent for this request")
        if isinstance(body, str):
            body = body.encode("utf-8")
        if isinstance(headers, dict):
            headers = list(headers.items())
        keep = self.client_keep and not self.eng.closing and self._body_allows_keep()
        if not keep:
            self.client_keep = False
        data = _simple_response(status, b"" if self.head_request else bytes(body), keep, headers)
        if self.head_request and body:
            data = data.replace(b"Content-Length: 0\r\n", b"Content-Length: %d\r\n" % len(body), 1)
        self.resp_started = True
        self.resp_done = True
        self.status = status
        self.response_body_bytes += len(body)
        self._write_ds(data)

    def respond_error(self, int status):
        """Write a small error response with the standard reason phrase."""
        self.respond(status, [("content-type", "text/plain")],
                     f"{status} {(<bytes>sw_reason(status)).decode()}\n")

    async def read_request_body(self):
        """Read the next chunk of the request body (for hooks that run
        before the request goes upstream, e.g. ``request_filter``).

        Returns:
            bytes, or None at the end of the body (at once for a request
            without a body). Chunks read here are still sent upstream, first,
            through ``request_body_filter``.
        Raises:
            RuntimeError: after the request head went upstream (the body is
                then streamed; use ``request_body_filter``).
        """
        if self.up_head_sent:
            raise RuntimeError("read_request_body() is for hooks that run before the request is "
                               "sent upstream; use request_body_filter to see the streamed body")
        if self.body_held:
            # It came after an earlier read_request_body() was cancelled.
            chunk = self.body_held_chunk
            self.body_held = False
            self.body_held_chunk = None
            return chunk
        if not self.req_has_body or self.prefetch_end or self.finished or self.ds is None:
            return None
        if self.body_waiter is not None:
            raise RuntimeError("read_request_body() is already waiting for a chunk")
        if not self.sent_100:
            ex = self.req_header.headers._get("expect", None)
            if ex is not None and ex.lower() == "100-continue" and self.req_header._minor == 1:
                self.sent_100 = True
                self._write_ds(_CONTINUE)
        fut = self.eng.loop.create_future()
        self.body_waiter = fut
        self.ds._unblock()
        try:
            return await fut
        finally:
            if self.body_waiter is fut:
                self.body_waiter = None  # cancelled (a timeout): the next call may wait again

    cdef bint _body_allows_keep(self):
        """Whether the client connection can be kept after a response
        decided now: yes when the request body has all been read, or when
        the rest is known to be at most DISCARD_MAX bytes (it is then read
        and dropped after the response); otherwise the response says
        `Connection: close` and the connection closes lingering."""
        cdef RequestHeader rq = self.req_header
        if not self.req_has_body or self.req_end_seen:
            return True
        return rq.has_cl and rq.content_length <= <unsigned long long>(
            self.request_body_bytes + DISCARD_MAX)

    cdef int _wake_reader(self, object chunk) except -1:
        cdef object fut = self.body_waiter
        self.body_waiter = None
        if fut is not None and not fut.done():
            fut.set_result(chunk)
        else:
            # Nobody waits any more (the reader was cancelled): keep it for
            # the next read_request_body().
            self.body_held = True
            self.body_held_chunk = chunk

    @property
    def client_addr(self):
        """The client's address: ``(host, port)`` for TCP."""
        if self._client_addr is None and self.ds is not None:
            self._client_addr = self.ds._addr()
        return self._client_addr

    @property
    def request_trailers(self):
        """The request's trailer fields that go upstream: a list of
        ``(name, value)`` bytes pairs, or None when it had none to forward.
        Set when the request body ends (from ``request_body_filter``'s
        ``end_of_stream`` call on). Read-only: changing the list changes
        nothing."""
        return _tail_fields(self.req_tail)

    @property
    def upstream_trailers(self):
        """The upstream response's trailer fields the proxy forwards: a list
        of ``(name, value)`` bytes pairs, or None when it had none. Set when
        the response body ends (from ``response_body_filter``'s
        ``end_of_stream`` call on, and in ``logging``); an HTTP/1.0 client
        does not get them (its response is not chunked). Read-only."""
        return _tail_fields(self.resp_tail)

    @property
    def response_written(self):
        """True once a response head went to the client."""
        return self.resp_started

    @property
    def is_head_request(self):
        return self.head_request

    @property
    def timing(self):
        """Monotonic timestamps (seconds): ``start`` (head parsed),
        ``upstream_connected``, ``response_start`` (upstream head), ``end``,
        and ``elapsed`` (end - start, or until now)."""
        end = self.t_end if self.t_end else _now()
        return {"start": self.t_start, "upstream_connected": self.t_connected or None,
                "response_start": self.t_resp or None, "end": self.t_end or None,
                "elapsed": end - self.t_start}

    def __repr__(self):
        return f"<Session {self.req_header!r} from {_fmt_addr(self.client_addr)}>"

    # --- hook calls ---------------------------------------------------------

    cdef object _call2(self, object fn, int next_stage):
        """``_call(fn, (self, self.ctx), next_stage)`` without building the
        argument tuple (the common hook signature; a vectorcall)."""
        cdef object r
        try:
            r = fn(self, self.ctx)
            if r is None or type(r) is bool or type(r) is HttpPeer:
                return r
        except BaseException as exc:
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            self.hook_next = 0
            self._hook_failed(exc, getattr(fn, "__name__", "?"), next_stage)
            return _FAILED
        return self._call(None, (r,), next_stage)

    cdef object _call(self, object fn, tuple args, int next_stage):
        """Call hook ``fn(*args)``; with ``fn`` None, ``args[0]`` is the
        result of a call already made."""
        cdef object r, y, prev
        cdef PyObject *out = NULL
        cdef PySendResult sr = PYGEN_ERROR
        cdef _Engine eng
        cdef _HookTask st
        cdef Py_ssize_t refs
        try:
            r = fn(*args) if fn is not None else args[0]
            if r is None or type(r) is bool or type(r) is HttpPeer:
                return r
            if PyCoro_CheckExact(r) or hasattr(type(r), "__await__"):
                if not PyCoro_CheckExact(r):
                    r = _await_wrapper(r)
                # The first step runs with a stand-in as the loop's current
                # task (see _hook_task.pxi); the previous one (the connect
                # Task, or none) is put back after it.
                eng = self.eng
                if eng.spare_task is not None:
                    st = <_HookTask>eng.spare_task
                    eng.spare_task = None
                else:
                    st = _new_hook_task(eng.loop)
                refs = Py_REFCNT(st)
                prev = _enter_hook_task(eng.loop, st)
                try:
                    # PyIter_Send: a coroutine that returns gives its value
                    # without a StopIteration being raised and caught.
                    sr = PyIter_Send(r, None, &out)
                    if sr == PYGEN_ERROR:
                        raise_current()
                finally:
                    _leave_hook_task(eng.loop, prev)
                    if Py_REFCNT(st) == refs and st.pending == 0 and not sw_has_weakrefs(st):
                        eng.spare_task = st  # nobody kept it: the next hook's
                        st = None
                    elif sr != PYGEN_NEXT:
                        st.ended = True
                if sr == PYGEN_RETURN:
                    y = _steal(out)
                    if st is not None and st.pending:
                        # It cancelled its own task and returned: a Task
                        # would end cancelled.
                        raise asyncio.CancelledError(st.msg)
                    return y
                y = _steal(out)
                self.hook_next = next_stage
                self.hook_fn = fn if fn is not None else args[0]  # for messages
                self.hook_task = eng.loop.create_task(_drive(r, y, st))
                self.hook_task.add_done_callback(self._hook_done)
                if st is not None:
                    st.task = self.hook_task
                return _PENDING
            return r
        except BaseException as exc:
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            self.hook_next = 0
            self._hook_failed(exc, getattr(fn if fn is not None else args[0], "__qualname__", "?"), next_stage)
            return _FAILED

    def _hook_done(self, task):
        try:
            self._hook_done_impl(task)
        except BaseException as exc:
            self._internal_error(exc)

    def _internal_error(self, exc):
        """A bug in the engine surfaced in a loop callback: log it and end
        the request rather than leave the client waiting."""
        self.eng.log.error("sluiceway: internal error in a request (this is a bug)", exc_info=exc)
        if self.finished:
            return
        try:
            self._fail(Error("internal error", status=500, source=INTERNAL))
        except BaseException:
            if self.ds is not None:
                self.ds._close()

    def _hook_done_impl(self, task):
        cdef int stage = self.hook_next
        name = getattr(self.hook_fn, "__qualname__", None) or "hook"
        self.hook_task = None
        self.hook_fn = None
        if stage == S_LOG_DONE:
            if not task.cancelled() and task.exception() is not None:
                self._hook_failed(task.exception(), name, stage)
            else:
                self._final()
            return
        if task.cancelled():
            if not self.finished:
                if self.ds_gone:
                    self._finish()
                else:
                    self._hook_failed(asyncio.CancelledError("hook cancelled"), name, stage)
            return
        exc = task.exception()
        if exc is not None:
            self._hook_failed(exc, name, stage)
            return
        if self.ds_gone and stage != S_LOG_DONE:
            self._finish()
            return
        self._advance(stage, task.result())

    def _hook_failed(self, exc, name, stage):
        err = _wrap_hook_error(exc, name)
        if not isinstance(exc, Error) and self.eng.log.isEnabledFor(logging.ERROR):
            self.eng.gate.emit(logging.ERROR, "hook " + str(name),
                               "sluiceway: hook %s failed for %s %s",
                               (name, self.req_header._method, self.req_header.uri), exc)
        if stage == S_LOG_DONE:
            self._final()
        elif stage == S_FAIL_PROXY_DONE:
            # fail_to_proxy itself failed: answer with the original error's status.
            self._advance(stage, getattr(self.error, "status", 500))
        elif stage in (S_ERR_PROXY_DONE, S_FAIL_CONNECT_DONE):
            # A failure while handling a failure: go on with the original.
            self._advance(stage, self.error)
        else:
            self._fail(err)

    # --- the stage machine --------------------------------------------------

    cdef int _advance(self, int stage, object value) except -1:
        cdef _Engine eng = self.eng
        cdef object r
        while True:
            if self.finished:
                return 0
            if stage == S_NEW_CTX:
                if eng.h_new_ctx is not None:
                    r = self._call(eng.h_new_ctx, (), S_EARLY)
                    if r is _PENDING or r is _FAILED:
                        return 0
                    value = r
                stage = S_EARLY
                continue
            if stage == S_EARLY:
                if self.ctx is None and value is not None:
                    self.ctx = value
                if eng.h_early is not None:
                    r = self._call2(eng.h_early, S_REQ_FILTER)
                    if r is _PENDING or r is _FAILED:
                        return 0
                stage = S_REQ_FILTER
                continue
            if stage == S_REQ_FILTER:
                if self.resp_started:
                    self._finish()
                    return 0
                if eng.max_body_size > 0 and self.req_header.has_cl and \
                        self.req_header.content_length > <unsigned long long>eng.max_body_size:
                    self._fail(Error(f"request body of {self.req_header.content_length} bytes is over "
                                     f"max_body_size ({eng.max_body_size})", status=413, source=DOWNSTREAM))
                    return 0
                value = False
                if eng.h_req_filter is not None:
                    r = self._call2(eng.h_req_filter, S_REQ_FILTER_DONE)
                    if r is _PENDING or r is _FAILED:
                        return 0
                    value = r
                stage = S_REQ_FILTER_DONE
                continue
            if stage == S_REQ_FILTER_DONE:
                if value or self.resp_started:
                    if not self.resp_started:
                        self.eng.log.error("sluiceway: request_filter returned True without "
                                           "writing a response (call session.respond() first); "
                                           "answering 500")
                        self.respond_error(500)
                    self._finish()
                    return 0
                stage = S_PEER
                continue
            if stage == S_PEER:
                r = self._call2(eng.h_peer, S_PEER_DONE)
                if r is _PENDING or r is _FAILED:
                    return 0
                value = r
                stage = S_PEER_DONE
                continue
            if stage == S_PEER_DONE:
                if self.resp_started:
                    self._finish()  # the hook answered itself
                    return 0
                if not isinstance(value, HttpPeer):
                    self._fail(self._bad_return("upstream_peer", value,
                                                'an HttpPeer, e.g. HttpPeer(("127.0.0.1", 8000))'))
                    return 0
                self.peer = value
                self._connect(False)
                return 0
            if stage == S_CONNECTED:
                self.t_connected = _now()
                if self.replaying:
                    stage = S_SEND  # hooks already ran for this request
                    continue
                if eng.h_connected is not None:
                    r = self._call(eng.h_connected, (self, self.upstream_reused, self.peer, self.ctx), S_UP_REQ)
                    if r is _PENDING or r is _FAILED:
                        return 0
                stage = S_UP_REQ
                continue
            if stage == S_UP_REQ:
                if eng.h_up_req is not None:
                    r = self._call(eng.h_up_req, (self, self.req_header, self.ctx), S_SEND)
                    if r is _PENDING or r is _FAILED:
                        return 0
                stage = S_SEND
                continue
            if stage == S_SEND:
                if self.resp_started:
                    # A hook answered itself: nothing was sent on the
                    # connection, so it goes back to the pool.
                    self._release_upstream(True)
                    self._finish()
                    return 0
                if self.us is None or self.us.closed:
                    # The connection died while a hook ran.
                    self._us_lost(None)
                    return 0
                self._send_upstream_head()
                return 0
            if stage == S_REQ_BODY_DONE:
                self._req_body_out(value if value is not None else self.pending_chunk)
                self.pending_chunk = None
                if self.pending_end:
                    self.pending_end = False
                    self._req_end_done()
                elif self.prefetch_end and not self.req_body_done:
                    self._on_req_end()
                elif not self.finished and self.ds is not None:
                    self.ds._unblock()
                return 0
            if stage == S_UP_RESP:
                if eng.h_up_resp is not None:
                    r = self._call(eng.h_up_resp, (self, self.resp, self.ctx), S_RESP)
                    if r is _PENDING or r is _FAILED:
                        return 0
                stage = S_RESP
                continue
            if stage == S_RESP:
                if eng.h_resp is not None:
                    r = self._call(eng.h_resp, (self, self.resp, self.ctx), S_RESP_SEND)
                    if r is _PENDING or r is _FAILED:
                        return 0
                stage = S_RESP_SEND
                continue
            if stage == S_RESP_SEND:
                if self.resp_started:
                    # A response hook answered itself: drop the upstream's
                    # response (its connection is not reused).
                    if self.us is not None:
                        self.us.reusable = False
                    self.resp_done = True
                    self._release_upstream(False)
                    self._finish()
                    return 0
                self._send_resp_head()
                if self.us is not None and not self.finished:
                    self.us.blocked = False
                    self.us._resume_read(R_BUFFERED)
                    self.us._process()
                return 0
            if stage == S_RESP_BODY_DONE:
                self._resp_body_out(value if value is not None else self.pending_chunk)
                self.pending_chunk = None
                if self.pending_end:
                    self.pending_end = False
                    self._resp_end_done()
                    return 0
                if self.us is not None and not self.finished:
                    self.us.blocked = False
                    self.us._resume_read(R_BUFFERED)
                    self.us._process()
                return 0
            if stage == S_FAIL_CONNECT_DONE:
                if isinstance(value, Error):
                    self.error = value
                elif eng.h_fail_connect is not None:
                    self._bad_return("fail_to_connect", value, "the Error to continue with "
                                     "(the one it was given, by default); going on with that one")
                if isinstance(self.error, Error) and self.error.retryable and self.retries < eng.max_retries:
                    self.retries += 1
                    self.error = None
                    stage = S_PEER
                    continue
                self._fail(self.error)
                return 0
            if stage == S_ERR_PROXY_DONE:
                if isinstance(value, Error):
                    self.error = value
                elif eng.h_err_proxy is not None and self.up_head_sent:
                    self._bad_return("error_while_proxy", value, "the Error to continue with "
                                     "(the one it was given, by default); going on with that one")
                if self.reuse_failed:
                    self.reuse_failed = False
                    if isinstance(self.error, Error) and (<object>self.error).retryable and \
                            self.can_replay and not self.ds_gone:
                        self._replay()
                        return 0
                    if isinstance(self.error, Error) and eng.log.isEnabledFor(logging.WARNING):
                        self._log_failure(self.error)
                # then fail_to_proxy decides the answer
                if eng.h_fail_proxy is not None:
                    r = self._call(eng.h_fail_proxy, (self, self.error, self.ctx), S_FAIL_PROXY_DONE)
                    if r is _PENDING or r is _FAILED:
                        return 0
                    value = r
                else:
                    value = None
                stage = S_FAIL_PROXY_DONE
                continue
            if stage == S_FAIL_PROXY_DONE:
                if eng.h_fail_proxy is not None and not isinstance(value, int):
                    self._bad_return("fail_to_proxy", value, "an int status (0: no answer); "
                                     "answering with the error's status")
                    value = getattr(self.error, "status", 500)
                if not self.resp_started:
                    status = value if isinstance(value, int) and value >= 100 else getattr(self.error, "status", 500)
                    if eng.h_fail_proxy is None or (isinstance(value, int) and value >= 100):
                        if not self.ds_gone:
                            self.client_keep = False
                            try:
                                self.respond_error(status)
                            except Exception:
                                pass
                elif not self.resp_done and self.ds is not None:
                    # Mid-response: the client can only learn it from the close.
                    self.client_keep = False
                    self.ds._close(self.req_has_body and not self.req_end_seen)
                self.client_keep = False
                self._finish()
                return 0
            if stage == S_LOG_DONE:
                self._final()
                return 0
            raise AssertionError(f"unknown session stage {stage}")

    # --- upstream connection ----------------------------------------------

    cdef int _connect(self, bint force_new) except -1:
        cdef _Upstream u = None
        cdef HttpPeer peer = self.peer
        if not force_new:
            u = self.eng.pool.take(peer.reuse_key)
        if u is not None:
            self.upstream_reused = True
            self._bind(u)
            self._advance(S_CONNECTED, None)
            return 0
        self.upstream_reused = False
        self.eng.loop.create_task(self._open(peer)).add_done_callback(_ignore_result)

    cdef int _bind(self, _Upstream u) except -1:
        self.us = u
        u.s = self
        u.idle = False
        u.got_bytes = False
        u.blocked = False
        u.in_1xx = False
        u.nreq += 1
        u.deadline = 0.0
        u.dl_kind = DL_NONE
        API.set_skip_body(u.w.p, self.head_request)

    async def _open(self, HttpPeer peer):
        try:
            await self._open_impl(peer)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._internal_error(exc)

    async def _open_impl(self, HttpPeer peer):
        cdef _Engine eng = self.eng
        cdef _Upstream u = _Upstream(eng, peer)
        timeout = peer.connect_timeout if peer.connect_timeout is not None else eng.connect_timeout
        loop = eng.loop
        err = None
        try:
            if peer.tls:
                coro = loop.create_connection(lambda: u, peer.host, peer.port,
                                              ssl=_ssl_context(peer.verify_cert, peer.ca_file),
                                              server_hostname=peer.sni or peer.host)
            else:
                coro = _connect_plain(eng, u, peer)
            if timeout and timeout > 0:
                await asyncio.wait_for(coro, timeout)
            else:
                await coro
        except asyncio.CancelledError:
            raise
        except (asyncio.TimeoutError, TimeoutError):
            err = Error(f"connecting to upstream {peer} timed out after {timeout:.3g}s "
                        "(connect_timeout)", status=504, source=UPSTREAM)
        except OSError as exc:
            err = Error(f"connecting to upstream {peer} failed: {exc.strerror or exc}",
                        status=502, source=UPSTREAM)
            err.__cause__ = exc
        except Exception as exc:
            err = Error(f"connecting to upstream {peer} failed: {type(exc).__name__}: {exc}",
                        status=502, source=UPSTREAM)
            err.__cause__ = exc
        if self.finished or self.ds_gone:
            if err is None:
                eng.pool.put(u)  # nobody waits for it any more
            if not self.finished:
                self._finish()
            return
        if err is not None:
            if eng.log.isEnabledFor(logging.WARNING):
                eng.gate.emit(logging.WARNING, "connect", "sluiceway: %s (for %s %s from %s)",
                              (err.message, self.req_header._method, self.req_header.uri,
                               _fmt_addr(self.client_addr)))
            self.error = err
            if eng.h_fail_connect is not None:
                r = self._call(eng.h_fail_connect, (self, peer, self.ctx, err), S_FAIL_CONNECT_DONE)
                if r is _PENDING or r is _FAILED:
                    return
                self._advance(S_FAIL_CONNECT_DONE, r)
            else:
                self._advance(S_FAIL_CONNECT_DONE, err)
            return
        if u.closed:
            self._fail(Error(f"upstream {peer} closed the connection at once", status=502, source=UPSTREAM))
            return
        self._bind(u)
        self._advance(S_CONNECTED, None)

    # --- request head and body --------------------------------------------

    cdef int _send_upstream_head(self) except -1:
        cdef RequestHeader rq = self.req_header
        cdef HeaderMap hm = rq.headers
        cdef _Engine eng = self.eng
        cdef unsigned extra = SW_DROP_EXPECT
        cdef unsigned flags
        cdef unsigned char *drop
        cdef char *out
        cdef char *o
        cdef size_t need, n
        cdef bint reframe = self.body_filter_up and self.req_has_body
        cdef bytes head
        self.req_up_chunked = rq.chunked or reframe
        if eng.forwarded:
            extra |= SW_DROP_XFF
        if reframe:
            extra |= SW_DROP_CONTENT_LENGTH | SW_DROP_TRANSFER_ENCODING
        if hm._items is None:
            drop = _need_drop(hm._n)
            flags = sw_hop_mark(hm._base, hm._h, hm._n, drop, extra)
            self.expect_100 = (flags & SW_F_EXPECT_100) != 0 and rq._minor == 1
            if not (flags & SW_F_DROPPED) and rq._minor == 1 and (flags & SW_F_HOST) \
                    and not eng.forwarded and not rq._edited_line and not self.expect_100 \
                    and not self.want_upgrade:
                # Untouched: forward the received head as it is.
                if rq._head.off == 0 and rq._head.len == PyBytes_GET_SIZE(rq._buf):
                    head = rq._buf
                else:
                    head = PyBytes_FromStringAndSize(PyBytes_AS_STRING(rq._buf) + rq._head.off, rq._head.len)
            else:
                uri = rq.raw_uri
                meth = rq._method.encode("ascii")
                extras = self._extra_fields(flags, reframe)
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
                head = PyBytes_FromStringAndSize(out, o - out)
        else:
            head = self._head_from_items(extra, reframe)
        self.up_head_sent = True
        self.us.t_write(head)
        if self.replaying:
            self._replay_body()
            return 0
        if self.upstream_reused and not self.retried_reused and self.req_has_body:
            # Keep what is sent (up to 64 KiB) until the first response byte,
            # to send it again if this pooled connection turns out dead.
            self.replay = []
            self.replay_bytes = 0
        if not self.req_has_body:
            self.req_body_done = True
            self._arm_read()
        elif self.expect_100 and not self.sent_100:
            self.sent_100 = True
            self._write_ds(_CONTINUE)
        if self.prefetched is not None:
            # Chunks a hook already read go first.
            chunk = b"".join(self.prefetched)
            self.prefetched = None
            self.request_body_bytes -= len(chunk)
            self._on_req_body(chunk)
            if self.finished or self.hook_task is not None:
                return 0  # a pending body filter resumes in S_REQ_BODY_DONE
        if self.prefetch_end:
            self._on_req_end()
            return 0
        # Let the client's body (or the END of a bodyless request) through.
        if not self.req_end_seen:
            self.ds._unblock()

    cdef int _replay_body(self) except -1:
        """On the new connection of a retry: send the body sent before."""
        cdef list chunks = self.replay
        self.replay = None
        if chunks:
            for c in chunks:
                self._req_body_out(c)
        if self.req_body_done:
            if self.req_has_body and self.req_up_chunked and self.us is not None:
                self.us.t_write(self.req_tail if self.req_tail is not None else _LAST_CHUNK)
            self._arm_read()
        if not self.req_end_seen and self.ds is not None:
            self.ds._unblock()

    cdef bytes _extra_fields(self, unsigned flags, bint reframe):
        cdef list parts = []
        cdef RequestHeader rq = self.req_header
        cdef HeaderMap hm = rq.headers
        if not (flags & SW_F_HOST):
            # An HTTP/1.0 client may send no Host (the parser refuses an
            # HTTP/1.1 request without one), or a hook removed it: the
            # HTTP/1.1 request sent upstream needs one.
            parts.append(b"Host: " + (<HttpPeer>self.peer)._host_hdr() + _CRLF)
        if reframe:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        if self.want_upgrade:
            i = hm._find(b"upgrade", 0)
            if i >= 0:
                parts.append(b"Connection: upgrade\r\nUpgrade: " + hm._value_at(i) + _CRLF)
        if self.eng.forwarded:
            addr = self.client_addr
            client = addr[0] if isinstance(addr, tuple) else "unix"
            prior = hm.getall("x-forwarded-for")
            xff = ", ".join(prior + [client]) if prior else client
            parts.append(b"X-Forwarded-For: " + _as_value(xff) + _CRLF)
            parts.append(b"X-Forwarded-Proto: http\r\n")
            host = hm.get_bytes("host")
            if host is not None:
                parts.append(b"X-Forwarded-Host: " + host + _CRLF)
        return b"".join(parts)

    cdef bytes _head_from_items(self, unsigned extra, bint reframe):
        """The slow path: a hook edited the headers."""
        cdef RequestHeader rq = self.req_header
        cdef HeaderMap hm = rq.headers
        cdef list items = hm._items
        cdef set named = set()
        cdef unsigned flags = 0
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
                self.expect_100 = True
        parts = [rq._method.encode("ascii"), b" ", rq.raw_uri, b" HTTP/1.1\r\n"]
        for n, v in items:
            ln = (<bytes>n).lower()
            if ln in _HOP and ln != b"transfer-encoding":
                continue
            if ln in named or ln == b"expect":
                continue
            if reframe and ln in (b"content-length", b"transfer-encoding"):
                continue
            if self.eng.forwarded and ln in (b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"):
                continue
            parts.append(n + b": " + v + _CRLF)
        parts.append(self._extra_fields(flags, reframe))
        parts.append(_CRLF)
        return b"".join(parts)

    cdef int _arm_read(self) except -1:
        cdef _Upstream u = self.us
        if u is not None and u.read_timeout > 0 and u.dl_kind != DL_WRITE:
            u.deadline = _now() + u.read_timeout
            u.dl_kind = DL_READ

    cdef int _on_req_body(self, object chunk) except -1:
        cdef object r
        self.request_body_bytes += len(chunk)
        if self.eng.max_body_size > 0 and self.request_body_bytes > self.eng.max_body_size:
            self._fail(Error(f"request body over max_body_size ({self.eng.max_body_size} bytes)",
                             status=413, source=DOWNSTREAM))
            return 0
        if not self.up_head_sent:
            # A hook is reading the body (read_request_body): keep the chunk
            # for the upstream and hand it over.
            if self.prefetched is None:
                self.prefetched = []
            self.prefetched.append(chunk)
            if self.ds is not None:
                self.ds.blocked = True
            self._wake_reader(chunk)
            return 0
        if self.eng.h_req_body is not None:
            self.pending_chunk = chunk
            self.pending_end = False
            r = self._call(self.eng.h_req_body, (self, chunk, False, self.ctx), S_REQ_BODY_DONE)
            if r is _FAILED:
                return 0
            if r is _PENDING:
                self.ds.blocked = True
                return 0
            self.pending_chunk = None
            if r is not None:
                chunk = r
        self._req_body_out(chunk)

    cdef int _req_body_out(self, object chunk) except -1:
        cdef char hdr[24]
        cdef size_t k
        cdef _Upstream u = self.us
        if u is None or u.closed or chunk is None:
            return 0
        if isinstance(chunk, str):
            chunk = (<str>chunk).encode("utf-8")
        elif not isinstance(chunk, (bytes, memoryview, bytearray)):
            # only a request_body_filter can hand over anything else
            self._fail(self._bad_return("request_body_filter", chunk, "bytes, str or None"))
            return 0
        if not chunk:
            return 0
        if self.replay is not None:
            if self.replay_bytes + len(chunk) <= 65536 and not u.got_bytes:
                self.replay.append(chunk)
                self.replay_bytes += len(chunk)
            else:
                self.replay = None  # too big to send again: no retry
        if self.req_up_chunked:
            k = sw_chunk_header(hdr, len(chunk))
            u.t_writev((PyBytes_FromStringAndSize(hdr, k), chunk, _CRLF))
        else:
            u.t_write(chunk)

    cdef int _on_req_end(self) except -1:
        cdef object r
        self.req_end_seen = True
        if self.req_body_done:
            if self.ds is not None:
                self.ds.blocked = True
            return 0
        if not self.up_head_sent:
            # read_request_body() reached the end of the body.
            self.prefetch_end = True
            if self.ds is not None:
                self.ds.blocked = True
            self._wake_reader(None)
            return 0
        if self.eng.h_req_body is not None and self.req_has_body:
            self.pending_chunk = None
            self.pending_end = True
            r = self._call(self.eng.h_req_body, (self, b"", True, self.ctx), S_REQ_BODY_DONE)
            if r is _FAILED:
                return 0
            if r is _PENDING:
                if self.ds is not None:
                    self.ds.blocked = True
                return 0
            self.pending_end = False
            if r:
                self._req_body_out(r)
        self._req_end_done()

    cdef int _keep_req_trailers(self, _Wire w) except -1:
        """At the request's end (before request_body_filter's last call):
        keep its trailer fields for the upstream. A chunked request goes
        upstream chunked, so they can always be forwarded."""
        cdef bint keep = True
        if self.req_header.chunked:
            self.req_tail = _last_chunk(w, self.req_header.headers, &keep)
            if not keep:
                self.client_keep = False  # the parser takes nothing after it
        return 0

    cdef int _req_end_done(self) except -1:
        self.req_body_done = True
        if self.ds is not None:
            self.ds.blocked = True  # the next request waits for this response
        if self.us is not None and not self.us.closed:
            if self.req_up_chunked:
                self.us.t_write(self.req_tail if self.req_tail is not None else _LAST_CHUNK)
            self._arm_read()
        if self.resp_done and not self.finished:
            # The response finished before the request body did.
            self._finish()

    # --- response -----------------------------------------------------------

    cdef int _on_informational(self, _Wire w) except -1:
        """An interim (1xx) response head other than 101: forwarded to an
        HTTP/1.1 client as received, minus the hop-by-hop fields (103 Early
        Hints, 102 Processing). A 100 Continue is not forwarded: the proxy
        answers the client's Expect itself. No response hook sees it."""
        cdef sw_msg_t *m = &w.m
        cdef unsigned char *drop
        cdef char *out
        cdef char *o
        self.n_informational += 1
        if self.n_informational > MAX_INFORMATIONAL:
            if self.us is not None:
                self.us.reusable = False
            self._fail(Error(f"upstream {self.peer} sent more than {MAX_INFORMATIONAL} "
                             "informational (1xx) responses", status=502, source=UPSTREAM))
            return 0
        if m.status_code == 100 or self.req_header._minor == 0 or self.resp_started or \
                self.ds_gone:
            return 0
        drop = _need_drop(m.nheaders)
        sw_hop_mark(w.head_base, m.headers, m.nheaders, drop,
                    SW_DROP_TRANSFER_ENCODING | SW_DROP_CONTENT_LENGTH)
        out = _need_scratch(64 + m.reason.len + sw_fields_size(m.headers, m.nheaders) + 2)
        o = out
        o += sw_write_status_line(o, m.status_code, w.head_base + m.reason.off, m.reason.len)
        o += sw_write_fields(o, w.head_base, m.headers, m.nheaders, drop)
        o[0] = b'\r'; o[1] = b'\n'; o += 2
        self._write_ds(PyBytes_FromStringAndSize(out, o - out))
        return 0

    cdef int _on_resp_head(self, _Wire w) except -1:
        cdef sw_msg_t *m = &w.m
        cdef ResponseHeader rs
        cdef int st = m.status_code
        self.t_resp = _now()
        self.status = st
        if self.resp_started:
            # request_filter answered and still proxied? Impossible; guard anyway.
            self._fail(Error("internal: response already started", status=500, source=INTERNAL))
            return 0
        if self.head_request or st == 204 or st == 304 or st < 200:
            self.resp_mode = M_NONE
        elif m.has_content_length and self.eng.h_resp_body is None:
            self.resp_mode = M_RAW
        elif self.req_header._minor == 1:
            self.resp_mode = M_CHUNKED
        else:
            self.resp_mode = M_CLOSE
        if not m.keep_alive:
            self.us.reusable = False
        if self.resp_mode == M_CLOSE or self.req_header.upgrade:
            self.client_keep = False
        if self.resp_hooks:
            rs = ResponseHeader.__new__(ResponseHeader)
            rs.status = st
            rs._reason = PyBytes_FromStringAndSize(w.head_base + m.reason.off, m.reason.len)
            rs._major = m.major
            rs._minor = m.minor
            rs.headers = _new_map(w.head_buf, w.head_base, m.headers, m.nheaders)
            self.resp = rs
            self.us.blocked = True
            self._advance(S_UP_RESP, None)
        else:
            self._send_resp_head()

    cdef int _send_resp_head(self) except -1:
        cdef _Wire w = self.us.w if self.us is not None else None
        cdef sw_msg_t *m
        cdef ResponseHeader rs = self.resp
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
        cdef int status
        cdef bint keep
        if self.finished or w is None:
            return 0
        m = &w.m
        if self.resp_mode == M_CHUNKED or self.resp_mode == M_CLOSE:
            extra |= SW_DROP_CONTENT_LENGTH
        keep = self.client_keep and not self.eng.closing and self._body_allows_keep()
        if rs is not None:
            status = rs.status
            if status != m.status_code:
                self.status = status
                if status == 204 or status == 304:
                    self.resp_mode = M_NONE
        else:
            status = m.status_code
        if rs is not None and rs.headers._items is not None:
            self._head_out(self._resp_head_from_items(rs, keep), w)
            self.resp_started = True
            self.client_keep = keep
            return 0
        if rs is not None:
            hm = rs.headers
            base = hm._base
            hh = hm._h
            nh = hm._n
        else:
            base = w.head_base
            hh = m.headers
            nh = m.nheaders
        drop = _need_drop(nh)
        flags = sw_hop_mark(base, hh, nh, drop, extra)
        self.client_keep = keep
        if not (flags & SW_F_DROPPED) and m.major == 1 and m.minor == 1 and keep and \
                self.req_header._minor == 1 and rs is None and \
                (self.resp_mode == M_RAW or self.resp_mode == M_NONE):
            # Forward the received head unchanged. When it lies in the bytes
            # being parsed, hold it back: body bytes that follow it in the
            # same buffer join it and everything goes out in one write.
            if w.head_buf is w.data and self.resp_mode == M_RAW and self.eng.h_resp_body is None:
                self.pend_data = w.data
                self.pend_off = m.msg_start
                self.pend_len = m.head_len
            elif m.msg_start == 0 and m.head_len == PyBytes_GET_SIZE(w.head_buf):
                self._write_ds(w.head_buf)
            else:
                self._write_ds(PyBytes_FromStringAndSize(w.head_base + m.msg_start, m.head_len))
        else:
            if rs is not None:
                reason = rs._reason
            else:
                reason = PyBytes_FromStringAndSize(w.head_base + m.reason.off, m.reason.len)
            upgrade_lines = b""
            if self.upgrading:
                ui = sw_find(base, hh, nh, b"upgrade", 7, 0)
                if ui >= 0:
                    upgrade_lines = b"Connection: upgrade\r\nUpgrade: " + PyBytes_FromStringAndSize(
                        base + hh[ui].value.off, hh[ui].value.len) + _CRLF
            need = 64 + len(reason) + sw_fields_size(hh, nh) + 64 + len(upgrade_lines)
            out = _need_scratch(need)
            o = out
            o += sw_write_status_line(o, status, PyBytes_AS_STRING(reason), len(reason))
            o += sw_write_fields(o, base, hh, nh, drop)
            if self.resp_mode == M_CHUNKED:
                memcpy(o, b"Transfer-Encoding: chunked\r\n", 28); o += 28
            if self.upgrading:
                memcpy(o, PyBytes_AS_STRING(upgrade_lines), len(upgrade_lines)); o += len(upgrade_lines)
            elif not keep:
                memcpy(o, b"Connection: close\r\n", 19); o += 19
            elif self.req_header._minor == 0:
                memcpy(o, b"Connection: keep-alive\r\n", 24); o += 24
            o[0] = b'\r'; o[1] = b'\n'; o += 2
            self._head_out(PyBytes_FromStringAndSize(out, o - out), w)
        self.resp_started = True

    cdef bytes _resp_head_from_items(self, ResponseHeader rs, bint keep):
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
            if ln == b"content-length" and (self.resp_mode == M_CHUNKED or self.resp_mode == M_CLOSE):
                continue
            parts.append(n + b": " + v + _CRLF)
        if self.resp_mode == M_CHUNKED:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        if self.upgrading:
            i = rs.headers._find(b"upgrade", 0)
            if i >= 0:
                parts.append(b"Connection: upgrade\r\nUpgrade: " + rs.headers._value_at(i) + _CRLF)
        elif not keep:
            parts.append(b"Connection: close\r\n")
        elif self.req_header._minor == 0:
            parts.append(b"Connection: keep-alive\r\n")
        parts.append(_CRLF)
        return b"".join(parts)

    cdef int _on_resp_body(self, object chunk) except -1:
        cdef object r
        if self.eng.h_resp_body is not None:
            self.pending_chunk = chunk
            self.pending_end = False
            r = self._call(self.eng.h_resp_body, (self, chunk, False, self.ctx), S_RESP_BODY_DONE)
            if r is _FAILED:
                return 0
            if r is _PENDING:
                if self.us is not None:
                    self.us.blocked = True
                return 0
            self.pending_chunk = None
            if r is not None:
                chunk = r
        self._resp_body_out(chunk)

    cdef int _resp_body_out(self, object chunk) except -1:
        cdef char hdr[24]
        cdef size_t k
        if chunk is None or self.resp_mode == M_NONE or self.ds_gone:
            return 0
        if isinstance(chunk, str):
            chunk = (<str>chunk).encode("utf-8")
        elif not isinstance(chunk, (bytes, memoryview, bytearray)):
            # only a response_body_filter can hand over anything else
            self._fail(self._bad_return("response_body_filter", chunk, "bytes, str or None"))
            return 0
        if not chunk:
            return 0
        self.response_body_bytes += len(chunk)
        if self.resp_mode == M_CHUNKED:
            k = sw_chunk_header(hdr, len(chunk))
            self.ds.t_writev((PyBytes_FromStringAndSize(hdr, k), chunk, _CRLF))
        else:
            self.ds.t_write(chunk)

    cdef int _on_resp_end(self) except -1:
        cdef object r
        if self.finished or self.resp_done:
            return 0
        if self.eng.h_resp_body is not None:
            self.pending_chunk = None
            self.pending_end = True
            r = self._call(self.eng.h_resp_body, (self, b"", True, self.ctx), S_RESP_BODY_DONE)
            if r is _FAILED:
                return 0
            if r is _PENDING:
                if self.us is not None:
                    self.us.blocked = True
                return 0
            self.pending_end = False
            if r:
                self._resp_body_out(r)
        self._resp_end_done()

    cdef int _keep_resp_trailers(self, _Wire w) except -1:
        """At the end of a chunked response (before response_body_filter's
        last call): keep its trailer fields. They go to the client only when
        its response is chunked too (not to HTTP/1.0 clients)."""
        cdef bint keep = True
        if w.m.chunked:
            self.resp_tail = _last_chunk(w, self.resp.headers if self.resp is not None else None, &keep)
            if not keep and self.us is not None:
                self.us.reusable = False  # the parser takes nothing after it
        return 0

    cdef int _resp_end_done(self) except -1:
        if self.finished or self.resp_done:
            return 0
        self._flush_pending()
        if self.resp_mode == M_CHUNKED and not self.ds_gone:
            self._write_ds(self.resp_tail if self.resp_tail is not None else _LAST_CHUNK)
        self.resp_done = True
        if not self.req_body_done and self.us is not None:
            # The upstream answered before reading the whole request body:
            # its connection is not reused (the client's is kept only when
            # the response head said so; see _body_allows_keep).
            self.us.reusable = False
        self._release_upstream(True)
        self._finish()

    cdef int _release_upstream(self, bint reuse) except -1:
        cdef _Upstream u = self.us
        if u is None:
            return 0
        self.us = None
        u.s = None
        if u.read_pause & (R_PEER_FULL | R_BUFFERED):
            u._resume_read(R_PEER_FULL | R_BUFFERED)
        u.blocked = False
        if reuse and u.reusable and not u.closed and u.w.unread() == 0:
            self.eng.pool.put(u)
        else:
            u._close()

    cdef int _head_out(self, bytes head, _Wire w) except -1:
        """Send a rebuilt response head, or hold it back so that body bytes
        following it in the same buffer go out in the same (vectored) write."""
        if w.head_buf is w.data and self.resp_mode == M_RAW and self.eng.h_resp_body is None:
            self.pend_prefix = head
            self.pend_data = w.data
            self.pend_off = w.m.msg_start + w.m.head_len
            self.pend_len = 0
        else:
            self._write_ds(head)

    cdef int _start_tunnel(self) except -1:
        """The upstream switched protocols (101): from now on bytes are
        copied both ways until either side closes."""
        cdef _Upstream u = self.us
        cdef _Downstream ds = self.ds
        cdef _Wire w
        if u is None or ds is None or self.ds_gone or ds.closed:
            self._fail(Error("client went away during the protocol switch", status=400, source=DOWNSTREAM))
            return 0
        self._flush_pending()
        self.tunneling = True
        u.tunnel = True
        ds.tunnel = True
        u.deadline = 0.0
        u.dl_kind = DL_NONE
        if ds.dl_kind != DL_TOTAL:
            ds.deadline = 0.0
            ds.dl_kind = DL_NONE
        w = u.w
        if w.data is not None and w.pos < w.dlen:
            ds.t_write(w.data[w.pos:])
        w = ds.w
        if w is not None and not w.carrying and w.data is not None and w.pos < w.dlen:
            u.t_write(w.data[w.pos:])
            w.pos = w.dlen
        ds._resume_read(R_BUFFERED)

    cdef int _flush_pending(self) except -1:
        """Write the held-back head and slice of the upstream's bytes (see
        _send_resp_head)."""
        cdef object d = self.pend_data
        cdef object prefix = self.pend_prefix
        if d is None:
            return 0
        self.pend_data = None
        self.pend_prefix = None
        if self.ds is not None and not self.ds_gone and not self.ds.closed:
            # One vectored write of the head and the slice, no copy.
            self.ds.t_send(prefix, d, <Py_ssize_t>self.pend_off, <Py_ssize_t>self.pend_len)

    cdef int _write_ds(self, object data) except -1:
        if self.ds is not None and not self.ds_gone and not self.ds.closed:
            self.ds.t_write(data)

    # --- failures -------------------------------------------------------------

    cdef int _fail(self, object err) except -1:
        cdef _Engine eng = self.eng
        cdef object r
        if self.finished:
            return 0
        if self.error is None or self.error is not err:
            self.error = err
        if self.reuse_failed:
            pass  # logged once it is decided whether it is sent again
        elif isinstance(err, Error) and eng.log.isEnabledFor(logging.WARNING) and \
                (<object>err).source != INTERNAL:
            self._log_failure(err)
        self._flush_pending()
        self._release_upstream(False)
        if self.ds is not None:
            self.ds.blocked = True
        if self.hook_task is not None:
            t = self.hook_task
            self.hook_task = None
            t.remove_done_callback(self._hook_done)
            t.cancel()
        if self.ds_gone:
            self._finish()
            return 0
        if eng.h_err_proxy is not None and self.up_head_sent:
            r = self._call(eng.h_err_proxy, (self, self.peer, err, self.ctx, self.ds.nreq > 1),
                           S_ERR_PROXY_DONE)
            if r is _PENDING or r is _FAILED:
                return 0
            self._advance(S_ERR_PROXY_DONE, r)
        else:
            self._advance(S_ERR_PROXY_DONE, None)

    cdef int _log_failure(self, object err) except -1:
        self.eng.gate.emit(logging.WARNING, "failed request", "sluiceway: %d for %s %s from %s: %s",
                           (err.status, self.req_header._method, self.req_header.uri,
                            _fmt_addr(self.client_addr), err.message))
        return 0

    cdef int _replay(self) except -1:
        """Send the request again on a new connection (after a pooled one
        died before answering), without running the hooks again."""
        cdef _Engine eng = self.eng
        eng.replayed += 1
        if eng.log.isEnabledFor(logging.DEBUG):
            eng.log.debug("sluiceway: %s; sending it again on a new connection (%s %s from %s)",
                          self.error.message, self.req_header._method,
                          self.req_header.uri, _fmt_addr(self.client_addr))
        self.error = None
        self.retried_reused = True
        self.replaying = True
        self.up_head_sent = False
        # (the client connection stays blocked: more body waits for the new one)
        self._connect(True)
        return 0

    cdef object _bad_return(self, str hook, object value, str expected):
        """Log a hook's wrong return value (its name, the value, what was
        expected) and return the Error to answer with. Logged here because
        an INTERNAL error is not logged by _fail."""
        cdef str shown = repr(value)
        if len(shown) > 120:
            shown = shown[:117] + "..."
        msg = (f"{type(self.eng.app).__name__}.{hook} returned {shown} "
               f"({type(value).__name__}); it must return {expected}")
        self.eng.log.error("sluiceway: %s, for %s %s", msg, self.req_header._method,
                           self.req_header.uri)
        return Error(msg, status=500, source=INTERNAL)

    cdef int _us_lost(self, object exc) except -1:
        """The upstream connection closed under this request."""
        cdef _Upstream u = self.us
        if self.finished or u is None:
            return 0
        if self.tunneling:
            # The upstream ended the tunnel: a normal end.
            self.resp_done = True
            self.client_keep = False
            self._release_upstream(False)
            self._finish()
            return 0
        if self.resp_started and self.resp_mode == M_CLOSE and not self.resp_done:
            # Close-delimited body: handled by eof_received/finish.
            pass
        if not u.got_bytes and self.upstream_reused and not self.retried_reused and \
                not self.resp_started:
            # A pooled connection the peer had closed (before or while we
            # sent the request). Whether the origin acted on the request is
            # unknown: it is sent once more on a new connection only when
            # its method is idempotent, or error_while_proxy marks the error
            # retryable (see S_ERR_PROXY_DONE), and it can be sent as it was
            # (the body sent so far was kept, no body filter is pending).
            self.reuse_failed = True
            self.can_replay = (not self.req_has_body or self.replay is not None) and \
                self.hook_task is None
            self._fail(Error(f"upstream {self.peer} closed a reused connection without answering"
                             + (f" ({exc})" if exc is not None else ""), status=502,
                             source=UPSTREAM, retryable=self.req_header._method in _IDEMPOTENT))
            return 0
        if self.resp_started:
            what = "closed the connection before the response was complete"
        elif u.got_bytes:
            what = "closed the connection in the middle of the response head"
        else:
            what = "closed the connection without sending a response"
        if exc is not None:
            what += f" ({exc})"
        self._fail(Error(f"upstream {self.peer} {what}", status=502, source=UPSTREAM))

    cdef int _ds_lost(self, object exc) except -1:
        """The client went away."""
        if self.finished:
            return 0
        self.ds_gone = True
        self.client_keep = False
        if self.tunneling and exc is None:
            self.resp_done = True  # the client ended the tunnel: a normal end
        elif self.error is None:
            self.error = Error("client closed the connection before the response was complete"
                               + (f" ({exc})" if exc is not None else ""),
                               status=400, source=DOWNSTREAM)
        self._release_upstream(False)
        if self.hook_task is not None:
            self.hook_task.cancel()
            return 0  # _hook_done finishes
        self._finish()

    # --- end --------------------------------------------------------------------

    cdef int _finish(self) except -1:
        cdef object r
        if self.finished:
            return 0
        self.finished = True
        # The clock itself, not the batch's reading: an answer written by
        # the proxy within the batch that brought the request would
        # otherwise last 0 ms.
        self.t_end = sw_now()
        if self.us is not None:
            self._release_upstream(self.resp_done and self.req_body_done)
        if self.eng.h_logging is not None:
            r = self._call(self.eng.h_logging, (self, self.error, self.ctx), S_LOG_DONE)
            if r is _PENDING or r is _FAILED:
                return 0  # _hook_done / _hook_failed call _final
        self._final()

    cdef int _access_line(self) except -1:
        try:
            self.eng.alog.info('%s "%s %s HTTP/%s" %d %d %.3fms upstream=%s%s',
                               _fmt_addr(self.client_addr), self.req_header._method,
                               self.req_header.uri, self.req_header.version, self.status,
                               self.response_body_bytes, (self.t_end - self.t_start) * 1000.0,
                               self.peer, " reused" if self.upstream_reused else "")
        except Exception:
            self.eng.log.exception("sluiceway: could not write the access log line")

    cdef int _final(self) except -1:
        cdef _Downstream ds = self.ds
        cdef bint keep, pending
        self.finished = True
        if not self.counted_out:
            self.counted_out = True
            self.eng.inflight -= 1
        if self.eng.access_log and self.eng.alog.isEnabledFor(logging.INFO):
            self._access_line()
        keep = self.client_keep and self.resp_done and not self.ds_gone
        # The client may still be sending the body: the connection is kept
        # (and the rest dropped) only as the response head announced.
        pending = self.req_has_body and not self.req_end_seen
        if pending and not self._body_allows_keep():
            keep = False
        self.ds = None
        self.resp = None
        if ds is not None and ds.cur is self:
            if not self.req_has_body and not self.req_body_done:
                # The END of a bodyless request is still in the parser: skip it.
                ds.discard_body = True
            # A client that timed out is not waited for any longer.
            ds._request_done(keep, pending and not (isinstance(self.error, Error) and
                                                    (<object>self.error).status == 408),
                             pending and keep)


def _ignore_result(fut):
    if not fut.cancelled():
        exc = fut.exception()
        if exc is not None:
            error_log.error("sluiceway: internal error while connecting upstream (this is a bug)",
                            exc_info=exc)


async def _await_wrapper(aw):
    return await aw
