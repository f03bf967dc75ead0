# Declarations of csrc/sw_rate.h (two-window rate) used by sluiceway._limits.
from libc.stdint cimport int64_t, uint32_t, uint64_t

from sluiceway._cms cimport sw_cms


cdef extern from "sw_rate.h" nogil:
    ctypedef struct sw_rate:
        sw_cms est[2]
        int64_t interval_ns

    int sw_rate_init(sw_rate *r, uint32_t hashes, uint32_t slots, const uint64_t *seeds,
                     int64_t interval_ns, int64_t now_ns)
    void sw_rate_free(sw_rate *r)
    int64_t sw_rate_advance(sw_rate *r, int64_t now_ns)
    int64_t sw_rate_observe(sw_rate *r, int64_t now_ns, const void *key, size_t len, int64_t n)
    void sw_rate_sample(sw_rate *r, int64_t now_ns, const void *key, size_t len,
                        int64_t *prev, int64_t *curr, int64_t *elapsed_ns)
    void sw_rate_sample_add(sw_rate *r, int64_t now_ns, const void *key, size_t len, int64_t n,
                            int64_t *prev, int64_t *curr, int64_t *elapsed_ns)
    void sw_rate_reset(sw_rate *r, int64_t now_ns)
