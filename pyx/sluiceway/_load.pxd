# Declarations of csrc/sw_load.h (a backend's requests in flight), shared by
# sluiceway._lb (which owns the cells) and the engine (which counts in them).
from libc.stdint cimport int64_t


cdef extern from "sw_load.h" nogil:
    const char *SW_LOAD_CAPSULE
    ctypedef struct sw_load:
        int64_t inflight
    void sw_load_up(sw_load *l)
    void sw_load_down(sw_load *l)
