# Declarations for sluiceway._limits: the C units it links (only what it
# uses) and the attributes of its extension types.

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

    uint64_t sw_cms_keyhash(uint64_t seed, const void *key, size_t len)
    int sw_cms_init(sw_cms *c, uint32_t hashes, uint32_t slots, const uint64_t *seeds)
    void sw_cms_free(sw_cms *c)
    int64_t sw_cms_incr(sw_cms *c, const void *key, size_t len, int64_t n)
    int64_t sw_cms_get(const sw_cms *c, const void *key, size_t len)
    void sw_cms_reset(sw_cms *c)


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


cdef extern from "sw_clock.h" nogil:
    int64_t sw_clock_monotonic_ns()


cdef class Estimator:
    cdef sw_cms c


cdef class Rate:
    cdef sw_rate r
    cdef object clock
    cdef double interval_s
    cdef int64_t now_ns(self) except? -1


cdef class Inflight:
    cdef sw_cms c


cdef class InflightGuard:
    cdef Inflight owner
    cdef readonly object key
    cdef readonly int64_t n
    cdef readonly bint released
    cdef int undo(self) except -1


cdef class RateDecision:
    cdef readonly bint allowed
    cdef readonly int64_t limit
    cdef readonly int64_t remaining
    cdef readonly int64_t count
    cdef readonly double reset_after


cdef class RateLimiter:
    cdef readonly int64_t limit
    cdef readonly Rate rate
    cdef readonly bint sliding
    cdef RateDecision decide(self, key, cost, bint counted)


cdef class ConcurrencyLimiter


cdef class Permit:
    cdef ConcurrencyLimiter limiter
    cdef readonly object key
    cdef readonly bint released
    cdef int give_back(self) except -1


cdef class ConcurrencyLimiter:
    cdef readonly int64_t max_inflight
    cdef readonly double wait
    cdef readonly object retryable
    cdef readonly int64_t shed
    cdef Inflight inflight_
    cdef dict waiters
    cdef Permit take(self, key)
    cdef refuse(self, key, double waited)
    cdef forget(self, key, fut)
    cdef wake(self, key)


cdef class _Circuit:
    cdef int state
    cdef int64_t gen
    cdef int64_t consecutive
    cdef double opened_at
    cdef int64_t probes
    cdef double probe_at
    cdef int64_t window
    cdef int64_t prev_total, prev_fail, cur_total, cur_fail


cdef class CircuitBreaker


cdef class Attempt:
    cdef CircuitBreaker breaker
    cdef readonly object key
    cdef readonly bint probe
    cdef int64_t gen
    cdef bint done


cdef class CircuitBreaker:
    cdef bint use_failures
    cdef int64_t failures_n
    cdef bint use_error_rate
    cdef double error_rate_
    cdef readonly double window
    cdef readonly int64_t min_requests
    cdef readonly double cooldown
    cdef readonly int64_t probes
    cdef readonly object retryable
    cdef object clock
    cdef public object on_change
    cdef readonly object transitions
    cdef dict circuits
    cdef double start
    cdef double now(self) except? -1.0
    cdef Attempt attempt(self, key, bint probe, int64_t gen)
    cdef int record(self, key, bint ok, int64_t gen, bint probe) except -1
    cdef double roll(self, _Circuit c, double now)
    cdef void window_counts(self, _Circuit c, double now, double *total, double *failed)
    cdef move(self, _Circuit c, key, str event, double now, str reason)
