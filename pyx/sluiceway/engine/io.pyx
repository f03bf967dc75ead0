# Included by _engine.pyx: the connections' own I/O (epoll set, write queue).

# ------------------------------------------------------------ connections --
#
# Connections do their own I/O on one epoll set per event loop (``_IoLoop``),
# which the loop watches with a single add_reader: when it is readable,
# ``_IoLoop._on_ready`` takes every ready descriptor from it and calls the
# connection's C-level ``_io_event`` (no Python call, transport object or
# libuv handle per connection or per read). An idle connection is one
# ``_Downstream`` object and its descriptor. TLS is a layer on top of this
# (engine/tls.pyx): ciphertext comes from the same reads and goes out
# through the same write queue.
#
# The readiness-and-syscall part is small and kept behind ``_IoLoop``
# (register, modify, unregister, the ready batch, recv) and csrc/sw_io.h
# (send, writev, shutdown, close): the sessions and the TLS layer see only
# ``_Conn``'s protocol methods (on_data, on_eof, on_lost, on_pause_writing,
# on_resume_writing) and its ``t_*`` methods, so another backend could
# replace epoll without touching them (docs/architecture.md).



cdef object _os_error(Py_ssize_t neg_errno):
    cdef int e = <int>-neg_errno
    return OSError(e, os.strerror(e))


cdef object _addr_obj(int fam, const char *host, int port, unsigned flow, unsigned scope):
    """An address as sw_io_peername wrote it, in the socket module's form:
    ``(host, port)``, ``(host, port, flowinfo, scope_id)``, a Unix path;
    None for another family or an error."""
    if fam == AF_INET:
        return (host.decode("ascii"), port)
    if fam == AF_INET6:
        return (host.decode("ascii"), port, flow, scope)
    if fam == AF_UNIX:
        return host.decode("utf-8", "surrogateescape")
    return None


@cython.final
cdef class _IoLoop:
    """One epoll set, watched by ``loop``, for the connections of that loop."""

    def __cinit__(self, object loop):
        self.loop = loop
        self.epfd = -1
        self.live = set()
        self.dead = []
        self.lost = []
        self.held = []
        self.ready = <sw_ready_t *>malloc(MAX_READY * sizeof(sw_ready_t))
        if self.ready == NULL:
            raise MemoryError()
        cdef int fd = sw_io_open()
        if fd < 0:
            raise _os_error(fd)
        self.epfd = fd
        loop.add_reader(fd, self._on_ready)

    def __dealloc__(self):
        if self.epfd >= 0:
            sw_io_close(self.epfd)
        free(self.ready)
        Py_XDECREF(self.rbig)
        self.rbig = NULL

    cdef object recv(self, int fd):
        """One read from ``fd`` as a new bytes object; None when nothing was
        waiting (EAGAIN), b"" at EOF; raises OSError.

        The bytes are received straight into a preallocated RBUF_SIZE bytes
        object. A large read hands that object over, shrunk in place (no
        copy of the data); a small one is copied out and the buffer kept."""
        cdef Py_ssize_t r
        cdef PyObject *o
        cdef object fresh
        if self.rbig == NULL:
            fresh = PyBytes_FromStringAndSize(NULL, RBUF_SIZE)
            Py_INCREF(fresh)  # owned by rbig from now on
            self.rbig = <PyObject *>fresh
            fresh = None      # rbig's is the only reference (resizing needs that)
        r = sw_io_recv(fd, PyBytes_AS_STRING(<object>self.rbig), RBUF_SIZE)
        if r > COPY_MAX:
            o = self.rbig
            self.rbig = NULL
            if _PyBytes_Resize(&o, r) < 0:
                return None  # (the exception is set; not reached: shrinking does not fail)
            return _steal(o)
        if r > 0:
            return PyBytes_FromStringAndSize(PyBytes_AS_STRING(<object>self.rbig), r)
        if r == 0:
            return b""
        if r == -EAGAIN:
            return None
        raise _os_error(r)

    cdef int register(self, _Conn c, int fd) except -1:
        """Watch ``fd`` (connected, non-blocking; now owned by ``c``) for
        input; its events go to ``c._io_event``."""
        cdef int r = sw_io_add(self.epfd, fd, SW_IO_IN, <void *>c)
        if r < 0:
            raise _os_error(r)
        self.live.add(c)
        c.io = self
        c.fd = fd
        c.evmask = SW_IO_IN
        return 0

    cdef int modify(self, _Conn c, unsigned mask) except -1:
        """Watch ``c``'s descriptor for ``mask`` (SW_IO_IN, SW_IO_OUT) now."""
        sw_io_mod(self.epfd, c.fd, mask, <void *>c)
        return 0

    cdef int unregister(self, _Conn c) except -1:
        """Stop watching ``c`` (before its descriptor is closed)."""
        sw_io_del(self.epfd, c.fd)
        if self.dispatching:
            # Events for it may still be in this batch: keep it alive.
            self.dead.append(c)
        self.live.discard(c)

    def _on_ready(self):
        cdef int i, n
        cdef _Conn c
        if self.epfd < 0:
            return
        global _batch_now, _in_batch
        n = sw_io_ready(self.epfd, self.ready, MAX_READY)
        if n <= 0:
            return
        self.dispatching = True
        _batch_now = sw_clock_now()
        _in_batch = True
        try:
            for i in range(n):
                c = <_Conn>self.ready[i].obj
                if c.fd < 0:
                    continue  # closed earlier in this batch
                try:
                    c._io_event(self.ready[i].events)
                except BaseException:
                    error_log.exception("sluiceway: internal error in connection I/O (this is a bug)")
                    c.t_abort(None)
            if self.held or self.lost:
                self._batch_end()
        finally:
            _in_batch = False
            self.dispatching = False
            if self.dead:
                self.dead.clear()

    cdef int _batch_end(self) except -1:
        """The batch's events are handled: send what the TLS layers held
        (engine/tls.pyx, ``_Tls._flush``), then tell the protocols of the
        connections that closed (which may write and close more)."""
        cdef Py_ssize_t i
        cdef _Conn c
        while self.held or self.lost:
            i = 0
            while i < len(self.held):
                c = <_Conn>self.held[i]
                i += 1
                if c.tls is not None:
                    try:
                        c.tls.release(c)
                    except BaseException:
                        error_log.exception("sluiceway: internal error in connection I/O "
                                            "(this is a bug)")
                        c.t_abort(None)
            del self.held[:]
            if self.lost:
                self._report_lost()
        return 0

    cdef int _report_lost(self) except -1:
        """``on_lost`` of the connections that closed during the batch, in
        the order they closed: after every event of the batch was handled
        (never inside the protocol call that closed it), as ``call_soon``
        would, without a loop callback and a wake-up per connection."""
        cdef Py_ssize_t i = 0
        cdef _Conn c
        while i < len(self.lost):    # (what on_lost closes is appended)
            c = <_Conn>self.lost[i]
            exc = self.lost[i + 1]
            i += 2
            try:
                c.on_lost(exc)
            except BaseException:
                error_log.exception("sluiceway: internal error in connection I/O (this is a bug)")
        del self.lost[:]
        return 0

    def close(self):
        """Abort every connection still open and stop watching."""
        cdef _Conn c
        for c in list(self.live):
            c.t_abort(None)
        if self.epfd >= 0:
            try:
                self.loop.remove_reader(self.epfd)
            except Exception:
                pass  # the loop is closed already
            sw_io_close(self.epfd)
            self.epfd = -1


cdef class _Conn:
    """The I/O of one connection, shared by both sides of the proxy.

    Writes go out at once when nothing is queued; what the socket does not
    take is queued (as bytes) and written when epoll says the socket is
    writable. Past HIGH_WATER queued bytes ``on_pause_writing`` is called,
    at LOW_WATER ``on_resume_writing``, as asyncio transports do.
    ``t_close`` flushes the queue, then closes; ``on_lost`` follows later,
    never inside the call that closed (as ``connection_lost`` does with
    asyncio): after the batch of events being handled, or on the next loop
    iteration when the close came from elsewhere (a timer, a hook).

    With TLS (``t_start_tls``), the ``t_*`` write methods take plaintext
    and the layer queues ciphertext (``_send_raw``); the queue, its
    high-water mark and closing work on the ciphertext.
    """

    def __cinit__(self, *args, **kwargs):
        self.fd = -1
        self.flush_timeout = 60.0

    cdef bint due(self, double now):
        """Whether the sweep should call ``on_timeout`` now."""
        return self.deadline and now >= self.deadline

    cdef int on_timeout(self, double now) except -1:
        """The deadline passed (called by the engine's sweep)."""
        self.disarm()
        return 0

    # --- used by the proxy -------------------------------------------------

    cdef int t_write(self, object data) except -1:
        cdef Py_ssize_t n, r
        cdef Py_buffer view
        if self.fd < 0 or self.io_closing:
            return 0
        if self.tls is not None:
            return self.tls.write(self, data)
        if self.wq is not None:
            self._queue(data, 0)
            return 0
        if type(data) is bytes:
            n = PyBytes_GET_SIZE(data)
            if n == 0:
                return 0
            r = sw_io_send(self.fd, PyBytes_AS_STRING(data), n)
        else:
            PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
            n = view.len
            r = sw_io_send(self.fd, <char *>view.buf, n) if n > 0 else 0
            PyBuffer_Release(&view)
            if n == 0:
                return 0
        r = self._sent(r)
        if 0 <= r < n:
            self._queue(data, r)

    cdef int t_writev(self, tuple parts) except -1:
        cdef iovec iov[8]
        cdef Py_buffer views[8]
        cdef int k = 0, nv = 0, i
        cdef Py_ssize_t total = 0, r, left
        cdef object p
        if self.fd < 0 or self.io_closing:
            return 0
        if self.tls is not None:
            return self.tls.writev(self, parts)
        if self.wq is not None or len(parts) > 8:
            for p in parts:
                self.t_write(p)
            return 0
        try:
            for p in parts:
                if type(p) is bytes:
                    iov[k].iov_base = PyBytes_AS_STRING(p)
                    iov[k].iov_len = <size_t>PyBytes_GET_SIZE(p)
                else:
                    PyObject_GetBuffer(p, &views[nv], PyBUF_SIMPLE)
                    nv += 1
                    iov[k].iov_base = views[nv - 1].buf
                    iov[k].iov_len = <size_t>views[nv - 1].len
                total += <Py_ssize_t>iov[k].iov_len
                k += 1
            r = sw_io_writev(self.fd, iov, k) if total > 0 else 0
        finally:
            for i in range(nv):
                PyBuffer_Release(&views[i])
        r = self._sent(r)
        if r < 0 or r == total:
            return 0
        # Queue what was not written: the rest of the part it stopped in,
        # then the parts after it.
        left = r
        for p in parts:
            n = len(p)
            if left >= n:
                left -= n
                continue
            self._queue(p, left)
            left = 0

    cdef int t_send(self, object head, object owner, Py_ssize_t off, Py_ssize_t n) except -1:
        """Write ``head`` (bytes, or None), then bytes ``off``..``off+n`` of
        ``owner`` (bytes) in one vectored write, without joining them; only
        what the socket does not take is copied (into the queue)."""
        cdef iovec iov[2]
        cdef int k = 0
        cdef Py_ssize_t r, hl = 0
        cdef object part
        cdef char *p
        if self.tls is not None and self.fd >= 0 and not self.io_closing:
            if head is not None:
                hl = PyBytes_GET_SIZE(head)
            if hl + n <= TLS_JOIN_MAX:
                # One record: joined here, without a memoryview of the slice.
                part = PyBytes_FromStringAndSize(NULL, hl + n)
                p = PyBytes_AS_STRING(part)
                if hl:
                    memcpy(p, PyBytes_AS_STRING(head), <size_t>hl)
                if n:
                    memcpy(p + hl, PyBytes_AS_STRING(owner) + off, <size_t>n)
                return self.tls.write(self, part)
            part = owner if off == 0 and n == PyBytes_GET_SIZE(owner) else \
                memoryview(owner)[off:off + n]
            return self.tls.writev(self, (head, part) if head is not None else (part,))
        if self.wq is not None or self.fd < 0 or self.io_closing:
            if head is not None:
                self.t_write(head)
            if n > 0:
                self.t_write(owner if off == 0 and n == PyBytes_GET_SIZE(owner) else
                             PyBytes_FromStringAndSize(PyBytes_AS_STRING(owner) + off, n))
            return 0
        if head is not None:
            hl = PyBytes_GET_SIZE(head)
            iov[0].iov_base = PyBytes_AS_STRING(head)
            iov[0].iov_len = <size_t>hl
            k = 1
        if n > 0:
            iov[k].iov_base = PyBytes_AS_STRING(owner) + off
            iov[k].iov_len = <size_t>n
            k += 1
        if hl + n == 0:
            return 0
        r = self._sent(sw_io_writev(self.fd, iov, k))
        if r < 0 or r == hl + n:
            return 0
        if r < hl:
            self._queue(head, r)
            r = 0
        else:
            r -= hl
        if r < n:
            if off == 0 and n == PyBytes_GET_SIZE(owner):
                self._queue(owner, r)
            else:
                self._queue(PyBytes_FromStringAndSize(PyBytes_AS_STRING(owner) + off + r, n - r), 0)
        return 0

    cdef int t_pause_reading(self) except -1:
        self.rd_paused = True
        self._set_mask(self.evmask & ~SW_IO_IN)

    cdef int t_resume_reading(self) except -1:
        self.rd_paused = False
        if not self.io_closing:
            self._set_mask(self.evmask | SW_IO_IN)

    cdef int t_close(self) except -1:
        if self.fd < 0 or self.io_closing:
            return 0
        if self.tls is not None:
            self.tls.close_notify(self)
            self.tls.release(self)   # with what the batch wrote before: one send
        self.io_closing = True
        if self.wq is None:
            self._finalize(None)
        else:
            self._set_mask(SW_IO_OUT)   # flush, then close
            if self.flush_timeout > 0:
                # A peer that does not read the rest does not keep it open.
                self.io.loop.call_later(self.flush_timeout, self._flush_expired)

    cdef int t_close_linger(self) except -1:
        """Close without making the kernel reset the connection: write the
        queue, shut down our side (the peer reads EOF after the last byte),
        then read and drop whatever the peer still sends until its EOF.

        Closing a socket with unread input makes the kernel answer with a
        reset, and a reset can destroy the response in the peer's buffers
        before the peer reads it (a client still sending a request body
        when we answer early). The owner bounds the reading (``t_abort``).
        With TLS, a close_notify goes before the shutdown, and what comes
        meanwhile is still decrypted (and dropped by the protocol)."""
        if self.fd < 0 or self.io_closing:
            return 0
        if self.tls is not None:
            self.tls.close_notify(self)
            self.tls.release(self)
        self.io_closing = True
        self.linger = True
        if self.wq is None:
            self._linger()
        else:
            self._set_mask(SW_IO_OUT | SW_IO_IN)   # flush, and keep dropping input
            if self.flush_timeout > 0:
                self.io.loop.call_later(self.flush_timeout, self._flush_expired)
        return 0

    cdef int _linger(self) except -1:
        """Everything is written: shut down our side and wait for EOF."""
        if self.rd_eof or sw_io_shutdown_wr(self.fd) < 0:
            self._finalize(None)
            return 0
        self._set_mask(SW_IO_IN)
        return 0

    def _flush_expired(self):
        if self.fd >= 0 and self.io_closing:
            self.t_abort(TimeoutError(f"the peer did not read the last {self.wq_size} bytes "
                                      f"within {self.flush_timeout:.3g}s of the close"))

    cdef int t_abort(self, object exc) except -1:
        """Close at once, dropping anything queued; ``exc`` goes to on_lost."""
        if self.fd >= 0:
            self.wq = None
            self.wq_size = 0
            self._finalize(exc)

    cdef object t_peername(self):
        cdef char host[256]
        cdef int port = 0, fam
        cdef unsigned flow = 0, scope = 0
        if self.fd < 0:
            return None
        fam = sw_io_peername(self.fd, host, sizeof(host), &port, &flow, &scope)
        return _addr_obj(fam, host, port, flow, scope)

    cdef int t_start_tls(self, object ctx, bint server_side, object server_hostname,
                         object session=None) except -1:
        """Put TLS over this open connection (nothing plain was exchanged
        yet) with ``ctx`` (an ``ssl.SSLContext``), as the server or as a
        client naming ``server_hostname`` (and offering to resume
        ``session``, an ``ssl.SSLSession``), and start the handshake; ``ctx``
        may be a listener's ``_CtlsCtx`` instead (the server side on the C
        layer). Its end
        is ``on_handshake``; the connection's deadlines and closing go on as
        before (the caller bounds the handshake's time)."""
        if self.fd < 0 or self.io_closing or self.tls is not None:
            raise RuntimeError("TLS starts on an open plain connection")
        self.tls = _new_tls(ctx, server_side, server_hostname, session)
        self.tls.start(self)
        return 0

    cdef int t_abandon(self) except -1:
        """Abort a connection its protocol was never told is open (a connect
        or a handshake given up): no ``on_lost``."""
        self.lost_sent = True
        return self.t_abort(None)

    # --- inside --------------------------------------------------------------

    cdef Py_ssize_t _sent(self, Py_ssize_t r) except -2:
        """What a send or writev returned: the bytes written (0 when the
        socket took none), or -1 when it failed (the connection is then
        aborted)."""
        if r >= 0:
            return r
        if r == -EAGAIN:
            return 0
        self.t_abort(_os_error(r))
        return -1

    cdef int _send_raw(self, bytes data) except -1:
        """Bytes as they go on the wire (the TLS layer's ciphertext): sent
        now, or queued after what waits; also while closing (a
        close_notify)."""
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data), r
        if self.fd < 0 or n == 0:
            return 0
        if self.wq is not None:
            return self._queue(data, 0)
        r = self._sent(sw_io_send(self.fd, PyBytes_AS_STRING(data), n))
        if 0 <= r < n:
            self._queue(data, r)
        return 0

    cdef int _queue(self, object data, Py_ssize_t off) except -1:
        cdef Py_ssize_t n
        if type(data) is not bytes:
            data = bytes(memoryview(data)[off:])
            off = 0
        n = PyBytes_GET_SIZE(data) - off
        if n <= 0:
            return 0
        if self.wq is None:
            self.wq = [data]
            self.wq_off = off
            self._set_mask(self.evmask | SW_IO_OUT)
        elif off:
            self.wq.append(data[off:])
        else:
            self.wq.append(data)
        self.wq_size += n
        if not self.wr_paused and self.wq_size > HIGH_WATER:
            self.wr_paused = True
            self.on_pause_writing()

    cdef int _set_mask(self, unsigned mask) except -1:
        if mask != self.evmask and self.fd >= 0:
            self.evmask = mask
            self.io.modify(self, mask)

    cdef int _io_event(self, unsigned events) except -1:
        cdef int err
        if events & SW_IO_IN and self.evmask & SW_IO_IN:
            try:
                data = self.io.recv(self.fd)
            except OSError as exc:
                self.t_abort(exc)
                return 0
            if data is not None:
                if PyBytes_GET_SIZE(data):
                    if self.tls is None:
                        self.on_data(data)
                    else:
                        self.tls.received(self, data)
                elif self.tls is None or self.io_closing:
                    self._eof()
                    return 0
                else:
                    self.tls.peer_eof(self)
                    return 0
        elif events & (SW_IO_ERR | SW_IO_HUP) and self.wq is None:
            # Reset or hung up while we neither read nor write.
            err = sw_io_soerror(self.fd)
            self.t_abort(OSError(err, os.strerror(err)) if err else
                         ConnectionResetError("the peer closed the connection"))
            return 0
        if self.fd >= 0 and self.wq is not None and events & (SW_IO_OUT | SW_IO_ERR | SW_IO_HUP):
            self._flush()

    cdef int _flush(self) except -1:
        cdef iovec iov[MAX_IOV]
        cdef int k = 0
        cdef Py_ssize_t r, n
        cdef object b
        for b in self.wq:
            if k == MAX_IOV:
                break
            iov[k].iov_base = PyBytes_AS_STRING(b)
            iov[k].iov_len = <size_t>PyBytes_GET_SIZE(b)
            k += 1
        iov[0].iov_base = PyBytes_AS_STRING(self.wq[0]) + self.wq_off
        iov[0].iov_len -= <size_t>self.wq_off
        r = sw_io_writev(self.fd, iov, k)
        if r < 0:
            if r != -EAGAIN:
                self.t_abort(_os_error(r))
            return 0
        self.wq_size -= r
        r += self.wq_off
        k = 0
        for b in self.wq:
            n = PyBytes_GET_SIZE(b)
            if r < n:
                break
            r -= n
            k += 1
        if k:
            del self.wq[:k]
        self.wq_off = r
        if not self.wq:
            self.wq = None
            self.wq_off = 0
            if self.io_closing:
                if self.linger:
                    self._linger()
                else:
                    self._finalize(None)
                return 0
            self._set_mask(self.evmask & ~SW_IO_OUT)
        if self.wr_paused and self.wq_size <= LOW_WATER:
            self.wr_paused = False
            self.on_resume_writing()

    cdef int _eof(self) except -1:
        """The peer ended its side: a TCP EOF, or a TLS close_notify."""
        self.rd_eof = True
        self._set_mask(self.evmask & ~SW_IO_IN)
        if self.io_closing:
            # Closing already: a lingering close is over once the queue is
            # written.
            if self.wq is None:
                self._finalize(None)
            return 0
        self.on_eof()
        self.t_close()
        return 0

    cdef int _tls_failed(self, object exc) except -1:
        """The TLS handshake failed: the protocol hears ``on_handshake(exc)``
        and, as it was never told the connection opened, no ``on_lost``
        (the layer then writes its alert and closes)."""
        self.lost_sent = True
        self.on_handshake(exc)
        return 0

    cdef int _finalize(self, object exc) except -1:
        cdef int fd = self.fd
        cdef _Tls tls = self.tls
        if fd < 0:
            return 0
        self.on_closing()
        self.io.unregister(self)
        self.fd = -1
        self.wq = None
        self.wq_size = 0
        sw_io_close(fd)
        if tls is not None and tls.closed():
            # Closed during the handshake: the protocol was never told the
            # connection opened; it hears why the handshake ended instead.
            self._tls_failed(exc if exc is not None else ConnectionAbortedError(
                "the connection was closed during the TLS handshake"))
        if not self.lost_sent:
            self.lost_sent = True
            if self.io.dispatching:
                # Reported once the batch is handled (_IoLoop._report_lost).
                self.io.lost.append(self)
                self.io.lost.append(exc)
            else:
                self.io.loop.call_soon(self._lost, exc)

    def _lost(self, exc):
        self.on_lost(exc)

    # --- the protocol (overridden) --------------------------------------------

    cdef int on_data(self, object data) except -1:
        pass

    cdef int on_eof(self) except -1:
        pass

    cdef int on_lost(self, object exc) except -1:
        pass

    cdef int on_pause_writing(self) except -1:
        pass

    cdef int on_resume_writing(self) except -1:
        pass

    cdef int on_closing(self) except -1:
        pass

    cdef int on_handshake(self, object exc) except -1:
        """The TLS handshake is done (``exc`` None; the handshake's result
        is in ``tls``), or failed with ``exc`` (then nothing else follows:
        no ``on_lost``)."""
        pass

    cdef int on_tls_error(self, object exc) except -1:
        """TLS failed after the handshake (a bad record, a fatal alert from
        the peer): ``exc`` (an ``ssl.SSLError``); the connection is then
        aborted with it, and ``on_lost`` follows as for any loss."""
        pass
