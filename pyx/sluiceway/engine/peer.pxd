# Included by _engine.pxd: see engine/peer.pyx.

cdef class HttpPeer:
    cdef readonly object address
    cdef readonly str host
    cdef readonly int port
    cdef readonly str path
    cdef readonly bint tls
    cdef readonly str sni
    cdef readonly object reuse_key
    cdef public object connect_timeout
    cdef public object read_timeout
    cdef public object write_timeout
    cdef public object idle_timeout
    cdef readonly bint verify_cert
    cdef readonly object ca_file
    cdef readonly int proxy_protocol    # 0, or the PROXY header version sent first
    cdef readonly object load           # the BackendLoad counting requests on it, or None
    cdef sw_load *load_cell             # ... its count (NULL: not counted)
    cdef bytes _host_header
    cdef bytes _host_hdr(self)
    cdef int _count_in(self, object load) except -1
