/* sw_clock.h - the default time source of sluiceway's limits.
 *
 * Contract: sw_clock_monotonic_ns() returns a monotonic clock reading in
 * nanoseconds (never goes backwards, unaffected by wall-clock changes).  On
 * POSIX it is clock_gettime(CLOCK_MONOTONIC), the same clock as Python's
 * time.monotonic() on Linux, so readings can be compared with it.  Returns
 * -1 only if the platform has no monotonic clock (not expected).
 * Thread-safe, no allocation, no logging.
 */
#ifndef SW_CLOCK_H
#define SW_CLOCK_H

#include <stdint.h>

int64_t sw_clock_monotonic_ns(void);

/* The same clock in seconds (the engine's deadlines and timings; the
 * clock time.monotonic() reads on Linux). */
double sw_clock_now(void);

/* The wall clock (CLOCK_REALTIME, what time.time() reads) in nanoseconds
 * since the epoch: the clock shared limits put their windows on, so that
 * every machine counts the same window at the same time.  May step back or
 * forward with the system's clock. */
int64_t sw_clock_wall_ns(void);

#endif /* SW_CLOCK_H */
