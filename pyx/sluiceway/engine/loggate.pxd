# Included by _engine.pxd: see engine/loggate.pyx.

cdef class _LogKind:
    cdef double since           # start of the current one-second window
    cdef int written            # lines written in it
    cdef long long dropped      # lines counted instead
    cdef int level              # the highest level dropped
    cdef str fmt                # the last line dropped
    cdef tuple args


cdef class _LogGate:
    cdef object log
    cdef dict kinds             # kind (str) -> _LogKind

    cdef int emit(self, int level, str kind, str fmt, tuple args, object exc=*) except -1
    cdef int flush(self, double now) except -1
    cdef int _summary(self, str kind, _LogKind k) except -1
