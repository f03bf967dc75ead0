/* sw_span.c: see sw_span.h. */
#include "sw_span.h"

/* ASCII lower-case map for field-name comparison. */
static const unsigned char sw_lower[256] = {
#define R(x) x, x + 1, x + 2, x + 3, x + 4, x + 5, x + 6, x + 7
    R(0), R(8), R(16), R(24), R(32), R(40), R(48), R(56),
    64, 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'k', 'l', 'm', 'n', 'o',
    'p', 'q', 'r', 's', 't', 'u', 'v', 'w', 'x', 'y', 'z', 91, 92, 93, 94, 95,
    R(96), R(104), R(112), R(120), R(128), R(136), R(144), R(152), R(160), R(168),
    R(176), R(184), R(192), R(200), R(208), R(216), R(224), R(232), R(240), R(248)
#undef R
};

int sw_ieq(const char *a, const char *b, size_t n)
{
    const unsigned char *x = (const unsigned char *)a, *y = (const unsigned char *)b;
    size_t i;
    for (i = 0; i < n; i++) {
        if (sw_lower[x[i]] != sw_lower[y[i]]) return 0;
    }
    return 1;
}

int sw_find(const char *base, const sw_header_t *h, uint32_t count,
                 const char *name, size_t n, uint32_t start)
{
    uint32_t i;
    for (i = start; i < count; i++) {
        if (h[i].name.len == n && sw_ieq(base + h[i].name.off, name, n))
            return (int)i;
    }
    return -1;
}
