# Included by _engine.pyx: TLS as a layer over a connection's own I/O.

# ------------------------------------------------------------------ TLS --
#
# Theory of operation
# -------------------
# A TLS connection is a plain ``_Conn`` (its descriptor on the epoll set,
# its write queue, its deadlines) with a ``_Tls`` in ``_Conn.tls``. The
# layer is Python's ``ssl.SSLObject`` over two ``ssl.MemoryBIO``s, as
# asyncio's and uvloop's sslproto use it, without a transport:
#
#     socket --recv--> _Conn._io_event --ciphertext--> _Tls.received
#         -> inc BIO -> SSLObject.read -> plaintext -> _Conn.on_data
#     _Conn.t_write(plaintext) -> _Tls.write -> SSLObject.write
#         -> out BIO -> ciphertext -> _Conn._send_raw (send, or the queue)
#
# The layer never makes a system call: it takes received bytes and hands
# ciphertext to the connection's write path, so it sits on any I/O that
# delivers bytes and takes bytes (docs/architecture.md, "Connection I/O").
#
# States (``state``):
#
#     TLS_HANDSHAKE --do_handshake done--> TLS_OPEN
#     TLS_HANDSHAKE --SSLError, EOF, reset, abort--> TLS_FAILED
#
# The protocol on the connection hears ``on_handshake(None)`` when the
# handshake is done and then, as for a plain connection, ``on_data``,
# ``on_eof`` (the peer's close_notify) and ``on_lost``; or, when the
# handshake fails, ``on_handshake(exc)`` once and nothing else (it was never
# told the connection opened). Plaintext written before the handshake is
# done waits in ``pending``.
#
# Everything decrypted from one read is handed to ``on_data`` as one bytes
# object, so pausing reading works as on a plain connection: nothing is
# left decrypted and undelivered. Renegotiation is refused
# (``OP_NO_RENEGOTIATION`` is set on every context the layer gets). Closing
# writes a close_notify after what is queued and does not wait for the
# peer's. A peer that closes the TCP connection without its close_notify
# after the handshake has not ended the stream cleanly (the data may be
# cut): the connection is lost with that reason, and ``on_eof`` is not
# called.

cdef object _ssl = None       # the ssl module, imported by the first TLS connection
cdef object _AGAIN = None     # (SSLWantReadError, SSLWantWriteError): more bytes needed
cdef object _ZERO = None      # SSLZeroReturnError: the peer's close_notify
cdef object _SSLERR = None    # SSLError
cdef object _BIO = None       # MemoryBIO
cdef long _NO_RENEG = 0       # OP_NO_RENEGOTIATION
cdef object _OPTIONS = None   # the C getter of a context's options (a plain int)


cdef int _ssl_load() except -1:
    global _ssl, _AGAIN, _ZERO, _SSLERR, _BIO, _NO_RENEG, _OPTIONS
    if _ssl is None:
        import _ssl as _c
        import ssl
        # ``ctx.options`` wraps the int in an ``ssl.Options`` flag and
        # tests it in Python (~15,000 instructions); the C getter under it
        # returns the int
        _OPTIONS = _c._SSLContext.__dict__["options"].__get__
        _AGAIN = (ssl.SSLWantReadError, ssl.SSLWantWriteError)
        _ZERO = ssl.SSLZeroReturnError
        _SSLERR = ssl.SSLError
        _BIO = ssl.MemoryBIO
        _NO_RENEG = getattr(ssl, "OP_NO_RENEGOTIATION", 0)
        _ssl = ssl
    return 0


cdef _Tls _new_tls(object ctx, bint server_side, object server_hostname, object session=None):
    """A TLS layer for one connection over ``ctx`` (an ``ssl.SSLContext``),
    as the server or as a client that names ``server_hostname`` (SNI, and
    the name the certificate must hold when ``ctx.check_hostname``) and
    offers to resume ``session`` (an ``ssl.SSLSession`` of an earlier
    connection over the same ``ctx``, or None)."""
    _ssl_load()
    if not isinstance(ctx, _ssl.SSLContext):
        raise TypeError(f"a TLS connection needs an ssl.SSLContext, not {type(ctx).__name__}")
    # The contexts sluiceway builds refuse renegotiation already; one from
    # elsewhere is made to.
    if _NO_RENEG and not (<long>_OPTIONS(ctx) & _NO_RENEG):
        ctx.options |= _NO_RENEG
    cdef _Tls t = _Tls.__new__(_Tls)
    t.inc = _BIO()
    t.out = _BIO()
    if session is not None and not server_side:
        t.offered = True
        try:
            t.obj = ctx.wrap_bio(t.inc, t.out, server_side=False,
                                 server_hostname=server_hostname, session=session)
        except ValueError:     # a session of another context: a full handshake then
            t.offered = False
    if t.obj is None:
        t.obj = ctx.wrap_bio(t.inc, t.out, server_side=server_side,
                             server_hostname=None if server_side else server_hostname)
    # SSLObject's read, write and pending are Python functions that call
    # the same methods of the C object it wraps; calling that directly
    # saves about 3% of a small request's instructions through a TLS
    # upstream (bench/callgrind_engine.py --tls). Same signatures: should
    # the private attribute go away, the public object does the same.
    t.raw = getattr(t.obj, "_sslobj", None) or t.obj
    t.server_side = server_side
    t.state = TLS_HANDSHAKE
    return t


cdef str _tls_reason(object exc):
    """A TLS failure in words, without OpenSSL's decoration, with its reason
    code: ``certificate verify failed: unable to get local issuer
    certificate (CERTIFICATE_VERIFY_FAILED)``."""
    cdef str msg
    reason = getattr(exc, "reason", None)
    if _ssl is not None and isinstance(exc, _ssl.SSLCertVerificationError):
        msg = f"certificate verify failed: {exc.verify_message}"
    else:
        msg = (exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)) or \
            type(exc).__name__
        if msg.startswith("[SSL"):
            msg = msg.partition("] ")[2] or msg
        if msg.endswith(")") and " (_ssl.c:" in msg:
            msg = msg[:msg.rindex(" (_ssl.c:")]
    if reason and reason not in msg:
        msg = f"{msg} ({reason})"
    return msg


cdef str _exc_text(object exc):
    """``str(exc)``, except that a TLS error is worded by ``_tls_reason``."""
    if _SSLERR is not None and isinstance(exc, _SSLERR):
        return "TLS: " + _tls_reason(exc)
    return str(exc)


@cython.final
cdef class _Tls:
    """TLS on one connection (see the theory of operation above). Made by
    ``_new_tls``; ``_Conn.t_start_tls`` puts it on a connection."""

    def __init__(self):
        raise TypeError("_Tls objects are made by the engine")

    cdef int start(self, _Conn c) except -1:
        """The first handshake step: a client's hello goes out. A server
        waits for the client's hello (``received``): a step with nothing
        to read only raises SSLWantReadError, about 7,000 instructions."""
        if not self.server_side:
            self._handshake(c)
        return 0

    cdef int received(self, _Conn c, object data) except -1:
        """Ciphertext came on ``c``."""
        if self.obj is None or self.state == TLS_FAILED:
            return 0
        self.inc.write(data)
        if self.state == TLS_HANDSHAKE:
            if not self._handshake(c) or c.fd < 0:
                return 0
        return self._read(c)

    cdef int peer_eof(self, _Conn c) except -1:
        """The peer closed the TCP connection (``c`` is not closing)."""
        if self.state == TLS_HANDSHAKE:
            c.t_abort(ConnectionResetError("the peer closed the connection during the TLS handshake"))
        else:
            c.t_abort(ConnectionResetError("the TLS stream ended without a close_notify"))
        return 0

    cdef int write(self, _Conn c, object data) except -1:
        """Encrypt ``data`` (bytes or a buffer) and send it."""
        if self.state != TLS_OPEN or self.obj is None:
            if self.state == TLS_HANDSHAKE and len(data):
                if self.pending is None:
                    self.pending = []
                self.pending.append(bytes(data))
            return 0
        if len(data) == 0:
            return 0
        try:
            self.raw.write(data)
        except _SSLERR as exc:
            c.t_abort(exc)
            return 0
        return c._send_raw(self.out.read())   # (a write always makes a record)

    cdef int writev(self, _Conn c, tuple parts) except -1:
        """Encrypt several parts in order and send them at once; small ones
        are joined first (one record instead of one each)."""
        cdef Py_ssize_t total = 0
        cdef object p
        for p in parts:
            total += len(p)
        if total == 0:
            return 0
        if total <= TLS_JOIN_MAX or self.state != TLS_OPEN or self.obj is None:
            return self.write(c, b"".join(parts))
        try:
            for p in parts:
                if len(p):
                    self.raw.write(p)
        except _SSLERR as exc:
            c.t_abort(exc)
            return 0
        return c._send_raw(self.out.read())

    cdef int close_notify(self, _Conn c) except -1:
        """Write our close_notify (after what is queued); the peer's is not
        waited for."""
        if self.state == TLS_OPEN and not self.sent_close and self.obj is not None:
            self.sent_close = True
            try:
                self.raw.shutdown()
            except _SSLERR:
                pass  # SSLWantReadError: ours is out, the peer's not in yet
            self._flush(c)
        return 0

    cdef bint closed(self) except -1:
        """The connection closed: free OpenSSL's state (the handshake's
        result stays). True when that ended the handshake (it failed)."""
        self.obj = None
        self.raw = None
        self.inc = None
        self.out = None
        self.pending = None
        if self.state == TLS_HANDSHAKE:
            self.state = TLS_FAILED
            return True
        return False

    def info(self):
        """The handshake's result as a dict (version, cipher, alpn,
        resumed, peer_cert, peer_cert_der); None values before it is done
        (``resumed``: False)."""
        return {"version": self.version, "cipher": self.cipher, "alpn": self.alpn,
                "resumed": self.resumed, "peer_cert": self.peer_cert,
                "peer_cert_der": self.peer_cert_der}

    cdef object session(self):
        """The TLS session a new connection over the same context could
        resume (``ssl.SSLSession``), or None: the connection is not open,
        or the peer gave nothing resumable (no TLS 1.3 ticket yet, no
        TLS 1.2 session id or ticket)."""
        if self.state != TLS_OPEN or self.obj is None or self.server_side:
            return None
        sess = self.obj.session
        if sess is None:
            return None
        if sess.has_ticket or (self.version != "TLSv1.3" and sess.id):
            return sess
        return None

    # --- inside ---------------------------------------------------------------

    cdef bint _handshake(self, _Conn c) except -1:
        """One handshake step; True when it is done (the protocol heard
        on_handshake(None))."""
        cdef object p
        try:
            self.raw.do_handshake()
        except _AGAIN:
            self._flush(c)
            return False
        except _SSLERR as exc:
            self.state = TLS_FAILED
            c._tls_failed(exc)
            self._flush(c)        # the alert that says why
            c.t_close()
            return False
        self.state = TLS_OPEN
        o = self.obj
        r = self.raw       # (the C object: no Python frame per question)
        self.version = r.version()
        ciph = r.cipher()
        self.cipher = ciph[0] if ciph else None
        self.alpn = r.selected_alpn_protocol()
        if self.offered or self.server_side:
            self.resumed = r.session_reused
        self.peer_cert_der = r.getpeercert(True)
        self.peer_cert = r.getpeercert() if self.peer_cert_der is not None else None
        if self.server_side:
            # sluiceway.tls's sni_callback notes the name on the SSLObject.
            self.sni = getattr(o, "_sw_sni", None)
        self._flush(c)
        if self.pending is not None:
            p, self.pending = self.pending, None
            self.writev(c, tuple(p))
        c.on_handshake(None)
        return True

    cdef int _read(self, _Conn c) except -1:
        """Decrypt everything complete in ``inc`` and hand it to ``on_data``
        as one bytes object; then the peer's close_notify or an error, if
        one came."""
        cdef object data = None, chunk, err = None
        cdef list more = None
        cdef bint eof = False, full = False
        cdef Py_ssize_t n
        while True:
            # Plaintext is never longer than its ciphertext, so asking for
            # what the BIO holds reads a whole record; stopping when the BIO
            # is empty avoids the (costly) SSLWantReadError. Only a read
            # that filled what it asked for may have left plaintext behind.
            n = self.inc.pending
            if n <= 0:
                if not full:
                    break
                n = self.raw.pending()
                if n <= 0:
                    break
            try:
                chunk = self.raw.read(n)
            except _AGAIN:
                break
            except _ZERO:
                eof = True
                break
            except _SSLERR as exc:
                err = exc
                break
            if not chunk:
                eof = True    # the peer's close_notify (ssl says it so, or as above)
                break
            full = PyBytes_GET_SIZE(chunk) == n
            if data is None:
                data = chunk
            elif more is None:
                more = [data, chunk]
            else:
                more.append(chunk)
        self._flush(c)    # what reading made: a key update, an alert
        if more is not None:
            data = b"".join(more)
        if data is not None and c.fd >= 0:
            c.on_data(data)
        if err is not None:
            c.on_tls_error(err)
            c.t_abort(err)
        elif eof and not self.got_close:
            self.got_close = True
            if c.fd >= 0:
                c._eof()
        return 0

    cdef int _flush(self, _Conn c) except -1:
        """Send the ciphertext the SSLObject made."""
        if self.out is not None and self.out.pending:
            c._send_raw(self.out.read())
        return 0

    # --- what hooks see (Session.tls, Session.client_cert) ---------------------

    cdef object describe(self):
        """The handshake's result as a ``TlsInfo`` (made once per
        connection, when a hook first asks)."""
        if self.view is None:
            from sluiceway._base.tls import TlsInfo
            self.view = TlsInfo(self.version, self.cipher, self.sni, self.alpn, self.resumed)
        return self.view

    cdef object peer_certificate(self):
        """The peer's verified certificate as a ``ClientCert`` (made once),
        or None when it sent none."""
        if self.peer_cert_der is None:
            return None
        if self.cert_view is None:
            from sluiceway._base.tls import client_cert
            self.cert_view = client_cert(self.peer_cert, self.peer_cert_der)
        return self.cert_view
