/* sw_view.h: the parser as other compiled modules see it, without llhttp.
 *
 * sluiceway._http links llhttp; other extension modules do not (setup.py adds
 * llhttp's include path and sources to _http only), so they cannot include
 * sw_http.h. _http exports this table of C function pointers in the capsule
 * `sluiceway._http._C_API`; a parser is an opaque pointer and its state after
 * an event is copied into a sw_msg_t by `view`. Spans are, as in sw_http.h,
 * offsets from the base pointer given to the execute call that produced the
 * event.
 */
#ifndef SW_VIEW_H
#define SW_VIEW_H

#include <stddef.h>
#include <stdint.h>

#include "sw_span.h"

/* The parser's state after SW_EV_HEAD (or SW_EV_ERROR). */
typedef struct {
    uint32_t msg_start;        /* head's first byte, offset from base */
    uint32_t head_len;         /* bytes of the head (through the blank line) */
    sw_span_t url;             /* request target */
    sw_span_t reason;          /* response reason phrase */
    sw_span_t target_authority;/* absolute-form request target: its authority,
                                  which replaces the Host; len 0 otherwise */
    const sw_header_t *headers;/* valid until the next head is parsed */
    uint32_t nheaders;
    int method;                /* llhttp method number (requests) */
    int status_code;           /* responses */
    int major, minor;
    int keep_alive;
    int upgrade;
    int chunked;
    int has_content_length;
    uint64_t content_length;
    int err_status;            /* after SW_EV_ERROR */
    const char *err_reason;
    size_t err_offset;
} sw_msg_t;

typedef struct {
    int version;               /* SW_VIEW_API_VERSION */
    /* A new parser (is_request 1/0) or NULL when out of memory. */
    void *(*create)(int is_request, uint32_t max_head, uint32_t max_url, uint32_t max_headers);
    void (*destroy)(void *p);
    void (*reset)(void *p);
    int (*execute)(void *p, const char *data, size_t len, size_t resume_at, size_t *consumed);
    int (*finish)(void *p);
    void (*rebase)(void *p, uint32_t delta);
    int (*in_head)(const void *p);
    uint32_t (*msg_start)(const void *p);
    void (*view)(const void *p, sw_msg_t *out);
    /* Body bytes of the last SW_EV_BODY. */
    void (*body)(const void *p, const char **at, size_t *len);
    void (*set_skip_body)(void *p, int skip);
    const char *(*method_name)(const void *p);
    /* Right after SW_EV_END: the trailer fields of the message just
     * completed, as spans from *base (the parser's own trailer buffer), and
     * their count. When there are some, *keep_alive tells whether the
     * connection may carry another message (a trailer `Connection: close`
     * ends it: the parser refuses any byte after it); with none, *base,
     * *fields and *keep_alive are left alone. Valid until the next execute
     * call or reset. */
    uint32_t (*trailers)(const void *p, const char **base, const sw_header_t **fields,
                         int *keep_alive);
} sw_parser_api_t;

#define SW_VIEW_API_VERSION 3
#define SW_VIEW_CAPSULE "sluiceway._http._C_API"

#endif /* SW_VIEW_H */
