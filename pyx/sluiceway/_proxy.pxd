# Declarations of csrc/sw_proxy.h (the one filter and writer of forwarded
# heads and trailers, chunk headers, status lines), as the engine uses them.
from libc.stdint cimport uint32_t, uint64_t

from sluiceway._span cimport sw_header_t


cdef extern from "sw_proxy.h" nogil:
    ctypedef struct sw_field_t:
        const char *name
        const char *value
        uint32_t name_len
        uint32_t value_len

    enum:
        SW_F_DROPPED
        SW_F_HOST
        SW_F_EXPECT_100
        SW_F_CONN_CLOSE
        SW_F_CONN_KA
        SW_F_CONN_UPGRADE
        SW_F_XFF
        SW_DROP_TRANSFER_ENCODING
        SW_DROP_CONTENT_LENGTH
        SW_DROP_EXPECT
        SW_DROP_XFF

    size_t sw_fields_from_spans(sw_field_t *f, const char *base, const sw_header_t *h, uint32_t n)
    size_t sw_fields_size(const sw_field_t *f, uint32_t n)
    int sw_field_find(const sw_field_t *f, uint32_t n, const char *name, size_t len,
                      uint32_t start)
    unsigned sw_hop_mark(const sw_field_t *f, uint32_t n, unsigned char *drop, unsigned extra)
    uint32_t sw_trailer_mark(const sw_field_t *t, uint32_t n, const char *conn, size_t conn_len,
                             unsigned char *drop)
    size_t sw_write_fields(char *out, const sw_field_t *f, uint32_t n, const unsigned char *drop)
    size_t sw_write_status_line(char *out, int status, const char *reason, size_t rlen)
    const char *sw_reason(int status)
    size_t sw_chunk_header(char *out, uint64_t n)
