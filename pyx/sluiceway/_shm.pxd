# Declarations of csrc/sw_shm.h (shared regions and their header) used by
# sluiceway._limits.
from libc.stdint cimport int64_t, uint32_t, uint64_t


cdef extern from "sw_shm.h" nogil:
    enum:
        SW_SHM_VERSION
        SW_SHM_HDR_SIZE
        SW_SHM_ESTIMATOR
        SW_SHM_RATE
        SW_SHM_INFLIGHT
        SW_SHM_BREAKER
        SW_SHM_ESHAPE
        SW_SHM_ETIMEOUT

    ctypedef struct sw_shm_hdr:
        uint32_t version
        uint32_t kind
        uint64_t size
        uint32_t hashes
        uint32_t slots
        uint64_t seeds[32]
        int64_t interval_ns
        int64_t origin_ns
        int64_t hwm
        uint64_t params[8]

    ctypedef struct sw_shm:
        void *base
        size_t size

    int sw_shm_anon(sw_shm *m, size_t size)
    int sw_shm_open(sw_shm *m, const char *path, size_t size, int *created, int wait_ms)
    void sw_shm_publish(sw_shm_hdr *h)
    void sw_shm_unmap(sw_shm *m)
    int sw_shm_unlink(const char *path)
