# Declarations of csrc/sw_clock.h (the monotonic clock in nanoseconds).
from libc.stdint cimport int64_t


cdef extern from "sw_clock.h" nogil:
    int64_t sw_clock_monotonic_ns()
