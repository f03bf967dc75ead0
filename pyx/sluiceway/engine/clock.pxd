# Included by _engine.pxd: the engine's clock.
#
# The time, read once per batch of ready descriptors (as nginx caches it per
# event-loop iteration): deadlines and request timings taken while a batch
# is handled share one clock reading (_IoLoop._on_ready sets it). Outside a
# batch (timers, hook tasks) the clock is read each time.

cdef double _batch_now
cdef bint _in_batch

cdef inline double _now() noexcept:
    if _in_batch:
        return _batch_now
    return sw_clock_now()
