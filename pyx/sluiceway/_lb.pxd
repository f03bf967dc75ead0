# Declarations for sluiceway._lb: the C selection algorithms (csrc/sw_lb.h,
# csrc/sw_hash.h) and the attributes of the compiled classes.  Only what
# _lb.pyx uses is declared.
from libc.stdint cimport uint32_t, uint64_t


cdef extern from "sw_hash.h" nogil:
    uint64_t sw_fnv1a64(const void *data, size_t len)
    uint32_t sw_crc32(const void *data, size_t len)
    uint64_t sw_mix64(uint64_t z)


cdef extern from "sw_lb.h" nogil:
    int SW_LB_ENOMEM
    int SW_LB_ETOOBIG
    uint32_t SW_LB_MAX_SLOTS
    uint32_t SW_LB_MAX_WEIGHT
    uint32_t SW_LB_MAX_BACKENDS
    int SW_KETAMA_POINTS

    ctypedef struct sw_wtable:
        uint32_t *slots
        uint32_t nslots

    int sw_wtable_build(sw_wtable *t, const uint32_t *weights, uint32_t n)
    void sw_wtable_free(sw_wtable *t)

    ctypedef struct sw_walk:
        pass

    void sw_walk_init(sw_walk *w, uint32_t first, uint32_t n, uint64_t seed)
    int sw_walk_next(sw_walk *w, uint32_t *out)

    ctypedef struct sw_ring_point:
        uint32_t hash
        uint32_t backend

    ctypedef struct sw_ring:
        sw_ring_point *points
        uint32_t npoints

    int sw_ring_build(sw_ring *r, const char *const *names, const size_t *lens,
                      const uint32_t *weights, uint32_t n)
    void sw_ring_free(sw_ring *r)
    size_t sw_bitmap_words(uint32_t n)

    ctypedef struct sw_ring_walk:
        uint64_t *seen
        uint32_t yielded

    void sw_ring_walk_init(sw_ring_walk *w, const sw_ring *r, uint32_t key_hash)
    int sw_ring_walk_next(sw_ring_walk *w, uint32_t *out)

    uint64_t sw_splitmix64(uint64_t *state)


# Iteration state of one selection: first choice, then fallbacks.
cdef enum:
    CUR_EMPTY = 0
    CUR_WEIGHTED = 1
    CUR_RING = 2
    SMALL_BITMAP_WORDS = 32      # rings of up to 2048 backends walk without malloc

ctypedef struct Cursor:
    int kind
    int started
    uint32_t first
    uint32_t nbackends
    sw_walk walk
    sw_ring_walk rwalk
    uint64_t *big
    uint64_t small[SMALL_BITMAP_WORDS]


cdef class Algorithm:
    cdef uint32_t n
    cdef int _start(self, const char *key, Py_ssize_t klen, Cursor *cur) except -1


cdef class _Weighted(Algorithm):
    cdef sw_wtable table
    cdef int _build(self, backends) except -1
    cdef void _begin(self, Cursor *cur, uint64_t h, uint64_t seed) noexcept


cdef class RoundRobin(_Weighted):
    cdef uint64_t counter


cdef class FNVHash(_Weighted):
    pass


cdef class Random(_Weighted):
    cdef uint64_t state


cdef class Consistent(Algorithm):
    cdef sw_ring ring


cdef class _IndexIter:
    cdef Algorithm algo
    cdef Cursor cur


cdef class _Snapshot:
    cdef object algo
    cdef Algorithm calgo          # algo when compiled, else None
    cdef tuple backends
    cdef unsigned char *ok
    cdef Py_ssize_t n


cdef class BalancerCore:
    cdef _Snapshot _snap
