# Declarations for sluiceway._limits: the C units it links (only what it
# uses) and the attributes of its extension types.

from libc.stdint cimport int64_t, uint32_t, uint64_t


from sluiceway._cms cimport *
from sluiceway._rate cimport *
from sluiceway._clock cimport *


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
