# Included by _engine.pyx: what carries one end of a request.

cdef class _Side:
    """One end of a request, as its ``Session`` sees it: the client's end (an
    HTTP/1 client connection today; an HTTP/2 stream could stand here) or
    the origin's end (a pooled HTTP/1 upstream connection; a cached response
    could stand here). A Session talks to its two ends only through these
    methods, and they talk back only through the Session's event methods
    (``on_request_body``, ``on_response_head``, ``client_lost``,
    ``origin_full``, ... in session.pyx). Backpressure is a message both
    ways: an end whose output passes its high-water mark tells the Session
    (``client_full``/``origin_full``), which tells the other end
    (``peer_full``) to stop reading, and the reverse when it drains.

    This base class only declares the interface (no fields, so it costs an
    HTTP/1 connection nothing); every method here raises.
    """

    # --- both ends ---------------------------------------------------------

    cdef int hold(self) except -1:
        """Stop handing events to the Session (the bytes that come meanwhile
        wait, up to a high-water mark) until ``go_on``."""
        raise NotImplementedError

    cdef int go_on(self) except -1:
        """Hand events to the Session again, starting with what waited."""
        raise NotImplementedError

    cdef int send(self, object data) except -1:
        """Write bytes (bytes or a buffer) to the peer of this end."""
        raise NotImplementedError

    cdef int send_parts(self, tuple parts) except -1:
        """Write several buffers in order (one vectored write)."""
        raise NotImplementedError

    cdef int send_slice(self, object head, object owner, Py_ssize_t off, Py_ssize_t n) except -1:
        """Write ``head`` (bytes or None) then ``owner[off:off + n]``,
        without joining or copying them first."""
        raise NotImplementedError

    cdef int peer_full(self) except -1:
        """The other end cannot take more for now: stop reading."""
        raise NotImplementedError

    cdef int peer_drained(self) except -1:
        """The other end can take more: read again."""
        raise NotImplementedError

    cdef bint is_open(self):
        """Whether bytes can still be sent."""
        raise NotImplementedError

    cdef int tunnel(self, _Side other) except -1:
        """After a protocol switch: from now on every byte this end receives
        goes to ``other`` as it is (what was received but not parsed goes
        first); no more events."""
        raise NotImplementedError

    # --- the client's end --------------------------------------------------

    cdef int request_done(self, bint keep, bint linger, bint discard) except -1:
        """The request is over. ``keep``: wait for the next one (after
        reading and dropping the rest of this one's body when
        ``discard``); else close (``linger``: the client may still be
        sending)."""
        raise NotImplementedError

    cdef int close(self, bint linger) except -1:
        """Close after writing what is queued."""
        raise NotImplementedError

    cdef object address(self):
        """The client's address, or None."""
        raise NotImplementedError

    cdef object local_address(self):
        """The address the client connected to, or None."""
        raise NotImplementedError

    cdef int served(self):
        """How many requests this end carried, this one included."""
        raise NotImplementedError

    cdef object tls_layer(self):
        """The client's TLS layer (a ``_Tls`` whose handshake is done), or
        None on a plain connection."""
        return None

    # --- the origin's end --------------------------------------------------

    cdef int expect_response(self) except -1:
        """The whole request went out: the response's time starts."""
        raise NotImplementedError

    cdef int throttle(self, bint on) except -1:
        """Stop (``on``) or go on reading and handing over the response,
        for a rate limit (``Session.limit_rate``)."""
        raise NotImplementedError

    cdef int spoil(self) except -1:
        """This end must not carry another request."""
        raise NotImplementedError

    cdef int release(self, bint reuse) except -1:
        """The Session is done with this end: keep it for another request
        when ``reuse`` and nothing spoiled it, else close it."""
        raise NotImplementedError

    cdef bint answered(self):
        """Whether any byte of a response came."""
        raise NotImplementedError
