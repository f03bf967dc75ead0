# Included by _engine.pyx: the HTTP/1 protocol of a client connection.

# ------------------------------------------------------------- downstream --

@cython.final
cdef class _Downstream(_Conn):
    """The protocol of one client connection."""

    def __cinit__(self, _Engine eng):
        self.eng = eng
        self.flush_timeout = eng.ds_write_timeout

    def connection_made(self, transport):
        self.transport = transport
        transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)
        self._made()

    cdef int _made(self) except -1:
        """The connection is open (accepted on our own I/O, or
        connection_made from a transport)."""
        cdef _Engine eng = self.eng
        if eng.max_connections and len(eng.conns) >= eng.max_connections:
            # Over the limit: answer politely and close.
            # Close once the client's first bytes are read (closing with
            # unread input would reset the connection and lose the 503).
            self.t_write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                            b"Connection: close\r\nRetry-After: 1\r\n\r\n")
            self.rejected = True
            eng.loop.call_later(1.0, self._reject_close)
            eng.gate.emit(logging.WARNING, "max_connections",
                          "sluiceway: connection refused: %d connections open (max_connections)",
                          (len(eng.conns),))
            return 0
        eng.conns.add(self)
        self.idle_since = _now()
        # The parser is taken from the engine's free list when bytes arrive
        # and given back while the connection idles (see _request_done).
        self.w = None
        if eng.head_timeout > 0:
            self.deadline = _now() + eng.head_timeout
            self.dl_kind = DL_HEAD

    cdef int on_data(self, object data) except -1:
        cdef double now
        if self.closed:
            if self.dl_kind == DL_LINGER:
                # Lingering: dropped; the client is still sending.
                self.deadline = min(_now() + self.eng.linger_timeout, self.linger_until)
            return 0
        if self.rejected:
            self._close()
            return 0
        if self.tunnel:
            if self.cur is not None and self.cur.us is not None and not self.cur.us.closed:
                self.cur.request_body_bytes += len(data)
                self.cur.us.t_write(data)
            return 0
        if self.cur is not None:
            self.rd_last = _now()
            self.rd_bytes += PyBytes_GET_SIZE(data)
        elif self.dl_kind == DL_IDLE:
            self.deadline = _now() + self.eng.head_timeout if self.eng.head_timeout > 0 else 0.0
            self.dl_kind = DL_HEAD
        elif self.dl_kind == DL_DISCARD:
            self.deadline = min(_now() + self.eng.linger_timeout, self.linger_until)
        if self.w is None:
            self.w = self.eng._take_wire()
        self.w.feed(data)
        self._process()

    cdef int on_eof(self) except -1:
        # As nginx does (without proxy_ignore_client_abort): a client that
        # shuts down its side has abandoned the request; the upstream request
        # is aborted and the connection closed (the caller closes it).
        pass

    cdef int on_closing(self) except -1:
        # Keep the client's address for the logging of a request in
        # progress: it cannot be asked once the socket is closed.
        if self.cur is not None and self.client_addr is None:
            self.client_addr = self.t_peername()

    cdef int on_lost(self, object exc) except -1:
        cdef Session s = None
        self.closed = True
        self.eng.conns.discard(self)
        if self.eng.accept_paused:
            self.eng._conn_closed()
        if self.cur is not None:
            s = self.cur
            self.cur = None
            s._ds_lost(exc)
        if self.w is not None and self.w.unread() == 0 and not self.w.carrying and \
                not self.discard_body and s is None:
            self.eng._give_wire(self.w)
        self.w = None

    cdef int on_pause_writing(self) except -1:
        self.write_paused = True
        if self.eng.ds_write_timeout > 0:
            self.wdeadline = _now() + self.eng.ds_write_timeout
        if self.cur is not None and self.cur.us is not None:
            self.cur.us._pause_read(R_PEER_FULL)

    cdef int on_resume_writing(self) except -1:
        self.write_paused = False
        self.wdeadline = 0.0
        if self.cur is not None and self.cur.us is not None:
            self.cur.us._resume_read(R_PEER_FULL)
            self.cur.us._process()

    cdef object _addr(self):
        """The client's address, asked of the transport on first use (an
        idle connection keeps no address objects)."""
        if self.client_addr is None:
            self.client_addr = self.t_peername()
        return self.client_addr

    cdef int _pause_read(self, int why) except -1:
        if self.read_pause == 0 and not self.closed:
            self.t_pause_reading()
        self.read_pause |= why

    cdef int _resume_read(self, int why) except -1:
        if self.read_pause & why:
            self.read_pause &= ~why
            if self.read_pause == 0 and not self.closed:
                self._wait_resumed()
                self.t_resume_reading()

    cdef int _process(self) except -1:
        cdef int ev
        cdef Session s
        cdef _Engine eng = self.eng
        if self.in_process or self.closed or self.w is None or self.tunnel:
            return 0
        self.in_process = True
        try:
            while not self.blocked and not self.closed:
                if self.read_pause & R_PEER_FULL:
                    break
                ev = self.w.next()
                if ev == SW_EV_NEED_DATA:
                    break
                if ev == SW_EV_HEAD:
                    if self.w.m.method == HTTP_CONNECT:  # not for a reverse proxy
                        self.t_write(_simple_response(
                            405, b"405 Method Not Allowed: CONNECT is not supported\n", False))
                        self._close(True)
                        break
                    self.blocked = True
                    self.discard_body = False
                    self.nreq += 1
                    eng.requests += 1
                    s = Session._new(self, self.w)
                    self.cur = s
                    self.rd_start = self.rd_last = s.t_start
                    self.rd_bytes = 0
                    if eng.request_timeout > 0:
                        self.deadline = s.t_start + eng.request_timeout
                        self.dl_kind = DL_TOTAL
                    else:
                        self.deadline = 0.0
                        self.dl_kind = DL_NONE
                    s._advance(S_NEW_CTX, None)
                elif ev == SW_EV_BODY:
                    if self.cur is not None and not self.discard_body:
                        self.cur._on_req_body(self.w.body_bytes())
                elif ev == SW_EV_END:
                    if self.cur is not None and not self.discard_body:
                        self.cur._keep_req_trailers(self.w)
                        self.cur._on_req_end()
                    elif self.cur is None and self.dl_kind == DL_DISCARD:
                        # The answered request's body is all dropped: the
                        # connection waits for its next request.
                        if self.w.unread() > 0:
                            self.deadline = _now() + self.eng.head_timeout if self.eng.head_timeout > 0 else 0.0
                            self.dl_kind = DL_HEAD
                        else:
                            self.deadline = _now() + self.eng.keepalive_timeout if self.eng.keepalive_timeout > 0 else 0.0
                            self.dl_kind = DL_IDLE
                    self.discard_body = False
                elif ev == SW_EV_UPGRADE:
                    # The request asked to switch protocols (or was CONNECT):
                    # it was proxied without Upgrade; nothing after it is HTTP/1.
                    if self.cur is not None and not self.discard_body:
                        self.cur.client_keep = False
                        self.cur._on_req_end()
                    else:
                        self._close()
                    self.blocked = True
                    break
                else:  # SW_EV_ERROR
                    self._bad_request()
                    break
        except BaseException as exc:
            self.eng.log.exception("sluiceway: internal error on a client connection (this is a bug)")
            self._close()
        finally:
            self.in_process = False
        if not self.closed and self.w is not None:
            if self.blocked and self.w.unread() > HIGH_WATER:
                self._pause_read(R_BUFFERED)
            elif self.cur is None and not self.blocked and self.w.unread() == 0 and \
                    not self.w.carrying and not self.discard_body and self.w.need:
                self.eng._give_wire(self.w)
                self.w = None

    cdef int _unblock(self) except -1:
        if self.closed:
            return 0
        self.blocked = False
        self._wait_resumed()
        self._resume_read(R_BUFFERED)
        if not self.in_process:
            self._process()

    cdef int _wait_resumed(self) except -1:
        """The request may be waiting for the client again (parsing was
        unblocked, or reading resumed): the time it was not is not the
        client's, for the body timeout and the minimum rate."""
        cdef double now
        if self.cur is not None:
            now = _now()
            if now > self.rd_last:
                self.rd_start += now - self.rd_last
                self.rd_last = now
        return 0

    cdef bint _body_due(self, double now):
        """Whether the request body the proxy is waiting for (parsing not
        blocked, reading not paused) has not advanced for body_timeout, or
        has averaged under body_min_rate bytes/s since body_timeout after
        the wait began."""
        cdef Session s = self.cur
        cdef _Engine eng = self.eng
        cdef double waited
        if s is None or self.closed or self.blocked or self.read_pause or self.tunnel or \
                not s.req_has_body or s.req_end_seen or s.finished or eng.body_timeout <= 0:
            return False
        if now - self.rd_last >= eng.body_timeout:
            return True
        if eng.body_min_rate > 0:
            waited = now - self.rd_start - eng.body_timeout
            return waited > 0 and self.rd_bytes < eng.body_min_rate * waited
        return False

    cdef int _body_timeout(self, double now) except -1:
        """The body is overdue (``_body_due``): 408, the client to blame."""
        cdef Session s = self.cur
        cdef _Engine eng = self.eng
        if eng.body_timeout > 0 and now - self.rd_last >= eng.body_timeout:
            what = f"no request body bytes for {eng.body_timeout:.3g}s (downstream_body_timeout)"
        else:
            what = (f"request body too slow: {self.rd_bytes} bytes in "
                    f"{now - self.rd_start:.3g}s (downstream_body_min_rate is "
                    f"{eng.body_min_rate:.6g} bytes/s)")
        s._fail(Error(f"client {_fmt_addr(self._addr())} timed out: {what}", status=408,
                      source=DOWNSTREAM))
        return 0

    cdef int _request_done(self, bint keep, bint linger, bint discard) except -1:
        """The current request is over (response sent or aborted). With
        ``keep``, the connection waits for the next request, after reading
        and dropping the rest of the request's body when ``discard``;
        otherwise it closes, lingering when the client may still be
        sending."""
        cdef double now
        self.cur = None
        if self.closed:
            return 0
        if not keep:
            # (While stopping, the response said `Connection: close`; a
            # response that began before keeps the connection until the
            # client's next request or DRAIN_IDLE.)
            self._close(linger)
            return 0
        self.idle_since = _now()
        if discard:
            self.discard_body = True
            now = _now()
            self.linger_until = now + (self.eng.linger_time if self.eng.linger_time > 0 else 3600.0)
            self.deadline = min(now + self.eng.linger_timeout, self.linger_until) \
                if self.eng.linger_timeout > 0 else self.linger_until
            self.dl_kind = DL_DISCARD
        elif self.w.unread() > 0:
            self.deadline = _now() + self.eng.head_timeout if self.eng.head_timeout > 0 else 0.0
            self.dl_kind = DL_HEAD
        else:
            self.deadline = _now() + self.eng.keepalive_timeout if self.eng.keepalive_timeout > 0 else 0.0
            self.dl_kind = DL_IDLE
        self.blocked = False
        self._resume_read(R_BUFFERED | R_PEER_FULL)
        if self.w.unread() == 0 and not self.w.carrying and \
                not self.discard_body and not self.in_process:
            # Idle: the parser goes back to the free list at once, so the
            # parsers in use are bounded by the requests in flight, not by
            # the open connections (an idle keep-alive connection holds none).
            self.eng._give_wire(self.w, False)
            self.w = None
        elif self.w.unread() > 0 and not self.in_process:
            # Pipelined bytes: parse them on the next loop iteration, not
            # deep inside the upstream's callback.
            self.eng.loop.call_soon(self._kick)

    def _reject_close(self):
        self._close()

    cdef bint _idle(self):
        """Between requests, with nothing of the next one received."""
        return self.cur is None and not self.closed and not self.rejected and not self.tunnel and \
            (self.w is None or (self.w.unread() == 0 and not self.w.carrying and
                                not self.discard_body))

    def _kick(self):
        self._process()

    cdef int _close(self, bint linger=False) except -1:
        """Close the connection after writing what is queued; with
        ``linger``, shut down our side and read and drop what the client
        still sends, for at most linger_time (quiet for linger_timeout
        ends it), so that its unread bytes do not make the kernel reset the
        connection under the response."""
        cdef double now
        if not self.closed:
            self.closed = True
            if linger and self.eng.linger_time > 0 and self.io is not None:
                now = _now()
                self.linger_until = now + self.eng.linger_time
                self.deadline = min(now + self.eng.linger_timeout, self.linger_until) \
                    if self.eng.linger_timeout > 0 else self.linger_until
                self.dl_kind = DL_LINGER
                self.t_close_linger()
            else:
                self.t_close()

    cdef int _bad_request(self) except -1:
        cdef sw_msg_t *m = &self.w.m
        cdef int status = m.err_status if m.err_status >= 400 else 400
        reason = (<bytes>m.err_reason).decode("utf-8", "replace") if m.err_reason != NULL else "malformed request"
        if self.eng.log.isEnabledFor(logging.INFO):
            self.eng.gate.emit(logging.INFO, "bad_request",
                               "sluiceway: %d from client %s: %s (at byte %d of the buffered data)",
                               (status, _fmt_addr(self._addr()), reason, m.err_offset))
        cdef Session s
        if self.cur is not None:
            # A malformed body of a request in progress.
            s = self.cur
            s._fail(ParseError(reason, status=status, offset=m.err_offset, source=DOWNSTREAM))
            self._close(True)
            return 0
        body = (f"{status} {(<bytes>sw_reason(status)).decode()}: {reason}\n").encode("utf-8", "replace")
        self.t_write(_simple_response(status, body, False))
        self._close(True)  # the rest of what the client sends is not read

    cdef int _write_timeout(self) except -1:
        """The client has not read what we sent for downstream_write_timeout."""
        cdef Session s = self.cur
        self.wdeadline = 0.0
        if self.closed:
            return 0  # closing: t_close's flush timeout ends it
        if self.eng.log.isEnabledFor(logging.INFO):
            self.eng.gate.emit(logging.INFO, "write_timeout",
                               "sluiceway: closing client %s: it read nothing for %.3gs "
                               "(downstream_write_timeout)",
                               (_fmt_addr(self._addr()), self.eng.ds_write_timeout))
        if s is not None:
            s._fail(Error(f"client did not read the response within {self.eng.ds_write_timeout:.3g}s "
                          "(downstream_write_timeout)", status=408, source=DOWNSTREAM))
        # As nginx on send_timeout: the connection goes at once, without
        # waiting for the client to take what is queued.
        self.closed = True
        self.t_abort(None)

    cdef int _timeout(self, double now) except -1:
        cdef int kind = self.dl_kind
        self.deadline = 0.0
        self.dl_kind = DL_NONE
        if kind == DL_LINGER:
            if self.wq is not None and now < self.linger_until:
                # Still writing the last response: its flush timeout rules.
                self.deadline = self.linger_until
                self.dl_kind = DL_LINGER
            else:
                self.t_abort(None)
            return 0
        if self.closed:
            return 0
        if kind == DL_IDLE:
            self._close()
        elif kind == DL_DISCARD:
            # The rest of an answered request's body did not come in time.
            self._close(True)
        elif kind == DL_HEAD:
            if self.eng.log.isEnabledFor(logging.INFO):
                self.eng.gate.emit(logging.INFO, "head_timeout",
                                   "sluiceway: closing client %s: no complete request head within "
                                   "%.3gs (head_timeout)",
                                   (_fmt_addr(self._addr()), self.eng.head_timeout))
            if self.w is not None and self.w.unread() > 0:
                self.t_write(_R408)
            self._close()
        elif kind == DL_TOTAL and self.cur is not None:
            self.cur._fail(Error(f"request not complete within {self.eng.request_timeout:.3g}s "
                                 "(request_timeout)", status=504, source=UPSTREAM))
