/* sw_proxy.h: header rewriting for forwarding, in plain C.
 *
 * A head is forwarded from its parsed spans (sw_view.h) without building a
 * Python object per field: sw_hop_mark() decides which fields to drop (the
 * hop-by-hop set of RFC 9110 7.6.1 plus every field the Connection header
 * names, and the framing fields the caller asks for), and sw_write_fields()
 * copies the kept ones into an output buffer as "name: value\r\n". A chunked
 * trailer section is forwarded the same way, after sw_trailer_mark().
 */
#ifndef SW_PROXY_H
#define SW_PROXY_H

#include <stddef.h>
#include <stdint.h>

#include "sw_span.h"

#ifdef __cplusplus
extern "C" {
#endif

/* What sw_hop_mark found (bit flags in its return value). */
#define SW_F_DROPPED      0x0001u  /* at least one field is marked to drop */
#define SW_F_HOST         0x0002u  /* a Host field is present */
#define SW_F_EXPECT_100   0x0004u  /* Expect: 100-continue */
#define SW_F_CONN_CLOSE   0x0008u  /* Connection: close */
#define SW_F_CONN_KA      0x0010u  /* Connection: keep-alive */
#define SW_F_CONN_UPGRADE 0x0020u  /* Connection: upgrade */
#define SW_F_XFF          0x0040u  /* an X-Forwarded-For field is present */

/* Extra fields the caller wants dropped (the `extra` argument). */
#define SW_DROP_TRANSFER_ENCODING 0x01u
#define SW_DROP_CONTENT_LENGTH    0x02u
#define SW_DROP_EXPECT            0x04u
#define SW_DROP_XFF               0x08u   /* X-Forwarded-For/-Proto/-Host */

/* Mark drop[i] = 1 for each field not to forward; return SW_F_* flags. */
unsigned sw_hop_mark(const char *base, const sw_header_t *h, uint32_t n,
                     unsigned char *drop, unsigned extra);

/* Mark drop[i] = 1 for each trailer field not to forward: the hop-by-hop
 * fields, the fields RFC 9110 6.5.1 says cannot be processed after the
 * content (framing, routing, request modifiers, authentication, response
 * controls, content format; the list is in sw_proxy.c and docs/proxy.md) and
 * every field named by an option of conn[0:conn_len] (the message head's
 * Connection values joined by commas; NULL: none) or of a Connection field
 * among the trailers. Return the number of fields kept. */
uint32_t sw_trailer_mark(const char *base, const sw_header_t *t, uint32_t n,
                         const char *conn, size_t conn_len, unsigned char *drop);

/* Bytes sw_write_fields() may write at most. */
size_t sw_fields_size(const sw_header_t *h, uint32_t n);

/* Write the kept fields ("name: value\r\n" each) to out; return bytes written. */
size_t sw_write_fields(char *out, const char *base, const sw_header_t *h, uint32_t n,
                       const unsigned char *drop);

/* Write "HTTP/1.1 <status> <reason>\r\n"; return bytes (at most 64 + rlen). */
size_t sw_write_status_line(char *out, int status, const char *reason, size_t rlen);

/* Standard reason phrase for a status ("" when unknown). */
const char *sw_reason(int status);

/* Lower-case hex of n followed by CRLF; returns bytes written (<= 18). */
size_t sw_chunk_header(char *out, uint64_t n);

#ifdef __cplusplus
}
#endif
#endif /* SW_PROXY_H */
