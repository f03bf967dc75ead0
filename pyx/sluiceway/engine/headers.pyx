# Included by _engine.pyx: request and response heads as hooks see them.

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


cdef RequestHeader _request_header(_Reader r):
    """The request head the parser ``r`` just read, for the hooks: its
    fields stay spans over the received bytes until a hook changes one."""
    cdef RequestHeader rq = RequestHeader.__new__(RequestHeader)
    cdef sw_msg_t *m = &r.m
    cdef int mi = m.method
    name = _METHODS[mi]
    if name is None:
        name = _METHODS[mi] = (<bytes>API.method_name(r.p)).decode("ascii")
    rq._method = name
    rq._buf = r.head_buf
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
    rq.headers = _new_map(r.head_buf, r.head_base, m.headers, m.nheaders)
    if m.target_authority.len:
        rq._take_authority(m.target_authority)
    return rq
