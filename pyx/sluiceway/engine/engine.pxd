# Included by _engine.pxd: see engine/engine.pyx.

cdef class _Engine:
    cdef object loop
    cdef object app
    cdef readonly Settings cfg
    cdef object compression     # the CompressionPolicy (sluiceway.compression), or None
    cdef bint compress_default  # ... and it compresses by default
    cdef tuple hooks            # the app's hooks by H_* index, None where not overridden
    cdef tuple req_filters      # the request body's filters, in order (None: none)
    cdef tuple resp_filters     # the response body's filters, in order (None: none)
    cdef _LoopState state
    cdef _IoLoop io
    cdef _Pool pool
    cdef set conns              # its client connections (_Downstream)
    cdef set ups                # its upstream connections (_Upstream), pooled ones too
    cdef list readers           # free client parsers
    cdef list listeners
    cdef object spare_task      # a _HookTask to reuse (hook_task.pxi)
    cdef object log
    cdef object alog
    cdef _LogGate gate          # repeated per-connection lines, rate-limited
    # what operators see (observe.pyx)
    cdef object mstore          # the metrics Store (kept alive while mslab points into it)
    cdef double **mslab         # its pointer to this process's slab; NULL: no metrics
    cdef uint32_t mc[MC_N]      # the first cell of each of this service's series (MC_*)
    cdef object alog_writer     # the buffered access-log writer (json, combined), or None
    cdef sw_buf_t alog_cb       # records not yet handed to it (sw_alog.h; freed by dealloc)
    cdef Py_ssize_t alog_limit  # ... handed over and written out when it holds this much
    cdef object tracer          # OpenTelemetry (sluiceway._otel._Tracing), or None
    cdef bytes rid_prefix       # request ids made here: this prefix and a counter
    cdef unsigned long long rid_next
    # the deadline sweep
    cdef object timer
    cdef double tick
    cdef double next_tick       # when the sweep runs next
    cdef list due               # connections whose deadline passed, not yet acted on
    cdef bint expiring          # _expire has more of them to do
    cdef bint stopped
    cdef Py_ssize_t peak_conns  # most client connections since memory was last trimmed
    # state
    cdef public bint closing
    cdef bint accept_paused
    cdef public long long requests
    cdef public long long inflight
    cdef public long long replayed  # requests sent again after a pooled connection died
    cdef public long long retried   # requests upstream_peer was asked again for
    cdef public long long tls_done  # client TLS handshakes done
    cdef public long long tls_failed  # client connections of a TLS listener that failed before a request

    cdef int _schedule(self, double delay) except -1
    cdef int wake_by(self, double when) except -1
    cdef int _expire(self) except -1
    cdef _Reader _take_reader(self)
    cdef int _give_reader(self, _Reader r, bint reset) except -1
    cdef bint _full(self)
    cdef int _conn_closed(self) except -1
    cdef int _accepted(self, int fd, _Listener l, const sw_peer_t *peer) except -1
    cdef int _close_idle(self, double now) except -1
    cdef int _sync_metrics(self) except -1


cdef inline object _hook(_Engine eng, int i):
    """The app's hook ``i`` (H_*), or None when it keeps the default."""
    return <object>PyTuple_GET_ITEM(eng.hooks, i)


cdef inline bint _has(_Engine eng, int i):
    """Whether the app overrides hook ``i`` (no reference taken)."""
    return PyTuple_GET_ITEM(eng.hooks, i) != <PyObject *>None
