# Included by _engine.pyx: the HTTP/1 protocol of an upstream connection.

# --------------------------------------------------------------- upstream --

@cython.final
cdef class _Upstream(_Conn):
    """The protocol of one upstream connection (pooled between requests)."""

    def __cinit__(self, _Engine eng, HttpPeer peer):
        self.eng = eng
        self.peer = peer
        self.key = peer.reuse_key
        self.reusable = True
        self.w = _Wire(False, max(eng.max_head, 65536), eng.max_url, max(eng.max_headers, 256))
        self.read_timeout = peer.read_timeout if peer.read_timeout is not None else eng.read_timeout
        self.write_timeout = peer.write_timeout if peer.write_timeout is not None else eng.write_timeout
        self.flush_timeout = self.write_timeout

    def connection_made(self, transport):
        self.transport = transport
        transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)
        self._made()

    cdef int _made(self) except -1:
        """Connected (on our own I/O, or connection_made of a TLS transport)."""
        self.eng.pool.created += 1

    cdef int on_data(self, object data) except -1:
        if self.closed:
            return 0
        if self.tunnel:
            if self.s is not None and self.s.ds is not None and not self.s.ds.closed:
                self.s.response_body_bytes += len(data)
                self.s.ds.t_write(data)
            return 0
        if self.s is None:
            # Bytes on an idle connection: the peer is confused; never reuse.
            self.reusable = False
            self.eng.pool.drop(self)
            self._close()
            return 0
        self.got_bytes = True
        if self.dl_kind == DL_READ:
            self.deadline = _now() + self.read_timeout if self.read_timeout > 0 else 0.0
        self.w.feed(data)
        self._process()

    cdef int on_eof(self) except -1:
        cdef int ev
        self.reusable = False
        if self.tunnel:
            return 0
        if self.s is not None and not self.closed:
            self._process()
            if self.s is not None and not self.blocked:
                ev = self.w.finish()
                if ev == SW_EV_END and self.s is not None:
                    self.s._on_resp_end()
                elif ev == SW_EV_ERROR and self.s is not None:
                    self.s._us_lost(None)
        return 0

    cdef int on_lost(self, object exc) except -1:
        cdef Session s
        self.closed = True
        self.reusable = False
        self.eng.pool.closed += 1
        if self.idle:
            self.eng.pool.drop(self)
        if self.s is not None:
            s = self.s
            s._us_lost(exc)

    cdef int on_pause_writing(self) except -1:
        self.write_paused = True
        if self.s is not None:
            if self.write_timeout > 0:
                self.deadline = _now() + self.write_timeout
                self.dl_kind = DL_WRITE
            if self.s.ds is not None:
                self.s.ds._pause_read(R_PEER_FULL)

    cdef int on_resume_writing(self) except -1:
        self.write_paused = False
        if self.s is not None:
            if self.dl_kind == DL_WRITE:
                self.deadline = 0.0
                self.dl_kind = DL_NONE
                if self.s.req_body_done and self.read_timeout > 0:
                    self.deadline = _now() + self.read_timeout
                    self.dl_kind = DL_READ
            if self.s.ds is not None:
                self.s.ds._resume_read(R_PEER_FULL)
                self.s.ds._process()

    cdef int _pause_read(self, int why) except -1:
        if self.read_pause == 0 and not self.closed:
            self.t_pause_reading()
            if self.dl_kind == DL_READ:
                # The client is slow, not the upstream: no read deadline now.
                self.deadline = 0.0
        self.read_pause |= why

    cdef int _resume_read(self, int why) except -1:
        if self.read_pause & why:
            self.read_pause &= ~why
            if self.read_pause == 0 and not self.closed:
                self.t_resume_reading()
                if self.dl_kind == DL_READ and self.read_timeout > 0:
                    self.deadline = _now() + self.read_timeout

    cdef int _process(self) except -1:
        cdef int ev
        cdef Session s
        if self.in_process or self.closed or self.tunnel:
            return 0
        self.in_process = True
        try:
            while not self.blocked and self.s is not None and not self.closed:
                if self.read_pause & R_PEER_FULL:
                    break
                s = self.s
                ev = self.w.next()
                if ev == SW_EV_NEED_DATA:
                    break
                if ev == SW_EV_HEAD:
                    if 100 <= self.w.m.status_code < 200 and self.w.m.status_code != 101:
                        self.in_1xx = True
                        s._on_informational(self.w)
                        continue
                    if self.w.m.status_code == 101:
                        self.reusable = False
                        if not s.want_upgrade:
                            s._fail(Error(f"upstream {self.peer} switched protocols (101) for a "
                                          "request that did not ask to upgrade", status=502, source=UPSTREAM))
                            break
                        s.upgrading = True
                    s._on_resp_head(self.w)
                elif ev == SW_EV_BODY:
                    if s.pend_data is not None and s.pend_data is self.w.data and \
                            self.w.body_at == self.w.dptr + s.pend_off + s.pend_len:
                        s.pend_len += self.w.body_len
                        s.response_body_bytes += self.w.body_len
                        continue
                    s._flush_pending()
                    s._on_resp_body(self.w.body_bytes())
                elif ev == SW_EV_END:
                    if self.in_1xx:
                        self.in_1xx = False
                        continue
                    if s.upgrading:
                        continue  # the UPGRADE event follows
                    if self.w.unread() > 0:
                        self.reusable = False  # bytes after the response
                    s._keep_resp_trailers(self.w)
                    s._on_resp_end()
                    break
                elif ev == SW_EV_UPGRADE:
                    self.reusable = False
                    if s.upgrading and s.resp_started:
                        s._start_tunnel()
                    else:
                        s._fail(Error(f"upstream {self.peer} switched protocols (status "
                                      f"{self.w.m.status_code}) unasked", status=502, source=UPSTREAM))
                    break
                else:
                    self.reusable = False
                    reason = (<bytes>self.w.m.err_reason).decode("utf-8", "replace") \
                        if self.w.m.err_reason != NULL else "malformed response"
                    s._fail(Error(f"upstream {self.peer} sent an invalid response: {reason}",
                                  status=502, source=UPSTREAM))
                    break
        except BaseException:
            self.eng.log.exception("sluiceway: internal error on an upstream connection (this is a bug)")
            self.reusable = False
            if self.s is not None:
                self.s._fail(Error("internal error while reading the upstream response",
                                   status=500, source=INTERNAL))
            self._close()
        finally:
            self.in_process = False
            if self.s is not None:
                self.s._flush_pending()
        if self.blocked and not self.closed and self.w.unread() > HIGH_WATER:
            self._pause_read(R_BUFFERED)

    cdef int _close(self) except -1:
        self.reusable = False
        if not self.closed:
            self.closed = True
            self.t_close()

    cdef int _timeout(self, double now) except -1:
        cdef int kind = self.dl_kind
        self.deadline = 0.0
        self.dl_kind = DL_NONE
        if self.s is None or self.closed:
            return 0
        if kind == DL_READ:
            what = f"no response data within {self.read_timeout:.3g}s (read_timeout)"
        elif kind == DL_WRITE:
            what = f"request not accepted within {self.write_timeout:.3g}s (write_timeout)"
        else:
            return 0
        self.reusable = False
        self.s._fail(Error(f"upstream {self.peer} timed out: {what}", status=504, source=UPSTREAM))
