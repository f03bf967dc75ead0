/* sw_alog.c: see sw_alog.h. */
#include "sw_alog.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

int sw_buf_reserve(sw_buf_t *b, size_t more) {
    size_t need = b->len + more, cap = b->cap ? b->cap : 4096;
    char *p;
    if (need < b->len)
        return -ENOMEM;
    if (need <= b->cap)
        return 0;
    while (cap < need) {
        if (cap > SIZE_MAX / 2)
            return -ENOMEM;
        cap *= 2;
    }
    p = realloc(b->p, cap);
    if (p == NULL)
        return -ENOMEM;
    b->p = p;
    b->cap = cap;
    return 0;
}

void sw_buf_free(sw_buf_t *b) {
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

static const char HEX[] = "0123456789abcdef";

static char *u_esc(char *o, unsigned cp) {      /* \uXXXX */
    o[0] = '\\';
    o[1] = 'u';
    o[2] = HEX[(cp >> 12) & 15];
    o[3] = HEX[(cp >> 8) & 15];
    o[4] = HEX[(cp >> 4) & 15];
    o[5] = HEX[cp & 15];
    return o + 6;
}

/* The length (2..4) of the well-formed UTF-8 sequence at s (n bytes left)
 * and its code point, or 0 when s[0] starts none (Unicode's table 3-7). */
static int utf8_seq(const unsigned char *s, size_t n, unsigned *cp) {
    unsigned c = s[0], lo = 0x80, hi = 0xBF;
    int len, i;
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
        *cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        *cp = c & 0x0F;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F;              /* no surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        *cp = c & 0x07;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;              /* at most U+10FFFF */
    } else {
        return 0;
    }
    if (n < (size_t)len)
        return 0;
    for (i = 1; i < len; i++) {
        unsigned d = s[i];
        if (d < lo || d > hi)
            return 0;
        lo = 0x80;
        hi = 0xBF;
        *cp = (*cp << 6) | (d & 0x3F);
    }
    return len;
}

#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL

/* Whether any of the 8 bytes in w needs an escape: below 0x20, 0x7f or
 * above, '"' or '\\' (exact bit tricks: each test has no false positive
 * when it has no true one). */
static int word_needs_escape(uint64_t w) {
    uint64_t lt20 = (w - ONES * 0x20) & ~w;
    uint64_t ge7f = (w + ONES * (0x80 - 0x7F)) | w;
    uint64_t q = w ^ (ONES * '"'), bs = w ^ (ONES * '\\');
    uint64_t eq = ((q - ONES) & ~q) | ((bs - ONES) & ~bs);
    return ((lt20 | ge7f | eq) & HIGHS) != 0;
}

static int byte_plain(unsigned c) {
    return c >= 0x20 && c < 0x7F && c != '"' && c != '\\';
}

size_t sw_json_str(char *out, const char *s, size_t n) {
    const unsigned char *p = (const unsigned char *)s;
    char *o = out;
    size_t i = 0;
    uint64_t w;
    while (i < n) {
        /* bytes that need nothing go 8 at a time, then one by one */
        while (n - i >= 8) {
            memcpy(&w, p + i, 8);
            if (word_needs_escape(w))
                break;
            memcpy(o, &w, 8);
            o += 8;
            i += 8;
        }
        while (i < n && byte_plain(p[i]))
            *o++ = (char)p[i++];
        if (i == n)
            break;
        unsigned c = p[i], cp;
        int len;
        if (c == '"' || c == '\\') {
            o[0] = '\\';
            o[1] = (char)c;
            o += 2;
            i++;
        } else if (c < 0x80) {      /* a control byte, or 0x7f */
            char named = c == '\b' ? 'b' : c == '\f' ? 'f' : c == '\n' ? 'n'
                         : c == '\r' ? 'r' : c == '\t' ? 't' : 0;
            if (named) {
                o[0] = '\\';
                o[1] = named;
                o += 2;
            } else {
                o = u_esc(o, c);
            }
            i++;
        } else if ((len = utf8_seq(p + i, n - i, &cp)) > 0) {
            if (cp >= 0x10000) {
                cp -= 0x10000;
                o = u_esc(o, 0xD800 + (cp >> 10));
                o = u_esc(o, 0xDC00 + (cp & 0x3FF));
            } else {
                o = u_esc(o, cp);
            }
            i += (size_t)len;
        } else {                    /* the text \xNN, its backslash escaped */
            o[0] = '\\';
            o[1] = '\\';
            o[2] = 'x';
            o[3] = HEX[c >> 4];
            o[4] = HEX[c & 15];
            o += 5;
            i++;
        }
    }
    return (size_t)(o - out);
}

static char *put(char *o, const char *s, size_t n) {
    memcpy(o, s, n);
    return o + n;
}

#define PUT_LIT(o, lit) put((o), (lit), sizeof(lit) - 1)

static const char PAIRS[] =
    "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
    "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
    "8081828384858687888990919293949596979899";

static char *put_u(char *o, uint64_t v) {
    /* the digits are written from the end back, two at a time */
    int n = 1;
    uint64_t t = v;
    char *end;
    while (t >= 10) {
        t /= 10;
        n++;
    }
    end = o + n;
    o = end;
    while (v >= 100) {
        o -= 2;
        memcpy(o, PAIRS + 2 * (v % 100), 2);
        v /= 100;
    }
    if (v >= 10) {
        o -= 2;
        memcpy(o, PAIRS + 2 * v, 2);
    } else {
        *--o = (char)('0' + v);
    }
    return end;
}

static char *put_dec(char *o, unsigned v, int digits) {    /* zero-padded */
    int k = digits;
    while (k >= 2) {
        k -= 2;
        memcpy(o + k, PAIRS + 2 * (v % 100), 2);
        v /= 100;
    }
    if (k)
        o[0] = (char)('0' + v % 10);
    return o + digits;
}

/* seconds with 6 decimals, rounded to the microsecond (not > 0: 0) */
static char *put_secs(char *o, double t) {
    uint64_t us;
    if (!(t > 0.0))
        t = 0.0;
    us = (uint64_t)(t * 1e6 + 0.5);
    o = put_u(o, us / 1000000);
    *o++ = '.';
    return put_dec(o, (unsigned)(us % 1000000), 6);
}

/* YYYY-MM-DDTHH:MM:SS of a Unix time (the proleptic Gregorian calendar,
 * counted in 400-year eras of 146097 days from 0000-03-01): 19 bytes. */
static void civil(char *o, int64_t sec) {
    int64_t days = sec / 86400, rem = sec % 86400;
    int64_t z, era, doe, yoe, doy, mp, y, m, d;
    if (rem < 0) {
        rem += 86400;
        days -= 1;
    }
    z = days + 719468;              /* days since 0000-03-01 */
    era = (z >= 0 ? z : z - 146096) / 146097;
    doe = z - era * 146097;
    yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    mp = (5 * doy + 2) / 153;       /* March = 0 */
    d = doy - (153 * mp + 2) / 5 + 1;
    m = mp < 10 ? mp + 3 : mp - 9;
    y = yoe + era * 400 + (m <= 2);
    o = put_dec(o, (unsigned)y, 4);
    *o++ = '-';
    o = put_dec(o, (unsigned)m, 2);
    *o++ = '-';
    o = put_dec(o, (unsigned)d, 2);
    *o++ = 'T';
    o = put_dec(o, (unsigned)(rem / 3600), 2);
    *o++ = ':';
    o = put_dec(o, (unsigned)(rem / 60 % 60), 2);
    *o++ = ':';
    put_dec(o, (unsigned)(rem % 60), 2);
}

/* ... and ".mmmZ"; the second's text is kept in the buffer while it lasts */
static char *put_time(sw_buf_t *b, char *o, int64_t sec, int ms) {
    if (b->t_key != sec + 1) {
        civil(b->t_text, sec);
        b->t_key = sec + 1;
    }
    o = put(o, b->t_text, 19);
    *o++ = '.';
    o = put_dec(o, (unsigned)ms, 3);
    *o++ = 'Z';
    return o;
}

static char *put_str(char *o, sw_str_t v) {
    *o++ = '"';
    o += sw_json_str(o, v.s ? v.s : "", v.s ? v.n : 0);
    *o++ = '"';
    return o;
}

static char *put_addr(char *o, sw_str_t host, int port) {
    *o++ = '"';
    o += sw_json_str(o, host.s ? host.s : "", host.s ? host.n : 0);
    if (port >= 0) {
        *o++ = ':';
        o = put_u(o, (uint64_t)port);
    }
    *o++ = '"';
    return o;
}

static char *put_opt_secs(char *o, double t) {
    return t < 0.0 ? PUT_LIT(o, "null") : put_secs(o, t);
}

int sw_alog_json(sw_buf_t *b, const sw_alog_rec_t *r) {
    /* the fixed text, numbers and quotes fit in 640 bytes; strings can grow 6-fold */
    size_t strs = r->request_id.n + r->client.n + r->method.n + r->path.n +
                  (r->upstream.s ? r->upstream.n : 0) + (r->error.s ? r->error.n : 0);
    char *o;
    int ms = r->time_ms < 0 ? 0 : r->time_ms > 999 ? 999 : r->time_ms;
    if (strs > SIZE_MAX / 8 || sw_buf_reserve(b, 640 + SW_JSON_STR_MAX(strs) +
                                              (r->extra.s ? r->extra.n : 0)) < 0)
        return -ENOMEM;
    o = b->p + b->len;
    o = PUT_LIT(o, "{\"time\":\"");
    o = put_time(b, o, r->time_sec, ms);
    o = PUT_LIT(o, "\",\"request_id\":");
    o = put_str(o, r->request_id);
    o = PUT_LIT(o, ",\"client\":");
    o = put_addr(o, r->client, r->client_port);
    o = PUT_LIT(o, ",\"method\":");
    o = put_str(o, r->method);
    o = PUT_LIT(o, ",\"path\":");
    o = put_str(o, r->path);
    o = PUT_LIT(o, ",\"protocol\":\"HTTP/1.");
    *o++ = r->minor ? '1' : '0';
    o = PUT_LIT(o, "\",\"status\":");
    o = put_u(o, (uint64_t)(r->status < 0 ? 0 : r->status));
    o = PUT_LIT(o, ",\"request_bytes\":");
    o = put_u(o, r->request_bytes);
    o = PUT_LIT(o, ",\"response_bytes\":");
    o = put_u(o, r->response_bytes);
    o = PUT_LIT(o, ",\"upstream\":");
    o = r->upstream.s ? put_addr(o, r->upstream, r->upstream_port) : PUT_LIT(o, "null");
    o = PUT_LIT(o, ",\"upstream_status\":");
    o = r->upstream_status > 0 ? put_u(o, (uint64_t)r->upstream_status) : PUT_LIT(o, "null");
    o = PUT_LIT(o, ",\"duration\":");
    o = put_secs(o, r->duration);
    o = PUT_LIT(o, ",\"upstream_connect\":");
    o = put_opt_secs(o, r->upstream_connect);
    o = PUT_LIT(o, ",\"upstream_first_byte\":");
    o = put_opt_secs(o, r->upstream_first_byte);
    o = r->upstream_reused ? PUT_LIT(o, ",\"upstream_reused\":true")
                           : PUT_LIT(o, ",\"upstream_reused\":false");
    o = PUT_LIT(o, ",\"retries\":");
    o = put_u(o, r->retries);
    o = PUT_LIT(o, ",\"error\":");
    o = r->error.s ? put_str(o, r->error) : PUT_LIT(o, "null");
    if (r->extra.s)
        o = put(o, r->extra.s, r->extra.n);
    o = PUT_LIT(o, "}\n");
    b->len = (size_t)(o - b->p);
    return 0;
}
