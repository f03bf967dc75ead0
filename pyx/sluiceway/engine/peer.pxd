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
    cdef _PeerTls tls_opts          # TLS: its options and SSLContext (shared); None: plain
    cdef readonly object backend    # the LoadBalancer's Backend it was made for, or None
    cdef readonly object balancer   # told each attempt's outcome: balancer.report(backend, ok)
    cdef readonly int proxy_protocol    # 0, or the PROXY header version sent first
    cdef readonly object load           # the BackendLoad counting requests on it, or None
    cdef sw_load *load_cell             # ... its count (NULL: not counted)
    cdef bytes _host_header
    cdef bytes _host_hdr(self)
    cdef int _count_in(self, object load) except -1
    cdef int _tls_options(self, object verify_cert, object verify_hostname, object ca_file,
                          object client_cert, object client_key, object alpn) except -1


cdef class _PeerTls:
    cdef readonly bint verify_cert
    cdef readonly bint verify_hostname
    cdef readonly object ca_file
    cdef readonly object client_cert
    cdef readonly object client_key
    cdef readonly tuple alpn
    cdef readonly tuple key         # all of the above (part of the peers' reuse_key)
    cdef readonly object context    # the ssl.SSLContext they make
    # _LAST_TLS only: the objects the last TLS peer's options were given as
    cdef _PeerTls canon             # ... and the options they made
    cdef object given_verify, given_name, given_ca, given_cert, given_key, given_alpn

    cdef _PeerTls given_by(self, object verify_cert, object verify_hostname, object ca_file,
                           object client_cert, object client_key, object alpn)
