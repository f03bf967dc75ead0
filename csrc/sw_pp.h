/* sw_pp.h: the PROXY protocol (HAProxy's, versions 1 and 2): the header a
 * load balancer puts in front of a connection to say whose it is.
 *
 * Contract
 * --------
 * sw_pp_parse(buf, len, &out) looks at the first bytes a connection
 * received and returns:
 *   > 0            the header is complete: that many bytes are the header
 *                  (the HTTP request starts after them); `out` is filled;
 *   SW_PP_NEED     not enough bytes yet to tell (feed more, up to
 *                  SW_PP_MAX bytes);
 *   SW_PP_BAD      not a PROXY header, or a malformed one (`out.reason`
 *                  names the problem).
 * Version 1 is one text line ("PROXY TCP4 src dst sport dport\r\n", TCP6,
 * or UNKNOWN), at most 107 bytes. Version 2 is a 16-byte binary header
 * (signature, version and command, family, length) and the addresses;
 * TLVs after the addresses are skipped (up to SW_PP_MAX bytes in all).
 * `out.local` is set for a v1 UNKNOWN or a v2 LOCAL command (a health
 * check from the balancer itself: use the connection's own address), and
 * for families other than IPv4/IPv6 (v2 UNSPEC or UNIX).
 *
 * sw_pp_write_v1/v2 write a header for the given addresses (for upstreams).
 *
 * Pure functions: no allocation, no I/O, no Python.
 */
#ifndef SW_PP_H
#define SW_PP_H

#include <stddef.h>
#include <stdint.h>

#define SW_PP_NEED 0
#define SW_PP_BAD (-1)
#define SW_PP_MAX 4096            /* header bytes accepted at most */
#define SW_PP_V1_MAX 107          /* the longest v1 line, CRLF included */

typedef struct {
    int version;                  /* 1 or 2 */
    int local;                    /* no address carried (see above) */
    int family;                   /* 4 or 6 (when not local) */
    char src[46];                 /* numeric address, NUL-terminated */
    char dst[46];
    uint16_t src_port;
    uint16_t dst_port;
    const char *reason;           /* after SW_PP_BAD */
} sw_pp_t;

long sw_pp_parse(const unsigned char *buf, size_t len, sw_pp_t *out);

/* Write a header into out (at least SW_PP_V1_MAX bytes for v1, 52 for v2)
 * for a connection from src:sport to dst:dport (numeric addresses of
 * family 4 or 6); returns its length, or -1 when an address does not
 * parse. */
long sw_pp_write_v1(char *out, int family, const char *src, const char *dst,
                    uint16_t sport, uint16_t dport);
long sw_pp_write_v2(unsigned char *out, int family, const char *src, const char *dst,
                    uint16_t sport, uint16_t dport);

#endif /* SW_PP_H */
