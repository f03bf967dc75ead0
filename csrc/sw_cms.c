/* sw_cms.c - see sw_cms.h for the contract. */
#include "sw_cms.h"

#include <stdlib.h>
#include <string.h>

/* Odd 64-bit constants drawn at random for this file; they only need to be
 * dense in bits.  The seeds, not these, are the secret. */
#define K0 0xd5bf06390a2cd4bfULL
#define K1 0x890d00c1b579aaf5ULL
#define K2 0xbf2699110206ee59ULL
#define K3 0xe7e6c57956eded17ULL
#define K4 0x9d7b97b270bfc7e3ULL
#define K5 0xb5354b390eed9b47ULL
#define K6 0xce26f33c40a2c4f9ULL

/* 64x64 -> 128-bit product, folded: low half xor high half. */
static inline uint64_t mum(uint64_t a, uint64_t b)
{
#if defined(__SIZEOF_INT128__)
    __uint128_t r = (__uint128_t)a * b;
    return (uint64_t)r ^ (uint64_t)(r >> 64);
#else
    uint64_t al = (uint32_t)a, ah = a >> 32, bl = (uint32_t)b, bh = b >> 32;
    uint64_t ll = al * bl, lh = al * bh, hl = ah * bl, hh = ah * bh;
    uint64_t mid = (ll >> 32) + (uint32_t)lh + (uint32_t)hl;
    uint64_t lo = (mid << 32) | (uint32_t)ll;
    uint64_t hi = hh + (lh >> 32) + (hl >> 32) + (mid >> 32);
    return lo ^ hi;
#endif
}

static inline uint64_t rd64(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

/* Little-endian value of n (0..8) bytes, zero-padded. */
static inline uint64_t rdtail(const unsigned char *p, size_t n)
{
    uint64_t v = 0;
    size_t i;
    for (i = 0; i < n; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static inline uint64_t rotl64(uint64_t x, unsigned r)
{
    return (x << r) | (x >> (64 - r));
}

static inline uint64_t lane_of(uint64_t seed)
{
    return rotl64(seed, 29) ^ K4;
}

static inline uint64_t len_mix(size_t len)
{
    return mum((uint64_t)len ^ K0, K1);
}

static inline uint64_t avalanche(uint64_t h)
{
    h ^= h >> 31;
    h *= K5;
    h ^= h >> 29;
    h *= K6;
    h ^= h >> 32;
    return h;
}

/* Split the last 0..15 bytes into two zero-padded little-endian words. */
static inline void tail_words(const unsigned char *p, size_t r, uint64_t *a, uint64_t *b)
{
    if (r > 8) {
        *a = rd64(p);
        *b = rdtail(p + 8, r - 8);
    } else {
        *a = rdtail(p, r);
        *b = 0;
    }
}

uint64_t sw_cms_keyhash(uint64_t seed, const void *key, size_t len)
{
    const unsigned char *p = (const unsigned char *)key;
    /* Second secret lane: both operands of every multiply carry secret state,
     * so no chosen block can zero a product and wipe the seed out. */
    uint64_t s2 = lane_of(seed);
    uint64_t h = seed ^ len_mix(len);
    size_t r = len;
    uint64_t a, b;

    while (r >= 16) {
        h = mum(rd64(p) ^ h ^ K2, rd64(p + 8) ^ s2 ^ K3);
        p += 16;
        r -= 16;
    }
    /* The length was mixed in first, so zero padding is unambiguous. */
    tail_words(p, r, &a, &b);
    h = mum(a ^ h ^ K2, b ^ s2 ^ K3);
    return avalanche(h);
}

int sw_cms_shape(sw_cms *c, uint32_t hashes, uint32_t slots, const uint64_t *seeds)
{
    c->cells = NULL;
    c->hashes = 0;
    c->slots = 0;
    if (hashes < 1 || hashes > SW_CMS_MAX_HASHES || slots < 1 ||
        slots > SW_CMS_MAX_SLOTS || seeds == NULL)
        return SW_CMS_EINVAL;
    c->hashes = hashes;
    c->slots = slots;
    memset(c->seeds, 0, sizeof(c->seeds));
    memset(c->lanes, 0, sizeof(c->lanes));
    memcpy(c->seeds, seeds, hashes * sizeof(uint64_t));
    for (uint32_t i = 0; i < hashes; i++)
        c->lanes[i] = lane_of(seeds[i]);
    return SW_CMS_OK;
}

int sw_cms_init(sw_cms *c, uint32_t hashes, uint32_t slots, const uint64_t *seeds)
{
    int rc = sw_cms_shape(c, hashes, slots, seeds);
    if (rc != SW_CMS_OK)
        return rc;
    c->cells = (int64_t *)calloc((size_t)hashes * slots, sizeof(int64_t));
    if (c->cells == NULL) {
        c->hashes = 0;
        c->slots = 0;
        return SW_CMS_ENOMEM;
    }
    return SW_CMS_OK;
}

void sw_cms_free(sw_cms *c)
{
    free(c->cells);
    c->cells = NULL;
    c->hashes = 0;
    c->slots = 0;
}

/* sw_cms_keyhash for every row at once: the key is read once and the rows'
 * independent multiply chains overlap in the CPU.  Rows go four at a time in
 * locals (registers); must stay equal to sw_cms_keyhash(seeds[i], ...) per
 * row. */
static inline void index4(const sw_cms *c, uint32_t row, const unsigned char *p,
                          size_t len, uint64_t base, uint32_t *idx)
{
    const uint64_t slots = c->slots;
    const uint64_t l0 = c->lanes[row], l1 = c->lanes[row + 1];
    const uint64_t l2 = c->lanes[row + 2], l3 = c->lanes[row + 3];
    uint64_t h0 = c->seeds[row] ^ base, h1 = c->seeds[row + 1] ^ base;
    uint64_t h2 = c->seeds[row + 2] ^ base, h3 = c->seeds[row + 3] ^ base;
    size_t r = len;
    uint64_t a, b;

    while (r >= 16) {
        a = rd64(p) ^ K2;
        b = rd64(p + 8) ^ K3;
        h0 = mum(a ^ h0, b ^ l0);
        h1 = mum(a ^ h1, b ^ l1);
        h2 = mum(a ^ h2, b ^ l2);
        h3 = mum(a ^ h3, b ^ l3);
        p += 16;
        r -= 16;
    }
    tail_words(p, r, &a, &b);
    a ^= K2;
    b ^= K3;
    h0 = avalanche(mum(a ^ h0, b ^ l0));
    h1 = avalanche(mum(a ^ h1, b ^ l1));
    h2 = avalanche(mum(a ^ h2, b ^ l2));
    h3 = avalanche(mum(a ^ h3, b ^ l3));
    idx[row] = (uint32_t)(row * slots + (((h0 >> 32) * slots) >> 32));
    idx[row + 1] = (uint32_t)((row + 1) * slots + (((h1 >> 32) * slots) >> 32));
    idx[row + 2] = (uint32_t)((row + 2) * slots + (((h2 >> 32) * slots) >> 32));
    idx[row + 3] = (uint32_t)((row + 3) * slots + (((h3 >> 32) * slots) >> 32));
}

void sw_cms_index(const sw_cms *c, const void *key, size_t len, uint32_t *idx)
{
    const unsigned char *p = (const unsigned char *)key;
    const uint64_t base = len_mix(len);
    const uint64_t slots = c->slots;
    uint32_t row = 0;

    for (; row + 4 <= c->hashes; row += 4)
        index4(c, row, p, len, base, idx);
    for (; row < c->hashes; row++) {
        uint64_t v = sw_cms_keyhash(c->seeds[row], key, len);
        idx[row] = (uint32_t)(row * slots + (((v >> 32) * slots) >> 32));
    }
}

int64_t sw_cms_add_at(sw_cms *c, const uint32_t *idx, int64_t n)
{
    uint32_t i;
    int64_t est = INT64_MAX;
    for (i = 0; i < c->hashes; i++) {
        int64_t v = (int64_t)((uint64_t)c->cells[idx[i]] + (uint64_t)n);
        c->cells[idx[i]] = v;
        if (v < est)
            est = v;
    }
    return est;
}

int64_t sw_cms_get_at(const sw_cms *c, const uint32_t *idx)
{
    uint32_t i;
    int64_t est = INT64_MAX;
    for (i = 0; i < c->hashes; i++) {
        int64_t v = c->cells[idx[i]];
        if (v < est)
            est = v;
    }
    return est;
}

int64_t sw_cms_incr(sw_cms *c, const void *key, size_t len, int64_t n)
{
    uint32_t idx[SW_CMS_MAX_HASHES];
    sw_cms_index(c, key, len, idx);
    return sw_cms_add_at(c, idx, n);
}

int64_t sw_cms_get(const sw_cms *c, const void *key, size_t len)
{
    uint32_t idx[SW_CMS_MAX_HASHES];
    sw_cms_index(c, key, len, idx);
    return sw_cms_get_at(c, idx);
}

void sw_cms_reset(sw_cms *c)
{
    if (c->cells != NULL)
        memset(c->cells, 0, (size_t)c->hashes * c->slots * sizeof(int64_t));
}
