/* sw_proxy.h: what a proxy forwards of a head, in plain C.
 *
 * Every head the engine forwards other than as received (a request going
 * upstream; a response or an interim 1xx response going to the client;
 * rebuilt from the parser's spans or from fields a hook edited) and every
 * chunked trailer section it forwards is filtered and written by these
 * functions, in three steps:
 *
 *   1. The fields become an array of sw_field_t: (pointer, length) pairs
 *      over wherever their bytes are. sw_fields_from_spans() fills it from
 *      the parser's spans (sw_span.h); a caller holding separate strings
 *      (an edited head) fills it itself and asks sw_fields_size().
 *   2. sw_hop_mark() (a head) or sw_trailer_mark() (a trailer section)
 *      marks the fields not to forward.
 *   3. sw_write_fields() writes the others, in order, as "name: value\r\n".
 *
 * The caller writes the start line (sw_write_status_line() for responses)
 * and the fields the proxy adds itself (Host, framing, Connection, Upgrade,
 * X-Forwarded-*) around the written fields.
 *
 * The Connection rule, the same for requests, responses and trailers: a
 * Connection field is not forwarded, and neither is any field named by one
 * of its options (options are comma-separated, blanks around an option are
 * ignored, names compare ignoring ASCII case), except Content-Length,
 * Transfer-Encoding and Host: a Connection option never removes those.
 * Framing and the authority are the proxy's to decide; a peer must not
 * strip them by naming them.
 *
 * Nothing here allocates. A field points at memory the caller keeps alive
 * and unchanged until the write. The readable statement of these rules is
 * sluiceway._forward_py; tests/test_csrc_cffi.py holds the functions to it.
 */
#ifndef SW_PROXY_H
#define SW_PROXY_H

#include <stddef.h>
#include <stdint.h>

#include "sw_span.h"

#ifdef __cplusplus
extern "C" {
#endif

/* One field: its name and value bytes, wherever they are. */
typedef struct {
    const char *name;
    const char *value;
    uint32_t name_len;
    uint32_t value_len;
} sw_field_t;

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
#define SW_DROP_XFF               0x08u   /* X-Forwarded-For/-Proto/-Host, Forwarded */

/* Point f[i] at the bytes of spans h[i] over base, for i < n. Returns what
 * sw_fields_size(f, n) would: the most sw_write_fields() writes for them. */
size_t sw_fields_from_spans(sw_field_t *f, const char *base, const sw_header_t *h, uint32_t n);

/* Bytes sw_write_fields() writes at most for f[0:n] (every field kept). */
size_t sw_fields_size(const sw_field_t *f, uint32_t n);

/* Index of the first field at or after `start` whose name equals
 * name[0:len] ignoring ASCII case, or -1. */
int sw_field_find(const sw_field_t *f, uint32_t n, const char *name, size_t len,
                  uint32_t start);

/* Mark drop[i] = 1 for each field of a head not to forward, 0 for the
 * others (drop has room for n, at least 1): the hop-by-hop fields
 * (Connection, Keep-Alive, Proxy-Connection, TE, Trailer, Upgrade: the
 * caller adds Upgrade back when it forwards an upgrade), the fields the
 * Connection rule above removes, and the fields `extra` asks for
 * (SW_DROP_*). Returns the SW_F_* flags: Expect is "100-continue" when its
 * whole (trimmed) value is, ignoring case; the SW_F_CONN_* bits come from
 * the options of every Connection field. */
unsigned sw_hop_mark(const sw_field_t *f, uint32_t n, unsigned char *drop, unsigned extra);

/* Mark drop[i] = 1 for each trailer field not to forward: the hop-by-hop
 * fields, the fields RFC 9110 6.5.1 says cannot be processed after the
 * content (framing, routing, request modifiers, authentication, response
 * controls, content format; the list is in sw_proxy.c and docs/proxy.md) and,
 * by the Connection rule, every field named by an option of conn[0:conn_len]
 * (the message head's Connection values joined by commas; NULL: none) or of
 * a Connection field among the trailers. Return the number of fields kept. */
uint32_t sw_trailer_mark(const sw_field_t *t, uint32_t n, const char *conn, size_t conn_len,
                         unsigned char *drop);

/* Write the fields not marked in drop (NULL: all), in order, as
 * "name: value\r\n" each, to out; return the bytes written. */
size_t sw_write_fields(char *out, const sw_field_t *f, uint32_t n, const unsigned char *drop);

/* Write "HTTP/1.1 <status> <reason>\r\n" (a status outside 100-999 is
 * written as 500); return bytes (at most 15 + rlen). */
size_t sw_write_status_line(char *out, int status, const char *reason, size_t rlen);

/* Standard reason phrase for a status ("" when unknown). */
const char *sw_reason(int status);

/* Lower-case hex of n followed by CRLF; returns bytes written (<= 18). */
size_t sw_chunk_header(char *out, uint64_t n);

#ifdef __cplusplus
}
#endif
#endif /* SW_PROXY_H */
