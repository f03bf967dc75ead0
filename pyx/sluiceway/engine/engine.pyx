# Included by _engine.pyx: one proxy service on one loop.

# During a graceful stop a client connection is closed between requests once
# it has been idle this long (seconds): a request the client sent just before
# is then answered (with `Connection: close`) instead of racing the close.
# 3 s, not less: a client with many connections on a busy machine (wrk -c 1000)
# leaves one quiet for over half a second between requests; closing it then
# races its next request, which the client sees as a read error.
cdef double DRAIN_IDLE = 3.0


@cython.final
cdef class _Engine:
    """One proxy service on one event loop: the app's hooks (``hooks``, in
    HOOK_NAMES order, None where the app keeps the default), the settings
    (``cfg``), its client connections and upstream connections, its pool,
    and the sweep that enforces their deadlines."""

    def __cinit__(self, object app, object base_class, object loop, Settings cfg,
                  object compression=None):
        self.loop = loop if loop is not None else asyncio.get_event_loop()
        self.app = app
        self.cfg = cfg
        self.compression = compression
        self.compress_default = compression is not None and compression.enabled
        self.hooks = _hook_table(app, base_class)
        self.req_filters = tuple(h for h in (self.hooks[H_REQ_BODY],) if h is not None) or None
        self.resp_filters = tuple(h for h in (self.hooks[H_UP_RESP_BODY], self.hooks[H_RESP_BODY])
                                  if h is not None) or None
        self.conns = set()
        self.ups = set()
        self.readers = []
        self.listeners = []
        self.due = []
        self.log = logging.getLogger("sluiceway.error")
        self.alog = logging.getLogger("sluiceway.access")
        self.gate = _LogGate(self.log)
        self.state = _loop_state(self.loop)
        self.io = self.state.io
        self.pool = _Pool(cfg.upstream_keepalive_pool_size, cfg.upstream_idle_timeout_seconds)
        self.state.pools.append(self.pool)
        self.tick = cfg.tick
        self._schedule(self.tick)

    # --- what operators see (observe.pyx) ----------------------------------------

    def enable_metrics(self, handle, store, cells):
        """Count into a metrics store: ``handle`` its capsule
        (``Store.handle()``), ``store`` the Store (kept alive), ``cells`` the
        first cell of each of this service's series in MC_* order
        (``sluiceway.metrics.engine_cells``)."""
        cdef sw_ms_handle *h = <sw_ms_handle *>PyCapsule_GetPointer(
            handle, b"sluiceway._metrics.handle")
        cdef int i
        if len(cells) != MC_N:
            raise ValueError(f"enable_metrics needs {MC_N} cells, got {len(cells)}")
        for i in range(MC_N):
            self.mc[i] = cells[i]
        self.mstore = store
        self.mslab = h.slab

    def set_access_log(self, writer):
        """Write json or combined access-log records through ``writer``
        (see sluiceway._accesslog): records go into a C buffer of the
        engine's own, moved into ``writer.buf`` when it holds
        ``writer.limit`` bytes (then ``flush()``) and whenever the writer
        flushes (it calls every function in ``writer.sources`` first);
        None: no records."""
        if self.alog_writer is not None:
            self._alog_move()
            try:
                self.alog_writer.sources.remove(self._alog_move)
            except ValueError:
                pass
        self.alog_writer = writer
        self.alog_limit = writer.limit if writer is not None else 0
        if writer is not None:
            writer.sources.append(self._alog_move)

    def _alog_move(self):
        """Hand the records this engine holds to its writer (its source)."""
        _alog_move(self)

    def __dealloc__(self):
        sw_buf_free(&self.alog_cb)

    def set_tracer(self, tracer):
        """Start and end a span per request through ``tracer``
        (``start(session) -> span``, ``end(session, span)``; see
        sluiceway._otel); None: no spans."""
        self.tracer = tracer

    cdef int _sync_metrics(self) except -1:
        """Set the gauges and the pool's counters in this process's slab
        (the sweep does, and a stop)."""
        cdef double *c = self.mslab[0]
        cdef Py_ssize_t idle = 0
        for stack in self.pool.idle.values():
            idle += len(<list>stack)
        sw_ms_set(c, self.mc[MC_CONN_OPEN], <double>len(self.conns))
        sw_ms_set(c, self.mc[MC_POOL_IDLE], <double>idle)
        sw_ms_set(c, self.mc[MC_POOL_BUSY], <double>(len(self.ups) - idle))
        sw_ms_set(c, self.mc[MC_POOL_OPENED], <double>self.pool.created)
        sw_ms_set(c, self.mc[MC_POOL_REUSED], <double>self.pool.reused)
        sw_ms_set(c, self.mc[MC_POOL_FULL], <double>self.pool.evicted)
        sw_ms_set(c, self.mc[MC_POOL_OTHER], <double>(self.pool.closed - self.pool.evicted))
        sw_ms_set(c, self.mc[MC_TLS_FULL], <double>self.pool.tls_full)
        sw_ms_set(c, self.mc[MC_TLS_RESUMED], <double>self.pool.tls_resumed)
        return 0

    def sync_metrics(self):
        if self.mslab != NULL:
            self._sync_metrics()

    @property
    def settings(self):
        return self.cfg

    @property
    def overridden_hooks(self):
        """Names of the hooks the app overrides (the others cost nothing)."""
        return [n for n, h in zip(HOOK_NAMES, self.hooks) if h is not None]

    @property
    def pool_stats(self):
        return self.pool.stats()

    @property
    def connections(self):
        """Number of open downstream connections."""
        return len(self.conns)

    def active_requests(self):
        """Number of requests in progress (until their logging hook ends)."""
        return self.inflight

    def stats(self):
        """Counters of this service on this loop, as a dict: ``requests``
        (heads received), ``active`` (in progress), ``connections`` (client
        connections open), ``replayed`` (requests sent again on a new
        connection after a pooled upstream connection died before
        answering), ``retried`` (requests sent to ``upstream_peer`` again
        after a retryable failure), ``tls_handshakes`` (client TLS
        handshakes done), ``tls_errors`` (client connections of a TLS
        listener that failed outside a request: handshake failed or timed
        out, plain HTTP sent, a bad record or a fatal alert between
        requests)."""
        return {"requests": self.requests, "active": self.inflight,
                "connections": len(self.conns), "replayed": self.replayed,
                "retried": self.retried, "tls_handshakes": self.tls_done,
                "tls_errors": self.tls_failed}

    # --- the deadline sweep -------------------------------------------------------

    cdef int _schedule(self, double delay) except -1:
        self.timer = self.loop.call_later(delay, self._on_tick)
        self.next_tick = _now() + delay
        return 0

    cdef int wake_by(self, double when) except -1:
        """A deadline sooner than the sweep's next run (a per-peer timeout
        shorter than the service's): run the sweep then."""
        if self.timer is not None and when < self.next_tick:
            self.timer.cancel()
            self._schedule(max(when - _now(), 0.0) + 0.001)
        return 0

    def _on_tick(self):
        """The periodic sweep: finds the connections whose deadline has
        passed (the scan only reads) and hands them to ``_expire``, which
        acts on TICK_SLICE of them per loop iteration, so that thousands of
        slow clients timing out together do not stall everyone else."""
        cdef double now = _now()
        cdef double soonest = now + self.tick
        cdef _Downstream d
        cdef _Upstream u
        cdef Py_ssize_t n
        cdef list due = self.due
        self.timer = None
        try:
            for d in self.conns:
                if d.due(now):
                    due.append(d)
                    continue
                if d.deadline and d.deadline < soonest:
                    soonest = d.deadline
                if d.wdeadline and d.wdeadline < soonest:
                    soonest = d.wdeadline
                if d.dl_kind == DL_IDLE and d.reader is not None and d.reader.unread() == 0 and \
                        not d.reader.carrying and not d.discard_body and not d.closed:
                    # Idle since the last sweep: its parser goes back to the
                    # free list (an idle keep-alive connection holds none).
                    self._give_reader(d.reader, True)
                    d.reader = None
            for u in self.ups:
                if u.deadline:
                    if now >= u.deadline:
                        due.append(u)
                    elif u.deadline < soonest:
                        soonest = u.deadline
            if due and not self.expiring:
                self._expire()
            if self.closing:
                self._close_idle(now)
            self.gate.flush(now)
            if self.mslab != NULL:
                self._sync_metrics()
            n = len(self.conns)
            if n > self.peak_conns:
                self.peak_conns = n
            elif self.peak_conns - n >= 1024 and n * 2 < self.peak_conns:
                # Many connections went away (a flood, a slowloris run):
                # hand the memory they used back to the system.
                sw_mem_trim()
                self.peak_conns = n
        except BaseException:
            self.log.exception("sluiceway: error in the timeout sweep (this is a bug)")
        if not self.stopped:
            # The next run: a tick from now, or the soonest deadline seen
            # when that comes first (a per-peer timeout shorter than the
            # service's fires on time, not up to a tick late).
            self._schedule(max(soonest - _now(), 0.0) + 0.001)

    cdef int _expire(self) except -1:
        """Act on up to TICK_SLICE connections found due by the sweep (each
        checked again: it may have moved on); the rest wait for the next
        loop iteration, after the I/O that is ready."""
        cdef list due = self.due
        cdef Py_ssize_t k = len(due)
        cdef Py_ssize_t i, stop = k - TICK_SLICE if k > TICK_SLICE else 0
        cdef double now = _now()
        cdef _Conn c
        for i in range(k - 1, stop - 1, -1):
            c = <_Conn>due[i]
            try:
                if c.due(now):
                    c.on_timeout(now)
            except BaseException:
                self.log.exception("sluiceway: error in a timeout (this is a bug)")
        del due[stop:]
        self.expiring = stop > 0
        if self.expiring:
            self.loop.call_soon(self._expire_more)
        return 0

    def _expire_more(self):
        self._expire()

    # --- client parsers -----------------------------------------------------------

    cdef _Reader _take_reader(self):
        if self.readers:
            return <_Reader>self.readers.pop()
        return _Reader(True, self.cfg.max_request_header_bytes, self.cfg.max_request_target_bytes,
                       self.cfg.max_request_fields)

    cdef int _give_reader(self, _Reader r, bint reset) except -1:
        """Put a client parser on the free list. ``reset`` may be False only
        when it stopped right after a complete keep-alive message (llhttp is
        then back in its start state, as after a reset)."""
        if len(self.readers) < MAX_FREE_READERS:
            if reset:
                API.reset(r.p)
            r.data = None
            r.head_buf = None
            r.dptr = b""
            r.dlen = r.pos = 0
            r.need = True
            self.readers.append(r)
        return 0

    # --- accepting ------------------------------------------------------------------

    def serve(self, sock, tls=None, double handshake_timeout=60.0):
        """Accept connections from the listening socket ``sock`` (TCP or
        Unix, non-blocking) on the engine's own I/O; with ``tls`` (an
        ``ssl.SSLContext`` for the server side) each one is a TLS
        connection whose handshake must end within ``handshake_timeout``
        seconds (0: no limit). Returns the listener (``close()`` stops
        accepting; the socket stays the caller's)."""
        if tls is not None:
            _ssl_load()
            if not isinstance(tls, _ssl.SSLContext):
                raise TypeError(f"serve(tls=...) needs an ssl.SSLContext, not {type(tls).__name__}")
        cdef _Listener l = _Listener(self, sock, tls, handshake_timeout)
        self.listeners.append(l)
        return l

    cdef bint _full(self):
        """At max_connections in "pause" mode: accepting stops (every
        listener) until a connection closes (``_conn_closed``)."""
        cdef _Listener l
        if self.cfg.pause_accept and self.cfg.max_connections and \
                len(self.conns) >= self.cfg.max_connections:
            if not self.accept_paused:
                self.accept_paused = True
                for l in self.listeners:
                    l._stop()
                if self.log.isEnabledFor(logging.WARNING):
                    self.log.warning("sluiceway: %d connections open (max_connections): not "
                                     "accepting until one closes", len(self.conns))
            return True
        return False

    cdef int _conn_closed(self) except -1:
        cdef _Listener l
        if self.accept_paused and len(self.conns) < self.cfg.max_connections:
            self.accept_paused = False
            for l in self.listeners:
                l._start()
        return 0

    cdef int _accepted(self, int fd, _Listener l, const sw_peer_t *peer) except -1:
        cdef _Downstream d = _Downstream(self)
        d.peer = peer[0]
        if l.tls_ctx is not None:
            d.tls_lst = l
        try:
            self.io.register(d, fd)
        except BaseException:
            sw_io_close(fd)
            raise
        d._made()
        if self.mslab != NULL:
            _m_conn(self, MC_CONN_ACC)
        return 0

    # --- stopping ---------------------------------------------------------------------

    def stop(self):
        """Stop the deadline sweep."""
        if self.mslab != NULL:
            self._sync_metrics()
        self.stopped = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def begin_shutdown(self):
        """Graceful stop: no more keep-alive. Every request whose head
        arrives is still answered, with `Connection: close`; a connection
        closes after such a response, or between requests once it has been
        idle for DRAIN_IDLE (at once when it was idle before). Stop
        accepting first (``_Listener.close``)."""
        if self.closing:
            return
        self.closing = True
        self._close_idle(_now())
        if self.tick > 0.1:
            self.tick = 0.1
            if self.timer is not None:
                self.timer.cancel()
                self._schedule(self.tick)

    cdef int _close_idle(self, double now) except -1:
        cdef _Downstream d
        for d in list(self.conns):
            if d._idle() and now - d.idle_since >= DRAIN_IDLE:
                d._close(False)
        return 0

    def close_all(self):
        """Close every connection at once (the end of a grace period, or a
        fast exit); a request still in progress is logged as cut."""
        cdef _Downstream d
        cdef Session s
        for d in list(self.conns):
            s = d.session
            if s is not None and not s.finished and not d.closed and \
                    self.log.isEnabledFor(logging.WARNING):
                self.gate.emit(logging.WARNING, "cut at shutdown",
                               "sluiceway: %s %s from %s cut at shutdown (still in progress "
                               "at the end of the grace period)",
                               (s.req_header._method, s.req_header.uri, _fmt_addr(d.address())))
            d._close(False)
        self.pool.close_idle()


def make_engine(app, base_class, loop=None, settings=None, compression=None, **values):
    """Build the engine for ``app`` (a ProxyHttp instance) on ``loop``, with
    ``settings`` (a Settings; by default made from ``values``, keyword
    arguments named as the ServerConf keys) and ``compression`` (a
    sluiceway.compression.CompressionPolicy, or None: hooks can still ask
    for it per request, with the default policy)."""
    if settings is None:
        settings = Settings(**values)
    elif values:
        raise TypeError("make_engine takes settings or keyword values, not both")
    return _Engine(app, base_class, loop, settings, compression)
