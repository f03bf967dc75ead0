/* sw_lb.c - see sw_lb.h for the contract. */
#include "sw_lb.h"
#include "sw_hash.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- weighted table --------------------------------------------------- */

static uint32_t gcd32(uint32_t a, uint32_t b)
{
    while (b) {
        uint32_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

/* A pending slot in stride scheduling: backend `idx`, virtual time num/den. */
typedef struct {
    uint64_t num;
    uint64_t den;
    uint32_t idx;
    uint32_t left;   /* slots this backend still has to place */
} slot_ev;

static int ev_less(const slot_ev *a, const slot_ev *b)
{
    uint64_t l = a->num * b->den, r = b->num * a->den;
    return l < r || (l == r && a->idx < b->idx);
}

static void heap_down(slot_ev *h, uint32_t n, uint32_t i)
{
    for (;;) {
        uint32_t l = 2 * i + 1, m = i;
        if (l < n && ev_less(&h[l], &h[m]))
            m = l;
        if (l + 1 < n && ev_less(&h[l + 1], &h[m]))
            m = l + 1;
        if (m == i)
            return;
        slot_ev t = h[i];
        h[i] = h[m];
        h[m] = t;
        i = m;
    }
}

int sw_wtable_build(sw_wtable *t, const uint32_t *weights, uint32_t n)
{
    t->slots = NULL;
    t->nslots = 0;
    t->nbackends = 0;
    if (n == 0)
        return 0;
    if (n > SW_LB_MAX_BACKENDS)
        return SW_LB_EINVAL;

    uint32_t g = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (weights[i] == 0 || weights[i] > SW_LB_MAX_WEIGHT)
            return SW_LB_EINVAL;
        g = gcd32(g, weights[i]);
    }
    uint64_t total = 0;
    for (uint32_t i = 0; i < n; i++)
        total += weights[i] / g;
    if (total > SW_LB_MAX_SLOTS)
        return SW_LB_ETOOBIG;

    uint32_t *slots = malloc(sizeof(*slots) * (size_t)total);
    slot_ev *heap = malloc(sizeof(*heap) * (size_t)n);
    if (slots == NULL || heap == NULL) {
        free(slots);
        free(heap);
        return SW_LB_ENOMEM;
    }
    for (uint32_t i = 0; i < n; i++) {
        uint32_t w = weights[i] / g;
        heap[i].num = 1;
        heap[i].den = 2 * (uint64_t)w;
        heap[i].idx = i;
        heap[i].left = w;
    }
    uint32_t hn = n;
    for (uint32_t i = n / 2; i-- > 0;)
        heap_down(heap, hn, i);
    for (uint32_t k = 0; k < (uint32_t)total; k++) {
        slots[k] = heap[0].idx;
        if (--heap[0].left == 0) {
            heap[0] = heap[--hn];
        } else {
            heap[0].num += 2;
        }
        if (hn)
            heap_down(heap, hn, 0);
    }
    free(heap);
    t->slots = slots;
    t->nslots = (uint32_t)total;
    t->nbackends = n;
    return 0;
}

void sw_wtable_free(sw_wtable *t)
{
    free(t->slots);
    t->slots = NULL;
    t->nslots = 0;
    t->nbackends = 0;
}

/* ---- fallback walk ---------------------------------------------------- */

uint32_t sw_walk_stride(uint32_t n, uint64_t seed)
{
    if (n <= 2)
        return 1;
    uint32_t s = 1 + (uint32_t)(seed % (n - 1));
    while (gcd32(s, n) != 1)
        s = s % (n - 1) + 1;
    return s;
}

/* ---- Ketama ring ------------------------------------------------------ */

/* Stable LSD radix sort of points by hash (3 passes of 11 bits).  Points are
 * generated in backend order, so stability leaves equal hashes ordered by
 * backend index, as point_cmp would.  Returns 0, or -1 if out of memory. */
static int radix_sort_points(sw_ring_point *pts, size_t n)
{
    sw_ring_point *tmp = malloc(sizeof(*tmp) * n);
    if (tmp == NULL)
        return -1;
    sw_ring_point *src = pts, *dst = tmp;
    for (unsigned shift = 0; shift < 33; shift += 11) {
        size_t count[2048] = {0};
        for (size_t i = 0; i < n; i++)
            count[(src[i].hash >> shift) & 2047]++;
        size_t sum = 0;
        for (size_t b = 0; b < 2048; b++) {
            size_t c = count[b];
            count[b] = sum;
            sum += c;
        }
        for (size_t i = 0; i < n; i++)
            dst[count[(src[i].hash >> shift) & 2047]++] = src[i];
        sw_ring_point *t = src;
        src = dst;
        dst = t;
    }
    /* Three passes: the sorted data is in tmp. */
    memcpy(pts, src, sizeof(*pts) * n);
    free(tmp);
    return 0;
}

static int point_cmp(const void *a, const void *b)
{
    const sw_ring_point *p = a, *q = b;
    if (p->hash != q->hash)
        return p->hash < q->hash ? -1 : 1;
    if (p->backend != q->backend)
        return p->backend < q->backend ? -1 : 1;
    return 0;
}

static uint32_t server_base(const char *s, size_t len)
{
    const char *host = s, *port = "";
    size_t host_len = len, port_len = 0;

    if (len >= 5 && strncasecmp(s, "unix:", 5) == 0) {
        host = s + 5;
        host_len = len - 5;
    } else {
        for (size_t j = len; j-- > 0;) {
            if (s[j] == ':') {
                host_len = j;
                port = s + j + 1;
                port_len = len - j - 1;
                break;
            }
        }
    }
    uint32_t base = sw_crc32_update(SW_CRC32_INIT, host, host_len);
    base = sw_crc32_update(base, "", 1);
    return sw_crc32_update(base, port, port_len);
}

int sw_ring_build(sw_ring *r, const char *const *names, const size_t *lens,
                  const uint32_t *weights, uint32_t n)
{
    r->points = NULL;
    r->npoints = 0;
    r->nbackends = 0;
    if (n == 0)
        return 0;
    if (n > SW_LB_MAX_BACKENDS)
        return SW_LB_EINVAL;
    uint64_t total = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (weights[i] == 0 || weights[i] > SW_LB_MAX_WEIGHT)
            return SW_LB_EINVAL;
        total += (uint64_t)weights[i] * SW_KETAMA_POINTS;
    }
    if (total > SW_LB_MAX_SLOTS)
        return SW_LB_ETOOBIG;

    sw_ring_point *pts = malloc(sizeof(*pts) * (size_t)total);
    if (pts == NULL)
        return SW_LB_ENOMEM;
    size_t k = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t base = server_base(names[i], lens[i]);
        uint32_t prev = 0;
        uint32_t np = weights[i] * SW_KETAMA_POINTS;
        for (uint32_t j = 0; j < np; j++) {
            unsigned char b[4] = {(unsigned char)prev, (unsigned char)(prev >> 8),
                                  (unsigned char)(prev >> 16), (unsigned char)(prev >> 24)};
            uint32_t h = sw_crc32_final(sw_crc32_update(base, b, 4));
            pts[k].hash = h;
            pts[k].backend = i;
            k++;
            prev = h;
        }
    }
    if (radix_sort_points(pts, k) != 0)
        qsort(pts, k, sizeof(*pts), point_cmp);   /* same order, no extra memory */
    size_t u = 0;
    for (size_t j = 1; j < k; j++) {
        if (pts[j].hash != pts[u].hash)
            pts[++u] = pts[j];
    }
    r->points = pts;
    r->npoints = (uint32_t)(u + 1);
    r->nbackends = n;
    return 0;
}

void sw_ring_free(sw_ring *r)
{
    free(r->points);
    r->points = NULL;
    r->npoints = 0;
    r->nbackends = 0;
}

uint32_t sw_ring_find(const sw_ring *r, uint32_t key_hash)
{
    uint32_t lo = 0, hi = r->npoints;
    const sw_ring_point *p = r->points;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (key_hash > p[mid].hash)
            lo = mid + 1;
        else if (key_hash < p[mid].hash)
            hi = mid;
        else
            return mid;
    }
    return lo == r->npoints ? 0 : lo;
}

void sw_ring_walk_init(sw_ring_walk *w, const sw_ring *r, uint32_t key_hash)
{
    w->ring = r;
    w->seen = NULL;
    w->start = sw_ring_find(r, key_hash);
    w->pos = w->start;
    w->steps = 0;
    w->yielded = 0;
}

int sw_ring_walk_next(sw_ring_walk *w, uint32_t *out)
{
    const sw_ring *r = w->ring;
    if (w->yielded == 0) {
        w->yielded = 1;
        *out = r->points[w->pos].backend;
        return 1;
    }
    if (w->yielded == 1 && w->steps == 0) {
        uint32_t b = r->points[w->start].backend;
        w->seen[b / 64] |= UINT64_C(1) << (b % 64);
    }
    while (w->yielded < r->nbackends && w->steps + 1 < r->npoints) {
        w->steps++;
        if (++w->pos == r->npoints)
            w->pos = 0;
        uint32_t b = r->points[w->pos].backend;
        uint64_t bit = UINT64_C(1) << (b % 64);
        if (!(w->seen[b / 64] & bit)) {
            w->seen[b / 64] |= bit;
            w->yielded++;
            *out = b;
            return 1;
        }
    }
    w->steps = r->npoints;   /* exhausted: later calls return 0 at once */
    return 0;
}

/* ---- random ------------------------------------------------------------ */

uint64_t sw_splitmix64(uint64_t *state)
{
    *state += UINT64_C(0x9e3779b97f4a7c15);
    return sw_mix64(*state);
}

/* ---- selection by load ------------------------------------------------- */

static inline int64_t load_of(const sw_loadview *v, uint32_t i)
{
    int64_t c;
    if (v->loads == NULL)
        return 0;
    c = v->loads[i]->inflight;
    if (c < 0)
        return 0;
    return c > SW_LOAD_CLAMP ? SW_LOAD_CLAMP : c;
}

static inline int usable(const sw_loadview *v, uint32_t i)
{
    return v->ok == NULL || v->ok[i];
}

/* c_i/w_i < c_j/w_j, exactly. */
static inline int less_loaded(int64_t ci, uint32_t wi, int64_t cj, uint32_t wj)
{
    return ci * (int64_t)wj < cj * (int64_t)wi;
}

int sw_load_better(const sw_loadview *v, uint32_t i, uint32_t j)
{
    int ui = usable(v, i), uj = usable(v, j);
    if (ui != uj)
        return ui;
    return less_loaded(load_of(v, i), v->weights[i], load_of(v, j), v->weights[j]);
}

uint32_t sw_lc_first(const sw_loadview *v, int64_t *cw)
{
    const uint32_t *w = v->weights;
    uint32_t n = v->n, best = n, i;
    int64_t cb = 0;
    int many = 0;

    for (i = 0; i < n; i++) {
        if (!usable(v, i))
            continue;
        int64_t c = load_of(v, i);
        if (best == n || less_loaded(c, w[i], cb, w[best])) {
            best = i;
            cb = c;
            many = 0;
        } else if (!less_loaded(cb, w[best], c, w[i])) {
            many = 1;   /* as loaded as the best so far */
        }
    }
    if (!many)
        return best;
    /* Smooth weighted round robin among the backends tied with best (all of
     * them come at or after best in index order). */
    uint32_t first = best, win = best;
    int64_t total = 0, cfirst = cb;
    uint32_t wfirst = w[first];
    for (i = first; i < n; i++) {
        if (!usable(v, i))
            continue;
        int64_t c = load_of(v, i);
        if (c * (int64_t)wfirst != cfirst * (int64_t)w[i])
            continue;
        cw[i] += w[i];
        total += w[i];
        if (cw[i] > cw[win])
            win = i;
    }
    cw[win] -= total;
    return win;
}

void sw_lc_walk_init(sw_lc_walk *w, const sw_loadview *v, int64_t *cw, int stop_unusable)
{
    w->v = *v;
    w->seen = NULL;
    w->first = sw_lc_first(v, cw);
    w->yielded = 0;
    w->stop_unusable = stop_unusable;
    w->done = 0;
}

int sw_lc_walk_next(sw_lc_walk *w, uint32_t *out)
{
    const sw_loadview *v = &w->v;
    uint32_t n = v->n;

    if (w->done)
        return 0;
    if (w->yielded == 0 && w->first < n) {
        w->yielded = 1;
        *out = w->first;
        return 1;
    }
    if (w->yielded == 1 && w->first < n)
        w->seen[w->first / 64] |= UINT64_C(1) << (w->first % 64);
    if (w->yielded == n) {
        w->done = 1;
        return 0;
    }
    /* The best backend not yielded yet; ties go to the nearest after the
     * first choice (scanning in that order, only a strictly better one
     * replaces the best so far). */
    uint32_t origin = w->first < n ? w->first : 0, best = n, i = origin;
    for (uint32_t k = 0; k < n; k++, i = (i + 1 == n) ? 0 : i + 1) {
        if (w->seen[i / 64] & (UINT64_C(1) << (i % 64)))
            continue;
        if (best == n || sw_load_better(v, i, best))
            best = i;
    }
    if (w->stop_unusable && !usable(v, best)) {
        w->done = 1;
        return 0;
    }
    w->seen[best / 64] |= UINT64_C(1) << (best % 64);
    w->yielded++;
    *out = best;
    return 1;
}

void sw_p2c_walk_init(sw_p2c_walk *w, const sw_loadview *v, const sw_wtable *t,
                      uint64_t *state, int stop_unusable)
{
    uint64_t r1 = sw_splitmix64(state);
    uint64_t r2 = sw_splitmix64(state);
    uint32_t x;

    w->v = *v;
    w->seed = sw_splitmix64(state);
    w->c1 = t->slots[r1 % t->nslots];
    sw_walk_init(&w->walk, w->c1, v->n, w->seed);
    w->c2 = t->slots[r2 % t->nslots];
    if (w->c2 == w->c1 && sw_walk_next(&w->walk, &x))
        w->c2 = x;
    w->taken = 0;
    w->has_held = 0;
    w->stop_unusable = stop_unusable;
    w->phase = 0;
    w->skipped = NULL;
}

/* The next backend of the sequence c1, c2, rest of the walk. */
static int p2c_take(sw_p2c_walk *w, uint32_t *out)
{
    uint32_t x;
    if (w->taken == 0) {
        w->taken = 1;
        *out = w->c1;
        return 1;
    }
    if (w->v.n < 2)
        return 0;
    if (w->taken == 1) {
        w->taken = 2;
        *out = w->c2;
        return 1;
    }
    while (sw_walk_next(&w->walk, &x)) {
        if (x != w->c2) {
            w->taken++;
            *out = x;
            return 1;
        }
    }
    return 0;
}

/* Phase 0: the next usable backend of the sequence, noting the unusable
 * ones passed over. */
static int p2c_take_usable(sw_p2c_walk *w, uint32_t *out)
{
    uint32_t x;
    while (p2c_take(w, &x)) {
        if (usable(&w->v, x)) {
            *out = x;
            return 1;
        }
        if (w->skipped != NULL)
            w->skipped[x / 64] |= UINT64_C(1) << (x % 64);
    }
    return 0;
}

int sw_p2c_walk_next(sw_p2c_walk *w, uint32_t *out)
{
    uint32_t a, b, x;
    if (w->has_held) {
        w->has_held = 0;
        *out = w->held;
        return 1;
    }
    if (w->phase == 0) {
        if (p2c_take_usable(w, &a)) {
            if (!p2c_take_usable(w, &b)) {
                *out = a;
                return 1;
            }
            if (less_loaded(load_of(&w->v, b), w->v.weights[b],
                            load_of(&w->v, a), w->v.weights[a])) {
                *out = b;
                w->held = a;
            } else {
                *out = a;
                w->held = b;
            }
            w->has_held = 1;
            return 1;
        }
        if (w->stop_unusable || w->skipped == NULL)
            return 0;
        /* Phase 1: the sequence again, for the backends passed over. */
        w->phase = 1;
        w->taken = 0;
        sw_walk_init(&w->walk, w->c1, w->v.n, w->seed);   /* p2c_take skips c2 in it */
    }
    while (p2c_take(w, &x)) {
        if (w->skipped[x / 64] & (UINT64_C(1) << (x % 64))) {
            *out = x;
            return 1;
        }
    }
    return 0;
}
