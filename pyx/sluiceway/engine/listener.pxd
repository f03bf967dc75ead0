# Included by _engine.pxd: see engine/listener.pyx.

cdef class _Listener:
    cdef _Engine eng
    cdef object sock
    cdef int fd
    cdef bint active
    cdef bint closed
    cdef object retry
    cdef object tls_ctx         # ssl.SSLContext of a TLS listener (None: plain)
    cdef object tls_start       # ... what t_start_tls gets: its _CtlsCtx when its connections
                                #     run on the C layer (engine/tls.pyx), else tls_ctx
    cdef double hs_timeout      # ... the seconds a client's handshake may take (0: no limit)

    cdef int _start(self) except -1
    cdef int _stop(self) except -1
    cdef int _accept_some(self, int limit) except -1
