# Declarations of csrc/sw_clock.h (the monotonic clock).
from libc.stdint cimport int64_t


cdef extern from "sw_clock.h" nogil:
    int64_t sw_clock_monotonic_ns()
    double sw_clock_now()
    int64_t sw_clock_wall_ns()
