# Declarations of csrc/sw_alog.h (the JSON access-log record and the buffer
# it is written into), as the engine uses them.
from libc.stdint cimport int64_t, uint64_t


cdef extern from "sw_alog.h" nogil:
    ctypedef struct sw_buf_t:
        char *p
        size_t len
        size_t cap
        int64_t t_key

    int sw_buf_reserve(sw_buf_t *b, size_t more)
    void sw_buf_free(sw_buf_t *b)

    ctypedef struct sw_str_t:
        const char *s
        size_t n

    ctypedef struct sw_alog_rec_t:
        int64_t time_sec
        int time_ms
        sw_str_t request_id
        sw_str_t client
        int client_port
        sw_str_t method
        sw_str_t path
        int minor
        int status
        uint64_t request_bytes
        uint64_t response_bytes
        sw_str_t upstream
        int upstream_port
        int upstream_status
        double duration
        double upstream_connect
        double upstream_first_byte
        int upstream_reused
        uint64_t retries
        sw_str_t error
        sw_str_t extra

    int sw_alog_json(sw_buf_t *b, const sw_alog_rec_t *r)
