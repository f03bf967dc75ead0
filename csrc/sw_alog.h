/* sw_alog.h: the JSON access-log record, formatted in plain C into a
 * growing buffer.
 *
 * Contract
 * --------
 * sw_buf_t is a byte buffer that only grows (its capacity doubles) and is
 * reused: sw_buf_reserve(b, more) makes room for `more` bytes after
 * b->len and returns 0, or -ENOMEM (the buffer is then unchanged). The
 * owner zeroes it to start, empties it by setting b->len = 0 and frees it
 * with sw_buf_free.
 *
 * sw_json_str(out, s, n) writes the bytes s[0..n) as the inside of a JSON
 * string (no quotes) and returns how many bytes it wrote, at most
 * SW_JSON_STR_MAX(n). The result is what Python's
 * json.dumps(s.decode("utf-8", "backslashreplace")) has between its
 * quotes (ensure_ascii: the line is plain ASCII):
 *   - printable ASCII as it is, '"' and '\' escaped with a backslash;
 *   - \b \f \n \r \t by name, other bytes below 0x20 and 0x7f as \u00XX;
 *   - a well-formed UTF-8 sequence as \uXXXX (a surrogate pair beyond
 *     U+FFFF); lower-case hex digits;
 *   - every byte not part of a well-formed sequence as the text \xNN
 *     (written \\xNN in JSON).
 *
 * sw_alog_json(b, r) appends one record (one line, "\n" included; field
 * order fixed, see sw_alog.c) to b, growing it; 0, or -ENOMEM (b then
 * holds what it held before). `extra`, when not NULL, is inserted as it
 * is before the closing brace (",\"k\":v" pairs the caller encoded).
 *
 * No Python, no I/O; the only allocation is the buffer's.
 */
#ifndef SW_ALOG_H
#define SW_ALOG_H

#include <stddef.h>
#include <stdint.h>

#define SW_JSON_STR_MAX(n) ((n) * 6)

typedef struct {
    char *p;
    size_t len;
    size_t cap;
    int64_t t_key;      /* sw_alog_json's cache: the second (+ 1) whose text is t_text */
    char t_text[19];
} sw_buf_t;

int sw_buf_reserve(sw_buf_t *b, size_t more);
void sw_buf_free(sw_buf_t *b);

size_t sw_json_str(char *out, const char *s, size_t n);

typedef struct {
    const char *s;      /* NULL: the field is null (where it may be) */
    size_t n;
} sw_str_t;

typedef struct {
    int64_t time_sec;           /* wall clock, Unix seconds (UTC) */
    int time_ms;                /* ... and milliseconds, 0..999 */
    sw_str_t request_id;
    sw_str_t client;            /* host, or the whole address when client_port < 0 */
    int client_port;
    sw_str_t method;
    sw_str_t path;
    int minor;                  /* HTTP/1.minor */
    int status;
    uint64_t request_bytes;
    uint64_t response_bytes;
    sw_str_t upstream;          /* s NULL: null; host, or all of it when upstream_port < 0 */
    int upstream_port;
    int upstream_status;        /* 0: null */
    double duration;            /* seconds; written with 6 decimals */
    double upstream_connect;    /* < 0: null */
    double upstream_first_byte; /* < 0: null */
    int upstream_reused;
    uint64_t retries;
    sw_str_t error;             /* s NULL: null */
    sw_str_t extra;             /* s NULL: none; else raw JSON text before '}' */
} sw_alog_rec_t;

int sw_alog_json(sw_buf_t *b, const sw_alog_rec_t *r);

#endif
