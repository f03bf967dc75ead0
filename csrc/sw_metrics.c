/* sw_metrics.c - see sw_metrics.h for the contract. */
#define _GNU_SOURCE
#include "sw_metrics.h"

#include <errno.h>
#include <sched.h>
#include <string.h>

#define ALIGN64(x) (((x) + 63u) & ~(size_t)63u)

/* Where each part of the store starts, from its shape. */
typedef struct layout {
    size_t owners, table, bytes, cells, end;
} layout;

static int shape(uint32_t nslabs, uint32_t ncells, uint32_t nseries, uint32_t nbytes, layout *l)
{
    if (nslabs == 0 || ncells == 0 || nseries == 0 || nbytes == 0 ||
        (nseries & (nseries - 1)) != 0 || nslabs > (1u << 16) || ncells > (1u << 26) ||
        nseries > (1u << 24))
        return -EINVAL;
    l->owners = ALIGN64(sizeof(sw_ms_hdr));
    l->table = ALIGN64(l->owners + (size_t)nslabs * sizeof(int32_t));
    l->bytes = ALIGN64(l->table + (size_t)nseries * sizeof(sw_ms_ent));
    l->cells = ALIGN64(l->bytes + nbytes);
    l->end = l->cells + (size_t)(nslabs + 1) * ncells * sizeof(double);
    return 0;
}

static sw_ms_hdr *H(const void *base)
{
    return (sw_ms_hdr *)base;
}

static layout lay(const void *base)
{
    layout l;
    const sw_ms_hdr *h = H(base);
    shape(h->nslabs, h->ncells, h->nseries, h->nbytes, &l);
    return l;
}

static int32_t *owners(const void *base)
{
    return (int32_t *)((char *)base + lay(base).owners);
}

static sw_ms_ent *table(const void *base)
{
    return (sw_ms_ent *)((char *)base + lay(base).table);
}

static char *keybytes(const void *base)
{
    return (char *)base + lay(base).bytes;
}

size_t sw_ms_size(uint32_t nslabs, uint32_t ncells, uint32_t nseries, uint32_t nbytes)
{
    layout l;
    if (shape(nslabs, ncells, nseries, nbytes, &l) != 0)
        return 0;
    return l.end;
}

int sw_ms_init(void *base, size_t size, uint32_t nslabs, uint32_t ncells, uint32_t nseries,
               uint32_t nbytes)
{
    layout l;
    pthread_mutexattr_t a;
    sw_ms_hdr *h = H(base);
    if (shape(nslabs, ncells, nseries, nbytes, &l) != 0 || size < l.end)
        return -EINVAL;
    h->nslabs = nslabs;
    h->ncells = ncells;
    h->nseries = nseries;
    h->nbytes = nbytes;
    if (pthread_mutexattr_init(&a) != 0)
        return -EINVAL;
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    if (pthread_mutex_init(&h->lock, &a) != 0) {
        pthread_mutexattr_destroy(&a);
        return -EINVAL;
    }
    pthread_mutexattr_destroy(&a);
    __atomic_store_n(&h->magic, SW_MS_MAGIC, __ATOMIC_RELEASE);
    return 0;
}

/* FNV-1a, 64 bits. */
static uint64_t hash_key(const char *k, uint32_t n)
{
    uint64_t x = 0xcbf29ce484222325ULL;
    for (uint32_t i = 0; i < n; i++) {
        x ^= (unsigned char)k[i];
        x *= 0x100000001b3ULL;
    }
    return x;
}

/* The slot holding `key`, or the empty slot where it would go (-1: the
 * table is full).  *found says which. */
static long probe(const void *base, const char *key, uint32_t klen, uint64_t hv, int *found)
{
    const sw_ms_hdr *h = H(base);
    sw_ms_ent *t = table(base);
    const char *kb = keybytes(base);
    uint32_t mask = h->nseries - 1;
    for (uint32_t n = 0, i = (uint32_t)hv & mask; n < h->nseries; n++, i = (i + 1) & mask) {
        if (__atomic_load_n(&t[i].state, __ATOMIC_ACQUIRE) == 0) {
            *found = 0;
            return i;
        }
        if (t[i].hash == hv && t[i].key_len == klen && memcmp(kb + t[i].key_off, key, klen) == 0) {
            *found = 1;
            return i;
        }
    }
    *found = 0;
    return -1;
}

static int lock(sw_ms_hdr *h)
{
    int rc = pthread_mutex_lock(&h->lock);
    if (rc == EOWNERDEAD) {
        /* The holder died; the table is consistent anyway: an entry becomes
         * visible only by its last store, and counters only ever grow. */
        pthread_mutex_consistent(&h->lock);
        rc = 0;
    }
    return rc == 0 ? 0 : -rc;
}

static int same(const sw_ms_ent *e, uint32_t kind, uint32_t ncells, uint32_t *first)
{
    if (e->kind != kind || e->ncells != ncells)
        return -EINVAL;
    *first = e->first;
    return 0;
}

int sw_ms_series(void *base, const char *key, uint32_t klen, const char *val, uint32_t vlen,
                 uint32_t kind, uint32_t ncells, uint32_t *first)
{
    sw_ms_hdr *h = H(base);
    sw_ms_ent *t = table(base);
    uint64_t hv;
    long i;
    int found, rc;
    sw_ms_ent *e;

    if (klen == 0 || kind < SW_MK_COUNTER || kind > SW_MK_INFO ||
        (kind == SW_MK_INFO) != (ncells == 0) ||
        (kind == SW_MK_HISTOGRAM && ncells < 2))
        return -EINVAL;
    hv = hash_key(key, klen);
    i = probe(base, key, klen, hv, &found);
    if (found)
        return same(&t[i], kind, ncells, first);
    if ((rc = lock(h)) != 0)
        return rc;
    i = probe(base, key, klen, hv, &found);
    if (found) {
        rc = same(&t[i], kind, ncells, first);
        goto out;
    }
    /* Keep one slot empty so a probe always ends. */
    if (i < 0 || h->series_used + 1 >= h->nseries ||
        (uint64_t)h->cells_used + ncells > h->ncells ||
        (uint64_t)h->bytes_used + klen + vlen > h->nbytes) {
        rc = -ENOSPC;
        goto out;
    }
    e = &t[i];
    e->kind = kind;
    e->first = h->cells_used;
    e->ncells = ncells;
    e->hash = hv;
    e->key_off = h->bytes_used;
    e->key_len = klen;
    memcpy(keybytes(base) + e->key_off, key, klen);
    e->val_off = e->key_off + klen;
    e->val_len = vlen;
    if (vlen)
        memcpy(keybytes(base) + e->val_off, val, vlen);
    __atomic_store_n(&h->bytes_used, h->bytes_used + klen + vlen, __ATOMIC_RELAXED);
    __atomic_store_n(&h->cells_used, h->cells_used + ncells, __ATOMIC_RELAXED);
    __atomic_store_n(&h->series_used, h->series_used + 1, __ATOMIC_RELAXED);
    *first = e->first;
    __atomic_store_n(&e->state, 1u, __ATOMIC_RELEASE);
    rc = 1;
out:
    pthread_mutex_unlock(&h->lock);
    return rc;
}

int sw_ms_claim(void *base, int32_t pid)
{
    sw_ms_hdr *h = H(base);
    int32_t *o = owners(base);
    if (pid <= 0)
        return -EINVAL;
    for (uint32_t s = 0; s < h->nslabs; s++)
        if (__atomic_load_n(&o[s], __ATOMIC_ACQUIRE) == pid)
            return (int)s;
    for (uint32_t s = 0; s < h->nslabs; s++) {
        int32_t free_ = 0;
        if (__atomic_compare_exchange_n(&o[s], &free_, pid, 0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE))
            return (int)s;
    }
    return -ENOSPC;
}

double *sw_ms_slab(void *base, uint32_t slab)
{
    const sw_ms_hdr *h = H(base);
    if (slab > h->nslabs)
        return NULL;
    return (double *)((char *)base + lay(base).cells) + (size_t)slab * h->ncells;
}

int32_t sw_ms_owner(const void *base, uint32_t slab)
{
    if (slab >= H(base)->nslabs)
        return 0;
    return __atomic_load_n(&owners(base)[slab], __ATOMIC_ACQUIRE);
}

static int retired_kind(uint32_t kind)
{
    return kind == SW_MK_COUNTER || kind == SW_MK_HISTOGRAM;
}

int sw_ms_retire(void *base, int32_t pid)
{
    sw_ms_hdr *h = H(base);
    int32_t *o = owners(base);
    sw_ms_ent *t = table(base);
    double *src, *dst;
    uint32_t s;

    if (pid <= 0)
        return -ENOENT;
    for (s = 0; s < h->nslabs; s++)
        if (__atomic_load_n(&o[s], __ATOMIC_ACQUIRE) == pid)
            break;
    if (s == h->nslabs)
        return -ENOENT;
    src = sw_ms_slab(base, s);
    dst = sw_ms_slab(base, h->nslabs);
    __atomic_add_fetch(&h->seq, 1, __ATOMIC_ACQ_REL);
    for (uint32_t i = 0; i < h->nseries; i++) {
        if (__atomic_load_n(&t[i].state, __ATOMIC_ACQUIRE) != 1 || !retired_kind(t[i].kind))
            continue;
        for (uint32_t c = t[i].first; c < t[i].first + t[i].ncells; c++) {
            double v;
            __atomic_load(&src[c], &v, __ATOMIC_RELAXED);
            if (v != 0.0)
                sw_ms_add(dst, c, v);
        }
    }
    memset(src, 0, (size_t)h->ncells * sizeof(double));
    __atomic_add_fetch(&h->seq, 1, __ATOMIC_ACQ_REL);
    __atomic_store_n(&o[s], 0, __ATOMIC_RELEASE);
    return (int)s;
}

int sw_ms_read(void *base, uint32_t first, uint32_t ncells, uint32_t kind, double *out)
{
    const sw_ms_hdr *h = H(base);
    const int32_t *o = owners(base);
    uint64_t s1, s2;
    if ((uint64_t)first + ncells > h->ncells || kind < SW_MK_COUNTER || kind > SW_MK_HISTOGRAM)
        return -EINVAL;
    for (;;) {
        s1 = __atomic_load_n(&H(base)->seq, __ATOMIC_ACQUIRE);
        if (s1 & 1) {
            sched_yield();
            continue;
        }
        const double *b = sw_ms_slab(base, h->nslabs);
        for (uint32_t c = 0; c < ncells; c++)
            __atomic_load(&b[first + c], &out[c], __ATOMIC_RELAXED);
        for (uint32_t s = 0; s < h->nslabs; s++) {
            if (__atomic_load_n(&o[s], __ATOMIC_ACQUIRE) == 0)
                continue;
            const double *cs = sw_ms_slab(base, s);
            for (uint32_t c = 0; c < ncells; c++) {
                double v;
                __atomic_load(&cs[first + c], &v, __ATOMIC_RELAXED);
                if (kind == SW_MK_GAUGE_MAX) {
                    if (v > out[c])
                        out[c] = v;
                } else {
                    out[c] += v;
                }
            }
        }
        s2 = __atomic_load_n(&H(base)->seq, __ATOMIC_ACQUIRE);
        if (s1 == s2)
            return 0;
    }
}

int sw_ms_entry(const void *base, uint32_t i, sw_ms_ent *out)
{
    const sw_ms_ent *t;
    if (i >= H(base)->nseries)
        return -EINVAL;
    t = table(base);
    if (__atomic_load_n(&t[i].state, __ATOMIC_ACQUIRE) != 1)
        return 0;
    *out = t[i];
    return 1;
}

const char *sw_ms_bytes(const void *base, uint32_t off)
{
    return keybytes(base) + off;
}

const sw_ms_hdr *sw_ms_header(const void *base)
{
    return H(base);
}
