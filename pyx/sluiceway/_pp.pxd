# Declarations of csrc/sw_pp.h (the PROXY protocol), as the engine uses them.
from libc.stdint cimport uint16_t


cdef extern from "sw_pp.h" nogil:
    enum:
        SW_PP_NEED
        SW_PP_BAD
        SW_PP_MAX
        SW_PP_V1_MAX

    ctypedef struct sw_pp_t:
        int version
        int local
        int family
        char src[46]
        char dst[46]
        uint16_t src_port
        uint16_t dst_port
        const char *reason

    long sw_pp_parse(const unsigned char *buf, size_t len, sw_pp_t *out)
    long sw_pp_write_v1(char *out, int family, const char *src, const char *dst,
                        uint16_t sport, uint16_t dport)
    long sw_pp_write_v2(unsigned char *out, int family, const char *src, const char *dst,
                        uint16_t sport, uint16_t dport)
