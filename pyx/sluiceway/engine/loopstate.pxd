# Included by _engine.pxd: see engine/loopstate.pyx.

cdef class _LoopState:
    cdef object loop
    cdef _IoLoop io
    cdef list pools             # the pools of the services on this loop


cdef _LoopState _loop_state(object loop)
cdef _IoLoop _io_for(object loop)
