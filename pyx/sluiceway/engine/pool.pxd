# Included by _engine.pxd: see engine/pool.pyx.

cdef class _Pool:
    cdef dict idle
    cdef public int max_idle
    cdef public double idle_timeout
    cdef public long long created
    cdef public long long reused
    cdef public long long closed
    cdef public long long evicted
    cdef dict sessions                  # reuse key -> the ssl.SSLSession a new connection offers
    cdef public long long tls_full      # new TLS connections: full handshakes
    cdef public long long tls_resumed   # ... and resumed sessions

    cdef _Upstream take(self, object key)
    cdef int put(self, _Upstream c) except -1
    cdef int drop(self, _Upstream c) except -1
    cdef int keep_session(self, object key, object session) except -1
