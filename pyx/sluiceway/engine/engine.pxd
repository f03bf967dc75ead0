# Included by _engine.pxd: see engine/engine.pyx.

cdef class _Engine:
    cdef object loop
    cdef object app
    cdef _Pool pool
    cdef set conns
    cdef object timer
    cdef double tick
    cdef public bint closing
    # hooks: bound methods, or None when the app does not override them
    cdef object h_new_ctx
    cdef object h_early
    cdef object h_req_filter
    cdef object h_req_body
    cdef object h_peer
    cdef object h_connected
    cdef object h_up_req
    cdef object h_up_resp
    cdef object h_resp
    cdef object h_resp_body
    cdef object h_logging
    cdef object h_fail_connect
    cdef object h_err_proxy
    cdef object h_fail_proxy
    # settings
    cdef public double head_timeout
    cdef public double keepalive_timeout
    cdef public double request_timeout
    cdef public double connect_timeout
    cdef public double read_timeout
    cdef public double write_timeout
    cdef public double ds_write_timeout
    cdef public double body_timeout     # between two reads of a request body (408)
    cdef public double body_min_rate    # bytes/s a request body must average (0: off)
    cdef public double linger_time      # a lingering close lasts at most this
    cdef public double linger_timeout   # ... and ends when the client is quiet this long
    cdef public int max_connections
    cdef bint pause_accept      # at max_connections: stop accepting (else 503)
    cdef bint accept_paused
    cdef list listeners
    cdef public int max_retries
    cdef public long long max_body_size
    cdef public bint forwarded
    cdef public bint access_log
    cdef uint32_t max_head
    cdef uint32_t max_url
    cdef uint32_t max_headers
    cdef public long long requests
    cdef public long long inflight
    cdef public long long replayed  # requests sent again after a pooled connection died
    cdef object log
    cdef object alog
    cdef _LogGate gate          # repeated per-connection lines, rate-limited
    cdef Py_ssize_t peak_conns  # most client connections since memory was last trimmed
    cdef list due               # connections whose deadline passed, not yet acted on
    cdef bint expiring          # _expire has more of them to do
    cdef int _expire(self) except -1

    cdef _IoLoop io
    cdef list wires             # free downstream parsers
    cdef object spare_task      # a _HookTask to reuse (_hook_task.pxi)
    cdef int _schedule(self) except -1
    cdef int _accepted(self, int fd) except -1
    cdef bint _full(self)
    cdef int _conn_closed(self) except -1
    cdef int _close_idle(self, double now) except -1
    cdef _Wire _take_wire(self)
    cdef int _give_wire(self, _Wire w, bint reset=*) except -1
