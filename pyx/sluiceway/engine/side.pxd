# Included by _engine.pxd: see engine/side.pyx.

cdef class _Side:
    # --- both ends ---------------------------------------------------------
    cdef int hold(self) except -1
    cdef int go_on(self) except -1
    cdef int send(self, object data) except -1
    cdef int send_parts(self, tuple parts) except -1
    cdef int send_slice(self, object head, object owner, Py_ssize_t off, Py_ssize_t n) except -1
    cdef int peer_full(self) except -1
    cdef int peer_drained(self) except -1
    cdef bint is_open(self)
    cdef int tunnel(self, _Side other) except -1
    # --- the client's end --------------------------------------------------
    cdef int request_done(self, bint keep, bint linger, bint discard) except -1
    cdef int close(self, bint linger) except -1
    cdef object address(self)
    cdef object local_address(self)
    cdef int served(self)
    cdef object tls_layer(self)
    # --- the origin's end --------------------------------------------------
    cdef int expect_response(self) except -1
    cdef int throttle(self, bint on) except -1
    cdef int spoil(self) except -1
    cdef int release(self, bint reuse) except -1
    cdef bint answered(self)
