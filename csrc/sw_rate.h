/* sw_rate.h - two-window event rate estimator over count-min sketches.
 *
 * Contract
 * --------
 * Time is cut into windows of interval_ns nanoseconds on a fixed grid that
 * starts at the `now_ns` given to sw_rate_init: window w covers
 * [start + w*interval, start + (w+1)*interval).  Two sketches of identical
 * shape and seeds hold the counts of the current window and of the window
 * before it.  Every call passes the caller's clock reading `now_ns` (any
 * monotonic nanosecond clock; this unit never reads a clock itself) and first
 * rolls the windows forward (sw_rate_advance):
 *
 *   - still in the current window: nothing changes;
 *   - one window later: the previous sketch is zeroed and becomes current,
 *     the old current becomes previous;
 *   - two or more windows later: both are zeroed (nothing was seen in the
 *     last completed window).
 *
 * A reading earlier than the current window (a clock that stepped back) is
 * treated as the start of the current window: windows never move backwards.
 * Callers keep readings within +-4.6e18 ns of each other so that differences
 * fit in int64 (the Python wrapper bounds injected clocks to +-4.6e9 s).
 *
 * Because windows sit on a fixed grid, the previous window always spans
 * exactly interval_ns, so previous_count / interval is an exact per-interval
 * rate (pingora-limits restarts its window at the first event after expiry
 * instead; the rollover rules are otherwise the same).
 *
 * Memory, threads, logging: as sw_cms.h.
 */
#ifndef SW_RATE_H
#define SW_RATE_H

#include <stdint.h>

#include "sw_cms.h"

typedef struct sw_rate {
    sw_cms est[2];       /* est[cur] is the current window, est[!cur] previous */
    int cur;             /* 0 or 1 */
    int64_t interval_ns; /* > 0 */
    int64_t start_ns;    /* clock reading at init: start of window 0 */
    int64_t window;      /* index of the current window, >= 0 */
} sw_rate;

/* Initialise with two zeroed sketches of the given shape and seeds.
 * Returns SW_CMS_OK, SW_CMS_EINVAL (shape, seeds or interval_ns <= 0) or
 * SW_CMS_ENOMEM; on failure sw_rate_free(r) is still safe. */
int sw_rate_init(sw_rate *r, uint32_t hashes, uint32_t slots, const uint64_t *seeds,
                 int64_t interval_ns, int64_t now_ns);

/* Release both sketches; safe to call twice. */
void sw_rate_free(sw_rate *r);

/* Roll windows forward to now_ns; return nanoseconds elapsed in the current
 * window, in [0, interval_ns). */
int64_t sw_rate_advance(sw_rate *r, int64_t now_ns);

/* Add n events for key in the current window; return the key's count
 * (estimate) in the current window after adding. */
int64_t sw_rate_observe(sw_rate *r, int64_t now_ns, const void *key, size_t len, int64_t n);

/* Add n (may be 0) to the key's count in the current window, hashing once,
 * then read its counts: *prev for the last completed window, *curr for the
 * current one (after adding), *elapsed_ns as sw_rate_advance returns. */
void sw_rate_sample_add(sw_rate *r, int64_t now_ns, const void *key, size_t len, int64_t n,
                        int64_t *prev, int64_t *curr, int64_t *elapsed_ns);

/* Read the key's counts: *prev for the last completed window, *curr for the
 * current one, *elapsed_ns as sw_rate_advance returns. */
void sw_rate_sample(sw_rate *r, int64_t now_ns, const void *key, size_t len,
                    int64_t *prev, int64_t *curr, int64_t *elapsed_ns);

/* Zero both windows and restart the grid at now_ns. */
void sw_rate_reset(sw_rate *r, int64_t now_ns);

#endif /* SW_RATE_H */
