# Included by _engine.pxd: see engine/downstream.pyx.

cdef class _Downstream(_Conn):
    cdef _Reader reader         # its parser while a request is read (None when idle)
    cdef Session session        # the request in progress, or None
    cdef object client_addr     # its address (made on first use, or from a PROXY header)
    cdef sw_peer_t peer         # ... as accept gave it (family 0: a Unix socket's, asked)
    cdef object local_addr      # the address it connected to (likewise)
    cdef bint pp_wait           # a PROXY protocol header must come first
    cdef bytes pp_buf           # ... the part of it received so far
    cdef _Side pipe             # after a protocol switch: where received bytes go
    cdef bint blocked           # hold(): no events for the session until go_on()
    cdef bint in_process
    cdef bint closed
    cdef int read_pause         # why reading is paused (R_* bits)
    cdef double wdeadline       # the client must read what we wrote by then
    cdef double linger_until    # a discard or lingering close ends by then
    cdef double idle_since      # when it last became idle (accepted, or a request done)
    cdef double rd_last         # request body: when bytes last came (or waiting resumed)
    cdef double rd_start        # ... when waiting began (moved on by the pauses)
    cdef long long rd_bytes     # ... bytes read since the head
    cdef int nreq
    cdef bint discard_body      # body bytes of a finished request are dropped
    cdef bint msg_ended         # the current request's end was parsed
    cdef bint rejected          # over max_connections: answered 503, closing
    cdef _Listener tls_lst      # the TLS listener it came from (None: plain)
    cdef bint tls_wait          # ... its first bytes, to start TLS with, are awaited

    cdef int _made(self) except -1
    cdef int on_data(self, object data) except -1
    cdef int on_eof(self) except -1
    cdef int on_lost(self, object exc) except -1
    cdef int on_pause_writing(self) except -1
    cdef int on_resume_writing(self) except -1
    cdef int on_closing(self) except -1
    cdef int on_tls_error(self, object exc) except -1
    cdef int _process(self) except -1
    cdef int _pause_read(self, int why) except -1
    cdef int _resume_read(self, int why) except -1
    cdef int _bad_request(self) except -1
    cdef int _close(self, bint linger) except -1
    cdef bint _idle(self)
    cdef int _arm_waiting(self) except -1
    cdef int _arm_linger(self, int kind) except -1
    cdef int _wait_resumed(self) except -1
    cdef bint due(self, double now)
    cdef bint _body_due(self, double now)
    cdef int on_timeout(self, double now) except -1
    cdef int _body_timeout(self, double now) except -1
    cdef int _write_timeout(self) except -1
    # the client's end of a Session (_Side)
    cdef int hold(self) except -1
    cdef int go_on(self) except -1
    cdef int send(self, object data) except -1
    cdef int send_parts(self, tuple parts) except -1
    cdef int send_slice(self, object head, object owner, Py_ssize_t off, Py_ssize_t n) except -1
    cdef int peer_full(self) except -1
    cdef int peer_drained(self) except -1
    cdef bint is_open(self)
    cdef int tunnel(self, _Side other) except -1
    cdef int request_done(self, bint keep, bint linger, bint discard) except -1
    cdef int close(self, bint linger) except -1
    cdef object address(self)
    cdef object _direct_peer(self)
    cdef object local_address(self)
    cdef int _pp_begin(self) except -1
    cdef object _pp_feed(self, object data)
    cdef int served(self)
    cdef int _tls_begin(self, object data) except -1
    cdef int on_handshake(self, object exc) except -1
    cdef int _tls_error(self, object exc, str what) except -1
    cdef object tls_layer(self)
