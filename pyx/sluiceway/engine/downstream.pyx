# Included by _engine.pyx: the HTTP/1 protocol of a client connection.

@cython.final
cdef class _Downstream(_Conn):
    """One client connection: parses requests, makes a ``Session`` per
    request and is its client's end (``_Side``). Pipelined requests are
    parsed one at a time: the next head waits until the current request is
    done, so responses go out in order.

    From a TLS listener (``tls_lst``) the first bytes (after a PROXY
    header, if any) must begin a TLS handshake record: anything else is
    answered with a plaintext 400 and closed, as nginx does for plain HTTP
    sent to an HTTPS port. Otherwise TLS starts on the connection
    (``t_start_tls``) with those bytes; ``on_handshake`` ends the handshake
    wait (DL_HANDSHAKE) and requests are read as on a plain connection. A
    handshake that fails or is cut is counted (``tls_failed``, the ``tls``
    kind of ``sluiceway_errors_total``), logged, and the connection is gone:
    the layer reports it as ``on_handshake(exc)`` instead of ``on_lost``."""

    def __cinit__(self, _Engine eng):
        self.eng = eng
        self.flush_timeout = eng.cfg.downstream_write_timeout_seconds

    cdef int _made(self) except -1:
        """The connection is open (accepted and registered)."""
        cdef _Engine eng = self.eng
        if eng.cfg.max_connections and len(eng.conns) >= eng.cfg.max_connections:
            if self.tls_lst is not None:
                # A TLS client could not read a plaintext 503: closed at once.
                self.rejected = True
                if eng.mslab != NULL:
                    _m_conn(eng, MC_CONN_REJ)
                eng.gate.emit(logging.WARNING, "max_connections",
                              "sluiceway: connection refused: %d connections open (max_connections)",
                              (len(eng.conns),))
                self._close(False)
                return 0
            # Over the limit: answer politely, and close once the client's
            # first bytes are read (closing with unread input would reset
            # the connection and lose the 503).
            self.t_write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                         b"Connection: close\r\nRetry-After: 1\r\n\r\n")
            self.rejected = True
            if eng.mslab != NULL:
                _m_conn(eng, MC_CONN_REJ)
            eng.loop.call_later(1.0, self._reject_close)
            eng.gate.emit(logging.WARNING, "max_connections",
                          "sluiceway: connection refused: %d connections open (max_connections)",
                          (len(eng.conns),))
            return 0
        eng.conns.add(self)
        self.idle_since = _now()
        # The parser is taken from the engine's free list when bytes arrive
        # and given back while the connection idles (see request_done).
        self.reader = None
        if self.tls_lst is None:
            self.arm(DL_HEAD, eng.cfg.downstream_header_timeout_seconds)
        else:
            self.tls_wait = True
            self.arm(DL_HANDSHAKE, self.tls_lst.hs_timeout)
        if eng.cfg.pp_from is not None:
            self._pp_begin()
        return 0

    cdef int _pp_begin(self) except -1:
        """PROXY protocol is on: a peer in proxy_protocol_from must start
        with the header (read by _pp_feed before any HTTP); any other peer
        is refused. (A peer on a Unix socket is a local process: trusted.)"""
        peer = self._direct_peer()
        if type(peer) is tuple and not self.eng.cfg.pp_from.has(peer[0]):
            self.eng.gate.emit(logging.WARNING, "proxy_protocol",
                               "sluiceway: refused a connection from %s: PROXY protocol is "
                               "on and it is not in proxy_protocol_from", (_fmt_addr(peer),))
            self.client_addr = peer
            self._close(False)
            return 0
        self.pp_wait = True
        return 0

    cdef object _pp_feed(self, object data):
        """Bytes while the PROXY header is awaited: None while it is
        incomplete (or was bad: the connection is then closing), else the
        bytes after it (None when there are none). The header's addresses
        become the client's and the local address."""
        cdef sw_pp_t h
        cdef bytes buf = self.pp_buf + data if self.pp_buf is not None else data
        cdef long n = sw_pp_parse(<const unsigned char *>PyBytes_AS_STRING(buf),
                                  <size_t>PyBytes_GET_SIZE(buf), &h)
        if n == SW_PP_NEED:
            self.pp_buf = buf
            return None
        self.pp_buf = None
        if n == SW_PP_BAD:
            self.eng.gate.emit(logging.WARNING, "proxy_protocol",
                               "sluiceway: closing connection from %s: %s",
                               (_fmt_addr(self.address()), h.reason.decode("ascii")))
            self._close(False)
            return None
        self.pp_wait = False
        if not h.local:
            src = h.src.decode("ascii")
            dst = h.dst.decode("ascii")
            if h.family == 6:
                self.client_addr = (src, h.src_port, 0, 0)
                self.local_addr = (dst, h.dst_port, 0, 0)
            else:
                self.client_addr = (src, h.src_port)
                self.local_addr = (dst, h.dst_port)
        if n == PyBytes_GET_SIZE(buf):
            return None
        return buf[n:]

    # --- events from the I/O --------------------------------------------------

    cdef int on_data(self, object data) except -1:
        if self.closed:
            if self.dl_kind == DL_LINGER:
                # Lingering: dropped; the client is still sending.
                self._arm_linger(DL_LINGER)
            return 0
        if self.rejected:
            self._close(False)
            return 0
        if self.pp_wait:
            data = self._pp_feed(data)
            if data is None:
                return 0
        if self.tls_wait:
            return self._tls_begin(data)
        if self.pipe is not None:
            # A protocol switch: bytes go to the other end as they are.
            if self.session is not None:
                self.session.count_up(PyBytes_GET_SIZE(data))
            self.pipe.send(data)
            return 0
        if self.session is not None:
            self.rd_last = _now()
            self.rd_bytes += PyBytes_GET_SIZE(data)
        elif self.dl_kind == DL_IDLE:
            self.arm(DL_HEAD, self.eng.cfg.downstream_header_timeout_seconds)
        elif self.dl_kind == DL_DISCARD:
            self._arm_linger(DL_DISCARD)
        if self.reader is None:
            self.reader = self.eng._take_reader()
        self.reader.feed(data)
        self._process()
        return 0

    cdef int on_eof(self) except -1:
        # As nginx does (without proxy_ignore_client_abort): a client that
        # shuts down its side has abandoned the request; the upstream request
        # is aborted and the connection closed (the caller closes it).
        return 0

    cdef int on_closing(self) except -1:
        # Keep the client's address for the logging of a request in
        # progress (or of a TLS handshake cut): a Unix socket's cannot be
        # asked once the socket is closed (a TCP peer's is kept from accept).
        if self.peer.family == 0 and self.client_addr is None and \
                (self.session is not None or (self.tls is not None and self.tls.state == TLS_HANDSHAKE)):
            self.client_addr = self.t_peername()
        return 0

    cdef int on_lost(self, object exc) except -1:
        cdef Session s = self.session
        self.closed = True
        self.eng.conns.discard(self)
        if self.eng.accept_paused:
            self.eng._conn_closed()
        if s is not None:
            self.session = None
            s.client_lost(exc)
        if self.reader is not None and self.reader.unread() == 0 and not self.reader.carrying and \
                not self.discard_body and s is None:
            self.eng._give_reader(self.reader, True)
        self.reader = None
        return 0

    # --- TLS (from a TLS listener) -----------------------------------------------

    cdef int _tls_begin(self, object data) except -1:
        """The client's first bytes on a TLS listener: a TLS handshake
        record starts TLS with them; anything else gets a plaintext 400."""
        cdef unsigned char first = <unsigned char>PyBytes_AS_STRING(data)[0]
        self.tls_wait = False
        if self.client_addr is None and self.peer.family == 0:
            # Asked now: a handshake cut by a reset could not ask any more,
            # and its log line names the client. (A TCP peer's address is
            # kept from accept.)
            self.client_addr = self.t_peername()
        if first != 0x16:   # a TLS handshake record's content type
            self._tls_error(None, "plain HTTP sent to the TLS port: answered 400"
                            if 65 <= first <= 90 else   # a method's first letter
                            f"not a TLS handshake (first byte 0x{first:02x}): answered 400")
            self.t_write(_R400_HTTPS)
            self._close(True)   # what else it sends is read and dropped
            return 0
        self.t_start_tls(self.tls_lst.tls_start, True, None)
        if self.fd >= 0 and self.tls is not None:
            self.tls.received(self, data)
        return 0

    cdef int on_handshake(self, object exc) except -1:
        if exc is None:
            self.eng.tls_done += 1
            if not self.closed:
                self.arm(DL_HEAD, self.eng.cfg.downstream_header_timeout_seconds)
            return 0
        # Failed: the protocol never heard the connection open, and no
        # on_lost follows. Whoever closed it (a timeout, a stop) reported it.
        if not self.closed:
            self._tls_error(exc, None)
            self.closed = True
        self.eng.conns.discard(self)
        if self.eng.accept_paused:
            self.eng._conn_closed()
        return 0

    cdef int on_tls_error(self, object exc) except -1:
        # Between requests nothing else would report it; a request in
        # progress reports its loss (with this reason) itself.
        if self.session is None:
            self._tls_error(exc, "TLS failed after the handshake: " + _tls_reason(exc))
        return 0

    cdef int _tls_error(self, object exc, str what) except -1:
        """Count and log a TLS connection that failed outside a request."""
        cdef _Engine eng = self.eng
        eng.tls_failed += 1
        if eng.mslab != NULL:
            sw_ms_add(eng.mslab[0], eng.mc[MC_ERR + EK_TLS], 1.0)
        if eng.log.isEnabledFor(logging.INFO):
            eng.gate.emit(logging.INFO, "tls", "sluiceway: TLS client %s: %s",
                          (_fmt_addr(self.address()), what if what is not None else
                           "handshake failed: " + _exc_text(exc)))
        return 0

    cdef object tls_layer(self):
        return self.tls

    cdef int on_pause_writing(self) except -1:
        self.wdeadline = _now() + self.eng.cfg.downstream_write_timeout_seconds \
            if self.eng.cfg.downstream_write_timeout_seconds > 0 else 0.0
        if self.session is not None:
            self.session.client_full()
        return 0

    cdef int on_resume_writing(self) except -1:
        self.wdeadline = 0.0
        if self.session is not None:
            self.session.client_drained()
        return 0

    # --- parsing ----------------------------------------------------------------

    cdef int _process(self) except -1:
        cdef int ev
        cdef Session s
        cdef _Reader r = self.reader
        if self.in_process or self.closed or r is None or self.pipe is not None:
            return 0
        self.in_process = True
        try:
            while not self.blocked and not self.closed:
                if self.read_pause & R_PEER_FULL:
                    break
                ev = r.next()
                if ev == SW_EV_NEED_DATA:
                    break
                if ev == SW_EV_HEAD:
                    if r.m.method == HTTP_CONNECT:  # not for a reverse proxy
                        self.t_write(_simple_response(
                            405, b"405 Method Not Allowed: CONNECT is not supported\n", False))
                        self._close(True)
                        break
                    self.blocked = True
                    self.discard_body = False
                    self.msg_ended = False
                    self.nreq += 1
                    self.eng.requests += 1
                    s = Session._new(self.eng, self, r)
                    self.session = s
                    self.rd_start = self.rd_last = s.t_start
                    self.rd_bytes = 0
                    if self.eng.cfg.request_timeout_seconds > 0:
                        self.arm_at(DL_TOTAL, s.t_start + self.eng.cfg.request_timeout_seconds)
                    else:
                        self.disarm()
                    s.start()
                elif ev == SW_EV_BODY:
                    if self.session is not None and not self.discard_body:
                        self.session.on_request_body(r.body_bytes())
                elif ev == SW_EV_END:
                    self.msg_ended = True
                    if self.session is not None and not self.discard_body:
                        self.session.on_request_end(r)
                    elif self.session is None and self.dl_kind == DL_DISCARD:
                        # The answered request's body is all dropped: the
                        # connection waits for its next request.
                        self._arm_waiting()
                    self.discard_body = False
                elif ev == SW_EV_UPGRADE:
                    # The request asked to switch protocols: nothing after
                    # it is HTTP/1 (it waits for the upstream's answer).
                    if self.session is not None and not self.discard_body:
                        self.session.on_request_upgrade()
                    else:
                        self._close(False)
                    self.blocked = True
                    break
                else:  # SW_EV_ERROR
                    self._bad_request()
                    break
        except BaseException:
            self.eng.log.exception("sluiceway: internal error on a client connection (this is a bug)")
            self._close(False)
        finally:
            self.in_process = False
        if not self.closed and self.reader is not None:
            if self.blocked and self.reader.unread() > HIGH_WATER:
                self._pause_read(R_BUFFERED)
            elif self.session is None and not self.blocked and self.reader.unread() == 0 and \
                    not self.reader.carrying and not self.discard_body and self.reader.need:
                self.eng._give_reader(self.reader, True)
                self.reader = None
        return 0

    def _kick(self):
        self._process()

    def _reject_close(self):
        self._close(False)

    cdef int _pause_read(self, int why) except -1:
        if self.read_pause == 0 and not self.closed:
            self.t_pause_reading()
        self.read_pause |= why
        return 0

    cdef int _resume_read(self, int why) except -1:
        if self.read_pause & why:
            self.read_pause &= ~why
            if self.read_pause == 0 and not self.closed:
                self._wait_resumed()
                self.t_resume_reading()
        return 0

    cdef int _bad_request(self) except -1:
        cdef sw_msg_t *m = &self.reader.m
        cdef int status = m.err_status if m.err_status >= 400 else 400
        reason = (<bytes>m.err_reason).decode("utf-8", "replace") if m.err_reason != NULL \
            else "malformed request"
        if self.eng.log.isEnabledFor(logging.INFO):
            self.eng.gate.emit(logging.INFO, "bad_request",
                               "sluiceway: %d from client %s: %s (at byte %d of the buffered data)",
                               (status, _fmt_addr(self.address()), reason, m.err_offset))
        if self.session is not None:
            # A malformed body of a request in progress.
            self.session.client_failed(ParseError(reason, status=status, offset=m.err_offset,
                                                  source=DOWNSTREAM))
            self._close(True)
            return 0
        body = (f"{status} {(<bytes>sw_reason(status)).decode()}: {reason}\n").encode("utf-8", "replace")
        self.t_write(_simple_response(status, body, False))
        self._close(True)  # the rest of what the client sends is not read
        return 0

    # --- the client's end of a Session (_Side) ------------------------------------

    cdef int hold(self) except -1:
        self.blocked = True
        return 0

    cdef int go_on(self) except -1:
        if self.closed:
            return 0
        self.blocked = False
        self._wait_resumed()
        self._resume_read(R_BUFFERED)
        if not self.in_process:
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
        if not self.in_process:
            self._process()
        return 0

    cdef bint is_open(self):
        return not self.closed

    cdef int tunnel(self, _Side other) except -1:
        cdef _Reader r = self.reader
        self.pipe = other
        if self.dl_kind != DL_TOTAL:
            self.disarm()
        if r is not None and not r.carrying and r.data is not None and r.pos < r.dlen:
            other.send(r.data[r.pos:])
            r.pos = r.dlen
        self._resume_read(R_BUFFERED)
        return 0

    cdef int request_done(self, bint keep, bint linger, bint discard) except -1:
        """The request is over (response sent or aborted). With ``keep``
        the connection waits for the next request, after reading and
        dropping the rest of the request's body when ``discard``; otherwise
        it closes, lingering when the client may still be sending. (While
        stopping, the response said `Connection: close`; one that began
        before keeps the connection until the client's next request or
        DRAIN_IDLE.)"""
        self.session = None
        if self.closed:
            return 0
        if not keep:
            return self._close(linger)
        self.idle_since = _now()
        if not self.msg_ended:
            # What is left of this request (its body, or only its end,
            # which the parser reports with the next bytes) is dropped.
            self.discard_body = True
        if discard:
            self.linger_until = _now() + (self.eng.cfg.lingering_time_seconds
                                          if self.eng.cfg.lingering_time_seconds > 0 else 3600.0)
            self._arm_linger(DL_DISCARD)
        else:
            self._arm_waiting()
        self.blocked = False
        self._resume_read(R_BUFFERED | R_PEER_FULL)
        if self.reader.unread() == 0 and not self.reader.carrying and \
                not self.discard_body and not self.in_process:
            # Idle: the parser goes back to the free list at once, so the
            # parsers in use are bounded by the requests in flight, not by
            # the open connections (an idle keep-alive connection holds none).
            self.eng._give_reader(self.reader, False)
            self.reader = None
        elif self.reader.unread() > 0 and not self.in_process:
            # Pipelined bytes: parse them on the next loop iteration, not
            # deep inside the upstream's callback.
            self.eng.loop.call_soon(self._kick)
        return 0

    cdef int close(self, bint linger) except -1:
        return self._close(linger)

    cdef object address(self):
        """The client's address, made on first use (an idle connection
        keeps no address objects), or the one a PROXY header named."""
        if self.client_addr is None:
            self.client_addr = self._direct_peer()
        return self.client_addr

    cdef object _direct_peer(self):
        """The address of the connection's other end: as accept gave it
        (also after the close), else (a Unix socket) asked of the kernel."""
        cdef char host[64]
        cdef int port = 0, fam
        cdef unsigned flow = 0, scope = 0
        if self.peer.family == 0:
            return self.t_peername()
        fam = sw_io_peer_text(&self.peer, host, sizeof(host), &port, &flow, &scope)
        return _addr_obj(fam, host, port, flow, scope)

    cdef object local_address(self):
        """The address the client connected to: the socket's own, or the
        destination its PROXY header named."""
        cdef char host[256]
        cdef int port = 0, fam
        cdef unsigned flow = 0, scope = 0
        if self.local_addr is None:
            if self.fd >= 0:
                fam = sw_io_sockname(self.fd, host, sizeof(host), &port, &flow, &scope)
                if fam == AF_INET:
                    self.local_addr = (host.decode("ascii"), port)
                elif fam == AF_INET6:
                    self.local_addr = (host.decode("ascii"), port, flow, scope)
                elif fam == AF_UNIX:
                    self.local_addr = host.decode("utf-8", "surrogateescape")
        return self.local_addr

    cdef int served(self):
        return self.nreq

    # --- closing ------------------------------------------------------------------

    cdef int _close(self, bint linger) except -1:
        """Close after writing what is queued; with ``linger``, shut down
        our side and read and drop what the client still sends, for at most
        lingering_time (quiet for lingering_timeout ends it), so that its
        unread bytes do not make the kernel reset the connection under the
        response."""
        if self.closed:
            return 0
        self.closed = True
        if linger and self.eng.cfg.lingering_time_seconds > 0 and self.fd >= 0:
            self.linger_until = _now() + self.eng.cfg.lingering_time_seconds
            self._arm_linger(DL_LINGER)
            self.t_close_linger()
        else:
            self.t_close()
        return 0

    cdef bint _idle(self):
        """Between requests, with nothing of the next one received."""
        return self.session is None and not self.closed and not self.rejected and \
            self.pipe is None and self.pp_buf is None and (self.reader is None or (
                self.reader.unread() == 0 and not self.reader.carrying and not self.discard_body))

    # --- time -----------------------------------------------------------------------

    cdef int _arm_waiting(self) except -1:
        """Between requests: the next head's timeout when some of it came,
        else the keep-alive timeout."""
        if self.reader is not None and self.reader.unread() > 0:
            return self.arm(DL_HEAD, self.eng.cfg.downstream_header_timeout_seconds)
        return self.arm(DL_IDLE, self.eng.cfg.downstream_keepalive_timeout_seconds)

    cdef int _arm_linger(self, int kind) except -1:
        """Discarding or lingering: until the client is quiet for
        lingering_timeout, and at most until linger_until."""
        cdef double t = self.eng.cfg.lingering_timeout_seconds
        return self.arm_at(kind, min(_now() + t, self.linger_until) if t > 0 else self.linger_until)

    cdef int _wait_resumed(self) except -1:
        """The request may be waiting for the client again (parsing was
        unblocked, or reading resumed): the time it was not is not the
        client's, for the body timeout and the minimum rate."""
        cdef double now
        if self.session is not None:
            now = _now()
            if now > self.rd_last:
                self.rd_start += now - self.rd_last
                self.rd_last = now
        return 0

    cdef bint due(self, double now):
        return (self.deadline and now >= self.deadline) or \
            (self.wdeadline and now >= self.wdeadline) or \
            (self.session is not None and self._body_due(now))

    cdef bint _body_due(self, double now):
        """Whether the request body the proxy is waiting for (parsing not
        blocked, reading not paused) has not advanced for the body timeout,
        or has averaged under the minimum rate since one body timeout after
        the wait began."""
        cdef Session s = self.session
        cdef double timeout = self.eng.cfg.downstream_body_timeout_seconds
        cdef double rate = self.eng.cfg.downstream_body_min_rate
        cdef double waited
        if s is None or self.closed or self.blocked or self.read_pause or self.pipe is not None \
                or timeout <= 0 or not s.awaits_request_body():
            return False
        if now - self.rd_last >= timeout:
            return True
        if rate > 0:
            waited = now - self.rd_start - timeout
            return waited > 0 and self.rd_bytes < rate * waited
        return False

    cdef int on_timeout(self, double now) except -1:
        cdef int kind = self.dl_kind
        if self.wdeadline and now >= self.wdeadline:
            self._write_timeout()
        if self.session is not None and self._body_due(now):
            self._body_timeout(now)
        if not (self.deadline and now >= self.deadline):
            return 0
        self.disarm()
        if kind == DL_LINGER:
            if self.wq is not None and now < self.linger_until:
                # Still writing the last response: its flush timeout rules.
                self.arm_at(DL_LINGER, self.linger_until)
            else:
                self.t_abort(None)
            return 0
        if self.closed:
            return 0
        if kind == DL_IDLE:
            self._close(False)
        elif kind == DL_DISCARD:
            # The rest of an answered request's body did not come in time.
            self._close(True)
        elif kind == DL_HEAD:
            if self.eng.log.isEnabledFor(logging.INFO):
                self.eng.gate.emit(logging.INFO, "head_timeout",
                                   "sluiceway: closing client %s: no complete %s within "
                                   "%.3gs (head_timeout)",
                                   (_fmt_addr(self.address()),
                                    "PROXY protocol header" if self.pp_wait else "request head",
                                    self.eng.cfg.downstream_header_timeout_seconds))
            if self.reader is not None and self.reader.unread() > 0:
                self.t_write(_R408)
            self._close(False)
        elif kind == DL_HANDSHAKE:
            self._tls_error(None, (f"TLS handshake not complete within " if self.tls is not None
                                   else "no TLS handshake within ") +
                            f"{self.tls_lst.hs_timeout:.3g}s (handshake_timeout)")
            self._close(False)
        elif kind == DL_TOTAL and self.session is not None:
            self.session.client_failed(Error(
                f"request not complete within {self.eng.cfg.request_timeout_seconds:.3g}s "
                "(request_timeout)", status=504, source=UPSTREAM))
        return 0

    cdef int _body_timeout(self, double now) except -1:
        """The body is overdue (``_body_due``): 408, the client to blame."""
        cdef double timeout = self.eng.cfg.downstream_body_timeout_seconds
        if now - self.rd_last >= timeout:
            what = f"no request body bytes for {timeout:.3g}s (downstream_body_timeout)"
        else:
            what = (f"request body too slow: {self.rd_bytes} bytes in "
                    f"{now - self.rd_start:.3g}s (downstream_body_min_rate is "
                    f"{self.eng.cfg.downstream_body_min_rate:.6g} bytes/s)")
        self.session.client_failed(Error(f"client {_fmt_addr(self.address())} timed out: {what}",
                                         status=408, source=DOWNSTREAM))
        return 0

    cdef int _write_timeout(self) except -1:
        """The client has not read what we sent for downstream_write_timeout."""
        cdef Session s = self.session
        cdef double t = self.eng.cfg.downstream_write_timeout_seconds
        self.wdeadline = 0.0
        if self.closed:
            return 0  # closing: t_close's flush timeout ends it
        if self.eng.log.isEnabledFor(logging.INFO):
            self.eng.gate.emit(logging.INFO, "write_timeout",
                               "sluiceway: closing client %s: it read nothing for %.3gs "
                               "(downstream_write_timeout)", (_fmt_addr(self.address()), t))
        if s is not None:
            s.client_failed(Error(f"client did not read the response within {t:.3g}s "
                                  "(downstream_write_timeout)", status=408, source=DOWNSTREAM))
        # As nginx on send_timeout: the connection goes at once, without
        # waiting for the client to take what is queued.
        self.closed = True
        self.t_abort(None)
        return 0
