# Declarations of the compiled HTTP/1.x parser, for other compiled modules.
from libc.stdint cimport uint16_t, uint32_t, uint64_t

from sluiceway._span cimport (SW_EV_BODY, SW_EV_END, SW_EV_ERROR, SW_EV_HEAD, SW_EV_NEED_DATA,
                              SW_EV_UPGRADE, sw_find, sw_header_t, sw_span_t)


cdef extern from "sw_http.h" nogil:
    ctypedef struct llhttp_t:
        unsigned char method
        unsigned char http_major
        unsigned char http_minor
        uint16_t status_code

    ctypedef struct sw_http_limits_t:
        uint32_t max_head
        uint32_t max_url
        uint32_t max_headers

    ctypedef struct sw_http_t:
        llhttp_t ll
        int is_request
        uint32_t msg_start
        uint32_t head_len
        sw_span_t url
        sw_span_t reason
        sw_span_t target_authority
        sw_header_t *headers
        uint32_t nheaders
        int skip_body
        uint16_t flags
        int keep_alive
        int upgrade
        uint64_t content_length
        const char *body_at
        size_t body_len
        char *tbuf
        uint32_t tlen
        sw_header_t *trailers
        uint32_t ntrailers
        int status
        const char *reason_msg
        size_t error_offset

    enum:
        F_CHUNKED
        F_CONTENT_LENGTH

    int sw_http_init(sw_http_t *p, int is_request, const sw_http_limits_t *limits)
    void sw_http_free(sw_http_t *p)
    void sw_http_reset(sw_http_t *p)
    int sw_http_execute(sw_http_t *p, const char *data, size_t len, size_t resume_at,
                        size_t *consumed)
    int sw_http_finish(sw_http_t *p)
    void sw_http_rebase(sw_http_t *p, uint32_t delta)
    int sw_http_in_head(const sw_http_t *p)


cdef class Headers:
    cdef object _buf            # bytes holding the field bytes
    cdef const char *_base
    cdef sw_header_t *_h
    cdef uint32_t _n
    cdef uint32_t _cap
    cdef sw_header_t _inline[16]  # most messages: no allocation for spans

    cdef int _set(self, object buf, const char *base, const sw_header_t *h,
                  uint32_t n) except -1
    cdef int _find(self, object name, uint32_t start) except -2
    cdef str _value(self, int i)
    cdef str _name(self, int i)
    cdef bytes _value_b(self, int i)
    cdef bytes _name_b(self, int i)


cdef class _Head:
    cdef readonly Headers headers
    cdef readonly bint keep_alive
    cdef readonly bint upgrade
    cdef readonly bint chunked
    cdef object _content_length
    cdef unsigned char _major
    cdef unsigned char _minor
    cdef uint32_t _head_off
    cdef uint32_t _head_len


cdef class RequestHead(_Head):
    cdef readonly str method
    cdef sw_span_t _target

    cdef (size_t, size_t) _path_span(self)


cdef class ResponseHead(_Head):
    cdef readonly int status
    cdef sw_span_t _reason


cdef class EndOfMessage:
    cdef readonly Headers trailers


cdef class _Parser:
    cdef sw_http_t _p
    cdef bint _ready
    cdef object _data           # bytes currently parsed (None when drained)
    cdef const char *_dptr
    cdef size_t _dlen
    cdef size_t _pos
    cdef object _mv             # memoryview over _data, made on first body
    cdef char *_carry           # incomplete head bytes
    cdef size_t _clen
    cdef size_t _ccap
    cdef size_t _cpos
    cdef size_t _csplit
    cdef bint _carrying
    cdef bint _need_data
    cdef bint _eof
    cdef bint _upgraded
    cdef unsigned long long _fed        # bytes fed before _data
    cdef unsigned long long _carry_off  # stream offset of _carry[0]

    cdef int _append_carry(self, const char *src, size_t n) except -1
    cdef object _make_head(self, object buf, const char *base)
    cdef object _error(self, const char *buf, size_t blen, unsigned long long base_off)
    cdef object _end_event(self)
    cdef void _set_data(self, object b)
    cpdef object next_event(self)


cdef class RequestParser(_Parser):
    pass


cdef class ResponseParser(_Parser):
    pass
