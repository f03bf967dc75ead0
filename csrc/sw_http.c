/* sw_http.c: see sw_http.h for the contract. */
#include "sw_http.h"

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

#define SW_P(ll) ((sw_http_t *)(ll)->data)

#define SW_UNLIKELY(x) __builtin_expect(!!(x), 0)

enum { SW_SPAN_NONE = 0, SW_SPAN_FIELD = 1, SW_SPAN_VALUE = 2 };

/* Record one of our own rejections; llhttp then stops with HPE_USER. */
static int sw_fail(sw_http_t *p, int status, const char *reason)
{
    if (!p->errno_) {
        p->errno_ = HPE_USER;
        p->status = status;
        p->reason_msg = reason;
    }
    return HPE_USER;
}

/* The same, pointing the error's offset at base[off] (a check made when the
 * head is complete, where llhttp's position is the end of the head). */
static int sw_fail_at(sw_http_t *p, int status, const char *reason, uint32_t off)
{
    if (!p->errno_)
        p->fail_at = p->base + off;
    return sw_fail(p, status, reason);
}

static int sw_head_status(const sw_http_t *p, int req_status)
{
    return p->is_request ? req_status : 502;
}

/* A head over limits.max_head (trailers have their own message). */
static int sw_too_large(sw_http_t *p)
{
    return sw_fail(p, sw_head_status(p, 431),
                   p->is_request ? "request head too large (start line and headers over the limit)"
                                 : "response head too large (status line and headers over the limit)");
}

/* Bytes of head seen so far if the head reaches `end`. */
static int sw_check_head_size(sw_http_t *p, const char *end)
{
    if ((size_t)(end - p->base) - p->msg_start > p->limits.max_head)
        return sw_too_large(p);
    return 0;
}

/* ---- llhttp callbacks ------------------------------------------------- */

static int on_message_begin(llhttp_t *ll)
{
    sw_http_t *p = SW_P(ll);
    p->in_head = 1;
    p->in_trailers = 0;
    p->last_kind = 0;
    p->ver_seen = 0;
    p->nheaders = 0;
    p->ntrailers = 0;
    p->tlen = 0;
    p->url.off = p->url.len = 0;
    p->reason.off = p->reason.len = 0;
    p->target_authority.off = p->target_authority.len = 0;
    p->head_len = 0;
    p->flags = 0;
    p->upgrade = 0;
    p->content_length = 0;
    return 0;
}

/* Bytes allowed in a request target: RFC 3986 unreserved, reserved and '%'.
 * llhttp lets some others through ('"', '{', '|', ...), which upstreams then
 * read differently; we refuse them. */
static const unsigned char sw_target_ok[256] = {
    ['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1, ['g'] = 1, ['h'] = 1,
    ['i'] = 1, ['j'] = 1, ['k'] = 1, ['l'] = 1, ['m'] = 1, ['n'] = 1, ['o'] = 1, ['p'] = 1,
    ['q'] = 1, ['r'] = 1, ['s'] = 1, ['t'] = 1, ['u'] = 1, ['v'] = 1, ['w'] = 1, ['x'] = 1,
    ['y'] = 1, ['z'] = 1,
    ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1, ['G'] = 1, ['H'] = 1,
    ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1, ['M'] = 1, ['N'] = 1, ['O'] = 1, ['P'] = 1,
    ['Q'] = 1, ['R'] = 1, ['S'] = 1, ['T'] = 1, ['U'] = 1, ['V'] = 1, ['W'] = 1, ['X'] = 1,
    ['Y'] = 1, ['Z'] = 1,
    ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1, ['7'] = 1,
    ['8'] = 1, ['9'] = 1,
    ['-'] = 1, ['.'] = 1, ['_'] = 1, ['~'] = 1, [':'] = 1, ['/'] = 1, ['?'] = 1, ['#'] = 1,
    ['['] = 1, [']'] = 1, ['@'] = 1, ['!'] = 1, ['$'] = 1, ['&'] = 1, ['\''] = 1, ['('] = 1,
    [')'] = 1, ['*'] = 1, ['+'] = 1, [','] = 1, [';'] = 1, ['='] = 1, ['%'] = 1,
};

static int on_url(llhttp_t *ll, const char *at, size_t len)
{
    sw_http_t *p = SW_P(ll);
    uint32_t off = (uint32_t)(at - p->base);
    size_t i;
    for (i = 0; i < len; i++) {
        if (!sw_target_ok[(unsigned char)at[i]])
            return sw_fail(p, 400, "byte not allowed in the request target (RFC 3986)");
    }
    if (p->url.len == 0) {
        /* Exactly one SP between method and target (RFC 9112 3). The whole
         * request line is in this buffer: an incomplete head is re-fed whole. */
        if (off >= p->msg_start + 2 && at[-2] == ' ')
            return sw_fail(p, 400, "more than one space between method and request target");
        p->url.off = off;
    }
    p->url.len = off + (uint32_t)len - p->url.off;
    if (p->url.len > p->limits.max_url)
        return sw_fail(p, 414, "request target (URI) too long");
    return sw_check_head_size(p, at + len);
}

static int on_version(llhttp_t *ll, const char *at, size_t len)
{
    sw_http_t *p = SW_P(ll);
    uint32_t off = (uint32_t)(at - p->base);
    (void)len;
    if (p->ver_seen++)
        return 0; /* a continuation of the same span in a later call */
    /* "GET /  HTTP/1.1": exactly one SP between target and version. The
     * version span starts after "HTTP/"; the target's last byte is 7 back. */
    if (p->is_request && p->url.len && off >= 7 && off - 7 >= p->msg_start &&
        p->url.off + p->url.len != off - 6)
        return sw_fail(p, 400, "more than one space between request target and version");
    return 0;
}

static int on_status(llhttp_t *ll, const char *at, size_t len)
{
    sw_http_t *p = SW_P(ll);
    uint32_t off = (uint32_t)(at - p->base);
    if (p->reason.len == 0)
        p->reason.off = off;
    p->reason.len = off + (uint32_t)len - p->reason.off;
    return sw_check_head_size(p, at + len);
}

/* Whether a header name/value span continues the previous call's last span.
 * llhttp reports a span cut by the end of a call's data once at that end and
 * again, from the start of the next call's data, for the rest. So a span
 * continues exactly when it is the first span callback of this call and the
 * previous call's last span callback was of the same kind and reached the
 * end of its data. Every other name callback starts a new field. This costs
 * nothing per byte and needs no *_complete callback. */
static inline int sw_continues(sw_http_t *p, int kind, const char *at, size_t len)
{
    /* last_end is NULL until the first name/value callback of a call. */
    int cont = p->last_end == NULL && p->open_kind == kind;
    p->last_kind = kind;
    p->last_end = at + len;
    return cont;
}

/* Append trailer bytes to the trailer buffer; returns its offset or -1. */
static int64_t sw_trailer_append(sw_http_t *p, const char *at, size_t len)
{
    uint32_t off = p->tlen;
    if ((size_t)p->tlen + len > p->limits.max_head)
        return -1;
    if (p->tlen + len > p->tcap) {
        uint32_t cap = p->tcap ? p->tcap : 256;
        char *nb;
        while (cap < p->tlen + len) cap *= 2;
        nb = realloc(p->tbuf, cap);
        if (!nb) return -1;
        p->tbuf = nb;
        p->tcap = cap;
    }
    memcpy(p->tbuf + p->tlen, at, len);
    p->tlen += (uint32_t)len;
    return off;
}

/* Double the header (or trailer) array, up to limits.max_headers; the
 * spans already recorded move with it. Returns the new array or NULL. */
static sw_header_t *sw_grow_fields(sw_http_t *p, int trailers)
{
    uint32_t *cap = trailers ? &p->ttcap : &p->hcap;
    sw_header_t **arr = trailers ? &p->trailers : &p->headers;
    uint32_t ncap = *cap ? *cap * 2 : 8;
    sw_header_t *nb;
    if (ncap > p->limits.max_headers) ncap = p->limits.max_headers;
    nb = realloc(*arr, sizeof(sw_header_t) * ncap);
    if (!nb) return NULL;
    *arr = nb;
    *cap = ncap;
    return nb;
}

static int on_header_field(llhttp_t *ll, const char *at, size_t len)
{
    sw_http_t *p = SW_P(ll);
    sw_header_t *arr;
    uint32_t *count, off;

    if (SW_UNLIKELY(p->in_trailers)) {
        int64_t toff = sw_trailer_append(p, at, len);
        if (toff < 0) return sw_fail(p, sw_head_status(p, 431), "trailer section too large");
        off = (uint32_t)toff;
        arr = p->trailers;
        count = &p->ntrailers;
    } else {
        /* The head's size is checked when a call ends inside the head and when
         * the head completes: one call parses at most the bytes it was given. */
        off = (uint32_t)(at - p->base);
        arr = p->headers;
        count = &p->nheaders;
    }
    if (sw_continues(p, SW_SPAN_FIELD, at, len)) {
        /* The same name, split across two execute calls. */
        sw_header_t *h = &arr[*count - 1];
        h->name.len = off + (uint32_t)len - h->name.off;
        return 0;
    }
    if (*count >= p->limits.max_headers)
        return sw_fail(p, sw_head_status(p, 431),
                       p->in_trailers ? "too many trailer fields" : "too many header fields");
    if (SW_UNLIKELY(*count >= (p->in_trailers ? p->ttcap : p->hcap))) {
        arr = sw_grow_fields(p, p->in_trailers);
        if (!arr)
            return sw_fail(p, sw_head_status(p, 431), "out of memory for header fields");
    }
    arr[*count].name.off = off;
    arr[*count].name.len = (uint32_t)len;
    arr[*count].value.off = off + (uint32_t)len;
    arr[*count].value.len = 0;
    (*count)++;
    return 0;
}

static int on_header_value(llhttp_t *ll, const char *at, size_t len)
{
    sw_http_t *p = SW_P(ll);
    sw_header_t *h;
    uint32_t off;

    if (SW_UNLIKELY(p->in_trailers)) {
        int64_t toff = sw_trailer_append(p, at, len);
        if (toff < 0) return sw_fail(p, sw_head_status(p, 431), "trailer section too large");
        off = (uint32_t)toff;
        h = &p->trailers[p->ntrailers - 1];
    } else {
        off = (uint32_t)(at - p->base);
        h = &p->headers[p->nheaders - 1];
    }
    /* Control bytes (NUL, bare CR/LF, DEL, ...) in values are refused by
     * llhttp itself in strict mode: "Invalid header value char". */
    if (sw_continues(p, SW_SPAN_VALUE, at, len)) {
        h->value.len = off + (uint32_t)len - h->value.off;
    } else {
        h->value.off = off;
        h->value.len = (uint32_t)len;
    }
    return 0;
}

/* Trim trailing SP/HTAB from a value (llhttp keeps it). */
static inline void sw_trim_value(const char *base, sw_header_t *h)
{
    while (h->value.len > 0) {
        char c = base[h->value.off + h->value.len - 1];
        if (c != ' ' && c != '\t') break;
        h->value.len--;
    }
}

static void sw_trim_values(const char *base, sw_header_t *h, uint32_t n)
{
    uint32_t i;
    for (i = 0; i < n; i++)
        sw_trim_value(base, &h[i]);
}

/* ---- Host and authority (RFC 9112 3.2, RFC 3986 3.2.2-3.2.3) ----------- */

/* Bytes of a Host (or target authority) outside brackets: SW_H_REG for
 * reg-name's unreserved and sub-delims, SW_H_PCT for '%' (pct-encoded),
 * SW_H_COLON before the port; 0 for anything else. One bit each, so that
 * the AND of several classes is SW_H_REG only when all of them are. */
enum { SW_H_BAD = 0, SW_H_REG = 1, SW_H_PCT = 2, SW_H_COLON = 4 };
static const unsigned char sw_host_class[256] = {
    ['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1, ['g'] = 1, ['h'] = 1,
    ['i'] = 1, ['j'] = 1, ['k'] = 1, ['l'] = 1, ['m'] = 1, ['n'] = 1, ['o'] = 1, ['p'] = 1,
    ['q'] = 1, ['r'] = 1, ['s'] = 1, ['t'] = 1, ['u'] = 1, ['v'] = 1, ['w'] = 1, ['x'] = 1,
    ['y'] = 1, ['z'] = 1,
    ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1, ['G'] = 1, ['H'] = 1,
    ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1, ['M'] = 1, ['N'] = 1, ['O'] = 1, ['P'] = 1,
    ['Q'] = 1, ['R'] = 1, ['S'] = 1, ['T'] = 1, ['U'] = 1, ['V'] = 1, ['W'] = 1, ['X'] = 1,
    ['Y'] = 1, ['Z'] = 1,
    ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1, ['7'] = 1,
    ['8'] = 1, ['9'] = 1,
    ['-'] = 1, ['.'] = 1, ['_'] = 1, ['~'] = 1,
    ['!'] = 1, ['$'] = 1, ['&'] = 1, ['\''] = 1, ['('] = 1, [')'] = 1, ['*'] = 1, ['+'] = 1,
    [','] = 1, [';'] = 1, ['='] = 1,
    ['%'] = SW_H_PCT, [':'] = SW_H_COLON,
};

static inline int sw_hexdig(char c)
{
    return (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'f');
}

/* IP-literal without its brackets: IPv6address (inet_pton's grammar, which
 * is RFC 4291's) or IPvFuture ("v" 1*HEXDIG "." 1*(unreserved/sub-delims/":")). */
static int sw_ip_literal_ok(const char *s, size_t n)
{
    char buf[48];
    unsigned char addr[16];
    size_t i;
    if (n == 0) return 0;
    if (s[0] == 'v' || s[0] == 'V') {
        for (i = 1; i < n && sw_hexdig(s[i]); i++) {}
        if (i == 1 || i + 1 >= n || s[i] != '.') return 0;
        for (i++; i < n; i++) {
            unsigned char c = sw_host_class[(unsigned char)s[i]];
            if (c != SW_H_REG && c != SW_H_COLON) return 0;
        }
        return 1;
    }
    if (n >= sizeof(buf)) return 0;
    for (i = 0; i < n; i++) {
        if (!sw_hexdig(s[i]) && s[i] != ':' && s[i] != '.') return 0;
        buf[i] = s[i];
    }
    buf[n] = 0;
    return inet_pton(AF_INET6, buf, addr) == 1;
}

/* RFC 3986 `host [ ":" port ]` with a non-empty host: reg-name (IPv4
 * addresses are reg-names too), or IP-literal; port is *DIGIT. */
static inline int sw_hostport_ok(const char *s, size_t n)
{
    size_t i = 0;
    if (n == 0) return 0;
    if (s[0] == '[') {
        const char *end = memchr(s, ']', n);
        if (end == NULL || !sw_ip_literal_ok(s + 1, (size_t)(end - s) - 1)) return 0;
        i = (size_t)(end - s) + 1;
    } else {
        for (;;) {
            /* Most of a Host is reg-name bytes: take them four at a time. */
            while (i + 4 <= n && (sw_host_class[(unsigned char)s[i]] & sw_host_class[(unsigned char)s[i + 1]] &
                                  sw_host_class[(unsigned char)s[i + 2]] &
                                  sw_host_class[(unsigned char)s[i + 3]]) == SW_H_REG)
                i += 4;
            while (i < n && sw_host_class[(unsigned char)s[i]] == SW_H_REG) i++;
            if (i == n || s[i] != '%') break;
            if (i + 2 >= n || !sw_hexdig(s[i + 1]) || !sw_hexdig(s[i + 2])) return 0;
            i += 3;
        }
        if (i == 0) return 0;
    }
    if (i == n) return 1;
    if (s[i] != ':') return 0;
    for (i++; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return 0;
    }
    return 1;
}

/* RFC 9112 3.2: an HTTP/1.1 request has exactly one Host; any request has at
 * most one, and a valid one. An empty Host is allowed only when the target
 * names no authority (origin-form and asterisk-form: the Host is then the
 * only authority, and an empty one says there is none). For an absolute-form
 * target, the target's authority is the request's (3.2.2): it must be a
 * valid host[:port] without userinfo (RFC 9110 4.2.4), and is recorded in
 * target_authority for the caller to put in place of the Host. A CONNECT
 * target must be authority-form, host:port. */
static int sw_check_host(sw_http_t *p, int host, int nhost, int second)
{
    const char *b = p->base;
    const char *t = b + p->url.off;
    uint32_t tn = p->url.len;
    int has_authority = 0;

    if (nhost > 1)
        return sw_fail_at(p, 400, "more than one Host header", p->headers[second].name.off);
    if (p->ll.method == HTTP_CONNECT) {
        /* CONNECT takes the authority-form only: host ":" port (RFC 9112
         * 3.2.3); no scheme, no userinfo, no path. */
        const char *h_end = tn > 0 && t[0] == '[' ? memchr(t, ']', tn) : t;
        if (tn == 0 || h_end == NULL || memchr(h_end, ':', tn - (uint32_t)(h_end - t)) == NULL ||
            t[tn - 1] < '0' || t[tn - 1] > '9' || !sw_hostport_ok(t, tn))
            return sw_fail_at(p, 400, "CONNECT request target is not host:port (authority-form)",
                              p->url.off);
        has_authority = 1;
    } else if (tn > 0 && t[0] != '/' && t[0] != '*') {
        /* absolute-form: llhttp accepts it only as scheme "://" ... */
        const char *a = memchr(t, ':', tn);
        uint32_t s, e;
        has_authority = 1;
        if (a == NULL || (uint32_t)(a - t) + 3 > tn || a[1] != '/' || a[2] != '/')
            return sw_fail_at(p, 400, "request target is not origin-form or absolute-form", p->url.off);
        s = (uint32_t)(a - t) + 3;
        for (e = s; e < tn && t[e] != '/' && t[e] != '?' && t[e] != '#'; e++) {
            if (t[e] == '@')
                return sw_fail_at(p, 400, "userinfo (user@) in the request target", p->url.off + e);
        }
        if (!sw_hostport_ok(t + s, e - s))
            return sw_fail_at(p, 400, "invalid authority in the request target (expected host[:port])",
                              p->url.off + s);
        p->target_authority.off = p->url.off + s;
        p->target_authority.len = e - s;
    }
    if (nhost == 0) {
        if (p->ll.http_minor == 1)
            return sw_fail(p, 400, "missing Host header (required in HTTP/1.1)");
        return 0;
    }
    {
        const sw_header_t *h = &p->headers[host];
        if (h->value.len == 0) {
            if (has_authority)
                return sw_fail_at(p, 400, "empty Host header with a request target that names an authority",
                                  h->name.off);
        } else if (!sw_hostport_ok(b + h->value.off, h->value.len)) {
            return sw_fail_at(p, 400, "invalid Host header (expected host[:port], RFC 3986)", h->value.off);
        }
    }
    return 0;
}

/* Transfer-Encoding (RFC 9112 6.1, 6.3): only a single `chunked`, never with
 * Content-Length, never in an HTTP/1.0 request. llhttp flags an empty value
 * as no Transfer-Encoding at all, so the fields are counted here. */
static int sw_check_framing(sw_http_t *p, int te, int nte)
{
    const sw_header_t *h;
    if (nte == 0)
        return 0;
    h = &p->headers[te];
    if (p->is_request && p->ll.http_minor == 0)
        return sw_fail_at(p, 400, "Transfer-Encoding in an HTTP/1.0 request", h->name.off);
    if (p->ll.flags & F_CONTENT_LENGTH)
        return sw_fail_at(p, sw_head_status(p, 400), "both Content-Length and Transfer-Encoding are present",
                          h->name.off);
    if (nte == 1 && h->value.len == 0)
        return sw_fail_at(p, sw_head_status(p, 501), "empty Transfer-Encoding", h->name.off);
    if (nte != 1 || h->value.len != 7 || !sw_ieq(p->base + h->value.off, "chunked", 7))
        return sw_fail_at(p, sw_head_status(p, 501),
                          "unsupported Transfer-Encoding (only a single `chunked` is accepted)", h->value.off);
    return 0;
}

/* Whether a 4-byte field name is "host" in any case. (Names are tokens, so
 * OR-ing 0x20 maps only 'H' and 'h' to 'h', and so on.) */
static inline int sw_is_host(const char *s)
{
    return (s[0] | 0x20) == 'h' && (s[1] | 0x20) == 'o' && (s[2] | 0x20) == 's' && (s[3] | 0x20) == 't';
}

static int on_headers_complete(llhttp_t *ll)
{
    sw_http_t *p = SW_P(ll);
    const char *b = p->base;
    sw_header_t *h = p->headers;
    uint32_t i, n = p->nheaders;
    int rc, host = -1, nhost = 0, second = -1, te = -1, nte = 0;

    if (ll->http_major != 1 || ll->http_minor > 1)
        return sw_fail(p, sw_head_status(p, 505), "HTTP version not supported (only 1.0 and 1.1)");
    /* One pass: trim values, find Host and Transfer-Encoding fields. */
    for (i = 0; i < n; i++) {
        sw_trim_value(b, &h[i]);
        if (h[i].name.len == 4 && sw_is_host(b + h[i].name.off)) {
            if (nhost++ == 0) host = (int)i;
            else if (second < 0) second = (int)i;
        } else if (h[i].name.len == 17 && sw_ieq(b + h[i].name.off, "transfer-encoding", 17)) {
            if (nte++ == 0) te = (int)i;
        }
    }
    rc = sw_check_framing(p, te, nte);
    if (rc) return rc;
    if (p->is_request) {
        rc = sw_check_host(p, host, nhost, second);
        if (rc) return rc;
    }
    if (p->skip_body)
        ll->flags |= F_SKIPBODY;
    /* RFC 9112 9.3: `close` wins over HTTP/1.0's `keep-alive`; llhttp would
     * keep such a connection open (and parse what follows). */
    if (ll->flags & F_CONNECTION_CLOSE)
        ll->flags &= ~F_CONNECTION_KEEP_ALIVE;
    p->flags = ll->flags;
    p->content_length = (ll->flags & F_CONTENT_LENGTH) ? ll->content_length : 0;
    p->keep_alive = llhttp_should_keep_alive(ll);
    p->upgrade = ll->upgrade;
    p->in_head = 0;
    p->in_trailers = 1;
    p->last_kind = 0;
    p->head_done = 1;
    return HPE_PAUSED;
}

static int on_body(llhttp_t *ll, const char *at, size_t len)
{
    sw_http_t *p = SW_P(ll);
    if (len == 0)
        return 0; /* llhttp closes an open span at the end of every call */
    p->body_at = at;
    p->body_len = len;
    return HPE_PAUSED;
}

static int on_message_complete(llhttp_t *ll)
{
    sw_http_t *p = SW_P(ll);
    sw_trim_values(p->tbuf, p->trailers, p->ntrailers);
    p->pending_end = 1;
    return HPE_PAUSED;
}

static const llhttp_settings_t sw_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_status = on_status,
    .on_version = on_version,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* ---- public API ------------------------------------------------------- */

int sw_http_init(sw_http_t *p, int is_request, const sw_http_limits_t *limits)
{
    memset(p, 0, sizeof(*p));
    p->limits = *limits;
    if (p->limits.max_headers == 0) p->limits.max_headers = 1;
    p->is_request = is_request;
    p->hcap = p->limits.max_headers < SW_HEADERS_INITIAL ? p->limits.max_headers
                                                         : SW_HEADERS_INITIAL;
    p->headers = malloc(sizeof(sw_header_t) * p->hcap);
    if (!p->headers) {
        sw_http_free(p);
        return -1;
    }
    llhttp_init(&p->ll, is_request ? HTTP_REQUEST : HTTP_RESPONSE, &sw_settings);
    p->ll.data = p;
    return 0;
}

void sw_http_free(sw_http_t *p)
{
    free(p->headers);
    free(p->trailers);
    free(p->tbuf);
    p->headers = p->trailers = NULL;
    p->hcap = p->ttcap = 0;
    p->tbuf = NULL;
    p->tcap = p->tlen = 0;
}

void sw_http_reset(sw_http_t *p)
{
    llhttp_reset(&p->ll);
    p->ll.data = p;
    p->in_head = p->in_trailers = p->last_kind = p->open_kind = 0;
    p->head_done = p->pending_end = 0;
    p->nheaders = p->ntrailers = p->tlen = 0;
    p->msg_start = 0;
    p->skip_body = 0;
    p->status = p->errno_ = p->failed = 0;
    p->reason_msg = NULL;
    p->fail_at = NULL;
    p->error_offset = 0;
}

void sw_http_rebase(sw_http_t *p, uint32_t delta)
{
    uint32_t i;
    p->msg_start -= delta;
    if (p->url.len) p->url.off -= delta;
    if (p->reason.len) p->reason.off -= delta;
    if (p->target_authority.len) p->target_authority.off -= delta;
    for (i = 0; i < p->nheaders; i++) {
        p->headers[i].name.off -= delta;
        p->headers[i].value.off -= delta;
    }
}

int sw_http_in_head(const sw_http_t *p)
{
    return p->in_head;
}

const char *sw_http_method_name(const sw_http_t *p)
{
    return llhttp_method_name((llhttp_method_t)p->ll.method);
}

static int sw_is_token(const char *s, size_t n)
{
    size_t i;
    if (n == 0) return 0;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              strchr("!#$%&'*+-.^_`|~", c) != NULL) || c == 0)
            return 0;
    }
    return 1;
}

/* Turn an llhttp error into status + reason. */
static void sw_set_error(sw_http_t *p, llhttp_errno_t err, const char *data, size_t len)
{
    const char *pos = llhttp_get_error_pos(&p->ll);
    size_t off = (pos && pos >= data && pos <= data + len) ? (size_t)(pos - data) : len;
    p->failed = 1;
    p->error_offset = off;
    if (p->errno_ == HPE_USER && p->reason_msg) {
        /* One of our own checks. */
        if (p->fail_at && p->fail_at >= data && p->fail_at <= data + len)
            p->error_offset = (size_t)(p->fail_at - data);
        return;
    }
    p->errno_ = err;
    p->reason_msg = llhttp_get_error_reason(&p->ll);
    p->status = p->is_request ? 400 : 502;
    if (p->msg_start < len && (unsigned char)data[p->msg_start] == 0x16) {
        p->reason_msg = "TLS handshake received on a plain-HTTP port (is the peer using https:// against http://?)";
        p->error_offset = p->msg_start;
        return;
    }
    switch (err) {
    case HPE_INVALID_METHOD: {
        /* A well-formed token we do not know is "not implemented"; other bytes
         * are a bad request. */
        size_t s = p->msg_start, e;
        while (s < len && (data[s] == '\r' || data[s] == '\n')) s++;
        for (e = s; e < len && e - s < 64 && data[e] != ' '; e++) {}
        if (p->is_request && e < len && data[e] == ' ' && sw_is_token(data + s, e - s)) {
            p->status = 501;
            p->reason_msg = "request method not supported";
        }
        break;
    }
    case HPE_INVALID_VERSION:
        /* A version we do not speak, as opposed to a malformed line. */
        if (p->reason_msg && strcmp(p->reason_msg, "Invalid HTTP version") == 0)
            p->status = sw_head_status(p, 505);
        break;
    case HPE_INVALID_TRANSFER_ENCODING:
        if (p->ll.flags & F_CONTENT_LENGTH) {
            p->reason_msg = "both Content-Length and Transfer-Encoding are present";
        } else {
            p->status = sw_head_status(p, 501);
        }
        break;
    default:
        break;
    }
}

static int sw_execute(sw_http_t *p, const char *data, size_t len, size_t resume_at,
                      size_t *consumed);

int sw_http_execute(sw_http_t *p, const char *data, size_t len, size_t resume_at,
                    size_t *consumed)
{
    int ev;
    p->last_end = NULL;
    ev = sw_execute(p, data, len, resume_at, consumed);
    /* A name or value span may continue in the next call only if this call's
     * last span callback was one and reached the end of the data. */
    p->open_kind = (p->last_end == data + len) ? p->last_kind : 0;
    return ev;
}

static int sw_execute(sw_http_t *p, const char *data, size_t len, size_t resume_at,
                      size_t *consumed)
{
    llhttp_errno_t err;

    *consumed = resume_at;
    if (p->failed) return SW_EV_ERROR;
    p->base = data;
    if (!p->in_head) p->msg_start = (uint32_t)resume_at;
    if (llhttp_get_errno(&p->ll) == HPE_PAUSED) llhttp_resume(&p->ll);
    p->head_done = p->pending_end = 0;
    p->body_len = 0;

    err = llhttp_execute(&p->ll, data + resume_at, len - resume_at);
    if (err == HPE_OK) {
        *consumed = len;
        if (p->in_head && len - p->msg_start > p->limits.max_head) {
            sw_too_large(p);
            sw_set_error(p, HPE_USER, data, len);
            p->error_offset = len;
            return SW_EV_ERROR;
        }
        return SW_EV_NEED_DATA;
    }
    if (err == HPE_PAUSED) {
        *consumed = (size_t)(llhttp_get_error_pos(&p->ll) - data);
        if (p->head_done) {
            /* llhttp skips CR/LF before a message (RFC 9112 2.2); they are
             * not part of this head (msg_start is where the last one ended). */
            while (p->msg_start < *consumed &&
                   (data[p->msg_start] == '\r' || data[p->msg_start] == '\n'))
                p->msg_start++;
            p->head_len = (uint32_t)(*consumed - p->msg_start);
            if (p->head_len > p->limits.max_head) {
                sw_too_large(p);
                sw_set_error(p, HPE_USER, data, len);
                return SW_EV_ERROR;
            }
            return SW_EV_HEAD;
        }
        if (p->pending_end) {
            p->msg_start = (uint32_t)*consumed;
            return SW_EV_END;
        }
        return SW_EV_BODY;
    }
    if (err == HPE_PAUSED_UPGRADE) {
        *consumed = (size_t)(llhttp_get_error_pos(&p->ll) - data);
        return SW_EV_UPGRADE;
    }
    sw_set_error(p, err, data, len);
    *consumed = p->error_offset;
    return SW_EV_ERROR;
}

int sw_http_finish(sw_http_t *p)
{
    llhttp_errno_t err;
    if (p->failed) return SW_EV_ERROR;
    if (llhttp_get_errno(&p->ll) == HPE_PAUSED) llhttp_resume(&p->ll);
    p->pending_end = 0;
    err = llhttp_finish(&p->ll);
    if (err == HPE_OK && !p->pending_end) return SW_EV_NEED_DATA;
    if (err == HPE_OK || err == HPE_PAUSED) {
        p->ll.finish = HTTP_FINISH_SAFE; /* report the close-delimited end once */
        return SW_EV_END;
    }
    p->failed = 1;
    p->errno_ = err;
    p->status = p->is_request ? 400 : 502;
    p->reason_msg = p->is_request ? "connection closed before the request was complete"
                                  : "connection closed before the response was complete";
    p->error_offset = 0;
    return SW_EV_ERROR;
}
