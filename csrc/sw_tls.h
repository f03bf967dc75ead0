/* sw_tls.h: the server side of TLS on one connection, in plain C, through
 * the libssl that CPython's ssl module has already loaded.
 *
 * Why
 * ---
 * A TLS listener's connection costs a Python ssl.SSLObject over two
 * ssl.MemoryBIOs: Python objects made per connection, exceptions raised
 * per handshake step, a Python SNI callback per handshake. This layer does
 * the same work with OpenSSL's own calls, so the Python side of a TLS
 * connection is the plain connection's.
 *
 * No second OpenSSL
 * -----------------
 * Nothing here links libssl: sw_tls_load() looks OpenSSL's functions up in
 * the module CPython's ssl uses (`_ssl`, by its file; or the process when
 * `_ssl` is built in), so this layer runs on exactly the libssl, and so the
 * trust store, that `ssl` does, and a wheel needs no OpenSSL of its own.
 * The types are opaque here and the few constants are OpenSSL's stable
 * ABI values (1.1.1 and 3.x agree on them).
 *
 * Contexts
 * --------
 * The SSL_CTX is the one inside an ssl.SSLContext (certificates, versions,
 * ciphers, ALPN, tickets and their keys, the session cache all stay as
 * `ssl` set them). The caller finds it and checks it with
 * sw_tls_ctx_options() against what `ssl` reports before using it.
 *
 * SNI
 * ---
 * CPython's own servername callback expects a Python object on every SSL;
 * an SSL made here has none, so a context used here gets this layer's
 * callback instead (sw_tls_names_install): a table of exact names and
 * wildcard suffixes, each with the SSL_CTX that serves it. Lookups are
 * ASCII case-insensitive; a name that matches none stays on the default.
 *
 * Connection
 * ----------
 * sw_tls_new() makes a server-side SSL over a BIO of this layer's own (no
 * buffer is held while the connection is idle); the caller feeds the
 * ciphertext it received (sw_tls_feed, then sw_tls_settle), steps the handshake
 * (sw_tls_handshake) or reads plaintext (sw_tls_read), writes plaintext
 * (sw_tls_write), and sends what OpenSSL made (sw_tls_out_pending,
 * sw_tls_out_read). No call blocks or makes a system call.
 *
 * Errors: a call that returns SW_TLS_ERR kept OpenSSL's error for
 * sw_tls_err_text(); OpenSSL's per-thread error queue is left empty after
 * every call.
 */
#ifndef SW_TLS_H
#define SW_TLS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SW_TLS_ERR   (-1)   /* failed: sw_tls_err_text() says why */
#define SW_TLS_EOF   (-2)   /* sw_tls_read: the peer's close_notify */
#define SW_TLS_AGAIN 0      /* more ciphertext is needed */
#define SW_TLS_DONE  1      /* sw_tls_handshake: done */

typedef struct sw_tls sw_tls_t;
typedef struct sw_tls_names sw_tls_names_t;

/* Look OpenSSL's functions up in the shared object `path` (already loaded;
 * NULL: the process itself). 0, or -1 with the reason in `why`. Once it
 * succeeded, later calls return 0 at once. */
int sw_tls_load(const char *path, char *why, size_t whylen);

/* OpenSSL's options of `ctx` (an SSL_CTX *) and its verify mode. */
uint64_t sw_tls_ctx_options(void *ctx);
int sw_tls_ctx_verify_mode(void *ctx);

/* An SNI table for up to `cap` names (NULL: out of memory). Each entry
 * holds a reference to its SSL_CTX, freed with the table. */
sw_tls_names_t *sw_tls_names_new(size_t cap);
/* Add `name` (lower case, at most 255 bytes; `suffix`: it stands for
 * "*.name") served by `ctx`. 0, or -1 (full, too long). */
int sw_tls_names_add(sw_tls_names_t *t, const char *name, size_t len, int suffix, void *ctx);
/* Make `ctx`'s servername callback this table's (the table keeps a
 * reference to `ctx`; freeing the table takes the callback off again). */
int sw_tls_names_install(sw_tls_names_t *t, void *ctx);
void sw_tls_names_free(sw_tls_names_t *t);

/* A server-side connection over `ctx` (NULL: out of memory). */
sw_tls_t *sw_tls_new(void *ctx);
void sw_tls_free(sw_tls_t *t);

/* Ciphertext received: `p` is read in place by the calls that follow (it
 * must stay valid) until sw_tls_settle(), which copies what is left unread
 * (a record cut between two reads). 0, or SW_TLS_ERR (out of memory). */
int sw_tls_feed(sw_tls_t *t, const char *p, size_t n);
int sw_tls_settle(sw_tls_t *t);
/* Ciphertext waiting to be read by OpenSSL. */
size_t sw_tls_in_pending(sw_tls_t *t);

/* One handshake step: SW_TLS_DONE, SW_TLS_AGAIN or SW_TLS_ERR. */
int sw_tls_handshake(sw_tls_t *t);

/* Up to `cap` bytes of plaintext into `buf`: the count (> 0), SW_TLS_AGAIN
 * (nothing complete yet), SW_TLS_EOF or SW_TLS_ERR. */
long sw_tls_read(sw_tls_t *t, char *buf, size_t cap);
/* Plaintext OpenSSL holds decrypted but not yet read. */
size_t sw_tls_pending(sw_tls_t *t);

/* Encrypt `n` bytes: 0 or SW_TLS_ERR. */
int sw_tls_write(sw_tls_t *t, const char *p, size_t n);
/* Send our close_notify (made into the output; errors ignored). */
void sw_tls_shutdown(sw_tls_t *t);

/* Ciphertext made, waiting to be sent; take up to `n` bytes of it. */
size_t sw_tls_out_pending(sw_tls_t *t);
size_t sw_tls_out_read(sw_tls_t *t, char *buf, size_t n);

/* The handshake's result (NULL / 0 when there is none). */
const char *sw_tls_version(sw_tls_t *t);
const char *sw_tls_cipher(sw_tls_t *t);
const char *sw_tls_servername(sw_tls_t *t);
int sw_tls_alpn(sw_tls_t *t, const unsigned char **p, unsigned *len);
int sw_tls_resumed(sw_tls_t *t);

/* The last error: OpenSSL's reason as words ("wrong version number") into
 * `text`, as a mnemonic ("WRONG_VERSION_NUMBER") into `reason`, and its
 * library ("SSL") into `lib`; empty strings when OpenSSL gave none. */
void sw_tls_err_text(sw_tls_t *t, char *text, size_t tlen, char *reason, size_t rlen,
                     char *lib, size_t llen);

#ifdef __cplusplus
}
#endif

#endif /* SW_TLS_H */
