# Spans, header fields, parser event codes and field lookup (csrc/sw_span.h),
# shared by the parser (_http) and the engine (_engine). Declarations only.
from libc.stdint cimport uint32_t


cdef extern from "sw_span.h" nogil:
    ctypedef struct sw_span_t:
        uint32_t off
        uint32_t len

    ctypedef struct sw_header_t:
        sw_span_t name
        sw_span_t value

    enum:
        SW_EV_NEED_DATA
        SW_EV_HEAD
        SW_EV_BODY
        SW_EV_END
        SW_EV_UPGRADE
        SW_EV_ERROR

    int sw_find(const char *base, const sw_header_t *h, uint32_t count,
                const char *name, size_t n, uint32_t start)
    int sw_ieq(const char *a, const char *b, size_t n)
