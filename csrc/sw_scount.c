/* sw_scount.c - see sw_scount.h for the contract and the memory ordering. */
#include "sw_scount.h"

#define RLX __ATOMIC_RELAXED
#define TAG_MASK ((1ULL << SW_TAG_BITS) - 1)
#define CNT_MASK ((1ULL << SW_COUNT_BITS) - 1)
#define CNT_SIGN (1ULL << (SW_COUNT_BITS - 1))

_Static_assert(SW_TAG_BITS + SW_COUNT_BITS == 64, "a tagged cell is one 64-bit word");

/* ---- plain count-min cells ------------------------------------------------ */

int64_t sw_acms_add_at(int64_t *cells, uint32_t hashes, const uint32_t *idx, int64_t n)
{
    int64_t est = INT64_MAX;
    for (uint32_t i = 0; i < hashes; i++) {
        /* Unsigned add: wraps like sw_cms (no signed-overflow UB). */
        uint64_t v = __atomic_add_fetch((uint64_t *)&cells[idx[i]], (uint64_t)n, RLX);
        if ((int64_t)v < est)
            est = (int64_t)v;
    }
    return est;
}

int64_t sw_acms_get_at(const int64_t *cells, uint32_t hashes, const uint32_t *idx)
{
    int64_t est = INT64_MAX;
    for (uint32_t i = 0; i < hashes; i++) {
        int64_t v = __atomic_load_n(&cells[idx[i]], RLX);
        if (v < est)
            est = v;
    }
    return est;
}

void sw_acms_zero(int64_t *cells, size_t n)
{
    for (size_t i = 0; i < n; i++)
        __atomic_store_n(&cells[i], 0, RLX);
}

/* ---- window-tagged cells ---------------------------------------------------- */

static inline int64_t cnt_of(uint64_t v)
{
    /* Sign-extend the low SW_COUNT_BITS bits, without implementation-defined
     * shifts. */
    return (int64_t)((v & CNT_MASK) ^ CNT_SIGN) - (int64_t)CNT_SIGN;
}

static inline uint64_t pack(uint64_t tag, int64_t count)
{
    return ((tag & TAG_MASK) << SW_COUNT_BITS) | ((uint64_t)count & CNT_MASK);
}

uint64_t sw_tcell_pack(int64_t w, int64_t count)
{
    return pack((uint64_t)w, count);
}

/* Windows the cell's tag is ahead of w, modulo 2**SW_TAG_BITS, as a signed
 * number in [-2**23, 2**23). */
static inline int64_t ahead(uint64_t v, int64_t w)
{
    uint64_t d = ((v >> SW_COUNT_BITS) - (uint64_t)w) & TAG_MASK;
    return d >= (TAG_MASK + 1) / 2 ? (int64_t)d - (int64_t)(TAG_MASK + 1) : (int64_t)d;
}

int64_t sw_tcell_add(uint64_t *cell, int64_t w, int64_t n)
{
    uint64_t old = __atomic_load_n(cell, RLX), nv;
    for (;;) {
        int64_t d = ahead(old, w);
        if (d >= 0 && d <= SW_TAG_AHEAD) /* this window, or a newer one: add */
            nv = pack(old >> SW_COUNT_BITS, (int64_t)((uint64_t)cnt_of(old) + (uint64_t)n));
        else /* an older window's count: this window starts from n */
            nv = pack((uint64_t)w, n);
        if (__atomic_compare_exchange_n(cell, &old, nv, 1, RLX, RLX))
            return cnt_of(nv);
        /* old now holds what another process wrote: decide again */
    }
}

int64_t sw_tcell_get(const uint64_t *cell, int64_t w)
{
    uint64_t v = __atomic_load_n(cell, RLX);
    int64_t d = ahead(v, w);
    return d >= 0 && d <= SW_TAG_AHEAD ? cnt_of(v) : 0;
}

/* ---- shared two-window rate ---------------------------------------------------- */

size_t sw_srate_size(uint32_t hashes, uint32_t slots)
{
    return SW_SHM_HDR_SIZE + 2 * (size_t)hashes * slots * sizeof(uint64_t);
}

void sw_srate_attach(sw_srate *r, sw_shm_hdr *hdr)
{
    r->hdr = hdr;
    r->cells = (uint64_t *)((char *)hdr + SW_SHM_HDR_SIZE);
    r->interval_ns = hdr->interval_ns;
    sw_cms_shape(&r->shape, hdr->hashes, hdr->slots, hdr->seeds);
}

int64_t sw_srate_window(sw_srate *r, int64_t now_ns, int64_t *into_ns)
{
    int64_t elapsed = now_ns - __atomic_load_n(&r->hdr->origin_ns, RLX);
    int64_t w = elapsed >= 0 ? elapsed / r->interval_ns : -1;
    int64_t h = __atomic_load_n(&r->hdr->hwm, RLX);
    int64_t into;
    while (w > h) {
        if (__atomic_compare_exchange_n(&r->hdr->hwm, &h, w, 1, RLX, RLX))
            break;
    }
    if (h > w)
        w = h; /* windows never move backwards */
    into = elapsed - w * r->interval_ns;
    *into_ns = into < 0 ? 0 : into;
    return w;
}

static inline uint64_t *sketch(sw_srate *r, int64_t w)
{
    return r->cells + (size_t)(w & 1) * r->shape.hashes * r->shape.slots;
}

int64_t sw_srate_observe(sw_srate *r, int64_t now_ns, const void *key, size_t len, int64_t n)
{
    uint32_t idx[SW_CMS_MAX_HASHES];
    int64_t into, w = sw_srate_window(r, now_ns, &into);
    uint64_t *cur = sketch(r, w);
    int64_t est = INT64_MAX;
    sw_cms_index(&r->shape, key, len, idx);
    for (uint32_t i = 0; i < r->shape.hashes; i++) {
        int64_t v = sw_tcell_add(&cur[idx[i]], w, n);
        if (v < est)
            est = v;
    }
    return est;
}

void sw_srate_sample_add(sw_srate *r, int64_t now_ns, const void *key, size_t len, int64_t n,
                         int64_t *prev, int64_t *curr, int64_t *elapsed_ns)
{
    uint32_t idx[SW_CMS_MAX_HASHES];
    int64_t w = sw_srate_window(r, now_ns, elapsed_ns);
    uint64_t *cur = sketch(r, w), *old = sketch(r, w - 1);
    int64_t c = INT64_MAX, p = INT64_MAX, v;
    sw_cms_index(&r->shape, key, len, idx);
    for (uint32_t i = 0; i < r->shape.hashes; i++) {
        v = n != 0 ? sw_tcell_add(&cur[idx[i]], w, n) : sw_tcell_get(&cur[idx[i]], w);
        if (v < c)
            c = v;
        v = sw_tcell_get(&old[idx[i]], w - 1);
        if (v < p)
            p = v;
    }
    *curr = c;
    *prev = p;
}

void sw_srate_reset(sw_srate *r, int64_t now_ns)
{
    int64_t h = __atomic_load_n(&r->hdr->hwm, RLX);
    size_t n = 2 * (size_t)r->shape.hashes * r->shape.slots;
    uint64_t zero = pack((uint64_t)h, 0);
    __atomic_store_n(&r->hdr->origin_ns, now_ns - h * r->interval_ns, RLX);
    for (size_t i = 0; i < n; i++)
        __atomic_store_n(&r->cells[i], zero, RLX);
}
