# Included by _engine.pyx: one proxy service on one loop.

# During a graceful stop a client connection is closed between requests once
# it has been idle this long (seconds): a request the client sent just before
# is then answered (with `Connection: close`) instead of racing the close.
cdef double DRAIN_IDLE = 0.5

# ----------------------------------------------------------------- engine --

@cython.final
cdef class _Engine:
    """Per-loop state of one proxy service: the app's hooks, the settings,
    the live connections and the timer that enforces deadlines."""

    def __cinit__(self, object app, object base_class, object loop=None, *,
                  double head_timeout=10.0, double keepalive_timeout=60.0,
                  double request_timeout=0.0, double connect_timeout=5.0,
                  double read_timeout=60.0, double write_timeout=60.0,
                  double downstream_write_timeout=60.0,
                  double body_timeout=60.0, double body_min_rate=100.0,
                  double linger_time=30.0, double linger_timeout=5.0,
                  int max_connections=0, bint pause_accept=False, int max_retries=1,
                  long long max_body_size=0,
                  bint forwarded=False, bint access_log=False,
                  int pool_size=128, double pool_idle_timeout=60.0,
                  int max_head_size=32768, int max_url_size=8192, int max_headers=128):
        self.loop = loop if loop is not None else asyncio.get_event_loop()
        self.app = app
        self.conns = set()
        self.wires = []
        self.head_timeout = head_timeout
        self.keepalive_timeout = keepalive_timeout
        self.request_timeout = request_timeout
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        self.ds_write_timeout = downstream_write_timeout
        self.body_timeout = body_timeout
        self.body_min_rate = body_min_rate
        self.linger_time = linger_time
        self.linger_timeout = linger_timeout
        self.max_connections = max_connections
        self.pause_accept = pause_accept
        self.listeners = []
        self.max_retries = max_retries
        self.max_body_size = max_body_size
        self.forwarded = forwarded
        self.access_log = access_log
        if max_head_size <= 0 or max_url_size <= 0 or max_headers <= 0:
            raise ValueError("max_head_size, max_url_size and max_headers must be positive")
        self.max_head = max_head_size
        self.max_url = max_url_size
        self.max_headers = max_headers
        self.pool = _pool_for(self.loop, pool_size, pool_idle_timeout)
        self.io = _io_for(self.loop)
        self.log = logging.getLogger("sluiceway.error")
        self.alog = logging.getLogger("sluiceway.access")  # (the access_log argument is a bool)
        self.gate = _LogGate(self.log)
        self.due = []

        def hook(name):
            fn = getattr(type(app), name, None)
            if fn is None or fn is getattr(base_class, name, None):
                return None
            return getattr(app, name)

        self.h_new_ctx = hook("new_ctx")
        self.h_early = hook("early_request_filter")
        self.h_req_filter = hook("request_filter")
        self.h_req_body = hook("request_body_filter")
        self.h_peer = getattr(app, "upstream_peer", None)
        if self.h_peer is None or hook("upstream_peer") is None:
            raise TypeError(f"{type(app).__name__} must override upstream_peer(session, ctx) "
                            "to say where each request goes (return an HttpPeer)")
        self.h_connected = hook("connected_to_upstream")
        self.h_up_req = hook("upstream_request_filter")
        self.h_up_resp = hook("upstream_response_filter")
        self.h_resp = hook("response_filter")
        self.h_resp_body = hook("response_body_filter")
        self.h_logging = hook("logging")
        self.h_fail_connect = hook("fail_to_connect")
        self.h_err_proxy = hook("error_while_proxy")
        self.h_fail_proxy = hook("fail_to_proxy")
        ts = [t for t in (head_timeout, keepalive_timeout, request_timeout, read_timeout,
                          write_timeout, downstream_write_timeout, pool_idle_timeout,
                          body_timeout, linger_timeout) if t > 0]
        self.tick = min(1.0, max(0.02, min(ts) / 4.0)) if ts else 1.0
        self._schedule()

    @property
    def overridden_hooks(self):
        """Names of the hooks the app overrides (the others cost nothing)."""
        names = ["new_ctx", "early_request_filter", "request_filter", "request_body_filter",
                 "upstream_peer", "connected_to_upstream", "upstream_request_filter",
                 "upstream_response_filter", "response_filter", "response_body_filter",
                 "logging", "fail_to_connect", "error_while_proxy", "fail_to_proxy"]
        vals = [self.h_new_ctx, self.h_early, self.h_req_filter, self.h_req_body, self.h_peer,
                self.h_connected, self.h_up_req, self.h_up_resp, self.h_resp, self.h_resp_body,
                self.h_logging, self.h_fail_connect, self.h_err_proxy, self.h_fail_proxy]
        return [n for n, v in zip(names, vals) if v is not None]

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
        connections open), ``replayed`` (requests sent again after a pooled
        upstream connection died before answering)."""
        return {"requests": self.requests, "active": self.inflight,
                "connections": len(self.conns), "replayed": self.replayed}

    cdef int _schedule(self) except -1:
        self.timer = self.loop.call_later(self.tick, self._on_tick)

    def _on_tick(self):
        """The periodic sweep: finds the connections whose deadline has
        passed (the scan only reads) and hands them to ``_expire``, which
        acts on TICK_SLICE of them per loop iteration, so that thousands of
        slow clients timing out together do not stall everyone else."""
        cdef double now = _now()
        cdef _Downstream d
        cdef _Upstream u
        cdef Py_ssize_t n
        cdef list due = self.due
        try:
            for d in self.conns:
                if (d.wdeadline and now >= d.wdeadline) or (d.deadline and now >= d.deadline):
                    due.append(d)
                elif d.cur is not None:
                    if d._body_due(now):
                        due.append(d)
                elif d.dl_kind == DL_IDLE and d.w is not None and d.w.unread() == 0 and \
                        not d.w.carrying and not d.discard_body and not d.closed:
                    # Idle since the last tick: its parser goes back to the
                    # free list (an idle keep-alive connection holds none).
                    self._give_wire(d.w)
                    d.w = None
                if d.cur is not None and d.cur.us is not None:
                    u = d.cur.us
                    if u.deadline and now >= u.deadline:
                        due.append(u)
            if due and not self.expiring:
                self._expire()
            if self.closing:
                self._close_idle(now)
            self.pool.sweep(now)
            self.gate.flush(now)
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
        if self.timer is not None:
            self._schedule()

    cdef int _expire(self) except -1:
        """Act on up to TICK_SLICE connections found due by the sweep (each
        checked again: it may have moved on); the rest wait for the next
        loop iteration, after the I/O that is ready."""
        cdef list due = self.due
        cdef Py_ssize_t k = len(due)
        cdef Py_ssize_t i, stop = k - TICK_SLICE if k > TICK_SLICE else 0
        cdef double now = _now()
        cdef _Downstream d
        cdef _Upstream u
        cdef object c
        for i in range(k - 1, stop - 1, -1):
            c = due[i]
            try:
                if type(c) is _Downstream:
                    d = <_Downstream>c
                    if d.wdeadline and now >= d.wdeadline:
                        d._write_timeout()
                    if d.deadline and now >= d.deadline:
                        d._timeout(now)
                    elif d.cur is not None and d._body_due(now):
                        d._body_timeout(now)
                else:
                    u = <_Upstream>c
                    if u.deadline and now >= u.deadline:
                        u._timeout(now)
            except BaseException:
                self.log.exception("sluiceway: error in a timeout (this is a bug)")
        del due[stop:]
        self.expiring = stop > 0
        if self.expiring:
            self.loop.call_soon(self._expire_more)
        return 0

    def _expire_more(self):
        self._expire()

    cdef _Wire _take_wire(self):
        if self.wires:
            return <_Wire>self.wires.pop()
        return _Wire(True, self.max_head, self.max_url, self.max_headers)

    cdef int _give_wire(self, _Wire w, bint reset=True) except -1:
        """Put a client parser on the free list. ``reset`` may be False only
        when it stopped right after a complete keep-alive message (llhttp is
        then back in its start state, as after a reset)."""
        if len(self.wires) < 256:
            if reset:
                API.reset(w.p)
            w.data = None
            w.head_buf = None
            w.dptr = b""
            w.dlen = w.pos = 0
            w.need = True
            self.wires.append(w)

    def protocol_factory(self):
        """Return a new downstream protocol, for serving through asyncio
        transports (``loop.create_server``); ``serve`` is the fast way."""
        return _Downstream(self)

    def serve(self, sock):
        """Accept connections from the listening socket ``sock`` (TCP or
        Unix, non-blocking) on the engine's own I/O. Returns the listener
        (``close()`` stops accepting; the socket stays the caller's)."""
        cdef _Listener l = _Listener(self, sock)
        self.listeners.append(l)
        return l

    cdef bint _full(self):
        """At max_connections in "pause" mode: accepting stops (every
        listener) until a connection closes (``_conn_closed``)."""
        cdef _Listener l
        if self.pause_accept and self.max_connections and len(self.conns) >= self.max_connections:
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
        if self.accept_paused and len(self.conns) < self.max_connections:
            self.accept_paused = False
            for l in self.listeners:
                l._start()
        return 0

    cdef int _accepted(self, int fd) except -1:
        cdef _Downstream d = _Downstream(self)
        try:
            self.io.register(d, fd)
        except BaseException:
            sw_io_close(fd)
            raise
        d._made()
        return 0

    def stop(self):
        """Stop the deadline timer."""
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
        if self.timer is not None and self.tick > 0.1:
            self.timer.cancel()
            self.tick = 0.1
            self._schedule()

    cdef int _close_idle(self, double now) except -1:
        cdef _Downstream d
        for d in list(self.conns):
            if d._idle() and now - d.idle_since >= DRAIN_IDLE:
                d._close()
        return 0

    def close_all(self):
        """Close every connection at once (the end of a grace period, or a
        fast exit); a request still in progress is logged as cut."""
        cdef _Downstream d
        cdef Session s
        for d in list(self.conns):
            s = d.cur
            if s is not None and not s.finished and not d.closed and \
                    self.log.isEnabledFor(logging.WARNING):
                self.gate.emit(logging.WARNING, "cut at shutdown",
                               "sluiceway: %s %s from %s cut at shutdown (still in progress "
                               "at the end of the grace period)",
                               (s.req_header._method, s.req_header.uri, _fmt_addr(d._addr())))
            d._close()
        self.pool.close_idle()


def make_engine(app, base_class, loop=None, **settings):
    """Build the engine for ``app`` (a ProxyHttp instance) on ``loop``."""
    return _Engine(app, base_class, loop, **settings)
