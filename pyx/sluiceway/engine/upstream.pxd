# Included by _engine.pxd: see engine/upstream.pyx.

cdef class _Upstream(_Conn):
    cdef _Engine eng
    cdef _Wire w
    cdef Session s
    cdef object key
    cdef HttpPeer peer
    cdef bint closed
    cdef bint idle
    cdef bint reusable
    cdef bint got_bytes
    cdef bint blocked
    cdef bint in_process
    cdef bint in_1xx
    cdef bint tunnel
    cdef bint write_paused
    cdef int read_pause
    cdef double deadline
    cdef int dl_kind
    cdef double read_timeout
    cdef double write_timeout
    cdef int nreq

    cdef int _made(self) except -1
    cdef int on_data(self, object data) except -1
    cdef int on_eof(self) except -1
    cdef int on_lost(self, object exc) except -1
    cdef int on_pause_writing(self) except -1
    cdef int on_resume_writing(self) except -1
    cdef int _process(self) except -1
    cdef int _pause_read(self, int why) except -1
    cdef int _resume_read(self, int why) except -1
    cdef int _close(self) except -1
    cdef int _timeout(self, double now) except -1
