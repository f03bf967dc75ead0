"""What the compiled limits and their pure-Python reference share.

Argument checks (so bad input gets the same clear message from both), the
load-shedding error types, the circuit breaker's states and transition table,
and the one place that logs a breaker's state change.
"""

import datetime
import enum
import logging
import math
import os
import re
import struct
from typing import NamedTuple
from .errors import UPSTREAM, Error

logger = logging.getLogger("sluiceway.limits")

MAX_HASHES = 32
MAX_SLOTS = 1 << 26
# Clock readings are kept as int64 nanoseconds.  Bounding them to +-4.6e9 s
# (146 years) keeps the difference of any two within int64.
MAX_CLOCK_SECONDS = 4.6e9


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def check_shape(owner, hashes, slots):
    """Validate a sketch's shape.

    Args:
        owner: the class name, for the message.
        hashes: rows of counters (one hash function each).
        slots: counters per row.

    Returns:
        ``(hashes, slots)`` as ints.

    Raises:
        TypeError: a value is not an int.
        ValueError: a value is out of range.
    """
    if not _is_int(hashes):
        raise TypeError(f"{owner}: hashes must be an int, got {type(hashes).__name__}")
    if not _is_int(slots):
        raise TypeError(f"{owner}: slots must be an int, got {type(slots).__name__}")
    if not 1 <= hashes <= MAX_HASHES:
        raise ValueError(
            f"{owner}: hashes must be between 1 and {MAX_HASHES}, got {hashes} "
            "(each hash is one row of counters; 4 is typical)")
    if not 1 <= slots <= MAX_SLOTS:
        raise ValueError(
            f"{owner}: slots must be between 1 and {MAX_SLOTS}, got {slots} "
            "(counters per row; the overcount is about e * total / slots)")
    return hashes, slots


def make_seeds(owner, hashes, seeds):
    """Return one 64-bit seed per row: the given ones, checked, or fresh random ones.

    Args:
        owner: the class name, for the message.
        hashes: number of rows.
        seeds: None for random seeds from ``os.urandom`` (the normal case), or a
            sequence of ``hashes`` distinct ints in ``[0, 2**64)`` (for
            reproducible tests).

    Returns:
        A tuple of ``hashes`` ints.

    Raises:
        TypeError: seeds is not a sequence of ints.
        ValueError: wrong number of seeds, a seed out of range, or a repeated seed.
    """
    if seeds is None:
        while True:
            seeds = struct.unpack(f"<{hashes}Q", os.urandom(8 * hashes))
            if len(set(seeds)) == hashes:
                return seeds
    try:
        seeds = tuple(seeds)
    except TypeError:
        raise TypeError(
            f"{owner}: seeds must be None or a sequence of {hashes} ints, "
            f"got {type(seeds).__name__}") from None
    if len(seeds) != hashes:
        raise ValueError(f"{owner}: need exactly one seed per hash ({hashes}), got {len(seeds)}")
    for s in seeds:
        if not _is_int(s):
            raise TypeError(f"{owner}: seeds must be ints, got {type(s).__name__}")
        if not 0 <= s < 1 << 64:
            raise ValueError(f"{owner}: seeds must be in [0, 2**64), got {s}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(
            f"{owner}: seeds must be distinct, got {list(seeds)} (rows with equal seeds "
            "hash alike, and the sketch degrades to fewer rows)")
    return seeds


def interval_ns(owner, interval):
    """Convert a window length to whole nanoseconds.

    Args:
        owner: the class name, for the message.
        interval: seconds (int or float) or a ``datetime.timedelta``.

    Returns:
        The interval in nanoseconds, an int >= 1.

    Raises:
        TypeError: not a number or timedelta.
        ValueError: not positive and finite, or shorter than a nanosecond.
    """
    if isinstance(interval, datetime.timedelta):
        seconds = interval.total_seconds()
    elif isinstance(interval, (int, float)) and not isinstance(interval, bool):
        seconds = float(interval)
    else:
        raise TypeError(
            f"{owner}: interval must be seconds (int or float) or a timedelta, "
            f"got {type(interval).__name__}")
    if not (math.isfinite(seconds) and 0 < seconds <= MAX_CLOCK_SECONDS):
        raise ValueError(
            f"{owner}: interval must be a positive, finite number of seconds, got {interval!r}")
    ns = int(seconds * 1e9)
    if ns < 1:
        raise ValueError(f"{owner}: interval must be at least one nanosecond, got {interval!r}")
    return ns


def check_clock(owner, clock):
    """Validate an injected clock: None (the default monotonic clock) or a callable.

    Raises:
        TypeError: clock is neither None nor callable.
    """
    if clock is not None and not callable(clock):
        raise TypeError(
            f"{owner}: clock must be None or a callable returning seconds like "
            f"time.monotonic, got {type(clock).__name__}")
    return clock


def bad_clock_reading(value):
    """The error for a clock that returned a non-finite or out-of-range value."""
    return ValueError(
        f"the clock returned {value!r}; it must return seconds as a finite number "
        f"between -{MAX_CLOCK_SECONDS:g} and {MAX_CLOCK_SECONDS:g}, like time.monotonic()")


def bad_key(key):
    """The error for a key that is neither str nor bytes."""
    return TypeError(f"key must be str or bytes, got {type(key).__name__}")


def positive(owner, name, value, *, allow_zero=False, integer=False):
    """Validate a positive (or, with allow_zero, non-negative) finite number.

    Args:
        owner: the class name, for the message.
        name: the argument's name, for the message.
        value: the value to check.
        allow_zero: accept 0.
        integer: require an int (bool is refused).

    Returns:
        value, unchanged.

    Raises:
        TypeError: not an int (integer=True) or not a number.
        ValueError: not finite, or out of range.
    """
    kinds = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        what = "an int" if integer else "a number"
        raise TypeError(f"{owner}: {name} must be {what}, got {type(value).__name__}")
    ok = value >= 0 if allow_zero else value > 0
    if not ok or (isinstance(value, float) and not math.isfinite(value)):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{owner}: {name} must be finite and {bound}, got {value!r}")
    return value


def check_limit(owner, limit):
    """Validate a requests-per-window limit: an int in [1, 2**62]."""
    positive(owner, "limit", limit, integer=True)
    if limit > 1 << 62:
        raise ValueError(f"{owner}: limit must be at most 2**62, got {limit}")
    return limit


# --------------------------------------------------------------------------
# Scope: counts per process, or shared by a server's workers.
# --------------------------------------------------------------------------

SCOPES = ("process", "server")
_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,200}\Z")


def check_scope(owner, scope, name):
    """Validate ``scope`` and ``name``; return True when the object is shared.

    Raises:
        ValueError: an unknown scope, a name without ``scope="server"``, or a
            name that is not 1 to 200 of ``[A-Za-z0-9._-]``.
    """
    if scope not in SCOPES:
        raise ValueError(
            f"{owner}: scope must be 'process' (counts in this process only) or 'server' "
            f"(shared by every worker process of the server), got {scope!r}")
    if name is not None:
        if scope != "server":
            raise ValueError(f"{owner}: name= opens a region shared by name; it needs "
                             f"scope='server'")
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ValueError(f"{owner}: name must be 1 to 200 letters, digits, '.', '_' or "
                             f"'-', got {name!r}")
    return scope == "server"


def shm_path(name):
    """The file of the named shared region ``name`` (``$SLUICEWAY_SHM_DIR``, else /dev/shm)."""
    return os.path.join(os.environ.get("SLUICEWAY_SHM_DIR", "/dev/shm"), "sluiceway-" + name)


def unlink_shared(name):
    """Remove the named shared region ``name`` (its file); return True if it existed.

    Processes that have it mapped keep counting in it; the next process to
    open the name makes a fresh one.
    """
    try:
        os.unlink(shm_path(name))
    except FileNotFoundError:
        return False
    return True


def bad_cost(cost):
    """The error for a negative RateLimiter cost."""
    return ValueError(f"RateLimiter: cost must be >= 0, got {cost}")


# --------------------------------------------------------------------------
# Load shedding errors.
# --------------------------------------------------------------------------

class LoadShedError(Error):
    """A request refused to protect an upstream; the engine answers ``status``.

    A :class:`sluiceway.Error` with ``source="upstream"`` (the upstream's
    state caused it) and ``status=503``.

    Attributes:
        retryable: True when trying another upstream (or later) may succeed.
        upstream: the key of the upstream that refused.
        retry_after: seconds after which trying again makes sense, or None.
    """

    def __init__(self, message, *, upstream, retryable=True, retry_after=None):
        super().__init__(message, status=503, source=UPSTREAM, retryable=retryable)
        self.upstream = upstream
        self.retry_after = retry_after


class ConcurrencyLimitExceeded(LoadShedError):
    """The upstream already has its cap of requests in flight (and waiting timed out)."""


class CircuitOpen(LoadShedError):
    """The upstream's circuit breaker is open (or half-open with its probes in use)."""


def concurrency_refusal(key, cap, waited, retryable):
    """The ConcurrencyLimitExceeded for ``key`` at ``cap``, after ``waited`` seconds."""
    how = f"after waiting {waited:g}s" if waited else "(not waiting)"
    return ConcurrencyLimitExceeded(
        f"upstream {key!r} has {cap} requests in flight, its cap; refused {how}",
        upstream=key, retryable=retryable)


def circuit_refusal(key, half_open, probes, retry_after, retryable):
    """The CircuitOpen for ``key``: open until ``retry_after`` s, or half-open and busy."""
    if half_open:
        msg = f"circuit for upstream {key!r} is half-open and its {probes} probe(s) are in flight"
    else:
        msg = f"circuit for upstream {key!r} is open; next probe in {retry_after:.3g}s"
    return CircuitOpen(msg, upstream=key, retryable=retryable, retry_after=retry_after)


# --------------------------------------------------------------------------
# Circuit breaker states.
# --------------------------------------------------------------------------

class BreakerState(str, enum.Enum):
    """State of one upstream's circuit."""

    CLOSED = "closed"        # requests flow; failures are counted
    OPEN = "open"            # requests are refused until the cool-down ends
    HALF_OPEN = "half_open"  # a few probe requests decide: close or reopen


class Transition(NamedTuple):
    """A recorded state change of one upstream's circuit."""

    time: float
    key: object
    old: BreakerState
    new: BreakerState
    reason: str


_C, _O, _H = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN

# Theory of operation: the whole state machine, as data.
#   event            from        to
TRANSITIONS = {
    ("trip", _C): _O,           # N consecutive failures, or error rate over the window
    ("cooled", _O): _H,         # cool-down elapsed: let probes through
    ("probe_ok", _H): _C,       # a probe succeeded: back to normal, counts cleared
    ("probe_failed", _H): _O,   # a probe failed: another cool-down
    ("reset", _O): _C,          # operator reset
    ("reset", _H): _C,
}


#: Callables told of every state change, ``observer(transition)`` (the
#: server's metrics add one); a failing one is logged and ignored.
observers: list = []


def announce(transition, on_change):
    """Record-keeping for a state change: log it, then call ``on_change`` if set.

    A failing ``on_change`` is logged on ``sluiceway.limits`` and otherwise
    ignored: the state has changed already, and the request that happened to
    report the outcome must not fail for it.
    """
    level = logging.WARNING if transition.new is _O else logging.INFO
    if logger.isEnabledFor(level):
        logger.log(level, "circuit for upstream %r: %s -> %s (%s)", transition.key,
                   transition.old.value, transition.new.value, transition.reason)
    for obs in observers:
        try:
            obs(transition)
        except Exception:
            logger.exception("circuit breaker state observer %r failed", obs)
    if on_change is not None:
        try:
            on_change(transition)
        except Exception:
            logger.exception("CircuitBreaker on_change callback %r failed on %r",
                             on_change, transition)


def check_breaker(failures, error_rate, window, min_requests, cooldown, probes, on_change,
                  history):
    """Validate CircuitBreaker's arguments (both implementations share the messages)."""
    owner = "CircuitBreaker"
    if failures is None and error_rate is None:
        raise ValueError(f"{owner}: set failures, error_rate or both, or it can never open")
    if failures is not None:
        positive(owner, "failures", failures, integer=True)
    if error_rate is not None:
        positive(owner, "error_rate", error_rate)
        if error_rate > 1:
            raise ValueError(f"{owner}: error_rate is a ratio in (0, 1], got {error_rate!r}")
    positive(owner, "window", window)
    positive(owner, "min_requests", min_requests, integer=True)
    positive(owner, "cooldown", cooldown, allow_zero=True)
    positive(owner, "probes", probes, integer=True)
    positive(owner, "history", history, integer=True)
    if on_change is not None and not callable(on_change):
        raise TypeError(f"{owner}: on_change must be None or a callable")
