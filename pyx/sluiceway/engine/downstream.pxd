# Included by _engine.pxd: see engine/downstream.pyx.

cdef class _Downstream(_Conn):
    cdef _Engine eng
    cdef _Wire w
    cdef Session cur
    cdef object client_addr
    cdef bint blocked
    cdef bint in_process
    cdef bint closed
    cdef bint write_paused
    cdef int read_pause
    cdef double deadline
    cdef double wdeadline       # the client must read what we wrote by then
    cdef double linger_until    # a discard or lingering close ends by then
    cdef double idle_since      # when it last became idle (accepted, or a request done)
    cdef double rd_last         # request body: when bytes last came (or waiting resumed)
    cdef double rd_start        # ... when waiting began (moved on by the pauses)
    cdef long long rd_bytes     # ... bytes read since the head
    cdef int dl_kind
    cdef int nreq
    cdef bint discard_body      # body bytes of a finished request are dropped
    cdef bint rejected          # over max_connections: answered 503, closing
    cdef bint tunnel            # after a protocol switch: bytes are copied

    cdef int _made(self) except -1
    cdef int on_data(self, object data) except -1
    cdef int on_eof(self) except -1
    cdef int on_lost(self, object exc) except -1
    cdef int on_pause_writing(self) except -1
    cdef int on_resume_writing(self) except -1
    cdef int on_closing(self) except -1
    cdef int _process(self) except -1
    cdef object _addr(self)
    cdef int _pause_read(self, int why) except -1
    cdef int _resume_read(self, int why) except -1
    cdef int _request_done(self, bint keep, bint linger, bint discard) except -1
    cdef int _unblock(self) except -1
    cdef int _close(self, bint linger=*) except -1
    cdef bint _idle(self)
    cdef int _wait_resumed(self) except -1
    cdef bint _body_due(self, double now)
    cdef int _body_timeout(self, double now) except -1
    cdef int _bad_request(self) except -1
    cdef int _timeout(self, double now) except -1
    cdef int _write_timeout(self) except -1
