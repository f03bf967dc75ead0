# Included by _engine.pxd: see engine/reader.pyx.

cdef class _Reader:
    cdef void *p
    cdef sw_msg_t m
    cdef object data
    cdef const char *dptr
    cdef size_t dlen
    cdef size_t pos
    cdef bytearray carry
    cdef size_t cpos
    cdef bint carrying
    cdef bint need              # the parser asked for more bytes
    cdef object head_buf
    cdef const char *head_base
    cdef const char *body_at
    cdef size_t body_len

    cdef int feed(self, object b) except -1
    cdef int next(self) except -2
    cdef int finish(self)
    cdef size_t unread(self)
    cdef object body_bytes(self)
