/*
 * sw_lb.h - backend selection algorithms for load balancing (plain C).
 *
 * Backends are numbered 0..n-1 by the caller; every function here speaks in
 * those indexes and never sees addresses except as the byte strings that the
 * Ketama ring hashes.  Nothing here allocates after a successful *_build, logs,
 * or blocks; *_build functions return 0 or a negative SW_LB_E* code and leave
 * the structure empty (safe to *_free) on error.
 *
 * 1. Weighted table (sw_wtable), used by round robin, random and FNV hashing.
 *    Weights are first divided by their greatest common divisor; backend i
 *    then owns w_i slots of a table of T = sum(w_i) slots.  Slots are laid out
 *    by stride scheduling so that heavy backends are spread out rather than
 *    bunched: backend i's j-th slot (j = 0..w_i-1) has the virtual time
 *    (2j+1)/(2*w_i) and the table lists all slots by increasing time, ties
 *    broken by lower backend index.  A uniformly chosen slot therefore picks
 *    backend i with probability w_i/T, and walking the table in order visits
 *    each backend in proportion to its weight.
 *
 * 2. Fallback walk (sw_walk).  After a first choice f among n backends, the
 *    walk yields every other backend exactly once: f+s, f+2s, ... (mod n) with
 *    a stride s in 1..n-1 that is coprime with n, derived from a 64-bit seed
 *    (s = 1 + seed % (n-1), then incremented cyclically in 1..n-1 until
 *    coprime).  Seed 0 gives stride 1 (next backend in order).
 *
 * 3. Ketama ring (sw_ring), placing keys exactly like nginx's
 *    `hash $key consistent` (ngx_http_upstream_hash_module):
 *      - each server string is split as nginx does: a case-insensitive
 *        "unix:" prefix leaves host = the rest and port = ""; otherwise host
 *        and port are split at the LAST ':' (so "[::1]:80" gives "[::1]" and
 *        "80"); with no ':' the whole string is the host and port is "";
 *      - base = crc32 state over host, one NUL byte, port;
 *      - the server gets weight*160 points; point j's hash is
 *        crc32_final(update(base, prev)) where prev is the previous point's
 *        hash as 4 little-endian bytes (0 for j = 0);
 *      - points are sorted by hash; of equal hashes only the first is kept,
 *        the first being the lowest backend index (nginx sorts with glibc's
 *        stable merge sort over servers in configuration order);
 *      - a key is hashed with crc32 and maps to the first point whose hash is
 *        >= the key's hash, wrapping to point 0 past the end.
 *    The ring walk yields the backend of that point, then the backends of the
 *    following points in ring order, each backend at most once, and stops
 *    after one full turn.  This is also nginx's failover order when the first
 *    choice is down.
 *
 * 4. sw_splitmix64(): the splitmix64 generator (state += golden gamma, output
 *    sw_mix64(state)), used by random selection.
 *
 * 5. Selection by load (sw_lc_*, sw_p2c_*).  A view (sw_loadview) gives, for
 *    each backend i of n, its load cell loads[i] (sw_load.h: requests in
 *    flight; a NULL array means every load is 0), whether it is usable ok[i]
 *    (healthy and enabled; a NULL array means all are) and its weight w_i.
 *    Backend i is LESS LOADED than j when c_i/w_i < c_j/w_j, compared
 *    exactly as c_i*w_j < c_j*w_i, where c is the count clamped to
 *    0..SW_LOAD_CLAMP (so the products fit in 64 bits).  A usable backend
 *    is always BETTER than an unusable one; otherwise the less loaded one is.
 *
 *    Least connections, as nginx's least_conn:
 *      - first choice: among the usable backends, the least loaded; when
 *        several tie, smooth weighted round robin among them on the
 *        caller's cw[0..n-1] (zeroed at first): each tied i gets
 *        cw[i] += w_i, the largest cw wins (the lowest index among equal
 *        ones) and the winner's cw loses the sum of the tied weights.  A
 *        single least loaded backend wins alone and cw is untouched; with
 *        no usable backend there is no first choice (cw untouched).
 *      - then every backend not yielded yet, best first: usable before
 *        unusable, then less loaded, then by distance (i - f) mod n from
 *        the first choice f (f = 0 when there was none).  Each of these
 *        steps scans the n backends.  With stop_unusable the walk ends
 *        where it would yield an unusable backend: as they all come after
 *        the usable ones, a caller that wants a usable backend stops there.
 *
 *    Power of two choices:
 *      - three splitmix64 outputs r1, r2, r3 from the caller's state;
 *        c1 = slots[r1 % T] of the weighted table, c2 = slots[r2 % T], or,
 *        when that is c1 again, the first backend of the fallback walk
 *        (sw_walk) from c1 with seed r3; the SEQUENCE is c1, c2 (n >= 2),
 *        then the rest of that walk without c2.
 *      - phase 0: the usable backends of the sequence, in its order, are
 *        offered two at a time: of each pair the less loaded first (on a
 *        tie the earlier), then the other; a last odd one alone.  A usable
 *        flag is read when the sequence reaches the backend; the unusable
 *        ones passed over are noted in the caller's bitmap.
 *      - phase 1 (not with stop_unusable): the sequence once more, yielding
 *        the backends noted in phase 0, in its order.
 *      So the first choice is the less loaded of the first two usable
 *        backends of a random weighted sequence: an unusable backend drawn
 *        is replaced by the next usable one rather than handing its partner
 *        the request unweighed.  With every backend usable each step is
 *        O(1); each unusable backend costs one more step.
 */
#ifndef SW_LB_H
#define SW_LB_H

#include <stddef.h>
#include <stdint.h>

#include "sw_load.h"

#define SW_LB_ENOMEM (-1)    /* out of memory */
#define SW_LB_ETOOBIG (-2)   /* table or ring would exceed SW_LB_MAX_SLOTS */
#define SW_LB_EINVAL (-3)    /* a weight is 0, or too many backends */

#define SW_LB_MAX_SLOTS (UINT32_C(1) << 24)   /* table slots or ring points */
#define SW_LB_MAX_BACKENDS (UINT32_C(1) << 20)
#define SW_LB_MAX_WEIGHT UINT32_C(65535)
#define SW_KETAMA_POINTS 160                  /* ring points per unit of weight */

/* ---- weighted table --------------------------------------------------- */
typedef struct {
    uint32_t *slots;      /* nslots backend indexes */
    uint32_t nslots;
    uint32_t nbackends;
} sw_wtable;

/* Build the table for n backends with weights[0..n-1] (each 1..SW_LB_MAX_WEIGHT).
 * n == 0 gives an empty table.  Any previous contents of *t are NOT freed. */
int sw_wtable_build(sw_wtable *t, const uint32_t *weights, uint32_t n);
void sw_wtable_free(sw_wtable *t);

/* ---- fallback walk ---------------------------------------------------- */
typedef struct {
    uint64_t seed;
    uint32_t cur;         /* last yielded backend */
    uint32_t stride;      /* 0 until the first sw_walk_next() */
    uint32_t n;
    uint32_t left;        /* backends still to yield */
} sw_walk;

/* Start a walk over n >= 1 backends after first choice `first` (< n).  Cheap:
 * the stride is computed by the first sw_walk_next(), as most selections
 * never need a fallback. */
static inline void sw_walk_init(sw_walk *w, uint32_t first, uint32_t n, uint64_t seed)
{
    w->seed = seed;
    w->cur = first;
    w->stride = 0;
    w->n = n;
    w->left = n - 1;
}

/* The stride sw_walk uses for n backends and this seed (exposed for tests). */
uint32_t sw_walk_stride(uint32_t n, uint64_t seed);

/* Store the next backend in *out and return 1, or return 0 when done. */
static inline int sw_walk_next(sw_walk *w, uint32_t *out)
{
    if (w->left == 0)
        return 0;
    if (w->stride == 0)
        w->stride = sw_walk_stride(w->n, w->seed);
    w->left--;
    w->cur += w->stride;
    if (w->cur >= w->n)
        w->cur -= w->n;
    *out = w->cur;
    return 1;
}

/* ---- Ketama ring ------------------------------------------------------ */
typedef struct {
    uint32_t hash;
    uint32_t backend;
} sw_ring_point;

typedef struct {
    sw_ring_point *points;   /* sorted by hash, hashes unique */
    uint32_t npoints;
    uint32_t nbackends;
} sw_ring;

/* Build the ring for n servers: names[i] (lens[i] bytes, need not be NUL
 * terminated) with weights[i] (1..SW_LB_MAX_WEIGHT).  Any previous contents of
 * *r are NOT freed. */
int sw_ring_build(sw_ring *r, const char *const *names, const size_t *lens,
                  const uint32_t *weights, uint32_t n);
void sw_ring_free(sw_ring *r);

/* Index of the point a key hash maps to; r must have at least one point. */
uint32_t sw_ring_find(const sw_ring *r, uint32_t key_hash);

/* Number of uint64_t words a "seen" bitmap for n backends needs. */
static inline size_t sw_bitmap_words(uint32_t n) { return ((size_t)n + 63) / 64; }

typedef struct {
    const sw_ring *ring;
    uint64_t *seen;       /* caller's zeroed bitmap; needed from the 2nd call */
    uint32_t start;       /* point the key mapped to */
    uint32_t pos;
    uint32_t steps;       /* points walked past start */
    uint32_t yielded;     /* backends yielded so far */
} sw_ring_walk;

/* Start a walk for key_hash over a non-empty ring. */
void sw_ring_walk_init(sw_ring_walk *w, const sw_ring *r, uint32_t key_hash);
/* Store the next backend in *out and return 1, or return 0 when done.  The
 * first call needs no bitmap; before the second call the caller must set
 * w->seen to sw_bitmap_words(ring->nbackends) zeroed words. */
int sw_ring_walk_next(sw_ring_walk *w, uint32_t *out);

/* ---- random ------------------------------------------------------------ */
/* splitmix64: advance *state and return the next 64-bit output. */
uint64_t sw_splitmix64(uint64_t *state);

/* ---- selection by load ------------------------------------------------- */
#define SW_LOAD_CLAMP (INT64_C(1) << 46)   /* counts compare as at most this */

typedef struct {
    sw_load *const *loads;        /* n cells, or NULL: every load is 0 */
    const unsigned char *ok;      /* n usable flags, or NULL: all usable */
    const uint32_t *weights;      /* n weights, 1..SW_LB_MAX_WEIGHT */
    uint32_t n;
} sw_loadview;

/* Whether backend i is better than backend j (see 5. above). */
int sw_load_better(const sw_loadview *v, uint32_t i, uint32_t j);

/* Least connections' first choice for v (n >= 1), advancing cw; n when no
 * backend is usable. */
uint32_t sw_lc_first(const sw_loadview *v, int64_t *cw);

typedef struct {
    sw_loadview v;
    uint64_t *seen;       /* caller's zeroed bitmap; see sw_lc_walk_wants_seen */
    uint32_t first;       /* the first choice, or v.n when there was none */
    uint32_t yielded;     /* backends yielded so far */
    int stop_unusable;    /* end the walk instead of yielding an unusable backend */
    int done;
} sw_lc_walk;

/* Start a least-connections walk over v (n >= 1); computes the first choice
 * (sw_lc_first, which advances cw). */
void sw_lc_walk_init(sw_lc_walk *w, const sw_loadview *v, int64_t *cw, int stop_unusable);

/* Whether the next sw_lc_walk_next needs w->seen set (to
 * sw_bitmap_words(n) zeroed words): every call but the one that yields the
 * first choice does. */
static inline int sw_lc_walk_wants_seen(const sw_lc_walk *w)
{
    return w->seen == NULL && !(w->yielded == 0 && w->first < w->v.n);
}

/* Store the next backend in *out and return 1, or return 0 when done. */
int sw_lc_walk_next(sw_lc_walk *w, uint32_t *out);

typedef struct {
    sw_loadview v;
    sw_walk walk;         /* the backends after c1 and c2 */
    uint64_t seed;        /* the walk's seed r3 (phase 1 walks again) */
    uint64_t *skipped;    /* caller's zeroed bitmap; see sw_p2c_walk_wants_skipped */
    uint32_t c1, c2;
    uint32_t taken;       /* backends of the sequence taken so far */
    uint32_t held;        /* the other of the current pair, offered next */
    int has_held;
    int stop_unusable;    /* end after phase 0 */
    int phase;
} sw_p2c_walk;

/* Start a power-of-two-choices walk over v with the weighted table t of the
 * same n >= 1 backends, drawing from *state. */
void sw_p2c_walk_init(sw_p2c_walk *w, const sw_loadview *v, const sw_wtable *t,
                      uint64_t *state, int stop_unusable);

/* Whether w->skipped must be set (to sw_bitmap_words(n) zeroed words)
 * before the first sw_p2c_walk_next: only without stop_unusable. */
static inline int sw_p2c_walk_wants_skipped(const sw_p2c_walk *w)
{
    return !w->stop_unusable && w->skipped == NULL;
}
/* Store the next backend in *out and return 1, or return 0 when done. */
int sw_p2c_walk_next(sw_p2c_walk *w, uint32_t *out);

#endif /* SW_LB_H */
