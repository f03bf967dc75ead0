# distutils: sources = csrc/sw_cms.c csrc/sw_rate.c csrc/sw_clock.c csrc/sw_shm.c csrc/sw_scount.c csrc/sw_sbrk.c
"""Compiled limits: counting (Estimator, Rate, Inflight, RateLimiter) and
load shedding (ConcurrencyLimiter, CircuitBreaker).

Theory of operation
-------------------
All counting happens in C (csrc/sw_cms.c, csrc/sw_rate.c; for limits shared
by a server's workers csrc/sw_scount.c and csrc/sw_sbrk.c over a region of
csrc/sw_shm.c); this module turns Python keys into bytes without copying,
reads the clock, and shapes results.

Files (one extension module, one concern per included file):

    _limits.pyx               keys, counts, seeds: the helpers below
    _limits_shm.pxi           shared regions: scope="server", named regions
    _limits_count.pxi         Estimator, Rate, Inflight (+ guards)
    _limits_ratelimit.pxi     RateLimiter, RateDecision
    _limits_concurrency.pxi   ConcurrencyLimiter, Permit
    _limits_breaker.pxi       CircuitBreaker, Attempt (per process and shared)
    _limits_redis.pxi         RedisCounts, RedisState: RedisRateLimiter's checks
                              and its syncs' bookkeeping (_limits_redis.py has
                              the connection and the task)

* ``scope="process"`` (the default) counts in memory of this process, with
  plain loads and stores.  ``scope="server"`` counts in a shared region with
  atomic operations and no lock (csrc/sw_scount.h says why that is enough);
  each object holds a ``shared`` flag and branches once per call.

* A key is ``str`` (hashed as its UTF-8 bytes, taken from CPython's cached
  UTF-8 form via PyUnicode_AsUTF8AndSize: no copy for ASCII strings) or
  ``bytes`` (hashed in place).  Nothing else is accepted.
* The default clock is C's CLOCK_MONOTONIC (time.monotonic() on Linux), read
  without a Python call.  An injected clock is any callable returning seconds;
  Rate turns its reading into int64 nanoseconds as ``int(seconds * 1e9)``, the
  same conversion the pure-Python reference (``_limits_py``) uses, so both
  count identically under the same clock and seeds.
* Every call runs under the GIL; counting calls finish in constant time,
  release nothing and log nothing.  The load-shedding classes keep their
  per-request paths (try_acquire/release, admit/success/failure) in C and call
  into Python only to wait, to change a breaker's state, and to log that.
* Objects handed to callers per request (InflightGuard, Permit, Attempt,
  RateDecision) come from Cython freelists and refuse ``__init__``.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.math cimport ceil, floor, isfinite
from libc.stdint cimport int64_t, uint32_t, uint64_t
from libc.string cimport memcpy

import asyncio
import collections

from sluiceway._base.limits import (
    MAX_CLOCK_SECONDS as _MAX_CLOCK_SECONDS,
    TRANSITIONS,
    BreakerState,
    Transition,
    announce,
    bad_clock_reading,
    bad_cost,
    bad_key,
    check_breaker,
    check_clock,
    check_limit,
    check_scope,
    check_shape,
    circuit_refusal,
    concurrency_refusal,
    interval_ns,
    logger,
    make_seeds,
    positive,
    shm_path,
    unlink_shared,
)

__all__ = ["Estimator", "Rate", "Inflight", "InflightGuard", "proportional", "keyhash",
           "RateLimiter", "RateDecision", "ConcurrencyLimiter", "Permit", "CircuitBreaker",
           "Attempt", "unlink_shared"]

cdef double MAX_CLOCK_SECONDS = _MAX_CLOCK_SECONDS


cdef inline const char *key_bytes(object key, Py_ssize_t *size) except NULL:
    """Borrow the bytes of a str or bytes key; raise TypeError for anything else."""
    if type(key) is str or isinstance(key, str):
        return PyUnicode_AsUTF8AndSize(key, size)
    if type(key) is bytes or isinstance(key, bytes):
        size[0] = PyBytes_GET_SIZE(key)
        return PyBytes_AS_STRING(key)
    raise bad_key(key)


cdef inline int64_t as_count(object n) except? -1:
    """An int64 count; Cython alone would truncate a float silently."""
    if type(n) is int or isinstance(n, int):
        return n  # OverflowError beyond int64
    raise TypeError(f"n must be an int, got {type(n).__name__}")


cdef inline int64_t neg(int64_t n) noexcept nogil:
    # Two's complement negation without signed overflow (-INT64_MIN wraps).
    return <int64_t>(<uint64_t>0 - <uint64_t>n)


cdef int init_cms(sw_cms *c, str owner, hashes, slots, seeds) except -1:
    cdef uint64_t cseeds[SW_CMS_MAX_HASHES]
    cdef int i, rc
    hashes, slots = check_shape(owner, hashes, slots)
    seeds = make_seeds(owner, hashes, seeds)
    for i in range(hashes):
        cseeds[i] = seeds[i]
    rc = sw_cms_init(c, hashes, slots, cseeds)
    if rc == SW_CMS_ENOMEM:
        raise MemoryError(f"{owner}: cannot allocate {hashes} x {slots} counters")
    if rc != SW_CMS_OK:
        raise ValueError(f"{owner}: invalid shape hashes={hashes}, slots={slots}")
    return 0


cdef inline int64_t cms_add(sw_cms *c, bint shared, const char *buf, Py_ssize_t size,
                            int64_t n) noexcept nogil:
    """Add n to a key of a sketch in this process's memory or in a shared region."""
    cdef uint32_t idx[SW_CMS_MAX_HASHES]
    if not shared:
        return sw_cms_incr(c, buf, <size_t>size, n)
    sw_cms_index(c, buf, <size_t>size, idx)
    return sw_acms_add_at(c.cells, c.hashes, idx, n)


cdef inline int64_t cms_get(sw_cms *c, bint shared, const char *buf,
                            Py_ssize_t size) noexcept nogil:
    cdef uint32_t idx[SW_CMS_MAX_HASHES]
    if not shared:
        return sw_cms_get(c, buf, <size_t>size)
    sw_cms_index(c, buf, <size_t>size, idx)
    return sw_acms_get_at(c.cells, c.hashes, idx)


cdef tuple cms_seeds(const sw_cms *c):
    return tuple([c.seeds[i] for i in range(c.hashes)])


def keyhash(seed, key):
    """Return the 64-bit seeded hash the sketches use for one row.

    Args:
        seed: an int in ``[0, 2**64)``.
        key: ``str`` (hashed as UTF-8) or ``bytes``.

    Returns:
        An int in ``[0, 2**64)``; identical to ``_limits_py.keyhash``.

    Raises:
        TypeError: key is not str or bytes.
        OverflowError: seed is out of range.
    """
    cdef Py_ssize_t size
    cdef const char *buf = key_bytes(key, &size)
    return sw_cms_keyhash(<uint64_t>seed, buf, <size_t>size)


include "_limits_shm.pxi"
include "_limits_count.pxi"
include "_limits_ratelimit.pxi"
include "_limits_concurrency.pxi"
include "_limits_breaker.pxi"
include "_limits_redis.pxi"
