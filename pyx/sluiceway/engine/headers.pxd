# Included by _engine.pxd: see engine/headers.pyx.

cdef class HeaderMap:
    cdef object _buf            # bytes holding the spans' bytes (span mode)
    cdef const char *_base
    cdef sw_header_t *_h
    cdef uint32_t _n
    cdef list _items            # [[name bytes, value bytes], ...] once edited

    cdef int _set_spans(self, object buf, const char *base, const sw_header_t *h,
                        uint32_t n) except -1
    cdef int _materialize(self) except -1
    cdef int _find(self, bytes lname, int start) except -2
    cdef bytes _value_at(self, int i)
    cdef bytes _name_at(self, int i)
    cdef object _get(self, object name, object default)


cdef class RequestHeader:
    cdef readonly HeaderMap headers
    cdef object _buf
    cdef str _method
    cdef bytes _uri             # set when a hook changed it, or from an absolute-form target
    cdef sw_span_t _target
    cdef sw_span_t _head        # (msg_start, head_len) in _buf
    cdef int _major
    cdef int _minor
    cdef bint _edited_line
    cdef bint keep_alive
    cdef bint chunked
    cdef bint has_cl
    cdef bint upgrade
    cdef unsigned long long content_length

    cdef int _take_authority(self, sw_span_t auth) except -1


cdef class ResponseHeader:
    cdef readonly HeaderMap headers
    cdef public int status
    cdef object _reason         # bytes
    cdef int _major
    cdef int _minor


cdef HeaderMap _new_map(object buf, const char *base, const sw_header_t *h, uint32_t n)
cdef RequestHeader _request_header(_Reader r)
