# Included by _engine.pxd: see engine/tls.pyx.

cdef enum:
    # _Tls.state
    TLS_HANDSHAKE = 0   # the handshake is under way
    TLS_OPEN = 1        # done: application data flows
    TLS_FAILED = 2      # the handshake failed (the connection is closing)

    # Plaintext parts written together up to this size are joined first,
    # so that they go out as one TLS record (a head and a small body).
    TLS_JOIN_MAX = 16384

    # Seconds an upstream's handshake may take when no connect timeout is
    # set (asyncio's default for its TLS transports).
    TLS_HANDSHAKE_TIMEOUT = 60


cdef class _CtlsCtx:
    cdef void *ctx              # the default SSL_CTX (inside keep's first context)
    cdef sw_tls_names_t *names  # the SNI table installed on its contexts (NULL: none)
    cdef object keep            # the ssl.SSLContexts it uses (kept alive)


cdef class _Tls:
    cdef sw_tls_t *ct           # the C layer's connection (csrc/sw_tls.h; NULL: obj's)
    cdef _CtlsCtx cctx          # ... and the context it was made over
    cdef object obj             # ssl.SSLObject (None once the connection closed)
    cdef object raw             # what obj wraps (ssl's C object), for read/write/pending; else obj
    cdef object inc             # ssl.MemoryBIO: ciphertext received, for obj to read
    cdef object out             # ssl.MemoryBIO: ciphertext obj made, to send
    cdef int state              # TLS_*
    cdef bint server_side
    cdef bint sent_close        # our close_notify is written
    cdef bint got_close         # the peer's close_notify came
    cdef bint offered           # a client that offered an earlier session to resume
    cdef bint held              # its output waits for the end of the batch (_flush)
    cdef list pending           # plaintext written before the handshake was done
    # The handshake's result (kept for the connection's life and after).
    cdef readonly str version       # "TLSv1.3", ...
    cdef readonly str cipher        # "TLS_AES_256_GCM_SHA384", ...
    cdef readonly str alpn          # the protocol agreed on by ALPN, or None
    cdef readonly bint resumed      # the session was resumed (an abbreviated handshake; a client: the one it offered)
    cdef readonly object peer_cert  # the peer's certificate as ssl decodes it ({} if not verified, None if none)
    cdef readonly bytes peer_cert_der
    # The server side's (a TLS listener's connection).
    cdef readonly str sni           # the name the client asked for (set by the context's sni_callback)
    cdef object view                # sluiceway._base.tls.TlsInfo, made on first use (describe)
    cdef object cert_view           # ... ClientCert, likewise (peer_certificate)

    cdef int start(self, _Conn c) except -1
    cdef int received(self, _Conn c, object data) except -1
    cdef int peer_eof(self, _Conn c) except -1
    cdef int write(self, _Conn c, object data) except -1
    cdef int writev(self, _Conn c, tuple parts) except -1
    cdef int close_notify(self, _Conn c) except -1
    cdef bint closed(self) except -1
    cdef object session(self)
    cdef bint _handshake(self, _Conn c) except -1
    cdef int _read(self, _Conn c) except -1
    cdef int _flush(self, _Conn c) except -1
    cdef int release(self, _Conn c) except -1
    cdef bint _failed(self, _Conn c, object exc) except -1
    cdef bint _opened(self, _Conn c) except -1
    cdef int _deliver(self, _Conn c, object data, list more, object err, bint eof) except -1
    cdef bint _c_handshake(self, _Conn c) except -1
    cdef int _c_read(self, _Conn c) except -1
    cdef int _c_write(self, _Conn c, object data) except -1
    cdef object _c_error(self)
    cdef object describe(self)
    cdef object peer_certificate(self)
