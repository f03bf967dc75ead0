/* sw_shm.h - memory shared between processes, and the header every shared
 * limit keeps at its start.
 *
 * Contract
 * --------
 * A region is `size` bytes mapped MAP_SHARED, zero-filled when created:
 *
 *   sw_shm_anon(m, size)         an anonymous mapping.  Processes forked after
 *                                this call see the same bytes (the way
 *                                sluiceway's workers share a limit made at
 *                                import of the application module).
 *   sw_shm_open(m, path, size, &created)
 *                                a file (normally under /dev/shm) opened by
 *                                name, for processes that are not forked from
 *                                one parent.  The first caller creates it
 *                                (O_CREAT|O_EXCL, then ftruncate), sees
 *                                *created = 1 and must fill the header and
 *                                call sw_shm_publish.  Later callers see
 *                                *created = 0 and get the mapping only once
 *                                the creator has published (they wait up to
 *                                wait_ms for that), so they never read a
 *                                half-written header.  A file whose size is
 *                                not `size` is refused with SW_SHM_ESHAPE, so
 *                                the caller can say "exists with another
 *                                shape".
 *   sw_shm_unmap(m)              unmaps (safe twice; the file stays).
 *
 * Functions return 0 or a negative errno (-ENOMEM, -EACCES, ...), or the
 * SW_SHM_E* codes below.  Nothing here allocates on the heap, logs, or calls
 * Python.
 *
 * The header
 * ----------
 * sw_shm_hdr sits at offset 0 of every region; the payload (counters, a
 * table) starts at SW_SHM_HDR_SIZE.  The fields below `magic` are written
 * once by the creator before publication (anonymous regions: before any fork;
 * named regions: before sw_shm_publish's release store of `magic`, read with
 * acquire by sw_shm_ready).  `origin_ns` and `hwm` change afterwards and are
 * only touched with __atomic builtins (see sw_scount.h for their ordering).
 */
#ifndef SW_SHM_H
#define SW_SHM_H

#include <stddef.h>
#include <stdint.h>

#define SW_SHM_MAGIC 0x31544d4c57554c53ULL /* "SLUWLMT1" little-endian */
#define SW_SHM_VERSION 1u
#define SW_SHM_HDR_SIZE 512

/* What a region holds (sw_shm_hdr.kind). */
#define SW_SHM_ESTIMATOR 1u /* hashes * slots int64 counters */
#define SW_SHM_RATE 2u      /* 2 * hashes * slots tagged counters (sw_scount.h) */
#define SW_SHM_INFLIGHT 3u  /* as ESTIMATOR */
#define SW_SHM_BREAKER 4u   /* capacity sw_sbrk_entry records (sw_sbrk.h) */

/* Return codes besides -errno. */
#define SW_SHM_ESHAPE (-1001)   /* named region exists with another size */
#define SW_SHM_ETIMEOUT (-1002) /* named region never published by its creator */

typedef struct sw_shm_hdr {
    uint64_t magic;          /* SW_SHM_MAGIC once published (release/acquire) */
    uint32_t version;        /* SW_SHM_VERSION */
    uint32_t kind;           /* SW_SHM_* */
    uint64_t size;           /* bytes of the whole region */
    uint32_t hashes;         /* sketch rows (0 for a breaker) */
    uint32_t slots;          /* sketch columns, or breaker capacity */
    uint64_t seeds[32];      /* row seeds (breaker: seeds[0] hashes its keys) */
    int64_t interval_ns;     /* window length (Rate, breaker) */
    int64_t origin_ns;       /* atomic: start of window 0 (Rate, breaker) */
    int64_t hwm;             /* atomic: highest window index seen (Rate) */
    uint64_t params[8];      /* kind-specific settings, compared on open */
} sw_shm_hdr;

_Static_assert(sizeof(sw_shm_hdr) <= SW_SHM_HDR_SIZE, "header must fit its slot");

typedef struct sw_shm {
    void *base;  /* NULL when unmapped */
    size_t size;
} sw_shm;

/* Map `size` zeroed bytes shared with future children.  size >= header. */
int sw_shm_anon(sw_shm *m, size_t size);

/* Open or create the named region at `path` (see the contract above). */
int sw_shm_open(sw_shm *m, const char *path, size_t size, int *created, int wait_ms);

/* Release store of SW_SHM_MAGIC: the header is complete. */
void sw_shm_publish(sw_shm_hdr *h);

/* Acquire load: 1 once the header was published, else 0. */
int sw_shm_ready(const sw_shm_hdr *h);

/* Unmap; safe twice.  The file of a named region stays (sw_shm_unlink). */
void sw_shm_unmap(sw_shm *m);

/* Remove the file of a named region: 0 or -errno (-ENOENT when absent). */
int sw_shm_unlink(const char *path);

#endif /* SW_SHM_H */
