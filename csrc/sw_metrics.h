/* sw_metrics.h - a metrics store shared by a server's processes.
 *
 * Contract
 * --------
 * One region (sw_shm.h, anonymous: made by the master before it forks its
 * workers) holds
 *
 *   - a table of *series*: a key (bytes: the metric's name and its label
 *     values), a kind, and a range of cells [first, first + ncells);
 *   - one *slab* of cells (doubles) per writer process, plus the *base*
 *     slab (index nslabs) where the master writes and where the counts of
 *     writers that ended are kept.
 *
 * A writer (a worker) claims a slab once (sw_ms_claim, by pid) and is its
 * only writer: an update is a relaxed load and store of one double in its
 * own slab (sw_ms_add, sw_ms_observe), no atomic read-modify-write and no
 * cache line shared with another writer.  A reader sums a series' cells over
 * the slabs that are claimed plus the base slab (sw_ms_read).
 *
 * When a writer ends, the master (alone) calls sw_ms_retire(pid): the
 * writer's counter and histogram cells are added into the base slab and its
 * slab is zeroed and freed, inside a sequence count (odd while it works)
 * that readers check, so a reader never counts a cell twice nor misses it:
 * counters never go backwards when a worker is replaced.  Gauge cells of an
 * ended writer are dropped (a gauge says what live processes hold).
 *
 * Kinds (how a reader combines the slabs):
 *   SW_MK_COUNTER    sum over claimed slabs and base; retired into base
 *   SW_MK_GAUGE      sum over claimed slabs and base; not retired
 *   SW_MK_GAUGE_MAX  largest over claimed slabs and base; not retired
 *   SW_MK_HISTOGRAM  as COUNTER, cell by cell: ncells = buckets + 2 (one
 *                    count per bucket including +Inf, then the sum)
 *   SW_MK_INFO       no cells; the key names a metric and `val` holds what
 *                    describes it (type, help, labels: the caller's format)
 *
 * Registration (sw_ms_series) finds a key or adds it, under a robust
 * process-shared mutex (a writer that dies holding it does not wedge the
 * others); a key that exists is found without the lock.  Entries are never
 * removed.  Functions return 0 or a positive result, or a negative errno:
 * -ENOSPC (table, cells or key bytes exhausted), -EINVAL (bad arguments;
 * the key exists with another kind or size).  Nothing here allocates,
 * logs, or calls Python.
 */
#ifndef SW_METRICS_H
#define SW_METRICS_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#define SW_MK_COUNTER 1u
#define SW_MK_GAUGE 2u
#define SW_MK_GAUGE_MAX 3u
#define SW_MK_HISTOGRAM 4u
#define SW_MK_INFO 5u

#define SW_MS_MAGIC 0x3153525445504d53ULL /* "SMPETRS1" */

typedef struct sw_ms_ent {
    uint32_t state;     /* 0 empty, 1 ready (release store, after the rest) */
    uint32_t kind;      /* SW_MK_* */
    uint32_t first;     /* first cell */
    uint32_t ncells;
    uint32_t key_off;   /* into the key bytes */
    uint32_t key_len;
    uint32_t val_off;
    uint32_t val_len;
    uint64_t hash;
} sw_ms_ent;

typedef struct sw_ms_hdr {
    uint64_t magic;
    uint32_t nslabs;     /* writer slabs; the base slab is slab nslabs */
    uint32_t ncells;     /* cells per slab */
    uint32_t nseries;    /* table capacity, a power of two */
    uint32_t nbytes;     /* key bytes capacity */
    uint64_t seq;        /* odd while sw_ms_retire works (atomic) */
    uint32_t cells_used; /* changed under lock, read atomically */
    uint32_t bytes_used;
    uint32_t series_used;
    uint32_t _pad;
    pthread_mutex_t lock; /* robust, process-shared: registration only */
    /* then: int32_t owner[nslabs] (pid, 0 free), sw_ms_ent table[nseries],
     * char keys[nbytes], double cells[(nslabs + 1) * ncells] */
} sw_ms_hdr;

/* Bytes a store of this shape needs (0 when the shape is impossible). */
size_t sw_ms_size(uint32_t nslabs, uint32_t ncells, uint32_t nseries, uint32_t nbytes);

/* Lay a store out in `base` (size bytes, zero-filled, MAP_SHARED): 0 or
 * -EINVAL (size too small, nseries not a power of two, zeros). */
int sw_ms_init(void *base, size_t size, uint32_t nslabs, uint32_t ncells, uint32_t nseries,
               uint32_t nbytes);

/* Find or add a series.  *first gets its first cell.  Returns 0 when it
 * existed, 1 when added, -EINVAL when it exists with another kind or
 * ncells (or a bad argument), -ENOSPC when something is full. */
int sw_ms_series(void *base, const char *key, uint32_t klen, const char *val, uint32_t vlen,
                 uint32_t kind, uint32_t ncells, uint32_t *first);

/* Claim a free slab for `pid` (or the one it holds): its index, or -ENOSPC. */
int sw_ms_claim(void *base, int32_t pid);

/* Fold `pid`'s slab into the base slab and free it (master only): its
 * index, or -ENOENT. */
int sw_ms_retire(void *base, int32_t pid);

/* The cells of a slab (0..nslabs, nslabs being the base slab). */
double *sw_ms_slab(void *base, uint32_t slab);

/* The pid holding a slab (0: free). */
int32_t sw_ms_owner(const void *base, uint32_t slab);

/* A series' combined cells into out[0..ncells).  Returns 0, or -EINVAL. */
int sw_ms_read(void *base, uint32_t first, uint32_t ncells, uint32_t kind, double *out);

/* Entry i of the table (0 <= i < nseries): 1 and *out when it is ready,
 * 0 when empty, -EINVAL past the end.  Key and value bytes: sw_ms_bytes. */
int sw_ms_entry(const void *base, uint32_t i, sw_ms_ent *out);
const char *sw_ms_bytes(const void *base, uint32_t off);

/* Header numbers, for tests and /status. */
const sw_ms_hdr *sw_ms_header(const void *base);

/* --- updates: the writer's own slab, no lock, no read-modify-write ------- */

static inline void sw_ms_add(double *cells, uint32_t i, double v)
{
    double x;
    __atomic_load(&cells[i], &x, __ATOMIC_RELAXED);
    x += v;
    __atomic_store(&cells[i], &x, __ATOMIC_RELAXED);
}

static inline void sw_ms_set(double *cells, uint32_t i, double v)
{
    __atomic_store(&cells[i], &v, __ATOMIC_RELAXED);
}

/* Count `v` in a histogram whose cells start at cells[i]: the first bucket
 * whose upper bound (bounds[0..nb), ascending) is >= v, else +Inf (bucket
 * nb); then the sum (cell nb + 1).  A NaN counts in +Inf and adds nothing
 * to the sum. */
static inline void sw_ms_observe(double *cells, uint32_t i, const double *bounds, uint32_t nb,
                                 double v)
{
    uint32_t b = 0;
    while (b < nb && !(v <= bounds[b]))
        b++;
    sw_ms_add(cells, i + b, 1.0);
    if (v == v)
        sw_ms_add(cells, i + nb + 1, v);
}

#endif /* SW_METRICS_H */
