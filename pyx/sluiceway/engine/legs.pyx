# Included by _engine.pyx: a request's two bodies, one object per direction.

@cython.final
@cython.freelist(128)
@cython.no_gc  # holds bytes and the app's hook; nothing that points back at it
cdef class _Leg:
    """One body of a request on its way: the request's (from the client's
    end to the origin's) or the response's (the other way). Every chunk
    goes through the direction's filter hooks, in order, when the app has
    them (``request_body_filter``; ``upstream_response_body_filter`` then
    ``response_body_filter``), then out in the leg's framing (chunked, or as
    received); the end goes through the filters once more, then the last
    chunk with the trailers (``tail``) when chunked. While a filter's coroutine is suspended, the end the bytes come
    from is held (``_Side.hold``) and the chunk waits here (``pending``).
    The two directions share all of this; what differs is small and marked
    ``if self.up``."""

    cdef int chunk(self, Session s, object data) except -1:
        """A body chunk from the source end."""
        if self.decoder is not None:
            try:
                data = self.decoder.decompress(data)
            except Exception as exc:
                return s._fail(Error(f"upstream {s.peer} sent a body that does not decode "
                                     f"as its Content-Encoding says: {exc}", status=502,
                                     source=UPSTREAM))
            if not data:
                return 0
        self._run(s, data, False, 0)
        return 0

    cdef int end(self, Session s) except -1:
        """The body's end from the source end."""
        self._run(s, b"", True, 0)
        return 0

    cdef bint _run(self, Session s, object data, bint end, int i) except -1:
        """Filters ``i``.. on a chunk (or on the end: each gets the bytes the
        one before added, and may add some), then out. Returns True when
        that is done; False when a filter suspended (its Task resumes in
        ``resumed``) or failed."""
        cdef object r, h
        cdef Py_ssize_t n = len(self.hooks) if self.hooks is not None else 0
        while i < n:
            h = self.hooks[i]
            self.pending = data
            self.pending_end = end
            self.next_hook = i + 1
            r = _hook_call(s, h, (s, data, end, s.ctx),
                           S_REQ_BODY_DONE if self.up else S_RESP_BODY_DONE)
            if r is _FAILED:
                return False
            if r is _PENDING:
                self._source(s).hold()
                return False
            self.pending = None
            self.pending_end = False
            if r is not None:
                if type(r) is not bytes and not isinstance(r, (str, bytearray, memoryview)):
                    s._fail(s._bad_return(_hook_name(s.eng, h), r, "bytes, str or None"))
                    return False
                data = r
            i += 1
            if not data and not end:
                return True  # dropped: the later filters have nothing to see
        if data:
            self.out(s, data)
        if end:
            self._ended(s)
        return True

    cdef int resumed(self, Session s, object value) except -1:
        """The suspended filter's coroutine finished with ``value`` (None:
        what it was given, unchanged): the later filters, out, then go on
        where the body was."""
        cdef _Side src
        cdef object data = value if value is not None else self.pending
        cdef bint end = self.pending_end
        self.pending = None
        self.pending_end = False
        if value is not None and type(value) is not bytes and \
                not isinstance(value, (str, bytearray, memoryview)):
            return s._fail(s._bad_return(_hook_name(s.eng, self.hooks[self.next_hook - 1]),
                                         value, "bytes, str or None"))
        if not self._run(s, data, end, self.next_hook):
            return 0
        if end or s.finished:
            return 0
        if self.up and s.prefetch_end and not s.req_body_done:
            return s.on_request_end(None)
        src = self._source(s)
        if src is not None:
            src.go_on()
        return 0

    cdef int out(self, Session s, object data) except -1:
        """Send a (filtered) chunk in the leg's framing."""
        cdef _Side dst = s.origin if self.up else s.client
        if data is None or self.mute or dst is None or not dst.is_open():
            return 0
        if type(data) is not bytes and isinstance(data, str):
            data = (<str>data).encode("utf-8")
        if not data:
            return 0
        if self.up:
            s._keep_for_replay(data)
        elif self.encoder is not None:
            data = self.encoder.compress(data)
            if not data:
                return 0  # (the encoder keeps it for now)
        return self._framed(s, dst, data)

    cdef int _framed(self, Session s, _Side dst, object data) except -1:
        """Write bytes in the leg's framing."""
        cdef char hdr[24]
        cdef size_t k
        if not self.up:
            s.response_body_bytes += len(data)
        if self.chunked:
            k = sw_chunk_header(hdr, len(data))
            dst.send_parts((PyBytes_FromStringAndSize(hdr, k), data, _CRLF))
        else:
            dst.send(data)
        if not self.up and s.rate_limit > 0:
            s._pace()
        return 0

    cdef int send_end(self, Session s) except -1:
        """What the encoder still holds, then the last chunk (with the
        trailers, when there are some to forward) for a chunked body."""
        cdef _Side dst = s.origin if self.up else s.client
        cdef object rest
        if self.mute or dst is None or not dst.is_open():
            return 0
        if self.decoder is not None:
            try:
                rest = self.decoder.flush()
            except Exception:
                rest = b""
            self.decoder = None
            if rest:
                self.out(s, rest)
        if self.encoder is not None:
            rest = self.encoder.flush()
            self.encoder = None
            if rest:
                self._framed(s, dst, rest)
        if self.chunked:
            dst.send(self.tail if self.tail is not None else _LAST_CHUNK)
        return 0

    cdef int _ended(self, Session s) except -1:
        if self.up:
            return s._request_body_sent()
        return s._response_body_sent()

    cdef _Side _source(self, Session s):
        return s.client if self.up else s.origin


cdef _Leg _new_leg(bint up, tuple hooks, bint chunked, bint mute):
    cdef _Leg leg = _Leg.__new__(_Leg)
    leg.up = up
    leg.hooks = hooks
    leg.chunked = chunked
    leg.mute = mute
    return leg


cdef str _hook_name(_Engine eng, object h):
    """The hook's name in HOOK_NAMES (for messages)."""
    for name, fn in zip(HOOK_NAMES, eng.hooks):
        if fn is h:
            return name
    return getattr(h, "__name__", "hook")
