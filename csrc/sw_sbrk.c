/* sw_sbrk.c - see sw_sbrk.h for the contract and the memory ordering. */
#include "sw_sbrk.h"

#include "sw_scount.h"

#define RLX __ATOMIC_RELAXED
#define T_MASK ((1ULL << 48) - 1)

static inline int st_of(uint64_t w) { return (int)(w & 3); }
static inline int64_t pr_of(uint64_t w) { return (int64_t)((w >> 2) & 0x3fff); }
static inline uint64_t gen_of(uint64_t w) { return w >> 16; }
static inline uint64_t mkword(int st, int64_t probes, uint64_t gen)
{
    return (uint64_t)st | ((uint64_t)probes & 0x3fff) << 2 | gen << 16;
}

static inline uint64_t stamp(uint64_t gen, int64_t t_us)
{
    return (gen & 0xffff) << 48 | ((uint64_t)t_us & T_MASK);
}

/* The time in a stamp of gen `gen`, or `now_us` when it belongs to another. */
static inline int64_t stamp_time(uint64_t s, uint64_t gen, int64_t now_us)
{
    return (s >> 48) == (gen & 0xffff) ? (int64_t)(s & T_MASK) : now_us;
}

static inline int64_t micros(const sw_sbrk *b, int64_t now_ns)
{
    int64_t d = now_ns - __atomic_load_n(&b->hdr->origin_ns, RLX);
    return d > 0 ? d / 1000 : 0;
}

size_t sw_sbrk_size(uint32_t capacity)
{
    return SW_SHM_HDR_SIZE + (size_t)capacity * sizeof(sw_sbrk_entry);
}

void sw_sbrk_attach(sw_sbrk *b, sw_shm_hdr *hdr, const sw_sbrk_conf *conf)
{
    b->hdr = hdr;
    b->table = (sw_sbrk_entry *)((char *)hdr + SW_SHM_HDR_SIZE);
    b->capacity = hdr->slots;
    b->conf = *conf;
}

sw_sbrk_entry *sw_sbrk_find(sw_sbrk *b, uint64_t h, int claim)
{
    uint64_t k = h | 1, cur;
    for (uint32_t i = 0, at = (uint32_t)(h % b->capacity); i < b->capacity;
         i++, at = at + 1 == b->capacity ? 0 : at + 1) {
        sw_sbrk_entry *e = &b->table[at];
        cur = __atomic_load_n(&e->key, RLX);
        if (cur == k)
            return e;
        if (cur == 0) {
            if (!claim)
                return NULL;
            if (__atomic_compare_exchange_n(&e->key, &cur, k, 0, RLX, RLX) || cur == k)
                return e;
            /* another key took it: go on probing */
        }
    }
    return NULL;
}

/* Window index and the fraction of it elapsed, as the per-process breaker's
 * roll(): floor((now - origin) / window), never below 0. */
static int64_t window_of(const sw_sbrk *b, int64_t now_ns, double *fraction)
{
    int64_t d = now_ns - __atomic_load_n(&b->hdr->origin_ns, RLX);
    int64_t w = d > 0 ? d / b->conf.window_ns : 0;
    double f = (double)(d - w * b->conf.window_ns) / (double)b->conf.window_ns;
    *fraction = f < 0.0 ? 0.0 : (f > 1.0 ? 1.0 : f);
    return w;
}

static void counts(const sw_sbrk *b, sw_sbrk_entry *e, int64_t now_ns, double *total,
                   double *failed)
{
    double f;
    int64_t w = window_of(b, now_ns, &f);
    double keep = 1.0 - f;
    *total = (double)sw_tcell_get(&e->cells[(w - 1) & 1][0], w - 1) * keep +
             (double)sw_tcell_get(&e->cells[w & 1][0], w);
    *failed = (double)sw_tcell_get(&e->cells[(w - 1) & 1][1], w - 1) * keep +
              (double)sw_tcell_get(&e->cells[w & 1][1], w);
}

static void clear_counts(const sw_sbrk *b, sw_sbrk_entry *e, int64_t now_ns)
{
    double f;
    uint64_t z = sw_tcell_pack(window_of(b, now_ns, &f), 0);
    __atomic_store_n(&e->cells[0][0], z, RLX);
    __atomic_store_n(&e->cells[0][1], z, RLX);
    __atomic_store_n(&e->cells[1][0], z, RLX);
    __atomic_store_n(&e->cells[1][1], z, RLX);
    __atomic_store_n(&e->consecutive, 0, RLX);
}

int sw_sbrk_admit(sw_sbrk *b, sw_sbrk_entry *e, int64_t now_ns, uint64_t *gen,
                  int64_t *retry_us, int *event)
{
    uint64_t w = __atomic_load_n(&e->word, RLX);
    int64_t now_us = -1;
    *event = SW_BRK_EV_NONE;
    for (;;) {
        uint64_t g = gen_of(w);
        int64_t probes;
        if (st_of(w) == SW_BRK_CLOSED) {
            *gen = g;
            return SW_BRK_ADMIT;
        }
        if (now_us < 0)
            now_us = micros(b, now_ns);
        if (st_of(w) == SW_BRK_OPEN) {
            int64_t t = stamp_time(__atomic_load_n(&e->opened, RLX), g, now_us);
            int64_t left = t + b->conf.cooldown_us - now_us;
            if (left > 0) {
                *retry_us = left;
                return SW_BRK_REFUSE_OPEN;
            }
            if (__atomic_compare_exchange_n(&e->word, &w, mkword(SW_BRK_HALF_OPEN, 0, g + 1),
                                            0, RLX, RLX)) {
                *event = SW_BRK_EV_COOLED;
                w = mkword(SW_BRK_HALF_OPEN, 0, g + 1);
            }
            continue; /* half-open now (ours or another's move): take a probe */
        }
        /* half-open */
        probes = pr_of(w);
        {
            int64_t t = stamp_time(__atomic_load_n(&e->probe_at, RLX), g, now_us);
            if (probes >= b->conf.probes && now_us - t >= b->conf.cooldown_us)
                probes = 0; /* probes that never reported: free their places */
            if (probes >= b->conf.probes) {
                int64_t left = t + b->conf.cooldown_us - now_us;
                *retry_us = left > 0 ? left : 0;
                return SW_BRK_REFUSE_BUSY;
            }
        }
        if (__atomic_compare_exchange_n(&e->word, &w, mkword(SW_BRK_HALF_OPEN, probes + 1, g),
                                        0, RLX, RLX)) {
            __atomic_store_n(&e->probe_at, stamp(g, now_us), RLX);
            *gen = g;
            return SW_BRK_PROBE;
        }
    }
}

/* CAS word from w to `st` with the next gen; stamps `opened` or clears the
 * counts as the new state needs.  1 if this call made the move. */
static int move(sw_sbrk *b, sw_sbrk_entry *e, uint64_t *w, int st, int64_t now_ns)
{
    uint64_t g = gen_of(*w) + 1;
    if (st == SW_BRK_CLOSED)
        clear_counts(b, e, now_ns);
    if (!__atomic_compare_exchange_n(&e->word, w, mkword(st, 0, g), 0, RLX, RLX))
        return 0;
    if (st == SW_BRK_OPEN)
        __atomic_store_n(&e->opened, stamp(g, micros(b, now_ns)), RLX);
    return 1;
}

int sw_sbrk_record(sw_sbrk *b, sw_sbrk_entry *e, int ok, uint64_t gen, int probe,
                   int64_t now_ns, int64_t *detail, double *total, double *failed)
{
    uint64_t w = __atomic_load_n(&e->word, RLX);
    double f;
    int64_t win, c;
    for (;;) {
        if (gen_of(w) != gen)
            return SW_BRK_EV_NONE; /* admitted under an earlier state */
        if (st_of(w) == SW_BRK_HALF_OPEN) {
            if (!probe)
                return SW_BRK_EV_NONE;
            if (move(b, e, &w, ok ? SW_BRK_CLOSED : SW_BRK_OPEN, now_ns))
                return ok ? SW_BRK_EV_PROBE_OK : SW_BRK_EV_PROBE_FAILED;
            continue; /* w was reloaded: same gen (probe count moved) or not */
        }
        break;
    }
    if (st_of(w) != SW_BRK_CLOSED)
        return SW_BRK_EV_NONE;
    win = window_of(b, now_ns, &f);
    sw_tcell_add(&e->cells[win & 1][0], win, 1);
    if (ok) {
        __atomic_store_n(&e->consecutive, 0, RLX);
        return SW_BRK_EV_NONE;
    }
    sw_tcell_add(&e->cells[win & 1][1], win, 1);
    c = __atomic_add_fetch(&e->consecutive, 1, RLX);
    if (b->conf.failures > 0 && c >= b->conf.failures) {
        *detail = c;
        return move(b, e, &w, SW_BRK_OPEN, now_ns) ? SW_BRK_EV_TRIP_CONSECUTIVE
                                                    : SW_BRK_EV_NONE;
    }
    if (b->conf.error_rate > 0.0) {
        counts(b, e, now_ns, total, failed);
        if (*total >= (double)b->conf.min_requests && *failed >= b->conf.error_rate * *total)
            return move(b, e, &w, SW_BRK_OPEN, now_ns) ? SW_BRK_EV_TRIP_RATE : SW_BRK_EV_NONE;
    }
    return SW_BRK_EV_NONE;
}

int sw_sbrk_reset(sw_sbrk *b, sw_sbrk_entry *e, int64_t now_ns, int *from)
{
    uint64_t w = __atomic_load_n(&e->word, RLX);
    while (st_of(w) != SW_BRK_CLOSED) {
        *from = st_of(w);
        if (move(b, e, &w, SW_BRK_CLOSED, now_ns))
            return SW_BRK_EV_RESET;
    }
    return SW_BRK_EV_NONE;
}

int sw_sbrk_state(const sw_sbrk_entry *e)
{
    return st_of(__atomic_load_n(&e->word, RLX));
}

void sw_sbrk_stats(sw_sbrk *b, sw_sbrk_entry *e, int64_t now_ns, int64_t *consecutive,
                   double *total, double *failed)
{
    *consecutive = __atomic_load_n(&e->consecutive, RLX);
    counts(b, e, now_ns, total, failed);
}
