/* sw_scount.h - counting in memory shared by several processes, lock-free.
 *
 * Contract
 * --------
 * Two kinds of counter arrays, both living in a region of sw_shm.h and
 * updated by any number of processes (and threads) at once, with no lock:
 *
 * 1. Plain count-min cells (Estimator, Inflight): int64 counters laid out as
 *    sw_cms's `cells` (row-major).  sw_acms_add_at adds with one atomic
 *    fetch-add per row; nothing is ever lost, and the estimate returned is
 *    the minimum of the values this call produced, so the count-min
 *    guarantee (never below the true count while counts stay >= 0) holds
 *    at every instant.
 *
 * 2. Window-tagged cells (Rate): every 64-bit cell packs the index of the
 *    window it counts (low SW_TAG_BITS bits of the index, in the top bits)
 *    and a signed SW_COUNT_BITS-bit count (two's complement, wrapping).  A
 *    shared Rate keeps two sketches, window w in sketch w & 1.  Nothing ever
 *    zeroes a sketch when a window turns: a cell whose tag is older than the
 *    window being written is *replaced* (tag := w, count := n) by the same
 *    compare-and-swap that would have added to it, and is read as 0 for any
 *    window it is older than.  So window rotation is one CAS per cell, per
 *    cell, done by whichever process touches it first, and a process that
 *    lags behind (it read the clock just before a window turned) cannot wipe
 *    counts of the new window: a cell whose tag is *newer* than the window
 *    being written (by at most SW_TAG_AHEAD windows) takes the event into
 *    its own, newer window.  Every event therefore lands in exactly one
 *    window, the one current when it was counted or the next; none is lost
 *    and none counted twice (tests/test_limits_shared.py hammers this from
 *    several processes while windows roll).
 *
 *    A cell untouched for k * 2**SW_TAG_BITS windows (about 194 days of
 *    one-second windows) would read as current: an overcount, never an
 *    undercount, like a hash collision.  A count beyond +-2**39 wraps.
 *
 * Window index of a shared Rate
 * -----------------------------
 * w = floor((now_ns - origin_ns) / interval_ns), but never below `hwm`, the
 * largest index any process has used (kept with an atomic max), so windows
 * never move backwards, even for a process whose clock reading is late.
 * reset() moves origin_ns so that the current window starts now, and
 * stores a zero count in every cell (others counting meanwhile may keep an
 * event or two).
 *
 * Memory ordering
 * ---------------
 * Every cell operation is __ATOMIC_RELAXED.  Each cell is an independent
 * counter: no other memory is published through it, and a reader needs no
 * ordering between the rows it takes the minimum of (each row's value is a
 * count that really existed; the minimum of values each >= the key's true
 * count at some instant is still >= the count at the earliest of them).
 * Atomicity of each read-modify-write is what prevents lost updates, and
 * relaxed RMWs on one location are totally ordered (modification order).
 * origin_ns and hwm are likewise single words read and written relaxed: a
 * stale reading only makes a caller use the previous window for that call,
 * which the tag rules above absorb.  The header fields that never change
 * (shape, seeds, interval) were published before any process could read
 * them: by fork(), or by sw_shm_publish's release store (sw_shm.h).
 *
 * Nothing here allocates, logs, blocks or calls Python.
 */
#ifndef SW_SCOUNT_H
#define SW_SCOUNT_H

#include <stddef.h>
#include <stdint.h>

#include "sw_cms.h"
#include "sw_shm.h"

#define SW_TAG_BITS 24
#define SW_COUNT_BITS 40
#define SW_TAG_AHEAD 2 /* a tag up to this many windows ahead is "newer", not stale */

/* ---- plain count-min cells (Estimator, Inflight) ------------------------ */

/* Atomically add n to cells[idx[i]], i < hashes; return the minimum of the
 * values produced. */
int64_t sw_acms_add_at(int64_t *cells, uint32_t hashes, const uint32_t *idx, int64_t n);

/* Minimum of cells[idx[i]], i < hashes (relaxed loads). */
int64_t sw_acms_get_at(const int64_t *cells, uint32_t hashes, const uint32_t *idx);

/* Store 0 in n cells (each store atomic; the whole is not). */
void sw_acms_zero(int64_t *cells, size_t n);

/* ---- window-tagged cells -------------------------------------------------- */

/* Add n to the count of window `w` in *cell (replacing an older window's
 * count); return the cell's count afterwards. */
int64_t sw_tcell_add(uint64_t *cell, int64_t w, int64_t n);

/* The count *cell holds for window w (0 when the cell is older). */
int64_t sw_tcell_get(const uint64_t *cell, int64_t w);

/* The packed value of (w, count): what a cell holding it contains. */
uint64_t sw_tcell_pack(int64_t w, int64_t count);

/* ---- shared two-window rate ---------------------------------------------- */

typedef struct sw_srate {
    sw_cms shape;       /* hashes, slots, seeds (cells unused): hashing only */
    sw_shm_hdr *hdr;    /* interval_ns, origin_ns, hwm */
    uint64_t *cells;    /* 2 * hashes * slots tagged cells after the header */
    int64_t interval_ns;
} sw_srate;

/* Point r at a region of kind SW_SHM_RATE whose header is complete. */
void sw_srate_attach(sw_srate *r, sw_shm_hdr *hdr);

/* Bytes a shared rate of this shape needs (header included). */
size_t sw_srate_size(uint32_t hashes, uint32_t slots);

/* Current window index for now_ns (see above); *into_ns = nanoseconds
 * elapsed in it, in [0, interval_ns). */
int64_t sw_srate_window(sw_srate *r, int64_t now_ns, int64_t *into_ns);

/* As sw_rate.h's functions of the same names, on the shared sketches. */
int64_t sw_srate_observe(sw_srate *r, int64_t now_ns, const void *key, size_t len, int64_t n);
void sw_srate_sample_add(sw_srate *r, int64_t now_ns, const void *key, size_t len, int64_t n,
                         int64_t *prev, int64_t *curr, int64_t *elapsed_ns);
void sw_srate_reset(sw_srate *r, int64_t now_ns);

#endif /* SW_SCOUNT_H */
