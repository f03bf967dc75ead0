/* sw_cms.h - count-min sketch with per-row seeded hashing.
 *
 * Contract
 * --------
 * A sketch is a table of `hashes` rows by `slots` columns of signed 64-bit
 * counters.  A key (any byte string) selects one cell per row; each row hashes
 * the key with its own 64-bit seed (sw_cms_keyhash), so two keys that collide
 * in one row almost never collide in the others, and a client that does not
 * know the seeds cannot aim collisions at one counter.
 *
 *   incr(key, n)  adds n to the key's cell in every row and returns the
 *                 minimum of those cells (the estimate after the increment).
 *   get(key)      returns the minimum of the key's cells.
 *   decr(key, n)  is incr(key, -n).
 *
 * Guarantee: while every key's true count is >= 0 (only undo increments you
 * made), get(key) >= true count of key.  With N the sum of all counts,
 * get(key) <= true + e*N/slots with probability >= 1 - exp(-hashes) for each
 * key (Cormode & Muthukrishnan, 2005).
 *
 * Arithmetic is two's complement wrapping on 64 bits (computed in uint64_t, so
 * never undefined behaviour); counts never get near 2^63 in practice.
 *
 * Column of a row: ((h >> 32) * slots) >> 32, h = sw_cms_keyhash(seed, key).
 * This exact mapping is part of the contract: the pure-Python reference
 * (corepy/sluiceway/_limits_py.py) reproduces it bit for bit.
 *
 * Memory: the struct owns `cells` (hashes * slots * 8 bytes, from calloc).
 * Threads: no locking; callers serialise access (the Python wrapper holds the
 * GIL for every call).  Nothing here logs, allocates after init, or blocks.
 */
#ifndef SW_CMS_H
#define SW_CMS_H

#include <stddef.h>
#include <stdint.h>

#define SW_CMS_MAX_HASHES 32
#define SW_CMS_MAX_SLOTS (1u << 26)

/* Return codes of sw_cms_init. */
#define SW_CMS_OK 0
#define SW_CMS_EINVAL (-1) /* hashes or slots out of range, or seeds NULL */
#define SW_CMS_ENOMEM (-2) /* calloc failed */

typedef struct sw_cms {
    uint32_t hashes;                      /* rows, 1..SW_CMS_MAX_HASHES */
    uint32_t slots;                       /* columns, 1..SW_CMS_MAX_SLOTS */
    uint64_t seeds[SW_CMS_MAX_HASHES];    /* seed of each row */
    uint64_t lanes[SW_CMS_MAX_HASHES];    /* second secret of each row, from its seed */
    int64_t *cells;                       /* row-major, hashes * slots */
} sw_cms;

/* Seeded 64-bit hash of len bytes at key (key may be NULL when len is 0).
 * A multiply-xor ("mum") construction over 16-byte blocks whose both operands
 * carry secret state, followed by an avalanche finaliser.  Not a
 * cryptographic MAC; its job is to keep the column of a key unpredictable to
 * someone who does not know the seed.  Output is identical on every platform
 * (input is read little-endian). */
uint64_t sw_cms_keyhash(uint64_t seed, const void *key, size_t len);

/* Initialise *c with `hashes` rows of `slots` zeroed counters, copying
 * seeds[0..hashes).  Returns SW_CMS_OK, SW_CMS_EINVAL or SW_CMS_ENOMEM; on
 * failure *c owns nothing and sw_cms_free(c) is still safe. */
int sw_cms_init(sw_cms *c, uint32_t hashes, uint32_t slots, const uint64_t *seeds);

/* Fill in the shape and seeds of *c without allocating counters (cells is
 * NULL): enough for sw_cms_index, for callers whose counters live elsewhere
 * (shared memory, see sw_scount.h).  Returns SW_CMS_OK or SW_CMS_EINVAL. */
int sw_cms_shape(sw_cms *c, uint32_t hashes, uint32_t slots, const uint64_t *seeds);

/* Release the counters; safe to call twice or on a failed init. */
void sw_cms_free(sw_cms *c);

/* Write the flat cell index (row * slots + column) of key in every row to
 * idx[0..hashes).  Lets a caller hash once and touch several sketches that
 * share seeds and shape (see sw_rate).  Computes all rows' hashes in one pass
 * over the key (same values as sw_cms_keyhash per row). */
void sw_cms_index(const sw_cms *c, const void *key, size_t len, uint32_t *idx);

/* Add n to the cells idx[0..hashes) and return their minimum afterwards. */
int64_t sw_cms_add_at(sw_cms *c, const uint32_t *idx, int64_t n);

/* Minimum of the cells idx[0..hashes). */
int64_t sw_cms_get_at(const sw_cms *c, const uint32_t *idx);

/* Hash key and add n; returns the estimate after the increment. */
int64_t sw_cms_incr(sw_cms *c, const void *key, size_t len, int64_t n);

/* Hash key and return its estimate. */
int64_t sw_cms_get(const sw_cms *c, const void *key, size_t len);

/* Zero every counter (seeds are kept). */
void sw_cms_reset(sw_cms *c);

#endif /* SW_CMS_H */
