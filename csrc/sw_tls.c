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
#define O_BIO_CTRL_FLUSH 11
#define O_BIO_CTRL_WPENDING 13
#define O_BIO_TYPE_SOURCE_SINK 0x0400
#define O_BIO_FLAGS_READ 0x01
#define O_BIO_FLAGS_WRITE 0x02
#define O_BIO_FLAGS_IO_SPECIAL 0x04
#define O_BIO_FLAGS_SHOULD_RETRY 0x08

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
    int (*BIO_free)(BIO *);
    int (*BIO_get_new_index)(void);
    BIO_METHOD *(*BIO_meth_new)(int, const char *);
    int (*BIO_meth_set_write)(BIO_METHOD *, int (*)(BIO *, const char *, int));
    int (*BIO_meth_set_read)(BIO_METHOD *, int (*)(BIO *, char *, int));
    int (*BIO_meth_set_ctrl)(BIO_METHOD *, long (*)(BIO *, int, long, void *));
    int (*BIO_meth_set_create)(BIO_METHOD *, int (*)(BIO *));
    void (*BIO_set_data)(BIO *, void *);
    void *(*BIO_get_data)(BIO *);
    void (*BIO_set_init)(BIO *, int);
    void (*BIO_set_flags)(BIO *, int);
    void (*BIO_clear_flags)(BIO *, int);
    unsigned long (*ERR_peek_last_error)(void);
    void (*ERR_clear_error)(void);
    const char *(*ERR_reason_error_string)(unsigned long);
    const char *(*ERR_lib_error_string)(unsigned long);
    unsigned long (*OpenSSL_version_num)(void);
} O;

/* A byte buffer of our own (malloc'd; NULL when empty and released). */
typedef struct {
    char *p;
    size_t n, cap;
} sw_tbuf_t;

/* The connection's BIO (one, both ways) reads the ciphertext being fed
 * (borrowed: `in`, `in_n`) after what an earlier feed left (`keep`), and
 * writes into `out`. Nothing is held while the connection is idle: `keep`
 * only holds a record cut between two reads, and `out` is released once
 * taken. */
struct sw_tls {
    SSL *ssl;
    const char *in;       /* the bytes of the current feed, not yet read (borrowed) */
    size_t in_n;
    sw_tbuf_t keep;       /* bytes of earlier feeds not yet read */
    sw_tbuf_t out;        /* ciphertext made, not yet taken */
    unsigned long err;    /* OpenSSL's error code of the last SW_TLS_ERR (0: none) */
    int err_kind;         /* SSL_get_error's answer then */
};

static BIO_METHOD *bio_method;

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

/* --- the connection's BIO ---------------------------------------------------- */

static int tbuf_add(sw_tbuf_t *b, const char *p, size_t n) {
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        char *q;
        while (cap < b->n + n)
            cap *= 2;
        q = realloc(b->p, cap);
        if (!q)
            return -1;
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->n, p, n);
    b->n += n;
    return 0;
}

static void tbuf_release(sw_tbuf_t *b) {
    free(b->p);
    b->p = NULL;
    b->n = b->cap = 0;
}

static int bio_create(BIO *b) {
    O.BIO_set_init(b, 1);
    return 1;
}

static int bio_write(BIO *b, const char *p, int n) {
    sw_tls_t *t = (sw_tls_t *)O.BIO_get_data(b);
    O.BIO_clear_flags(b, O_BIO_FLAGS_READ | O_BIO_FLAGS_WRITE | O_BIO_FLAGS_IO_SPECIAL |
                             O_BIO_FLAGS_SHOULD_RETRY);
    if (!t || n < 0 || tbuf_add(&t->out, p, (size_t)n) < 0)
        return -1;
    return n;
}

static int bio_read(BIO *b, char *p, int n) {
    sw_tls_t *t = (sw_tls_t *)O.BIO_get_data(b);
    size_t want = n > 0 ? (size_t)n : 0, k;
    int got = 0;
    O.BIO_clear_flags(b, O_BIO_FLAGS_READ | O_BIO_FLAGS_WRITE | O_BIO_FLAGS_IO_SPECIAL |
                             O_BIO_FLAGS_SHOULD_RETRY);
    if (!t)
        return -1;
    if (t->keep.n && want) {
        k = t->keep.n < want ? t->keep.n : want;
        memcpy(p, t->keep.p, k);
        memmove(t->keep.p, t->keep.p + k, t->keep.n - k);
        t->keep.n -= k;
        if (t->keep.n == 0)
            tbuf_release(&t->keep);
        p += k;
        want -= k;
        got += (int)k;
    }
    if (t->in_n && want) {
        k = t->in_n < want ? t->in_n : want;
        memcpy(p, t->in, k);
        t->in += k;
        t->in_n -= k;
        got += (int)k;
    }
    if (got == 0) {      /* nothing yet: try again when more comes */
        O.BIO_set_flags(b, O_BIO_FLAGS_READ | O_BIO_FLAGS_SHOULD_RETRY);
        return -1;
    }
    return got;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr) {
    sw_tls_t *t = (sw_tls_t *)O.BIO_get_data(b);
    (void)num;
    (void)ptr;
    switch (cmd) {
    case O_BIO_CTRL_FLUSH:
        return 1;
    case O_BIO_CTRL_PENDING:
        return t ? (long)(t->keep.n + t->in_n) : 0;
    case O_BIO_CTRL_WPENDING:
        return t ? (long)t->out.n : 0;
    default:
        return 0;
    }
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
    SYM(BIO_free, "BIO_free");
    SYM(BIO_get_new_index, "BIO_get_new_index");
    SYM(BIO_meth_new, "BIO_meth_new");
    SYM(BIO_meth_set_write, "BIO_meth_set_write");
    SYM(BIO_meth_set_read, "BIO_meth_set_read");
    SYM(BIO_meth_set_ctrl, "BIO_meth_set_ctrl");
    SYM(BIO_meth_set_create, "BIO_meth_set_create");
    SYM(BIO_set_data, "BIO_set_data");
    SYM(BIO_get_data, "BIO_get_data");
    SYM(BIO_set_init, "BIO_set_init");
    SYM(BIO_set_flags, "BIO_set_flags");
    SYM(BIO_clear_flags, "BIO_clear_flags");
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
    if (!bio_method) {
        int idx = O.BIO_get_new_index();
        BIO_METHOD *m = idx > 0 ? O.BIO_meth_new(idx | O_BIO_TYPE_SOURCE_SINK, "sluiceway") : NULL;
        if (!m) {
            O.ERR_clear_error();
            copy_text(why, whylen, "OpenSSL could not make a BIO method");
            return -1;
        }
        O.BIO_meth_set_write(m, bio_write);
        O.BIO_meth_set_read(m, bio_read);
        O.BIO_meth_set_ctrl(m, bio_ctrl);
        O.BIO_meth_set_create(m, bio_create);
        bio_method = m;     /* (kept for the process's life) */
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
    BIO *b;
    if (!t)
        return NULL;
    t->ssl = O.SSL_new((SSL_CTX *)ctx);
    b = O.BIO_new(bio_method);
    if (!t->ssl || !b) {
        if (t->ssl)
            O.SSL_free(t->ssl);
        if (b)
            O.BIO_free(b);
        O.ERR_clear_error();
        free(t);
        return NULL;
    }
    O.BIO_set_data(b, t);
    O.SSL_set_bio(t->ssl, b, b);   /* the SSL owns it now (one reference, both ways) */
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
    tbuf_release(&t->keep);
    tbuf_release(&t->out);
    free(t);
}

int sw_tls_feed(sw_tls_t *t, const char *p, size_t n) {
    if (t->in_n) {       /* an earlier feed not settled: keep it first */
        if (tbuf_add(&t->keep, t->in, t->in_n) < 0)
            return SW_TLS_ERR;
        t->in_n = 0;
    }
    if (t->keep.n) {     /* bytes wait already: these go after them */
        if (tbuf_add(&t->keep, p, n) < 0)
            return SW_TLS_ERR;
        t->in = NULL;
        return 0;
    }
    t->in = p;
    t->in_n = n;
    return 0;
}

int sw_tls_settle(sw_tls_t *t) {
    int r = 0;
    if (t->in_n)
        r = tbuf_add(&t->keep, t->in, t->in_n) < 0 ? SW_TLS_ERR : 0;
    t->in = NULL;
    t->in_n = 0;
    return r;
}

size_t sw_tls_in_pending(sw_tls_t *t) {
    return t->keep.n + t->in_n;
}

size_t sw_tls_out_pending(sw_tls_t *t) {
    return t->out.n;
}

size_t sw_tls_out_read(sw_tls_t *t, char *buf, size_t n) {
    size_t k = t->out.n < n ? t->out.n : n;
    memcpy(buf, t->out.p, k);
    if (k == t->out.n)
        tbuf_release(&t->out);
    else {
        memmove(t->out.p, t->out.p + k, t->out.n - k);
        t->out.n -= k;
    }
    return k;
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
