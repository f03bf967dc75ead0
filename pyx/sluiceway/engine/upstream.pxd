# Included by _engine.pxd: see engine/upstream.pyx.

cdef class _Upstream(_Conn):
    cdef _Reader reader         # its response parser
    cdef Session session        # the request it carries, or None (pooled)
    cdef object key             # the peer's reuse_key (the pool's index)
    cdef HttpPeer peer
    cdef object waiter          # while connecting with TLS: the future the handshake's end sets
    cdef object lost_exc        # why it closed while no request was bound to it (or None)
    cdef _Side pipe             # after a protocol switch: where received bytes go
    cdef bint closed
    cdef bint idle              # in the pool
    cdef bint reusable
    cdef bint tls_kept          # its TLS session went to the pool (or there was none to give)
    cdef bint got_bytes         # a byte of the response came
    cdef bint blocked           # hold(): no events for the session until go_on()
    cdef bint in_process
    cdef bint in_1xx            # between an interim head and its end
    cdef int read_pause         # why reading is paused (R_* bits)
    cdef double read_timeout
    cdef double write_timeout

    cdef int _made(self) except -1
    cdef int _keep_tls_session(self) except -1
    cdef int on_handshake(self, object exc) except -1
    cdef int bind(self, Session s, bint head_request) except -1
    cdef int on_data(self, object data) except -1
    cdef int on_eof(self) except -1
    cdef int on_lost(self, object exc) except -1
    cdef int on_pause_writing(self) except -1
    cdef int on_resume_writing(self) except -1
    cdef int _process(self) except -1
    cdef int _pause_read(self, int why) except -1
    cdef int _resume_read(self, int why) except -1
    cdef int _close(self) except -1
    cdef int on_timeout(self, double now) except -1
    # the origin's end of a Session (_Side)
    cdef int hold(self) except -1
    cdef int go_on(self) except -1
    cdef int send(self, object data) except -1
    cdef int send_parts(self, tuple parts) except -1
    cdef int send_slice(self, object head, object owner, Py_ssize_t off, Py_ssize_t n) except -1
    cdef int peer_full(self) except -1
    cdef int peer_drained(self) except -1
    cdef bint is_open(self)
    cdef int tunnel(self, _Side other) except -1
    cdef int expect_response(self) except -1
    cdef int throttle(self, bint on) except -1
    cdef int spoil(self) except -1
    cdef int release(self, bint reuse) except -1
    cdef bint answered(self)
