/* sw_pp.c - see sw_pp.h for the contract.
 *
 * The formats are HAProxy's "PROXY protocol" specification (versions 1 and
 * 2).  Addresses are checked and normalised with inet_pton/inet_ntop, so the
 * text in sw_pp_t is the canonical form (IPv6 compressed, no leading zeros).
 */
#include "sw_pp.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

static const unsigned char V2_SIG[12] = {
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
static const char V1_SIG[6] = "PROXY ";

static long bad(sw_pp_t *out, const char *reason)
{
    out->reason = reason;
    return SW_PP_BAD;
}

/* The token [p, p+n) as a canonical address of `family` into dst (46). */
static int v1_addr(const char *p, size_t n, int family, char *dst)
{
    char tmp[64];
    unsigned char bin[16];
    int af = family == 4 ? AF_INET : AF_INET6;
    if (n == 0 || n >= sizeof tmp || memchr(p, 0, n))
        return -1;
    memcpy(tmp, p, n);
    tmp[n] = 0;
    if (inet_pton(af, tmp, bin) != 1)
        return -1;
    return inet_ntop(af, bin, dst, 46) ? 0 : -1;
}

/* A v1 port: 1-5 digits, no leading zero (except "0"), at most 65535. */
static int v1_port(const char *p, size_t n, uint16_t *port)
{
    unsigned long v = 0;
    if (n == 0 || n > 5 || (n > 1 && p[0] == '0'))
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        v = v * 10 + (unsigned long)(p[i] - '0');
    }
    if (v > 65535)
        return -1;
    *port = (uint16_t)v;
    return 0;
}

static long parse_v1(const unsigned char *buf, size_t len, sw_pp_t *out)
{
    const char *s = (const char *)buf;
    size_t lim = len < SW_PP_V1_MAX ? len : SW_PP_V1_MAX;
    size_t eol = 0;
    int found = 0;
    for (size_t i = 0; i + 1 < lim; i++) {
        if (s[i] == '\r' && s[i + 1] == '\n') {
            eol = i;
            found = 1;
            break;
        }
        if (s[i] == '\n' || s[i] == '\r')
            return bad(out, "stray CR or LF in a PROXY v1 line");
    }
    if (!found) {
        if (len >= SW_PP_V1_MAX)
            return bad(out, "PROXY v1 line longer than 107 bytes");
        if (len > 0 && s[len - 1] == '\n')
            return bad(out, "stray CR or LF in a PROXY v1 line");
        return SW_PP_NEED;
    }
    out->version = 1;
    /* Split "PROXY <proto> <src> <dst> <sport> <dport>" on single spaces. */
    const char *tok[6];
    size_t tlen[6];
    size_t ntok = 0, start = 0;
    for (size_t i = 0; i <= eol; i++) {
        if (i == eol || s[i] == ' ') {
            if (ntok == 6)
                return bad(out, "too many fields in a PROXY v1 line");
            tok[ntok] = s + start;
            tlen[ntok] = i - start;
            ntok++;
            start = i + 1;
            /* UNKNOWN: whatever follows the protocol is ignored */
            if (ntok == 2 && tlen[1] == 7 && memcmp(tok[1], "UNKNOWN", 7) == 0) {
                out->local = 1;
                return (long)(eol + 2);
            }
        }
    }
    if (ntok < 2)
        return bad(out, "PROXY v1 line without a protocol");
    if (tlen[1] == 4 && memcmp(tok[1], "TCP4", 4) == 0)
        out->family = 4;
    else if (tlen[1] == 4 && memcmp(tok[1], "TCP6", 4) == 0)
        out->family = 6;
    else
        return bad(out, "PROXY v1 protocol is not TCP4, TCP6 or UNKNOWN");
    if (ntok != 6)
        return bad(out, "PROXY v1 line needs two addresses and two ports");
    if (v1_addr(tok[2], tlen[2], out->family, out->src) < 0)
        return bad(out, "bad source address in a PROXY v1 line");
    if (v1_addr(tok[3], tlen[3], out->family, out->dst) < 0)
        return bad(out, "bad destination address in a PROXY v1 line");
    if (v1_port(tok[4], tlen[4], &out->src_port) < 0)
        return bad(out, "bad source port in a PROXY v1 line");
    if (v1_port(tok[5], tlen[5], &out->dst_port) < 0)
        return bad(out, "bad destination port in a PROXY v1 line");
    return (long)(eol + 2);
}

static long parse_v2(const unsigned char *buf, size_t len, sw_pp_t *out)
{
    if (len < 16)
        return SW_PP_NEED;
    out->version = 2;
    unsigned ver = buf[12] >> 4, cmd = buf[12] & 0x0F;
    unsigned fam = buf[13] >> 4, proto = buf[13] & 0x0F;
    size_t body = ((size_t)buf[14] << 8) | buf[15];
    if (ver != 2)
        return bad(out, "PROXY v2 header with a version other than 2");
    if (cmd > 1)
        return bad(out, "PROXY v2 command is neither LOCAL nor PROXY");
    if (fam > 3 || proto > 2)
        return bad(out, "PROXY v2 header with an unknown family or transport");
    if (16 + body > SW_PP_MAX)
        return bad(out, "PROXY v2 header longer than 4096 bytes");
    if (len < 16 + body)
        return SW_PP_NEED;
    const unsigned char *a = buf + 16;
    if (cmd == 0 || fam == 0 || fam == 3) {
        out->local = 1;
        return (long)(16 + body);
    }
    if (proto != 1)
        return bad(out, "PROXY v2 transport is not a stream");
    size_t alen = fam == 1 ? 4 : 16;
    if (body < 2 * alen + 4)
        return bad(out, "PROXY v2 header too short for its addresses");
    int af = fam == 1 ? AF_INET : AF_INET6;
    out->family = fam == 1 ? 4 : 6;
    if (!inet_ntop(af, a, out->src, 46) || !inet_ntop(af, a + alen, out->dst, 46))
        return bad(out, "PROXY v2 address does not print");
    out->src_port = (uint16_t)((a[2 * alen] << 8) | a[2 * alen + 1]);
    out->dst_port = (uint16_t)((a[2 * alen + 2] << 8) | a[2 * alen + 3]);
    return (long)(16 + body);
}

long sw_pp_parse(const unsigned char *buf, size_t len, sw_pp_t *out)
{
    memset(out, 0, sizeof *out);
    size_t n1 = len < 6 ? len : 6, n2 = len < 12 ? len : 12;
    if (memcmp(buf, V1_SIG, n1) == 0)
        return len < 6 ? SW_PP_NEED : parse_v1(buf, len, out);
    if (memcmp(buf, V2_SIG, n2) == 0)
        return len < 12 ? SW_PP_NEED : parse_v2(buf, len, out);
    return bad(out, "the connection did not start with a PROXY protocol header");
}

long sw_pp_write_v1(char *out, int family, const char *src, const char *dst,
                    uint16_t sport, uint16_t dport)
{
    unsigned char bin[16];
    char s[46], d[46];
    int af = family == 4 ? AF_INET : family == 6 ? AF_INET6 : -1;
    if (af < 0 || inet_pton(af, src, bin) != 1 || !inet_ntop(af, bin, s, sizeof s))
        return -1;
    if (inet_pton(af, dst, bin) != 1 || !inet_ntop(af, bin, d, sizeof d))
        return -1;
    int n = snprintf(out, SW_PP_V1_MAX + 1, "PROXY TCP%d %s %s %u %u\r\n", family, s, d,
                     (unsigned)sport, (unsigned)dport);
    return n > 0 && n <= SW_PP_V1_MAX ? n : -1;
}

long sw_pp_write_v2(unsigned char *out, int family, const char *src, const char *dst,
                    uint16_t sport, uint16_t dport)
{
    int af = family == 4 ? AF_INET : family == 6 ? AF_INET6 : -1;
    size_t alen = family == 4 ? 4 : 16;
    if (af < 0)
        return -1;
    memcpy(out, V2_SIG, 12);
    out[12] = 0x21;                              /* version 2, PROXY */
    out[13] = family == 4 ? 0x11 : 0x21;         /* INET/INET6, STREAM */
    out[14] = 0;
    out[15] = (unsigned char)(2 * alen + 4);
    if (inet_pton(af, src, out + 16) != 1 || inet_pton(af, dst, out + 16 + alen) != 1)
        return -1;
    unsigned char *p = out + 16 + 2 * alen;
    p[0] = (unsigned char)(sport >> 8);
    p[1] = (unsigned char)sport;
    p[2] = (unsigned char)(dport >> 8);
    p[3] = (unsigned char)dport;
    return (long)(16 + 2 * alen + 4);
}
