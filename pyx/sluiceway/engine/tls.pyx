# Included by _engine.pyx: TLS as a layer over a connection's own I/O.

# ------------------------------------------------------------------ TLS --
#
# Theory of operation
# -------------------
# A TLS connection is a plain ``_Conn`` (its descriptor on the epoll set,
# its write queue, its deadlines) with a ``_Tls`` in ``_Conn.tls``. The
# layer is Python's ``ssl.SSLObject`` over two ``ssl.MemoryBIO``s, as
# asyncio's and uvloop's sslproto use it, without a transport; or, for a
# listener's connections, the same done by OpenSSL's calls from C
# (``ct``, csrc/sw_tls.c: "The C layer" below), with the same states and
# the same calls from the connection:
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


# --- the C layer (csrc/sw_tls.h) ------------------------------------------------
#
# A TLS listener's connections run on OpenSSL's own calls (sw_tls.c) over
# the SSL_CTX inside the listener's ssl.SSLContext, when that can be done
# safely: CPython (whose SSLContext object starts with its SSL_CTX pointer,
# checked against what ssl reports), OpenSSL's functions found in the
# libssl ssl loaded, no client certificates asked for (their verified
# certificate is decoded by ssl), no keylog or message callback, and an SNI
# callback that is none or sluiceway.tls's (whose table the C layer takes
# over). Anything else, and SLUICEWAY_TLS_LAYER=python, runs on ssl's
# SSLObject as before. Upstream connections always do.

cdef int _ctls_state = 0      # 0: not tried; 1: OpenSSL's functions found; -1: not usable
cdef str _ctls_why = None     # why not usable
cdef str _ctls_not = None     # why the last context _ctls_for refused needs ssl's layer


cdef bint _ctls_ready() except -1:
    global _ctls_state, _ctls_why
    cdef char why[160]
    cdef bytes path
    if _ctls_state == 0:
        _ctls_state = -1
        if os.environ.get("SLUICEWAY_TLS_LAYER", "") == "python":
            _ctls_why = "SLUICEWAY_TLS_LAYER=python"
        elif sys.implementation.name != "cpython" or not ((3, 10) <= sys.version_info[:2] <= (3, 14)):
            _ctls_why = "not a CPython whose SSLContext layout is known"
        else:
            import _ssl as _c
            f = getattr(_c, "__file__", None)
            path = os.fsencode(f) if f else None
            why[0] = 0
            if sw_tls_load(<const char *>path if path is not None else NULL, why, sizeof(why)) == 0:
                _ctls_state = 1
            else:
                _ctls_why = why.decode("utf-8", "replace")
    return _ctls_state == 1


cdef inline void *_ssl_ctx_of(object ctx):
    """The SSL_CTX inside an ssl.SSLContext (the first field after the
    object's header in CPython 3.10 to 3.14)."""
    return (<void **>(<char *><PyObject *>ctx + sizeof(PyObject)))[0]


def tls_layer_for(ctx):
    """Which TLS layer a listener with ``ctx`` (an ``ssl.SSLContext``) runs
    its connections on: ``("c", None)``, or ``("python", why)``."""
    if _ctls_for(ctx) is not None:
        return ("c", None)
    return ("python", _ctls_why if _ctls_state != 1 else _ctls_not)


cdef object _ctls_for(object ctx):
    """The C layer's context for a listener's ``ctx``, made once per
    context, or None when ``ctx`` needs ssl's SSLObject (see above)."""
    global _ctls_not
    cdef _CtlsCtx cc
    cdef void *p
    cdef bytes nb
    if ctx is None or not _ctls_ready():
        return None
    _ssl_load()
    cc = getattr(ctx, "_sw_ctls", None)
    if cc is not None:
        return cc
    if not isinstance(ctx, _ssl.SSLContext):
        _ctls_not = "not an ssl.SSLContext"
        return None
    p = _ssl_ctx_of(ctx)
    if p == NULL or <object>sw_tls_ctx_options(p) != _OPTIONS(ctx):
        _ctls_not = "the SSLContext object's layout is not the one expected"
        return None
    if sw_tls_ctx_verify_mode(p) != 0:
        _ctls_not = "client certificates are asked for (ssl decodes the verified one)"
        return None
    if getattr(ctx, "keylog_filename", None) is not None or \
            getattr(ctx, "_msg_callback", None) is not None:
        _ctls_not = "a keylog file or message callback is set"
        return None
    cb = ctx.sni_callback
    names = None
    if cb is not None:
        owner = getattr(cb, "__self__", None)
        get = getattr(owner, "sni_names", None)
        if get is None or getattr(cb, "__name__", None) != "_sni":
            _ctls_not = "the context has an sni_callback of its own"
            return None
        names = get()
    if _NO_RENEG and not (<long>_OPTIONS(ctx) & _NO_RENEG):
        ctx.options |= _NO_RENEG
    cc = _CtlsCtx.__new__(_CtlsCtx)
    cc.ctx = p
    keep = [ctx]
    if names is not None:
        cc.names = sw_tls_names_new(len(names))
        if cc.names == NULL:
            raise MemoryError()
        for name, suffix, other in names:
            if not isinstance(other, _ssl.SSLContext) or \
                    <object>sw_tls_ctx_options(_ssl_ctx_of(other)) != _OPTIONS(other) or \
                    sw_tls_ctx_verify_mode(_ssl_ctx_of(other)) != 0:
                _ctls_not = "an SNI choice is not an ssl.SSLContext like the default"
                return None
            nb = name.encode("ascii", "replace")
            if sw_tls_names_add(cc.names, nb, len(nb), 1 if suffix else 0, _ssl_ctx_of(other)) < 0:
                _ctls_not = f"the name {name!r} is too long for SNI"
                return None
            keep.append(other)
        # Every context the table names may start a connection too.
        for other in dict.fromkeys(keep):
            if sw_tls_names_install(cc.names, _ssl_ctx_of(other)) < 0:
                raise MemoryError()
    # (From here the contexts' servername callback is the C layer's. Setting
    # ``sni_callback`` on them again would put ssl's back, which expects an
    # SSLObject on every SSL: sluiceway never does, the contexts are its own.)
    cc.keep = tuple(dict.fromkeys(keep))
    ctx._sw_ctls = cc
    return cc


@cython.final
@cython.no_gc_clear
cdef class _CtlsCtx:
    """A TLS listener's context for the C layer: its SSL_CTX and SNI table
    (made by ``_ctls_for``, once per ``ssl.SSLContext``, and kept on it: it
    lives as long as the context)."""

    def __dealloc__(self):
        if self.names != NULL:
            sw_tls_names_free(self.names)      # (takes the C callback off)
            self.names = NULL


cdef _Tls _new_tls(object ctx, bint server_side, object server_hostname, object session=None):
    """A TLS layer for one connection over ``ctx`` (an ``ssl.SSLContext``),
    as the server or as a client that names ``server_hostname`` (SNI, and
    the name the certificate must hold when ``ctx.check_hostname``) and
    offers to resume ``session`` (an ``ssl.SSLSession`` of an earlier
    connection over the same ``ctx``, or None)."""
    _ssl_load()
    cdef _Tls t
    if isinstance(ctx, _CtlsCtx):
        t = _Tls.__new__(_Tls)
        t.cctx = <_CtlsCtx>ctx
        t.ct = sw_tls_new(t.cctx.ctx)
        if t.ct == NULL:
            raise MemoryError("cannot make a TLS connection")
        t.server_side = True
        t.state = TLS_HANDSHAKE
        return t
    if not isinstance(ctx, _ssl.SSLContext):
        raise TypeError(f"a TLS connection needs an ssl.SSLContext, not {type(ctx).__name__}")
    # The contexts sluiceway builds refuse renegotiation already; one from
    # elsewhere is made to.
    if _NO_RENEG and not (<long>_OPTIONS(ctx) & _NO_RENEG):
        ctx.options |= _NO_RENEG
    t = _Tls.__new__(_Tls)
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

    def __dealloc__(self):
        if self.ct != NULL:
            sw_tls_free(self.ct)
            self.ct = NULL

    cdef int start(self, _Conn c) except -1:
        """The first handshake step: a client's hello goes out. A server
        waits for the client's hello (``received``): a step with nothing
        to read only raises SSLWantReadError, about 7,000 instructions."""
        if not self.server_side:
            self._handshake(c)
        return 0

    cdef int received(self, _Conn c, object data) except -1:
        """Ciphertext came on ``c``."""
        if self.ct != NULL:
            if self.state == TLS_FAILED:
                return 0
            if not PyBytes_CheckExact(data):
                data = bytes(data)
            # OpenSSL reads ``data`` in place until settled (what is left
            # of it, a record cut between two reads, is copied then).
            if sw_tls_feed(self.ct, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data)) < 0:
                c.t_abort(MemoryError("out of memory for TLS input"))
                return 0
            try:
                if self.state == TLS_HANDSHAKE:
                    if not self._c_handshake(c) or c.fd < 0:
                        return 0
                return self._c_read(c)
            finally:
                if self.ct != NULL and sw_tls_settle(self.ct) < 0:
                    c.t_abort(MemoryError("out of memory for TLS input"))
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
        if self.state != TLS_OPEN or (self.obj is None and self.ct == NULL):
            if self.state == TLS_HANDSHAKE and len(data):
                if self.pending is None:
                    self.pending = []
                self.pending.append(bytes(data))
            return 0
        if len(data) == 0:
            return 0
        if self.ct != NULL:
            if self._c_write(c, data) < 0:
                return 0
            return self._flush(c)     # (a write always makes a record)
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
        if total <= TLS_JOIN_MAX or self.state != TLS_OPEN or (self.obj is None and self.ct == NULL):
            return self.write(c, b"".join(parts))
        if self.ct != NULL:
            for p in parts:
                if len(p) and self._c_write(c, p) < 0:
                    return 0
            return self._flush(c)
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
        if self.ct != NULL and self.state == TLS_OPEN and not self.sent_close:
            self.sent_close = True
            sw_tls_shutdown(self.ct)
            self._flush(c)
            return 0
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
        if self.ct != NULL:
            sw_tls_free(self.ct)
            self.ct = NULL
        self.cctx = None
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
        try:
            self.raw.do_handshake()
        except _AGAIN:
            self._flush(c)
            return False
        except _SSLERR as exc:
            return self._failed(c, exc)
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
        return self._opened(c)

    cdef bint _failed(self, _Conn c, object exc) except -1:
        """The handshake failed with ``exc``: the protocol hears it, the
        alert that says why goes out, the connection closes. False."""
        self.state = TLS_FAILED
        c._tls_failed(exc)
        self._flush(c)
        c.t_close()
        return False

    cdef bint _opened(self, _Conn c) except -1:
        """The handshake is done (its result noted): send what it made and
        the plaintext written meanwhile; the protocol hears it. True."""
        cdef object p
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
        return self._deliver(c, data, more, err, eof)

    cdef int _deliver(self, _Conn c, object data, list more, object err, bint eof) except -1:
        """After a read: send what reading made (a key update's answer, an
        alert, TLS 1.3 tickets), hand the plaintext (``data``, or the parts
        in ``more``) to ``on_data`` as one bytes object, then the error or
        the peer's close_notify, if one came."""
        self._flush(c)
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
        """Send the ciphertext the layer made. On the C layer, during a
        batch of events (``_IoLoop.dispatching``), it is held in the
        layer's output instead and sent once, when the batch is handled
        (``release``, or ``_Conn.t_close`` with the close_notify): what
        one batch writes to a connection goes out in one send. A response
        and the close_notify after it then cost one send, not two."""
        if self.ct != NULL:
            if c.io is not None and c.io.dispatching and not c.io_closing:
                if not self.held and sw_tls_out_pending(self.ct):
                    self.held = True
                    c.io.held.append(c)
                return 0
            return self.release(c)
        if self.out is not None and self.out.pending:
            c._send_raw(self.out.read())
        return 0

    cdef int release(self, _Conn c) except -1:
        """Send the C layer's output now (what ``_flush`` held, and what
        was made since)."""
        cdef size_t n
        cdef object b
        self.held = False
        if self.ct != NULL and c.fd >= 0:
            n = sw_tls_out_pending(self.ct)
            if n:
                b = PyBytes_FromStringAndSize(NULL, n)
                sw_tls_out_read(self.ct, PyBytes_AS_STRING(b), n)
                c._send_raw(b)
        return 0

    # --- the C layer's steps (ct != NULL) --------------------------------------

    cdef bint _c_handshake(self, _Conn c) except -1:
        """As ``_handshake``, on the C layer."""
        cdef int r = sw_tls_handshake(self.ct)
        cdef const unsigned char *ap
        cdef unsigned alen
        cdef const char *s
        if r == SW_TLS_AGAIN:
            self._flush(c)
            return False
        if r != SW_TLS_DONE:
            return self._failed(c, self._c_error())
        self.state = TLS_OPEN
        s = sw_tls_version(self.ct)
        self.version = s.decode("ascii") if s != NULL else None
        s = sw_tls_cipher(self.ct)
        self.cipher = s.decode("ascii") if s != NULL else None
        if sw_tls_alpn(self.ct, &ap, &alen):
            self.alpn = PyUnicode_DecodeLatin1(<const char *>ap, alen, NULL)
        self.resumed = sw_tls_resumed(self.ct)
        s = sw_tls_servername(self.ct)
        if s != NULL:
            self.sni = s.decode("ascii", "replace").lower()
        return self._opened(c)

    cdef int _c_read(self, _Conn c) except -1:
        """As ``_read``, on the C layer."""
        cdef object data = None, chunk, err = None
        cdef list more = None
        cdef bint eof = False, full = False
        cdef size_t n
        cdef long r
        cdef PyObject *cp
        while self.ct != NULL:
            n = sw_tls_in_pending(self.ct)
            if n == 0:
                if not full:
                    break
                n = sw_tls_pending(self.ct)
                if n == 0:
                    break
            chunk = PyBytes_FromStringAndSize(NULL, n)   # (plaintext <= its ciphertext)
            r = sw_tls_read(self.ct, PyBytes_AS_STRING(chunk), n)
            if r == SW_TLS_AGAIN:
                break
            if r == SW_TLS_EOF:
                eof = True
                break
            if r < 0:
                err = self._c_error()
                break
            full = <size_t>r == n
            if not full:    # shrunk in place (resizing needs the only reference)
                Py_INCREF(chunk)
                cp = <PyObject *>chunk
                chunk = None
                _PyBytes_Resize(&cp, r)
                chunk = _steal(cp)
            if data is None:
                data = chunk
            elif more is None:
                more = [data, chunk]
            else:
                more.append(chunk)
        return self._deliver(c, data, more, err, eof)

    cdef int _c_write(self, _Conn c, object data) except -1:
        """Encrypt ``data`` (bytes or a buffer) into the output; -1 (the
        connection aborted) when OpenSSL refused."""
        cdef Py_buffer view
        cdef int r
        if PyBytes_CheckExact(data):
            r = sw_tls_write(self.ct, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
        else:
            PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
            try:
                r = sw_tls_write(self.ct, <const char *>view.buf, view.len)
            finally:
                PyBuffer_Release(&view)
        if r < 0:
            c.t_abort(self._c_error())
            return -1
        return 0

    cdef object _c_error(self):
        """The C layer's last error as an ``ssl.SSLError`` worded as ssl
        words it (``[SSL: REASON] text``, with ``reason`` and ``library``)."""
        cdef char text[256]
        cdef char reason[128]
        cdef char lib[64]
        text[0] = reason[0] = lib[0] = 0
        if self.ct != NULL:
            sw_tls_err_text(self.ct, text, sizeof(text), reason, sizeof(reason), lib, sizeof(lib))
        t = text.decode("utf-8", "replace")
        r = reason.decode("ascii", "replace")
        l = lib.decode("ascii", "replace") or "SSL"
        if not t:
            exc = _SSLERR(1, "TLS protocol error")
            exc.reason = None
        else:
            exc = _SSLERR(1, f"[{l}: {r}] {t}")
            exc.reason = r
        exc.library = l
        return exc

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
