# Declarations of csrc/sw_scount.h (lock-free counting in shared memory) used
# by sluiceway._limits.
from libc.stdint cimport int64_t, uint32_t, uint64_t

from sluiceway._cms cimport sw_cms
from sluiceway._shm cimport sw_shm_hdr


cdef extern from "sw_scount.h" nogil:
    int64_t sw_acms_add_at(int64_t *cells, uint32_t hashes, const uint32_t *idx, int64_t n)
    int64_t sw_acms_get_at(const int64_t *cells, uint32_t hashes, const uint32_t *idx)
    void sw_acms_zero(int64_t *cells, size_t n)

    int64_t sw_tcell_add(uint64_t *cell, int64_t w, int64_t n)
    int64_t sw_tcell_get(const uint64_t *cell, int64_t w)

    ctypedef struct sw_srate:
        sw_cms shape
        int64_t interval_ns

    void sw_srate_attach(sw_srate *r, sw_shm_hdr *hdr)
    size_t sw_srate_size(uint32_t hashes, uint32_t slots)
    int64_t sw_srate_window(sw_srate *r, int64_t now_ns, int64_t *into_ns)
    int64_t sw_srate_observe(sw_srate *r, int64_t now_ns, const void *key, size_t len, int64_t n)
    void sw_srate_sample_add(sw_srate *r, int64_t now_ns, const void *key, size_t len, int64_t n,
                             int64_t *prev, int64_t *curr, int64_t *elapsed_ns)
    void sw_srate_reset(sw_srate *r, int64_t now_ns)
