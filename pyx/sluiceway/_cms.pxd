# Declarations of csrc/sw_cms.h (count-min sketch) used by sluiceway._limits.
from libc.stdint cimport int64_t, uint32_t, uint64_t


cdef extern from "sw_cms.h" nogil:
    enum:
        SW_CMS_MAX_HASHES
        SW_CMS_MAX_SLOTS
        SW_CMS_OK
        SW_CMS_EINVAL
        SW_CMS_ENOMEM

    ctypedef struct sw_cms:
        uint32_t hashes
        uint32_t slots
        uint64_t seeds[32]
        int64_t *cells

    uint64_t sw_cms_keyhash(uint64_t seed, const void *key, size_t len)
    int sw_cms_init(sw_cms *c, uint32_t hashes, uint32_t slots, const uint64_t *seeds)
    int sw_cms_shape(sw_cms *c, uint32_t hashes, uint32_t slots, const uint64_t *seeds)
    void sw_cms_free(sw_cms *c)
    void sw_cms_index(const sw_cms *c, const void *key, size_t len, uint32_t *idx)
    int64_t sw_cms_incr(sw_cms *c, const void *key, size_t len, int64_t n)
    int64_t sw_cms_get(const sw_cms *c, const void *key, size_t len)
    void sw_cms_reset(sw_cms *c)
