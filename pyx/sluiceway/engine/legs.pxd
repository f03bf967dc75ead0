# Included by _engine.pxd: see engine/legs.pyx.

cdef class _Leg:
    cdef bint up                # the request's body (client -> origin); else the response's
    cdef tuple hooks            # its body filters in order (None: none)
    cdef int next_hook          # the filter after the suspended one
    cdef bint chunked           # sent chunked (else as received)
    cdef bint mute              # nothing is sent (HEAD, 204, 304)
    cdef bytes tail             # last chunk + the trailers to forward (None: a bare last chunk)
    cdef object pending         # the chunk a suspended filter holds
    cdef bint pending_end       # ... or the end
    cdef object decoder         # undoes the upstream's content coding (response; None: none)
    cdef object encoder         # applies the client's content coding (response; None: none)

    cdef int chunk(self, Session s, object data) except -1
    cdef int end(self, Session s) except -1
    cdef bint _run(self, Session s, object data, bint end, int i) except -1
    cdef int resumed(self, Session s, object value) except -1
    cdef int out(self, Session s, object data) except -1
    cdef int _framed(self, Session s, _Side dst, object data) except -1
    cdef int send_end(self, Session s) except -1
    cdef int _ended(self, Session s) except -1
    cdef _Side _source(self, Session s)


cdef _Leg _new_leg(bint up, tuple hooks, bint chunked, bint mute)
