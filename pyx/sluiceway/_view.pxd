# The parser as other compiled modules see it (csrc/sw_view.h): the message
# view and the function table _http exports as a capsule. Declarations only.
from libc.stdint cimport uint32_t

from sluiceway._span cimport sw_header_t, sw_span_t


cdef extern from "sw_view.h" nogil:
    ctypedef struct sw_msg_t:
        uint32_t msg_start
        uint32_t head_len
        sw_span_t url
        sw_span_t reason
        sw_span_t target_authority
        const sw_header_t *headers
        uint32_t nheaders
        int method
        int status_code
        int major
        int minor
        int keep_alive
        int upgrade
        int chunked
        int has_content_length
        unsigned long long content_length
        int err_status
        const char *err_reason
        size_t err_offset

    ctypedef struct sw_parser_api_t:
        int version
        void *(*create)(int, uint32_t, uint32_t, uint32_t) noexcept nogil
        void (*destroy)(void *) noexcept nogil
        void (*reset)(void *) noexcept nogil
        int (*execute)(void *, const char *, size_t, size_t, size_t *) noexcept nogil
        int (*finish)(void *) noexcept nogil
        void (*rebase)(void *, uint32_t) noexcept nogil
        int (*in_head)(const void *) noexcept nogil
        uint32_t (*msg_start)(const void *) noexcept nogil
        void (*view)(const void *, sw_msg_t *) noexcept nogil
        void (*body)(const void *, const char **, size_t *) noexcept nogil
        void (*set_skip_body)(void *, int) noexcept nogil
        const char *(*method_name)(const void *) noexcept nogil
        uint32_t (*trailers)(const void *, const char **, const sw_header_t **, int *) noexcept nogil

    enum:
        SW_VIEW_API_VERSION
