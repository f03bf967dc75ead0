# Included by _engine.pxd: see engine/io.pyx.

cdef class _IoLoop:
    cdef object loop
    cdef int epfd
    cdef set live               # registered connections (holds them alive)
    cdef list dead              # unregistered during a dispatch, freed after it
    cdef bint dispatching
    cdef list lost              # closed during a dispatch: (conn, exc, ...) for on_lost after it
    cdef list held              # TLS connections whose output waits for the end of the dispatch
    cdef sw_ready_t *ready
    cdef PyObject *rbig         # the bytes the next read goes into (owned)

    # The readiness-and-syscall interface (docs/architecture.md,
    # "Connection I/O"): register/modify/unregister interest, the ready
    # batch (_on_ready), and recv; writes, shutdown and close are the
    # sw_io_* calls of csrc/sw_io.h.
    cdef object recv(self, int fd)
    cdef int register(self, _Conn c, int fd) except -1
    cdef int modify(self, _Conn c, unsigned mask) except -1
    cdef int unregister(self, _Conn c) except -1
    cdef int _batch_end(self) except -1
    cdef int _report_lost(self) except -1


cdef class _Conn(_Side):
    """I/O of one connection (base of _Downstream and _Upstream) on the
    epoll set of its loop (``fd`` >= 0 while open), plain or with TLS as a
    layer between its reads and writes and the protocol (``tls``)."""
    cdef _Engine eng            # the service it serves (None: a test probe)
    cdef double deadline        # when the current wait ends (0: no wait)
    cdef int dl_kind            # what it waits for (DL_*)
    cdef _Tls tls               # the TLS layer, or None (plain)
    cdef _IoLoop io             # the epoll set it is registered on (None: never registered)
    cdef int fd                 # -1 once closed
    cdef unsigned evmask        # the epoll bits asked for
    cdef bint rd_paused
    cdef bint wr_paused         # pause_writing was called
    cdef bint io_closing        # t_close called: flush, then close
    cdef bint linger            # ... then shut down our side and read until EOF
    cdef bint rd_eof            # the peer sent EOF
    cdef bint lost_sent
    cdef list wq                # bytes waiting to be written (None: none)
    cdef Py_ssize_t wq_off      # bytes of wq[0] already written
    cdef Py_ssize_t wq_size     # bytes waiting in all
    cdef double flush_timeout   # after t_close, how long the peer may take to read the rest

    # The one place deadlines are set (inline: they are on every request's
    # path). arm: ``seconds`` from now (the batch's clock; <= 0: no
    # deadline); arm_at: at ``when``. The engine's sweep calls on_timeout
    # once it passes; one sooner than the sweep's next run brings it forward.
    cdef inline int arm(self, int kind, double seconds) except -1:
        if seconds > 0:
            return self.arm_at(kind, _now() + seconds)
        self.deadline = 0.0
        self.dl_kind = kind
        return 0

    cdef inline int arm_at(self, int kind, double when) except -1:
        self.deadline = when
        self.dl_kind = kind
        if when < self.eng.next_tick:
            self.eng.wake_by(when)
        return 0

    cdef inline int disarm(self) except -1:
        self.deadline = 0.0
        self.dl_kind = DL_NONE
        return 0

    cdef bint due(self, double now)
    cdef int on_timeout(self, double now) except -1
    cdef int t_write(self, object data) except -1
    cdef int t_writev(self, tuple parts) except -1
    cdef int t_send(self, object head, object owner, Py_ssize_t off, Py_ssize_t n) except -1
    cdef int t_pause_reading(self) except -1
    cdef int t_resume_reading(self) except -1
    cdef int t_close(self) except -1
    cdef int t_close_linger(self) except -1
    cdef int _linger(self) except -1
    cdef int t_abort(self, object exc) except -1
    cdef object t_peername(self)
    cdef int t_start_tls(self, object ctx, bint server_side, object server_hostname,
                         object session=*) except -1
    cdef int t_abandon(self) except -1
    cdef Py_ssize_t _sent(self, Py_ssize_t r) except -2
    cdef int _send_raw(self, bytes data) except -1
    cdef int _eof(self) except -1
    cdef int _tls_failed(self, object exc) except -1
    cdef int _queue(self, object data, Py_ssize_t off) except -1
    cdef int _set_mask(self, unsigned mask) except -1
    cdef int _io_event(self, unsigned events) except -1
    cdef int _flush(self) except -1
    cdef int _finalize(self, object exc) except -1
    # the protocol, called by the I/O (overridden by both sides)
    cdef int on_data(self, object data) except -1
    cdef int on_eof(self) except -1
    cdef int on_lost(self, object exc) except -1
    cdef int on_pause_writing(self) except -1
    cdef int on_resume_writing(self) except -1
    cdef int on_closing(self) except -1
    cdef int on_handshake(self, object exc) except -1
    cdef int on_tls_error(self, object exc) except -1


