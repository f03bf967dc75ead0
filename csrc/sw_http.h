/* sw_http.h: HTTP/1.x message parsing over llhttp, with no Python in sight.
 *
 * Contract
 * --------
 * A sw_http_t wraps one llhttp parser (request or response side). The caller
 * feeds bytes with sw_http_execute(); it runs llhttp until the next *event*
 * and returns it, with the number of bytes it consumed:
 *
 *   SW_EV_NEED_DATA  every byte was consumed; feed more.
 *   SW_EV_HEAD       a message head is complete. Its start line and headers
 *                    are recorded as spans (offset, length) relative to the
 *                    `base` pointer the caller passed to the execute call
 *                    (and to earlier calls: see "Head buffer" below).
 *   SW_EV_BODY       body bytes at p->body_at, p->body_len (inside the data
 *                    just given). Chunked framing is already removed.
 *   SW_EV_END        the message is complete (trailers, if any, are in the
 *                    trailer buffer).
 *   SW_EV_UPGRADE    the message was an upgrade or CONNECT: bytes after the
 *                    consumed offset belong to another protocol.
 *   SW_EV_ERROR      the input is malformed or over a limit. p->status is the
 *                    HTTP status it maps to, p->reason a message naming the
 *                    problem, p->error_offset the offending byte's offset from
 *                    the start of the data passed to this call.
 *
 * After SW_EV_ERROR the parser stays failed until sw_http_reset().
 *
 * Head buffer: spans are offsets from the `base` pointer given to the call in
 * which the head completes. A head that arrives in several pieces must
 * therefore be handed over contiguously: the caller keeps the bytes of an
 * incomplete head (from p->msg_start, an offset from `base`) and passes them
 * again, followed by the new bytes, with `resume_at` pointing past the bytes
 * already parsed. sw_http_rebase() shifts the recorded spans when the caller
 * moves those bytes.
 *
 * Strictness: no llhttp leniency flag is ever set. On top of llhttp, when a
 * head is complete, we reject:
 *   - HTTP versions other than 1.0 and 1.1 (505);
 *   - Transfer-Encoding other than a single `chunked` (501), an empty one
 *     (501; llhttp itself ignores it), one with Content-Length (400), and any
 *     in an HTTP/1.0 request (400) (RFC 9112 6.1, 6.3);
 *   - requests (RFC 9112 3.2): an HTTP/1.1 request without Host, any request
 *     with more than one Host or a Host that is not RFC 3986
 *     `host [":" port]` (non-empty host; port *DIGIT); an empty Host is
 *     allowed only when the target names no authority (origin-form, `*`);
 *     an absolute-form target whose authority is not `host [":" port]` or
 *     carries userinfo (400). For an absolute-form target, target_authority
 *     is set: the request's authority, which replaces the Host (3.2.2);
 *   - heads over the configured limits (414/431).
 * Responses map every rejection to 502. keep_alive follows RFC 9112 9.3:
 * `Connection: close` wins over HTTP/1.0's `keep-alive`.
 *
 * Thread-safety: none; one parser per connection. Allocation: the header
 * array (SW_HEADERS_INITIAL entries) in sw_http_init(); it doubles, up to
 * limits.max_headers, when a head has more fields, and stays that size;
 * the trailer array and buffer are made when a message has trailers. A
 * parser waiting for a small head so holds about 1 KiB, not 4.
 */
#ifndef SW_HTTP_H
#define SW_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include "llhttp.h"
#include "sw_span.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Header entries a new parser has room for (see "Allocation" above). */
#define SW_HEADERS_INITIAL 24

typedef struct {
    uint32_t max_head;     /* start line + headers, bytes (431 past it) */
    uint32_t max_url;      /* request target, bytes (414 past it) */
    uint32_t max_headers;  /* header count (431 past it); also trailer count */
} sw_http_limits_t;

typedef struct sw_http_s {
    llhttp_t ll;
    sw_http_limits_t limits;
    int is_request;

    /* Per-call cursor (valid during sw_http_execute). */
    const char *base;

    /* Current message. */
    uint32_t msg_start;     /* offset from base where the current head began */
    uint32_t head_len;      /* bytes of the head, once SW_EV_HEAD was returned */
    sw_span_t url;          /* request target */
    sw_span_t reason;       /* response reason phrase */
    sw_span_t target_authority; /* absolute-form request target: its authority
                               (host[:port], inside url); len 0 for other forms */
    sw_header_t *headers;   /* hcap entries, grown up to limits.max_headers */
    uint32_t nheaders;
    uint32_t hcap;
    int last_kind;          /* kind of the last name/value span callback */
    int open_kind;          /* that kind, if it reached the end of the last call's data */
    const char *last_end;   /* end of the last name/value span (NULL: none yet in this call) */
    int in_head;            /* between message begin and headers complete */
    int ver_seen;           /* on_version already ran for this message */
    int in_trailers;        /* header callbacks now are trailers */
    int skip_body;          /* response to HEAD (set by the caller) */
    int head_done;          /* headers complete, not yet reported */
    int pending_end;        /* message complete, not yet reported */
    uint16_t flags;         /* llhttp flags captured at headers complete */
    int keep_alive;
    int upgrade;
    uint64_t content_length;

    /* Body span of the last SW_EV_BODY. */
    const char *body_at;
    size_t body_len;

    /* Trailers: copied (they may straddle calls). */
    char *tbuf;
    uint32_t tlen, tcap;
    sw_header_t *trailers;  /* ttcap entries (NULL until the first trailer) */
    uint32_t ntrailers;
    uint32_t ttcap;

    /* Error. */
    int status;             /* HTTP status this error maps to */
    int errno_;             /* llhttp errno, or HPE_USER for our checks */
    const char *reason_msg;
    const char *fail_at;    /* our check's offending byte (NULL: llhttp's position) */
    size_t error_offset;
    int failed;
} sw_http_t;

/* Initialise. Returns 0, or -1 when memory could not be allocated. */
int sw_http_init(sw_http_t *p, int is_request, const sw_http_limits_t *limits);
void sw_http_free(sw_http_t *p);
/* Forget everything, including an error; keep settings and limits. */
void sw_http_reset(sw_http_t *p);

/* Parse data[resume_at:len] (see "Head buffer"). *consumed is set to the
 * offset from data just past what was consumed; after SW_EV_ERROR, to the
 * offending byte's offset (p->error_offset), which may lie before
 * resume_at, in the part of a head fed before. Returns an sw_http_event. */
int sw_http_execute(sw_http_t *p, const char *data, size_t len, size_t resume_at,
                    size_t *consumed);

/* Signal end of input. Returns SW_EV_END for a close-delimited body that is
 * now complete, SW_EV_NEED_DATA when no message was in progress, or
 * SW_EV_ERROR when a message was cut short. */
int sw_http_finish(sw_http_t *p);

/* Subtract delta from every recorded head span (the head's bytes moved). */
void sw_http_rebase(sw_http_t *p, uint32_t delta);

/* True while a message head is being read. */
int sw_http_in_head(const sw_http_t *p);

/* The method's name (e.g. "GET") for a request parser after SW_EV_HEAD. */
const char *sw_http_method_name(const sw_http_t *p);

#ifdef __cplusplus
}
#endif
#endif /* SW_HTTP_H */
