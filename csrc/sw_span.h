/* sw_span.h: byte spans, header fields and the parser's event codes: the
 * vocabulary shared by the parser (sw_http), its llhttp-free view (sw_view)
 * and the proxy's C helpers (sw_proxy). No llhttp, no Python.
 *
 * A span is (offset, length) from a base pointer that the owner of the span
 * documents (for the parser: the buffer given to the execute call).
 */
#ifndef SW_SPAN_H
#define SW_SPAN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* What sw_http_execute() (and the view's execute) returns. */
enum sw_http_event {
    SW_EV_NEED_DATA = 0,
    SW_EV_HEAD = 1,
    SW_EV_BODY = 2,
    SW_EV_END = 3,
    SW_EV_UPGRADE = 4,
    SW_EV_ERROR = -1
};

/* A byte range relative to a base pointer. */
typedef struct {
    uint32_t off;
    uint32_t len;
} sw_span_t;

/* One header field: its name and (trimmed) value. */
typedef struct {
    sw_span_t name;
    sw_span_t value;
} sw_header_t;

/* ASCII case-insensitive equality of a[0:n] and b[0:n]. */
int sw_ieq(const char *a, const char *b, size_t n);

/* Index of the first field at or after `start` whose name equals name[0:n]
 * case-insensitively, or -1. */
int sw_find(const char *base, const sw_header_t *h, uint32_t count,
            const char *name, size_t n, uint32_t start);

#ifdef __cplusplus
}
#endif
#endif /* SW_SPAN_H */
