/* sw_tls.c: see sw_tls.h. */
#include "sw_tls.h"

#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

/* OpenSSL's types, opaque here. */
typedef struct ssl_st SSL;
typedef struct ssl_ctx_st SSL_CTX;
typedef struct bio_st BIO;
typedef struct bio_method_st BIO_METHOD;
typedef struct ssl_cipher_st SSL_CIPHER;

/* OpenSSL's ABI values used here (ssl.h, bio.h, tls1.h). */
#define O_SSL_ERROR_SSL 1
#define O_SSL_ERROR_WANT_READ 2
#define O_SSL_ERROR_WANT_WRITE 3
#define O_SSL_ERROR_WANT_X509_LOOKUP 4
#define O_SSL_ERROR_ZERO_RETURN 6
#define O_SSL_CTRL_MODE 33
#define O_SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER 0x2L
#define O_SSL_MODE_AUTO_RETRY 0x4L
#define O_SSL_MODE_RELEASE_BUFFERS 0x10L
#define O_SSL_CTRL_SET_TLSEXT_SERVERNAME_CB 53
#define O_SSL_CTRL_SET_TLSEXT_SERVERNAME_ARG 54
#define O_TLSEXT_NAMETYPE_host_name 0
#define O_SSL_TLSEXT_ERR_OK 0
#define O_BIO_CTRL_PENDING 10
#define O_BIO_C_SET_BUF_MEM_EOF_RETURN 130

static struct {
    int loaded;
    SSL *(*SSL_new)(SSL_CTX *);
    void (*SSL_free)(SSL *);
    void (*SSL_set_bio)(SSL *, BIO *, BIO *);
    void (*SSL_set_accept_state)(SSL *);
    int (*SSL_do_handshake)(SSL *);
    int (*SSL_read)(SSL *, void *, int);
    int (*SSL_write)(SSL *, const void *, int);
    int (*SSL_pending)(const SSL *);
    int (*SSL_get_error)(const SSL *, int);
    int (*SSL_shutdown)(SSL *);
    long (*SSL_ctrl)(SSL *, int, long, void *);
    long (*SSL_CTX_ctrl)(SSL_CTX *, int, long, void *);
    long (*SSL_CTX_callback_ctrl)(SSL_CTX *, int, void (*)(void));
    int (*SSL_CTX_up_ref)(SSL_CTX *);
    void (*SSL_CTX_free)(SSL_CTX *);
    uint64_t (*SSL_CTX_get_options)(const SSL_CTX *);
    int (*SSL_CTX_get_verify_mode)(const SSL_CTX *);
    SSL_CTX *(*SSL_set_SSL_CTX)(SSL *, SSL_CTX *);
    SSL_CTX *(*SSL_get_SSL_CTX)(const SSL *);
    const char *(*SSL_get_servername)(const SSL *, int);
    const char *(*SSL_get_version)(const SSL *);
    const SSL_CIPHER *(*SSL_get_current_cipher)(const SSL *);
    const char *(*SSL_CIPHER_get_name)(const SSL_CIPHER *);
    void (*SSL_get0_alpn_selected)(const SSL *, const unsigned char **, unsigned *);
    int (*SSL_session_reused)(const SSL *);
    BIO *(*BIO_new)(const BIO_METHOD *);
    const BIO_METHOD *(*BIO_s_mem)(void);
    int (*BIO_read)(BIO *, void *, int);
    int (*BIO_write)(BIO *, const void *, int);
    long (*BIO_ctrl)(BIO *, int, long, void *);
    int (*BIO_free)(BIO *);
    unsigned long (*ERR_peek_last_error)(void);
    void (*ERR_clear_error)(void);
    const char *(*ERR_reason_error_string)(unsigned long);
    const char *(*ERR_lib_error_string)(unsigned long);
    unsigned long (*OpenSSL_version_num)(void);
} O;

struct sw_tls {
    SSL *ssl;
    BIO *in;              /* ciphertext received (OpenSSL reads it) */
    BIO *out;             /* ciphertext made (we send it) */
    unsigned long err;    /* OpenSSL's error code of the last SW_TLS_ERR (0: none) */
    int err_kind;         /* SSL_get_error's answer then */
};

typedef struct {
    char *name;
    size_t len;
    int suffix;
    SSL_CTX *ctx;
} sw_tls_name_t;

struct sw_tls_names {
    size_t n, cap;
    SSL_CTX **installed;  /* the contexts whose callback is this table's */
    size_t ninst;
    sw_tls_name_t e[];
};

static void copy_text(char *dst, size_t cap, const char *src) {
    size_t n;
    if (cap == 0)
        return;
    n = src ? strlen(src) : 0;
    if (n >= cap)
        n = cap - 1;
    if (n)
        memcpy(dst, src, n);
    dst[n] = 0;
}

int sw_tls_load(const char *path, char *why, size_t whylen) {
    void *h;
    if (O.loaded)
        return 0;
    h = path ? dlopen(path, RTLD_NOW | RTLD_NOLOAD) : dlopen(NULL, RTLD_NOW);
    if (!h) {
        copy_text(why, whylen, "the ssl module's shared object is not loaded");
        return -1;
    }
#define SYM(field, name)                                                   \
    do {                                                                   \
        *(void **)(&O.field) = dlsym(h, name);                             \
        if (!O.field) {                                                    \
            copy_text(why, whylen, "OpenSSL has no " name);                \
            return -1;                                                     \
        }                                                                  \
    } while (0)
    SYM(SSL_new, "SSL_new");
    SYM(SSL_free, "SSL_free");
    SYM(SSL_set_bio, "SSL_set_bio");
    SYM(SSL_set_accept_state, "SSL_set_accept_state");
    SYM(SSL_do_handshake, "SSL_do_handshake");
    SYM(SSL_read, "SSL_read");
    SYM(SSL_write, "SSL_write");
    SYM(SSL_pending, "SSL_pending");
    SYM(SSL_get_error, "SSL_get_error");
    SYM(SSL_shutdown, "SSL_shutdown");
    SYM(SSL_ctrl, "SSL_ctrl");
    SYM(SSL_CTX_ctrl, "SSL_CTX_ctrl");
    SYM(SSL_CTX_callback_ctrl, "SSL_CTX_callback_ctrl");
    SYM(SSL_CTX_up_ref, "SSL_CTX_up_ref");
    SYM(SSL_CTX_free, "SSL_CTX_free");
    SYM(SSL_CTX_get_options, "SSL_CTX_get_options");
    SYM(SSL_CTX_get_verify_mode, "SSL_CTX_get_verify_mode");
    SYM(SSL_set_SSL_CTX, "SSL_set_SSL_CTX");
    SYM(SSL_get_SSL_CTX, "SSL_get_SSL_CTX");
    SYM(SSL_get_servername, "SSL_get_servername");
    SYM(SSL_get_version, "SSL_get_version");
    SYM(SSL_get_current_cipher, "SSL_get_current_cipher");
    SYM(SSL_CIPHER_get_name, "SSL_CIPHER_get_name");
    SYM(SSL_get0_alpn_selected, "SSL_get0_alpn_selected");
    SYM(SSL_session_reused, "SSL_session_reused");
    SYM(BIO_new, "BIO_new");
    SYM(BIO_s_mem, "BIO_s_mem");
    SYM(BIO_read, "BIO_read");
    SYM(BIO_write, "BIO_write");
    SYM(BIO_ctrl, "BIO_ctrl");
    SYM(BIO_free, "BIO_free");
    SYM(ERR_peek_last_error, "ERR_peek_last_error");
    SYM(ERR_clear_error, "ERR_clear_error");
    SYM(ERR_reason_error_string, "ERR_reason_error_string");
    SYM(ERR_lib_error_string, "ERR_lib_error_string");
    SYM(OpenSSL_version_num, "OpenSSL_version_num");
#undef SYM
    /* (The handle stays open: the ssl module stays loaded anyway.) */
    if (O.OpenSSL_version_num() < 0x10101000UL) {
        copy_text(why, whylen, "OpenSSL is older than 1.1.1");
        return -1;
    }
    O.loaded = 1;
    return 0;
}

uint64_t sw_tls_ctx_options(void *ctx) {
    return O.SSL_CTX_get_options((SSL_CTX *)ctx);
}

int sw_tls_ctx_verify_mode(void *ctx) {
    return O.SSL_CTX_get_verify_mode((SSL_CTX *)ctx);
}

/* --- SNI ------------------------------------------------------------------- */

static int sni_pick(SSL *s, int *alert, void *arg) {
    sw_tls_names_t *t = (sw_tls_names_t *)arg;
    const char *name = O.SSL_get_servername(s, O_TLSEXT_NAMETYPE_host_name);
    char low[256];
    const char *dot;
    size_t i, n, rest;
    SSL_CTX *pick = NULL;
    (void)alert;
    if (!name || !t)
        return O_SSL_TLSEXT_ERR_OK;
    n = strlen(name);
    if (n == 0 || n >= sizeof(low))
        return O_SSL_TLSEXT_ERR_OK;
    for (i = 0; i < n; i++) {
        char c = name[i];
        low[i] = (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
    }
    low[n] = 0;
    for (i = 0; i < t->n && !pick; i++)
        if (!t->e[i].suffix && t->e[i].len == n && memcmp(t->e[i].name, low, n) == 0)
            pick = t->e[i].ctx;
    dot = memchr(low, '.', n);
    if (!pick && dot) {
        rest = n - (size_t)(dot + 1 - low);
        for (i = 0; i < t->n && !pick; i++)
            if (t->e[i].suffix && t->e[i].len == rest && memcmp(t->e[i].name, dot + 1, rest) == 0)
                pick = t->e[i].ctx;
    }
    if (pick && pick != O.SSL_get_SSL_CTX(s))
        O.SSL_set_SSL_CTX(s, pick);
    return O_SSL_TLSEXT_ERR_OK;
}

sw_tls_names_t *sw_tls_names_new(size_t cap) {
    sw_tls_names_t *t = calloc(1, sizeof(*t) + cap * sizeof(sw_tls_name_t));
    if (!t)
        return NULL;
    t->cap = cap;
    return t;
}

int sw_tls_names_add(sw_tls_names_t *t, const char *name, size_t len, int suffix, void *ctx) {
    char *copy;
    if (t->n >= t->cap || len == 0 || len > 255)
        return -1;
    copy = malloc(len);
    if (!copy)
        return -1;
    memcpy(copy, name, len);
    O.SSL_CTX_up_ref((SSL_CTX *)ctx);
    t->e[t->n].name = copy;
    t->e[t->n].len = len;
    t->e[t->n].suffix = suffix;
    t->e[t->n].ctx = (SSL_CTX *)ctx;
    t->n++;
    return 0;
}

int sw_tls_names_install(sw_tls_names_t *t, void *ctx) {
    SSL_CTX **more = realloc(t->installed, (t->ninst + 1) * sizeof(SSL_CTX *));
    if (!more)
        return -1;
    t->installed = more;
    O.SSL_CTX_up_ref((SSL_CTX *)ctx);
    t->installed[t->ninst++] = (SSL_CTX *)ctx;
    O.SSL_CTX_callback_ctrl((SSL_CTX *)ctx, O_SSL_CTRL_SET_TLSEXT_SERVERNAME_CB,
                            (void (*)(void))sni_pick);
    O.SSL_CTX_ctrl((SSL_CTX *)ctx, O_SSL_CTRL_SET_TLSEXT_SERVERNAME_ARG, 0, t);
    return 0;
}

void sw_tls_names_free(sw_tls_names_t *t) {
    size_t i;
    if (!t)
        return;
    for (i = 0; i < t->ninst; i++) {
        O.SSL_CTX_callback_ctrl(t->installed[i], O_SSL_CTRL_SET_TLSEXT_SERVERNAME_CB, NULL);
        O.SSL_CTX_ctrl(t->installed[i], O_SSL_CTRL_SET_TLSEXT_SERVERNAME_ARG, 0, NULL);
        O.SSL_CTX_free(t->installed[i]);
    }
    for (i = 0; i < t->n; i++) {
        O.SSL_CTX_free(t->e[i].ctx);
        free(t->e[i].name);
    }
    free(t->installed);
    free(t);
}

/* --- one connection ----------------------------------------------------------- */

sw_tls_t *sw_tls_new(void *ctx) {
    sw_tls_t *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->ssl = O.SSL_new((SSL_CTX *)ctx);
    t->in = O.BIO_new(O.BIO_s_mem());
    t->out = O.BIO_new(O.BIO_s_mem());
    if (!t->ssl || !t->in || !t->out) {
        if (t->ssl)
            O.SSL_free(t->ssl);
        if (t->in)
            O.BIO_free(t->in);
        if (t->out)
            O.BIO_free(t->out);
        O.ERR_clear_error();
        free(t);
        return NULL;
    }
    /* An empty input buffer is "try again", not end of file. */
    O.BIO_ctrl(t->in, O_BIO_C_SET_BUF_MEM_EOF_RETURN, -1, NULL);
    O.BIO_ctrl(t->out, O_BIO_C_SET_BUF_MEM_EOF_RETURN, -1, NULL);
    O.SSL_set_bio(t->ssl, t->in, t->out);   /* the SSL owns both now */
    /* As CPython sets them, and RELEASE_BUFFERS (as nginx does): an idle
     * connection keeps no record buffers. */
    O.SSL_ctrl(t->ssl, O_SSL_CTRL_MODE,
               O_SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | O_SSL_MODE_AUTO_RETRY |
                   O_SSL_MODE_RELEASE_BUFFERS, NULL);
    O.SSL_set_accept_state(t->ssl);
    return t;
}

void sw_tls_free(sw_tls_t *t) {
    if (!t)
        return;
    O.SSL_free(t->ssl);
    O.ERR_clear_error();
    free(t);
}

int sw_tls_feed(sw_tls_t *t, const char *p, size_t n) {
    while (n > 0) {
        int chunk = n > (1u << 30) ? (1 << 30) : (int)n;
        int w = O.BIO_write(t->in, p, chunk);
        if (w <= 0) {
            O.ERR_clear_error();
            t->err = 0;
            t->err_kind = O_SSL_ERROR_SSL;
            return SW_TLS_ERR;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

size_t sw_tls_in_pending(sw_tls_t *t) {
    long n = O.BIO_ctrl(t->in, O_BIO_CTRL_PENDING, 0, NULL);
    return n > 0 ? (size_t)n : 0;
}

size_t sw_tls_out_pending(sw_tls_t *t) {
    long n = O.BIO_ctrl(t->out, O_BIO_CTRL_PENDING, 0, NULL);
    return n > 0 ? (size_t)n : 0;
}

size_t sw_tls_out_read(sw_tls_t *t, char *buf, size_t n) {
    int r = O.BIO_read(t->out, buf, n > (1u << 30) ? (1 << 30) : (int)n);
    if (r <= 0) {
        O.ERR_clear_error();
        return 0;
    }
    return (size_t)r;
}

/* After an OpenSSL call returned `ret` <= 0: SW_TLS_AGAIN, SW_TLS_EOF or
 * SW_TLS_ERR (the error kept), with the error queue emptied. */
static int failed(sw_tls_t *t, int ret) {
    int kind = O.SSL_get_error(t->ssl, ret);
    switch (kind) {
    case O_SSL_ERROR_WANT_READ:
    case O_SSL_ERROR_WANT_WRITE:
    case O_SSL_ERROR_WANT_X509_LOOKUP:
        O.ERR_clear_error();
        return SW_TLS_AGAIN;
    case O_SSL_ERROR_ZERO_RETURN:
        O.ERR_clear_error();
        return SW_TLS_EOF;
    default:
        t->err = O.ERR_peek_last_error();
        t->err_kind = kind;
        O.ERR_clear_error();
        return SW_TLS_ERR;
    }
}

int sw_tls_handshake(sw_tls_t *t) {
    int r = O.SSL_do_handshake(t->ssl);
    if (r == 1)
        return SW_TLS_DONE;
    r = failed(t, r);
    return r == SW_TLS_EOF ? SW_TLS_ERR : r;
}

long sw_tls_read(sw_tls_t *t, char *buf, size_t cap) {
    int r = O.SSL_read(t->ssl, buf, cap > (1u << 30) ? (1 << 30) : (int)cap);
    if (r > 0)
        return r;
    return failed(t, r);
}

size_t sw_tls_pending(sw_tls_t *t) {
    int n = O.SSL_pending(t->ssl);
    return n > 0 ? (size_t)n : 0;
}

int sw_tls_write(sw_tls_t *t, const char *p, size_t n) {
    while (n > 0) {
        int chunk = n > (1u << 30) ? (1 << 30) : (int)n;
        int r = O.SSL_write(t->ssl, p, chunk);
        if (r <= 0) {
            r = failed(t, r);
            if (r != SW_TLS_ERR) {      /* cannot happen over a memory buffer */
                t->err = 0;
                t->err_kind = O_SSL_ERROR_SSL;
            }
            return SW_TLS_ERR;
        }
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

void sw_tls_shutdown(sw_tls_t *t) {
    O.SSL_shutdown(t->ssl);
    O.ERR_clear_error();
}

const char *sw_tls_version(sw_tls_t *t) {
    return O.SSL_get_version(t->ssl);
}

const char *sw_tls_cipher(sw_tls_t *t) {
    const SSL_CIPHER *c = O.SSL_get_current_cipher(t->ssl);
    return c ? O.SSL_CIPHER_get_name(c) : NULL;
}

const char *sw_tls_servername(sw_tls_t *t) {
    return O.SSL_get_servername(t->ssl, O_TLSEXT_NAMETYPE_host_name);
}

int sw_tls_alpn(sw_tls_t *t, const unsigned char **p, unsigned *len) {
    *p = NULL;
    *len = 0;
    O.SSL_get0_alpn_selected(t->ssl, p, len);
    return *p != NULL && *len > 0;
}

int sw_tls_resumed(sw_tls_t *t) {
    return O.SSL_session_reused(t->ssl) == 1;
}

void sw_tls_err_text(sw_tls_t *t, char *text, size_t tlen, char *reason, size_t rlen,
                     char *lib, size_t llen) {
    const char *r = t->err ? O.ERR_reason_error_string(t->err) : NULL;
    const char *l = t->err ? O.ERR_lib_error_string(t->err) : NULL;
    size_t i;
    copy_text(text, tlen, r);
    copy_text(reason, rlen, r);
    for (i = 0; reason[i]; i++) {
        char c = reason[i];
        if (c >= 'a' && c <= 'z')
            reason[i] = (char)(c - 32);
        else if (!((c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')))
            reason[i] = '_';
    }
    /* "SSL routines" -> "SSL", as ssl names the library */
    copy_text(lib, llen, l);
    for (i = 0; lib[i]; i++)
        if (lib[i] == ' ') {
            lib[i] = 0;
            break;
        }
}
