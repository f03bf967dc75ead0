/* sw_proxy.c: see sw_proxy.h. */
#include "sw_proxy.h"

#include <string.h>

/* The field name nm[0:nl] is lit (lower case, starting with a letter). The
 * first letter is compared first, without a call: (c | 0x20) equals a
 * lower-case letter only for that letter and its capital. */
#define NAME_IS(lit) (nl == sizeof(lit) - 1 && ((unsigned char)nm[0] | 0x20) == (lit)[0] && \
                      sw_ieq(nm + 1, (lit) + 1, sizeof(lit) - 2))

size_t sw_fields_from_spans(sw_field_t *f, const char *base, const sw_header_t *h, uint32_t n)
{
    size_t total = 0;
    uint32_t i;
    for (i = 0; i < n; i++) {
        f[i].name = base + h[i].name.off;
        f[i].value = base + h[i].value.off;
        f[i].name_len = h[i].name.len;
        f[i].value_len = h[i].value.len;
        total += (size_t)h[i].name.len + h[i].value.len + 4;
    }
    return total;
}

size_t sw_fields_size(const sw_field_t *f, uint32_t n)
{
    size_t total = 0;
    uint32_t i;
    for (i = 0; i < n; i++)
        total += (size_t)f[i].name_len + f[i].value_len + 4;
    return total;
}

int sw_field_find(const sw_field_t *f, uint32_t n, const char *name, size_t len,
                  uint32_t start)
{
    uint32_t i;
    for (i = start; i < n; i++) {
        if (f[i].name_len == len && sw_ieq(f[i].name, name, len))
            return (int)i;
    }
    return -1;
}

/* Mark every field called tok[0:tl] (a Connection option); 1 if any. */
static unsigned mark_named(const sw_field_t *f, uint32_t n, unsigned char *drop,
                           const char *tok, size_t tl)
{
    unsigned any = 0;
    uint32_t i;
    for (i = 0; i < n; i++) {
        if (f[i].name_len == tl && sw_ieq(f[i].name, tok, tl)) {
            drop[i] = 1;
            any = 1;
        }
    }
    return any;
}

/* The options of a Connection value v[0:len] (comma-separated): mark every
 * field each one names, under the Connection rule of sw_proxy.h; return the
 * SW_F_CONN_* flags for the options seen, plus SW_F_DROPPED when a field
 * was marked. */
static unsigned mark_options(const char *v, size_t len, const sw_field_t *f, uint32_t n,
                             unsigned char *drop)
{
    const char *e = v + len;
    unsigned flags = 0;
    while (v < e) {
        const char *t;
        size_t tl;
        while (v < e && (*v == ' ' || *v == '\t' || *v == ',')) v++;
        t = v;
        while (v < e && *v != ',') v++;
        tl = (size_t)(v - t);
        while (tl && (t[tl - 1] == ' ' || t[tl - 1] == '\t')) tl--;
        if (!tl) continue;
        if (tl == 5 && sw_ieq(t, "close", 5)) flags |= SW_F_CONN_CLOSE;
        else if (tl == 10 && sw_ieq(t, "keep-alive", 10)) flags |= SW_F_CONN_KA;
        else if (tl == 7 && sw_ieq(t, "upgrade", 7)) flags |= SW_F_CONN_UPGRADE;
        /* A Connection option never removes framing or Host. */
        if ((tl == 14 && sw_ieq(t, "content-length", 14)) ||
            (tl == 17 && sw_ieq(t, "transfer-encoding", 17)) ||
            (tl == 4 && sw_ieq(t, "host", 4)))
            continue;
        if (mark_named(f, n, drop, t, tl)) flags |= SW_F_DROPPED;
    }
    return flags;
}

unsigned sw_hop_mark(const sw_field_t *f, uint32_t n, unsigned char *drop, unsigned extra)
{
    unsigned flags = 0, any = 0;
    uint32_t i;

    memset(drop, 0, n);
    for (i = 0; i < n; i++) {
        const char *nm = f[i].name;
        size_t nl = f[i].name_len;
        unsigned char d = 0;
        switch (nl) {
        case 2:
            if (NAME_IS("te")) d = 1;
            break;
        case 4:
            if (NAME_IS("host")) flags |= SW_F_HOST;
            break;
        case 6:
            if (NAME_IS("expect")) {
                if (f[i].value_len == 12 && sw_ieq(f[i].value, "100-continue", 12))
                    flags |= SW_F_EXPECT_100;
                if (extra & SW_DROP_EXPECT) d = 1;
            }
            break;
        case 7:
            if (NAME_IS("trailer") || NAME_IS("upgrade")) d = 1;
            break;
        case 9:
            if ((extra & SW_DROP_XFF) && NAME_IS("forwarded")) d = 1;
            break;
        case 10:
            if (NAME_IS("keep-alive")) d = 1;
            else if (NAME_IS("connection")) {
                d = 1;
                flags |= mark_options(f[i].value, f[i].value_len, f, n, drop);
            }
            break;
        case 14:
            if ((extra & SW_DROP_CONTENT_LENGTH) && NAME_IS("content-length")) d = 1;
            break;
        case 15:
            if (NAME_IS("x-forwarded-for")) {
                flags |= SW_F_XFF;
                if (extra & SW_DROP_XFF) d = 1;
            }
            break;
        case 16:
            if (NAME_IS("proxy-connection")) d = 1;
            else if ((extra & SW_DROP_XFF) && NAME_IS("x-forwarded-host")) d = 1;
            break;
        case 17:
            if ((extra & SW_DROP_TRANSFER_ENCODING) && NAME_IS("transfer-encoding")) d = 1;
            else if ((extra & SW_DROP_XFF) && NAME_IS("x-forwarded-proto")) d = 1;
            break;
        default:
            break;
        }
        /* (a Connection option may already have marked this field) */
        drop[i] |= d;
        any |= d;
    }
    if (any) flags |= SW_F_DROPPED;
    return flags;
}

/* Fields a proxy does not forward in a trailer section (lower case). See
 * docs/proxy.md, "Trailers", for why each group is here. */
#define T(lit) { lit, sizeof(lit) - 1 }
static const struct { const char *name; size_t len; } sw_no_trailer[] = {
    /* message framing */
    T("transfer-encoding"), T("content-length"),
    /* hop-by-hop (RFC 9110 7.6.1) */
    T("connection"), T("keep-alive"), T("proxy-connection"), T("te"), T("trailer"),
    T("upgrade"),
    /* routing, and what a proxy vouches for about the client */
    T("host"), T("max-forwards"), T("forwarded"), T("x-forwarded-for"),
    T("x-forwarded-host"), T("x-forwarded-proto"), T("x-real-ip"),
    /* request modifiers: controls and conditionals */
    T("expect"), T("range"), T("if-match"), T("if-none-match"), T("if-modified-since"),
    T("if-unmodified-since"), T("if-range"), T("pragma"),
    /* authentication and state */
    T("authorization"), T("proxy-authorization"), T("www-authenticate"),
    T("proxy-authenticate"), T("cookie"), T("set-cookie"),
    /* response control data */
    T("cache-control"), T("expires"), T("age"), T("date"), T("vary"), T("location"),
    T("retry-after"), T("warning"),
    /* how to process the content */
    T("content-type"), T("content-encoding"), T("content-range"),
};
#undef T

uint32_t sw_trailer_mark(const sw_field_t *t, uint32_t n, const char *conn, size_t conn_len,
                         unsigned char *drop)
{
    uint32_t i, kept = 0;
    size_t k;

    memset(drop, 0, n);
    for (i = 0; i < n; i++) {
        const char *nm = t[i].name;
        size_t nl = t[i].name_len;
        for (k = 0; k < sizeof(sw_no_trailer) / sizeof(sw_no_trailer[0]); k++) {
            if (nl == sw_no_trailer[k].len && sw_ieq(nm, sw_no_trailer[k].name, nl)) {
                drop[i] = 1;
                break;
            }
        }
    }
    if (conn != NULL && conn_len > 0)
        (void)mark_options(conn, conn_len, t, n, drop);
    /* A Connection field in the trailers is dropped; what it names, too. */
    for (i = 0; i < n; i++) {
        if (t[i].name_len == 10 && sw_ieq(t[i].name, "connection", 10))
            (void)mark_options(t[i].value, t[i].value_len, t, n, drop);
    }
    for (i = 0; i < n; i++)
        kept += !drop[i];
    return kept;
}

size_t sw_write_fields(char *out, const sw_field_t *f, uint32_t n, const unsigned char *drop)
{
    char *o = out;
    uint32_t i;
    for (i = 0; i < n; i++) {
        if (drop && drop[i]) continue;
        memcpy(o, f[i].name, f[i].name_len);
        o += f[i].name_len;
        *o++ = ':';
        *o++ = ' ';
        memcpy(o, f[i].value, f[i].value_len);
        o += f[i].value_len;
        *o++ = '\r';
        *o++ = '\n';
    }
    return (size_t)(o - out);
}

const char *sw_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "";
    }
}

size_t sw_write_status_line(char *out, int status, const char *reason, size_t rlen)
{
    size_t k = 13;
    if (status < 100 || status > 999) status = 500;
    memcpy(out, "HTTP/1.1 ", 9);
    out[9] = (char)('0' + status / 100);
    out[10] = (char)('0' + status / 10 % 10);
    out[11] = (char)('0' + status % 10);
    out[12] = ' ';
    memcpy(out + k, reason, rlen);
    out[k + rlen] = '\r';
    out[k + rlen + 1] = '\n';
    return k + rlen + 2;
}

size_t sw_chunk_header(char *out, uint64_t n)
{
    static const char hex[] = "0123456789abcdef";
    char tmp[16];
    size_t k = 0, i;
    do {
        tmp[k++] = hex[n & 15];
        n >>= 4;
    } while (n);
    for (i = 0; i < k; i++) out[i] = tmp[k - 1 - i];
    out[k] = '\r';
    out[k + 1] = '\n';
    return k + 2;
}
