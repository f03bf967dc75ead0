# Declarations of csrc/sw_tls.h (the server side of TLS in C, over the
# libssl the ssl module loaded), as the engine uses them.
from libc.stdint cimport uint64_t


cdef extern from "sw_tls.h" nogil:
    enum:
        SW_TLS_ERR
        SW_TLS_EOF
        SW_TLS_AGAIN
        SW_TLS_DONE

    ctypedef struct sw_tls_t:
        pass
    ctypedef struct sw_tls_names_t:
        pass

    int sw_tls_load(const char *path, char *why, size_t whylen)
    uint64_t sw_tls_ctx_options(void *ctx)
    int sw_tls_ctx_verify_mode(void *ctx)
    sw_tls_names_t *sw_tls_names_new(size_t cap)
    int sw_tls_names_add(sw_tls_names_t *t, const char *name, size_t len, int suffix, void *ctx)
    int sw_tls_names_install(sw_tls_names_t *t, void *ctx)
    void sw_tls_names_free(sw_tls_names_t *t)
    sw_tls_t *sw_tls_new(void *ctx)
    void sw_tls_free(sw_tls_t *t)
    int sw_tls_feed(sw_tls_t *t, const char *p, size_t n)
    int sw_tls_settle(sw_tls_t *t)
    size_t sw_tls_in_pending(sw_tls_t *t)
    int sw_tls_handshake(sw_tls_t *t)
    long sw_tls_read(sw_tls_t *t, char *buf, size_t cap)
    size_t sw_tls_pending(sw_tls_t *t)
    int sw_tls_write(sw_tls_t *t, const char *p, size_t n)
    void sw_tls_shutdown(sw_tls_t *t)
    size_t sw_tls_out_pending(sw_tls_t *t)
    size_t sw_tls_out_read(sw_tls_t *t, char *buf, size_t n)
    const char *sw_tls_version(sw_tls_t *t)
    const char *sw_tls_cipher(sw_tls_t *t)
    const char *sw_tls_servername(sw_tls_t *t)
    int sw_tls_alpn(sw_tls_t *t, const unsigned char **p, unsigned *len)
    int sw_tls_resumed(sw_tls_t *t)
    void sw_tls_err_text(sw_tls_t *t, char *text, size_t tlen, char *reason, size_t rlen,
                         char *lib, size_t llen)
