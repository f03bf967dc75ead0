# Declarations for sluiceway._lb: the C selection algorithms (csrc/sw_lb.h,
# csrc/sw_hash.h) and the attributes of the compiled classes.  Only what
# _lb.pyx uses is declared.
from libc.stdint cimport int64_t, uint32_t, uint64_t

from sluiceway._load cimport SW_LOAD_CAPSULE, sw_load, sw_load_down, sw_load_up


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

    ctypedef struct sw_loadview:
        sw_load **loads
        const unsigned char *ok
        const uint32_t *weights
        uint32_t n

    ctypedef struct sw_lc_walk:
        uint64_t *seen

    void sw_lc_walk_init(sw_lc_walk *w, const sw_loadview *v, int64_t *cw, int stop_unusable)
    bint sw_lc_walk_wants_seen(const sw_lc_walk *w)
    int sw_lc_walk_next(sw_lc_walk *w, uint32_t *out)

    ctypedef struct sw_p2c_walk:
        uint64_t *skipped

    void sw_p2c_walk_init(sw_p2c_walk *w, const sw_loadview *v, const sw_wtable *t,
                          uint64_t *state, int stop_unusable)
    bint sw_p2c_walk_wants_skipped(const sw_p2c_walk *w)
    int sw_p2c_walk_next(sw_p2c_walk *w, uint32_t *out)


# Iteration state of one selection: first choice, then fallbacks.
cdef enum:
    CUR_EMPTY = 0
    CUR_WEIGHTED = 1
    CUR_RING = 2
    CUR_LEAST = 3
    CUR_P2C = 4
    SMALL_BITMAP_WORDS = 32      # walks over up to 2048 backends need no malloc

ctypedef struct Cursor:
    # set by the caller before Algorithm._start: what the load-aware
    # algorithms read (NULL: every load 0, every backend usable)
    sw_load **loads
    const unsigned char *ok
    int stop_unusable            # the caller wants usable backends only
    # set by _start
    int kind
    int started
    uint32_t first
    uint32_t nbackends
    sw_walk walk
    sw_ring_walk rwalk
    sw_lc_walk lwalk
    sw_p2c_walk pwalk
    uint64_t *big
    uint64_t small[SMALL_BITMAP_WORDS]


cdef class Algorithm:
    cdef uint32_t n
    cdef int _start(self, const char *key, Py_ssize_t klen, Cursor *cur) except -1


cdef class _Weighted(Algorithm):
    cdef sw_wtable table
    cdef uint32_t *weights        # as given (PowerOfTwoChoices compares loads by them)
    cdef int _build(self, backends) except -1
    cdef void _begin(self, Cursor *cur, uint64_t h, uint64_t seed) noexcept


cdef class RoundRobin(_Weighted):
    cdef uint64_t counter


cdef class FNVHash(_Weighted):
    pass


cdef class Random(_Weighted):
    cdef uint64_t state


cdef class PowerOfTwoChoices(_Weighted):
    cdef uint64_t state


cdef class LeastConnections(Algorithm):
    cdef uint32_t *weights
    cdef int64_t *cw              # smooth weighted round robin among ties


cdef class Consistent(Algorithm):
    cdef sw_ring ring


cdef class BackendLoad:
    cdef sw_load c
    cdef readonly object _capsule  # SW_LOAD_CAPSULE: how the engine reaches c
    cdef object __weakref__


cdef class _IndexIter:
    cdef Algorithm algo
    cdef Cursor cur


cdef class _Snapshot:
    cdef object algo
    cdef Algorithm calgo          # algo when compiled, else None
    cdef tuple backends
    cdef unsigned char *ok
    cdef tuple cells              # a BackendLoad per backend
    cdef sw_load **loads          # ... their counts
    cdef Py_ssize_t n


cdef class BalancerCore:
    cdef _Snapshot _snap
