# Included by _engine.pyx: a request's two bodies, one object per direction.

@cython.final
@cython.freelist(128)
@cython.no_gc  # holds bytes and the app's hook; nothing that points back at it
cdef class _Leg:
    """One body of a request on its way: the request's (from the client's
    end to the origin's) or the response's (the other way). Every chunk
    goes through the direction's filter hook (``request_body_filter`` /
    ``response_body_filter``, when the app has it), then out in the leg's
    framing (chunked, or as received); the end goes through the filter
    once more, then the last chunk with the trailers (``tail``) when
    chunked. While a filter's coroutine is suspended, the end the bytes come
    from is held (``_Side.hold``) and the chunk waits here (``pending``).
    The two directions share all of this; what differs is small and marked
    ``if self.up``."""

    cdef int chunk(self, Session s, object data) except -1:
        """A body chunk from the source end."""
        cdef object r
        if self.decoder is not None:
            try:
                data = self.decoder.decompress(data)
            except Exception as exc:
                return s._fail(Error(f"upstream {s.peer} sent a body that does not decode "
                                     f"as its Content-Encoding says: {exc}", status=502,
                                     source=UPSTREAM))
            if not data:
                return 0
        if self.hook is not None:
            self.pending = data
            self.pending_end = False
            r = _hook_call(s, self.hook, (s, data, False, s.ctx),
                           S_REQ_BODY_DONE if self.up else S_RESP_BODY_DONE)
            if r is _FAILED:
                return 0
            if r is _PENDING:
                self._source(s).hold()
                return 0
            self.pending = None
            if r is not None:
                data = r
        return self.out(s, data)

    cdef int end(self, Session s) except -1:
        """The body's end from the source end."""
        cdef object r
        if self.hook is not None:
            self.pending = None
            self.pending_end = True
            r = _hook_call(s, self.hook, (s, b"", True, s.ctx),
                           S_REQ_BODY_DONE if self.up else S_RESP_BODY_DONE)
            if r is _FAILED:
                return 0
            if r is _PENDING:
                self._source(s).hold()
                return 0
            self.pending_end = False
            if r:
                self.out(s, r)
        return self._ended(s)

    cdef int resumed(self, Session s, object value) except -1:
        """The filter's coroutine finished with ``value`` (None: the chunk
        unchanged): send it, then go on where the body was."""
        cdef _Side src
        self.out(s, value if value is not None else self.pending)
        self.pending = None
        if self.pending_end:
            self.pending_end = False
            return self._ended(s)
        if s.finished:
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
        if type(data) is not bytes:
            if isinstance(data, str):
                data = (<str>data).encode("utf-8")
            elif not isinstance(data, (memoryview, bytearray)):
                # (only a body filter hands over anything else)
                s._fail(s._bad_return("request_body_filter" if self.up else "response_body_filter",
                                      data, "bytes, str or None"))
                return 0
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


cdef _Leg _new_leg(bint up, object hook, bint chunked, bint mute):
    cdef _Leg leg = _Leg.__new__(_Leg)
    leg.up = up
    leg.hook = hook
    leg.chunked = chunked
    leg.mute = mute
    return leg
