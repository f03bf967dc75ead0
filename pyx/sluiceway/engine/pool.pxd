# Included by _engine.pxd: see engine/pool.pyx.

cdef class _Pool:
    cdef dict idle
    cdef public int max_idle
    cdef public double idle_timeout
    cdef public long long created
    cdef public long long reused
    cdef public long long closed
    cdef public long long evicted

    cdef _Upstream take(self, object key)
    cdef int put(self, _Upstream c) except -1
    cdef int drop(self, _Upstream c) except -1
