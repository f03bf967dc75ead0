# Declarations of csrc/sw_metrics.h (the shared metrics store), used by
# sluiceway._metrics and the engine.
from libc.stdint cimport int32_t, uint32_t, uint64_t


cdef extern from "sw_metrics.h" nogil:
    enum:
        SW_MK_COUNTER
        SW_MK_GAUGE
        SW_MK_GAUGE_MAX
        SW_MK_HISTOGRAM
        SW_MK_INFO

    ctypedef struct sw_ms_ent:
        uint32_t state
        uint32_t kind
        uint32_t first
        uint32_t ncells
        uint32_t key_off
        uint32_t key_len
        uint32_t val_off
        uint32_t val_len

    ctypedef struct sw_ms_hdr:
        uint32_t nslabs
        uint32_t ncells
        uint32_t nseries
        uint32_t nbytes
        uint32_t cells_used
        uint32_t bytes_used
        uint32_t series_used

    size_t sw_ms_size(uint32_t nslabs, uint32_t ncells, uint32_t nseries, uint32_t nbytes)
    int sw_ms_init(void *base, size_t size, uint32_t nslabs, uint32_t ncells, uint32_t nseries,
                   uint32_t nbytes)
    int sw_ms_series(void *base, const char *key, uint32_t klen, const char *val, uint32_t vlen,
                     uint32_t kind, uint32_t ncells, uint32_t *first)
    int sw_ms_claim(void *base, int32_t pid)
    int sw_ms_retire(void *base, int32_t pid)
    double *sw_ms_slab(void *base, uint32_t slab)
    int32_t sw_ms_owner(const void *base, uint32_t slab)
    int sw_ms_read(void *base, uint32_t first, uint32_t ncells, uint32_t kind, double *out)
    int sw_ms_entry(const void *base, uint32_t i, sw_ms_ent *out)
    const char *sw_ms_bytes(const void *base, uint32_t off)
    const sw_ms_hdr *sw_ms_header(const void *base)
    void sw_ms_add(double *cells, uint32_t i, double v)
    void sw_ms_set(double *cells, uint32_t i, double v)
    void sw_ms_observe(double *cells, uint32_t i, const double *bounds, uint32_t nb, double v)


# What the engine takes from a Store (through its capsule): the address of
# the Store's pointer to this process's slab, which changes when a worker
# claims its own.
ctypedef struct sw_ms_handle:
    void *base
    double **slab
