# Included by _engine.pxd: see engine/io.pyx.

cdef class _IoLoop:
    cdef object loop
    cdef int epfd
    cdef set live               # registered connections (holds them alive)
    cdef list dead              # unregistered during a dispatch, freed after it
    cdef bint dispatching
    cdef sw_ready_t *ready
    cdef PyObject *rbig         # the bytes the next read goes into (owned)

    cdef object recv(self, int fd)

    cdef int register(self, _Conn c, int fd) except -1
    cdef int unregister(self, _Conn c) except -1


cdef class _Conn:
    """I/O of one connection (base of _Downstream and _Upstream): on our own
    epoll set (``io`` is not None, ``fd`` >= 0 while open) or through an
    asyncio transport (TLS upstreams)."""
    cdef object transport       # the asyncio transport (TLS), else None
    cdef _IoLoop io             # our own I/O, else None
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
    cdef Py_ssize_t _sent(self, Py_ssize_t r) except -2
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


cdef _IoLoop _io_for(object loop)
