# Included by _engine.pyx: the HTTP/1 protocol of an upstream connection.

@cython.final
cdef class _Upstream(_Conn):
    """One upstream connection: writes a request, parses the response and
    is the origin's end (``_Side``) of the Session it is bound to; between
    requests it waits in the engine's pool."""

    def __cinit__(self, _Engine eng, HttpPeer peer):
        self.eng = eng
        self.peer = peer
        self.key = peer.reuse_key
        self.reusable = True
        self.reader = _Reader(False, max(eng.cfg.max_request_header_bytes, MAX_RESPONSE_HEAD),
                              eng.cfg.max_request_target_bytes,
                              max(eng.cfg.max_request_fields, MAX_RESPONSE_FIELDS))
        self.read_timeout = peer.read_timeout if peer.read_timeout is not None \
            else eng.cfg.upstream_read_timeout_seconds
        self.write_timeout = peer.write_timeout if peer.write_timeout is not None \
            else eng.cfg.upstream_write_timeout_seconds
        self.flush_timeout = self.write_timeout
        eng.ups.add(self)

    cdef int _made(self) except -1:
        """Connected (and, with TLS, the handshake done)."""
        self.eng.pool.created += 1
        if self.tls is not None:
            if self.tls.resumed:
                self.eng.pool.tls_resumed += 1
            else:
                self.eng.pool.tls_full += 1
        return 0

    cdef int _keep_tls_session(self) except -1:
        """Give the pool this connection's TLS session for the next new
        connection to the same peer, once per connection: at its first
        release, when a TLS 1.3 upstream's tickets (sent after the
        handshake) have come in with the response."""
        self.tls_kept = True
        sess = self.tls.session()
        if sess is not None:
            self.eng.pool.keep_session(self.key, sess)
        return 0

    cdef int on_handshake(self, object exc) except -1:
        # The connect waits for this (connect.pyx, _handshake).
        w = self.waiter
        self.waiter = None
        if w is not None and not w.done():
            if exc is None:
                w.set_result(None)
            else:
                w.set_exception(exc)
        return 0

    cdef int bind(self, Session s, bint head_request) except -1:
        """Carry ``s``'s request (a new connection, or one from the pool)."""
        self.session = s
        self.idle = False
        self.got_bytes = False
        self.blocked = False
        self.in_1xx = False
        self.disarm()
        API.set_skip_body(self.reader.p, head_request)
        return 0

    # --- events from the I/O --------------------------------------------------

    cdef int on_data(self, object data) except -1:
        if self.closed:
            return 0
        if self.pipe is not None:
            if self.session is not None:
                self.session.count_down(PyBytes_GET_SIZE(data))
            self.pipe.send(data)
            return 0
        if self.session is None:
            # Bytes on an idle connection: the peer is confused; never reuse.
            self.reusable = False
            self.eng.pool.drop(self)
            self._close()
            return 0
        self.got_bytes = True
        if self.dl_kind == DL_READ:
            self.arm(DL_READ, self.read_timeout)
        self.reader.feed(data)
        self._process()
        return 0

    cdef int on_eof(self) except -1:
        cdef int ev
        self.reusable = False
        if self.pipe is not None:
            return 0
        if self.session is not None and not self.closed:
            self._process()
            if self.session is not None and not self.blocked:
                ev = self.reader.finish()
                if ev == SW_EV_END and self.session is not None:
                    self.session.on_response_end(self.reader)
                elif ev == SW_EV_ERROR and self.session is not None:
                    self.session.origin_lost(None)
        return 0

    cdef int on_lost(self, object exc) except -1:
        cdef Session s = self.session
        self.closed = True
        self.reusable = False
        self.eng.pool.closed += 1
        self.eng.ups.discard(self)
        if self.idle:
            self.eng.pool.drop(self)
        if s is not None:
            s.origin_lost(exc)
        else:
            self.lost_exc = exc
        return 0

    cdef int on_pause_writing(self) except -1:
        if self.session is not None:
            self.arm(DL_WRITE, self.write_timeout)
            self.session.origin_full()
        return 0

    cdef int on_resume_writing(self) except -1:
        if self.session is not None:
            if self.dl_kind == DL_WRITE:
                self.disarm()
                if self.session.request_sent():
                    self.arm(DL_READ, self.read_timeout)
            self.session.origin_drained()
        return 0

    # --- parsing ----------------------------------------------------------------

    cdef int _process(self) except -1:
        cdef int ev, st
        cdef Session s
        cdef _Reader r = self.reader
        if self.in_process or self.closed or self.pipe is not None:
            return 0
        self.in_process = True
        try:
            while not self.blocked and self.session is not None and not self.closed:
                if self.read_pause & (R_PEER_FULL | R_THROTTLE):
                    break
                s = self.session
                ev = r.next()
                if ev == SW_EV_NEED_DATA:
                    break
                if ev == SW_EV_HEAD:
                    st = r.m.status_code
                    if 100 <= st < 200 and st != 101:
                        self.in_1xx = True
                        s.on_informational(r)
                        continue
                    if st == 101:
                        self.reusable = False
                    s.on_response_head(r)
                elif ev == SW_EV_BODY:
                    s.on_response_body(r)
                elif ev == SW_EV_END:
                    if self.in_1xx:
                        self.in_1xx = False
                        continue
                    if r.unread() > 0:
                        self.reusable = False  # bytes after the response
                    if s.on_response_end(r):
                        break
                elif ev == SW_EV_UPGRADE:
                    self.reusable = False
                    s.on_response_upgrade()
                    break
                else:
                    self.reusable = False
                    reason = (<bytes>r.m.err_reason).decode("utf-8", "replace") \
                        if r.m.err_reason != NULL else "malformed response"
                    err = Error(f"upstream {self.peer} sent an invalid response: {reason}",
                                status=502, source=UPSTREAM)
                    err.kind = "invalid_response"   # counted as such (sluiceway_errors_total)
                    s.origin_failed(err)
                    break
        except BaseException:
            self.eng.log.exception("sluiceway: internal error on an upstream connection (this is a bug)")
            self.reusable = False
            if self.session is not None:
                self.session.origin_failed(Error("internal error while reading the upstream "
                                                 "response", status=500, source=INTERNAL))
            self._close()
        finally:
            self.in_process = False
            if self.session is not None:
                self.session.parsed()
        if self.blocked and not self.closed and r.unread() > HIGH_WATER:
            self._pause_read(R_BUFFERED)
        return 0

    cdef int _pause_read(self, int why) except -1:
        if self.read_pause == 0 and not self.closed:
            self.t_pause_reading()
            if self.dl_kind == DL_READ:
                # The client is slow, not the upstream: no read deadline now.
                self.deadline = 0.0
        self.read_pause |= why
        return 0

    cdef int _resume_read(self, int why) except -1:
        if self.read_pause & why:
            self.read_pause &= ~why
            if self.read_pause == 0 and not self.closed:
                self.t_resume_reading()
                if self.dl_kind == DL_READ:
                    self.arm(DL_READ, self.read_timeout)
        return 0

    cdef int _close(self) except -1:
        self.reusable = False
        if not self.closed:
            self.closed = True
            self.t_close()
        return 0

    cdef int on_timeout(self, double now) except -1:
        cdef int kind = self.dl_kind
        self.disarm()
        if self.closed:
            return 0
        if kind == DL_POOL:
            # Idle in the pool for too long.
            if self.idle:
                self.eng.pool.drop(self)
                self.eng.pool.evicted += 1
                self._close()
            return 0
        if self.session is None:
            return 0
        if kind == DL_READ:
            what = f"no response data within {self.read_timeout:.3g}s (read_timeout)"
        elif kind == DL_WRITE:
            what = f"request not accepted within {self.write_timeout:.3g}s (write_timeout)"
        else:
            return 0
        self.reusable = False
        self.session.origin_failed(Error(f"upstream {self.peer} timed out: {what}", status=504,
                                         source=UPSTREAM))
        return 0

    # --- the origin's end of a Session (_Side) -----------------------------------

    cdef int hold(self) except -1:
        self.blocked = True
        return 0

    cdef int go_on(self) except -1:
        if self.closed:
            return 0
        self.blocked = False
        self._resume_read(R_BUFFERED)
        self._process()
        return 0

    cdef int send(self, object data) except -1:
        if not self.closed:
            self.t_write(data)
        return 0

    cdef int send_parts(self, tuple parts) except -1:
        if not self.closed:
            self.t_writev(parts)
        return 0

    cdef int send_slice(self, object head, object owner, Py_ssize_t off, Py_ssize_t n) except -1:
        if not self.closed:
            self.t_send(head, owner, off, n)
        return 0

    cdef int peer_full(self) except -1:
        return self._pause_read(R_PEER_FULL)

    cdef int peer_drained(self) except -1:
        self._resume_read(R_PEER_FULL)
        self._process()
        return 0

    cdef bint is_open(self):
        return not self.closed

    cdef int tunnel(self, _Side other) except -1:
        cdef _Reader r = self.reader
        self.pipe = other
        self.reusable = False
        self.disarm()
        if r.data is not None and r.pos < r.dlen:
            other.send(r.data[r.pos:])
            r.pos = r.dlen
        return 0

    cdef int expect_response(self) except -1:
        if self.dl_kind != DL_WRITE:
            self.arm(DL_READ, self.read_timeout)
        return 0

    cdef int throttle(self, bint on) except -1:
        if on:
            return self._pause_read(R_THROTTLE)
        self._resume_read(R_THROTTLE)
        self._process()
        return 0

    cdef int spoil(self) except -1:
        self.reusable = False
        return 0

    cdef int release(self, bint reuse) except -1:
        self.session = None
        if self.tls is not None and not self.tls_kept:
            self._keep_tls_session()
        if self.read_pause & (R_PEER_FULL | R_BUFFERED | R_THROTTLE):
            self._resume_read(R_PEER_FULL | R_BUFFERED | R_THROTTLE)
        self.blocked = False
        if reuse and self.reusable and not self.closed and self.reader.unread() == 0:
            self.eng.pool.put(self)
        else:
            self._close()
        return 0

    cdef bint answered(self):
        return self.got_bytes
