/* sw_rate.c - see sw_rate.h for the contract. */
#include "sw_rate.h"

int sw_rate_init(sw_rate *r, uint32_t hashes, uint32_t slots, const uint64_t *seeds,
                 int64_t interval_ns, int64_t now_ns)
{
    int rc;
    r->est[0].cells = NULL;
    r->est[1].cells = NULL;
    r->cur = 0;
    r->interval_ns = interval_ns;
    r->start_ns = now_ns;
    r->window = 0;
    if (interval_ns <= 0)
        return SW_CMS_EINVAL;
    rc = sw_cms_init(&r->est[0], hashes, slots, seeds);
    if (rc != SW_CMS_OK)
        return rc;
    rc = sw_cms_init(&r->est[1], hashes, slots, seeds);
    if (rc != SW_CMS_OK) {
        sw_cms_free(&r->est[0]);
        return rc;
    }
    return SW_CMS_OK;
}

void sw_rate_free(sw_rate *r)
{
    sw_cms_free(&r->est[0]);
    sw_cms_free(&r->est[1]);
}

int64_t sw_rate_advance(sw_rate *r, int64_t now_ns)
{
    int64_t elapsed = now_ns - r->start_ns;
    int64_t w, into;
    if (elapsed < 0)
        elapsed = 0;
    w = elapsed / r->interval_ns;
    if (w > r->window) {
        if (w == r->window + 1) {
            r->cur ^= 1;
            sw_cms_reset(&r->est[r->cur]);
        } else {
            sw_cms_reset(&r->est[0]);
            sw_cms_reset(&r->est[1]);
        }
        r->window = w;
    }
    into = elapsed - r->window * r->interval_ns;
    if (into < 0) /* clock stepped back into an earlier window */
        into = 0;
    return into;
}

int64_t sw_rate_observe(sw_rate *r, int64_t now_ns, const void *key, size_t len, int64_t n)
{
    uint32_t idx[SW_CMS_MAX_HASHES];
    sw_rate_advance(r, now_ns);
    sw_cms_index(&r->est[0], key, len, idx);
    return sw_cms_add_at(&r->est[r->cur], idx, n);
}

void sw_rate_sample_add(sw_rate *r, int64_t now_ns, const void *key, size_t len, int64_t n,
                        int64_t *prev, int64_t *curr, int64_t *elapsed_ns)
{
    uint32_t idx[SW_CMS_MAX_HASHES];
    *elapsed_ns = sw_rate_advance(r, now_ns);
    sw_cms_index(&r->est[0], key, len, idx);
    *curr = sw_cms_add_at(&r->est[r->cur], idx, n);
    *prev = sw_cms_get_at(&r->est[r->cur ^ 1], idx);
}

void sw_rate_sample(sw_rate *r, int64_t now_ns, const void *key, size_t len,
                    int64_t *prev, int64_t *curr, int64_t *elapsed_ns)
{
    uint32_t idx[SW_CMS_MAX_HASHES];
    *elapsed_ns = sw_rate_advance(r, now_ns);
    sw_cms_index(&r->est[0], key, len, idx);
    *curr = sw_cms_get_at(&r->est[r->cur], idx);
    *prev = sw_cms_get_at(&r->est[r->cur ^ 1], idx);
}

void sw_rate_reset(sw_rate *r, int64_t now_ns)
{
    sw_cms_reset(&r->est[0]);
    sw_cms_reset(&r->est[1]);
    r->cur = 0;
    r->start_ns = now_ns;
    r->window = 0;
}
