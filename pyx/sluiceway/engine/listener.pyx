# Included by _engine.pyx: accepting connections.

@cython.final
cdef class _Listener:
    """Accepts connections from one listening socket for an engine; with
    ``tls_ctx`` (an ``ssl.SSLContext``) every connection starts with a TLS
    handshake that must end within ``hs_timeout`` seconds (0: no limit), on
    the C layer when the context allows (``tls_start``, see engine/tls.pyx)."""

    def __cinit__(self, _Engine eng, object sock, object tls_ctx=None, double hs_timeout=60.0):
        self.eng = eng
        self.sock = sock
        self.fd = sock.fileno()
        self.tls_ctx = tls_ctx
        self.tls_start = _ctls_for(tls_ctx) if tls_ctx is not None else None
        if self.tls_start is None:
            self.tls_start = tls_ctx
        self.hs_timeout = hs_timeout
        self._start()

    cdef int _start(self) except -1:
        if not self.active and not self.closed:
            self.eng.loop.add_reader(self.fd, self._accept)
            self.active = True

    cdef int _stop(self) except -1:
        if self.active:
            self.active = False
            try:
                self.eng.loop.remove_reader(self.fd)
            except Exception:
                pass  # the loop is closed already

    def _resume(self):
        self.retry = None
        self._start()

    def _accept(self):
        # One connection per wake-up, as nginx does (without multi_accept):
        # the listening socket is watched level-triggered, so the loop comes
        # back at once for the next one, and a wake-up with one connection
        # waiting (the common case) costs no accept() that finds none.
        # Workers sharing the socket also take turns this way.
        self._accept_some(1)

    cdef int _accept_some(self, int limit) except -1:
        """Accept up to ``limit`` waiting connections."""
        cdef int i, fd
        cdef sw_peer_t peer
        for i in range(limit):
            if self.eng._full():
                return 0
            fd = sw_io_accept(self.fd, &peer)
            if fd >= 0:
                self.eng._accepted(fd, self, &peer)
                continue
            if fd == -EAGAIN:
                return 0
            if fd in (-EMFILE, -ENFILE, -ENOBUFS, -ENOMEM):
                # Out of descriptors or memory: stop accepting for a while
                # (the waiting connections stay in the kernel's backlog).
                self.eng.log.error("sluiceway: cannot accept connections on %s: %s; pausing "
                                   "accept for 0.5 s (raise the open-files limit, `ulimit -n`, "
                                   "or lower max_connections)", self.sock.getsockname(),
                                   os.strerror(-fd))
                self._stop()
                self.retry = self.eng.loop.call_later(0.5, self._resume)
                return 0
            if fd in (-ECONNABORTED, -EPROTO, -EPERM, -EINTR):
                continue  # that connection went away before we took it
            self.eng.log.error("sluiceway: accept failed on %s: %s", self.sock.getsockname(),
                               os.strerror(-fd))
            return 0
        return 0

    def close(self, bint drain=False):
        """Stop accepting. With ``drain``, first take every connection
        already waiting in the listen queue (closing a listening socket
        resets those), so that they are served; the caller then closes the
        socket."""
        if drain and not self.closed and self.fd >= 0:
            self._accept_some(1 << 30)
        self.closed = True
        self._stop()
        try:
            self.eng.listeners.remove(self)
        except ValueError:
            pass
        if self.retry is not None:
            self.retry.cancel()
            self.retry = None

    async def wait_closed(self):
        pass
