"""Limits: rate estimation, in-flight counting and load shedding.

Everything here is compiled (``sluiceway._limits``, C under Cython); each class
has a pure-Python twin with the same API and behaviour in
``sluiceway._limits_py``, which the tests compare against it.

Counting:

* ``Estimator``: count-min sketch, ``incr/get/decr/reset`` on str or bytes keys.
* ``Rate``: events per key per window, two windows; ``observe``, ``rate``,
  ``rate_with(key, proportional)``.
* ``Inflight``: in-progress counts whose ``incr`` returns a release-once guard.
* ``RateLimiter``: N requests per key per window, with the values of the
  429 headers (Retry-After, X-RateLimit-Limit, X-RateLimit-Remaining).

Load shedding, for ``upstream_peer``:

* ``ConcurrencyLimiter``: a cap on requests in flight per upstream; over the
  cap it fails fast (``try_acquire``) or waits (``await acquire``) up to a
  timeout.  Hands out ``Permit``s.
* ``CircuitBreaker``: per-upstream closed/open/half-open breaker that opens
  after N consecutive failures or an error rate over a window.  ``admit``
  hands out ``Attempt``s; state changes are logged on ``sluiceway.limits`` and
  kept as ``Transition`` records.

Every class takes ``scope="process"`` (the default: counts in this process)
or ``scope="server"``: counts in shared memory, one count for all the
worker processes of a server (make the object before they fork, e.g. at
import of the application module), lock-free; ``name=`` shares a region
by name with any process on the machine (``unlink_shared(name)`` removes it).

Refusals raise ``LoadShedError`` subclasses (``ConcurrencyLimitExceeded``,
``CircuitOpen``) carrying ``status`` (503) and ``retryable``; the engine turns
them into responses.  See docs/limits.md.
"""

from . import _compiled
from ._base.limits import (
    BreakerState,
    CircuitOpen,
    ConcurrencyLimitExceeded,
    LoadShedError,
    Transition,
)

_c = _compiled.load("_limits")

Estimator = _c.Estimator
Rate = _c.Rate
Inflight = _c.Inflight
InflightGuard = _c.InflightGuard
proportional = _c.proportional
RateLimiter = _c.RateLimiter
RateDecision = _c.RateDecision
ConcurrencyLimiter = _c.ConcurrencyLimiter
Permit = _c.Permit
CircuitBreaker = _c.CircuitBreaker
Attempt = _c.Attempt
unlink_shared = _c.unlink_shared

from ._limits_redis import RedisBackend, RedisRateLimiter  # noqa: E402

__all__ = [
    "Estimator", "Rate", "Inflight", "InflightGuard", "proportional",
    "RateLimiter", "RateDecision",
    "LoadShedError", "ConcurrencyLimitExceeded", "CircuitOpen",
    "ConcurrencyLimiter", "Permit",
    "CircuitBreaker", "BreakerState", "Attempt", "Transition", "unlink_shared",
    "RedisBackend", "RedisRateLimiter",
]
