# Declarations for sluiceway._limits: the C units it links (only what it
# uses) and the attributes of its extension types.

from libc.stdint cimport int64_t, uint32_t, uint64_t


from sluiceway._cms cimport *
from sluiceway._rate cimport *
from sluiceway._clock cimport *
from sluiceway._shm cimport *
from sluiceway._scount cimport *
from sluiceway._sbrk cimport *


cdef class _Region:
    cdef sw_shm m
    cdef readonly object name      # None: anonymous (shared with forked workers)
    cdef readonly object path      # the file of a named region, else None
    cdef readonly bint created     # this process made it (and filled its header)
    cdef sw_shm_hdr *hdr(self) noexcept
    cdef void *payload(self) noexcept


cdef class Estimator:
    cdef sw_cms c
    cdef bint shared
    cdef _Region region


cdef class Rate:
    cdef sw_rate r            # per process; r.interval_ns is set in both scopes
    cdef sw_srate s           # shared (scope="server")
    cdef bint shared
    cdef _Region region
    cdef object clock
    cdef double interval_s
    cdef int64_t now_ns(self) except? -1
    cdef void counts(self, int64_t now, const char *buf, Py_ssize_t size, int64_t n,
                     int64_t *prev, int64_t *curr, int64_t *elapsed) noexcept
    cdef const sw_cms *shape(self) noexcept


cdef class Inflight:
    cdef sw_cms c
    cdef bint shared
    cdef _Region region


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
    # scope="server": circuits in a shared table (csrc/sw_sbrk.h)
    cdef bint shared
    cdef _Region region
    cdef sw_sbrk sb
    cdef uint64_t key_seed
    cdef readonly int64_t untracked
    cdef double now(self) except? -1.0
    cdef sw_sbrk_entry *entry(self, key, bint claim) except? NULL
    cdef shared_admit(self, key)
    cdef int shared_record(self, key, bint ok, int64_t gen, bint probe) except -1
    cdef announce_event(self, int event, key, double now, int64_t detail, double total,
                        double failed, int frm)
    cdef Attempt attempt(self, key, bint probe, int64_t gen)
    cdef int record(self, key, bint ok, int64_t gen, bint probe) except -1
    cdef double roll(self, _Circuit c, double now)
    cdef void window_counts(self, _Circuit c, double now, double *total, double *failed)
    cdef move(self, _Circuit c, key, str event, double now, str reason)


cdef class RedisState:
    cdef public bint started
    cdef public bint down
    cdef public bint closed
    cdef public bint idle
    cdef public int64_t waiting
    cdef public int64_t sync_events
    cdef public int64_t failed_open
    cdef public int64_t failed_closed
    cdef public object wake
    cdef int kick(self) except -1


cdef class RedisCounts:
    cdef readonly int64_t limit
    cdef readonly int64_t max_keys
    cdef readonly int64_t interval_ns
    cdef int64_t w0
    cdef int64_t start_ns
    cdef readonly int64_t w
    cdef object clock
    cdef public object attach
    cdef public bint attached
    cdef public RedisState st
    cdef public bytes prefix
    cdef public int64_t ttl_ms
    cdef readonly Rate mine
    cdef readonly Rate others
    cdef public dict touched
    cdef public dict pushed
    cdef public dict seen
    cdef public dict names
    cdef public list batch
    cdef int64_t pruned
    cdef public int64_t untracked
    cdef int64_t now_ns(self) except? -1
    cdef int64_t window_at(self, int64_t now) noexcept
    cdef RateDecision decide(self, key, cost, bint counted)
