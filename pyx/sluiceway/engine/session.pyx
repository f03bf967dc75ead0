# Included by _engine.pyx: a request's life, and what its two ends tell it.

@cython.final
@cython.freelist(64)
cdef class Session:
    """One request's life in the proxy, given to every hook.

    Attributes:
        req_header: the request head (:class:`RequestHeader`); hooks may
            change it before ``upstream_request_filter`` sends it on.
        client_addr: the client's address (``(host, port)``).
        forwarded_by: the trusted proxy that named the client, or None.
        server_addr: the address the client connected to.
        ctx: the per-request context ``new_ctx()`` returned.
        peer: the HttpPeer chosen by ``upstream_peer`` (None before).
        error: the Error that ended the request, or None.
        retries: how many times ``upstream_peer`` was asked again.
        tried_peers: the peers earlier attempts of this request failed on,
            oldest first (empty until a retry); ``upstream_peer`` can avoid
            them (``LoadBalancer.select_peer(key, avoid=session.tried_peers)``).
        upstream_reused: whether the upstream connection came from the pool.
        status: the status sent to the client (0 before the response).
        request_body_bytes, response_body_bytes: body bytes proxied.
    """

    def __init__(self):
        raise TypeError("Session objects are made by the proxy")

    @staticmethod
    cdef Session _new(_Engine eng, _Side client, _Reader r):
        cdef Session s = Session.__new__(Session)
        cdef sw_msg_t *m = &r.m
        s.req_header = _request_header(r)
        s.eng = eng
        s.client = client
        s.t_start = _now()
        eng.inflight += 1
        s.client_keep = m.keep_alive and not m.upgrade
        s.want_upgrade = m.upgrade and m.method != HTTP_CONNECT
        s.req_has_body = m.chunked or (m.has_content_length and m.content_length > 0)
        s.head_request = m.method == HTTP_HEAD
        s.resp_hooks = _has(eng, H_UP_RESP) or _has(eng, H_RESP)
        if eng.cfg.request_id:
            _observe_start(s)
        if eng.tracer is not None:
            try:
                s.span = eng.tracer.start(s)
            except Exception:
                eng.log.exception("sluiceway: starting the request's span failed")
        return s

    cdef int start(self) except -1:
        return _run_stages(self, S_NEW_CTX, None)

    # --- requests in flight per peer (HttpPeer(load=...)) ----------------
    # A request is in its peer's count from the moment upstream_peer gives
    # it that peer until _finish_request; a retry that gets another peer
    # moves it. Only requests whose peer has a load pay anything. The count
    # belongs to self.peer's BackendLoad (HttpPeer.load cannot change), so
    # _load_move runs before self.peer is replaced.

    cdef void _load_move(self, HttpPeer peer) noexcept:
        self._load_leave()
        if peer.load_cell != NULL:
            sw_load_up(peer.load_cell)
            self.load_held = peer.load_cell

    cdef void _load_leave(self) noexcept:
        if self.load_held != NULL:
            sw_load_down(self.load_held)
            self.load_held = NULL

    # --- public API for hooks ---------------------------------------------

    def respond(self, int status, headers=None, body=b""):
        """Write a complete response to the client now (the request is then
        not proxied when done from ``request_filter``; return True there).

        Args:
            status: the HTTP status.
            headers: optional ``[(name, value), ...]`` or dict.
            body: bytes or str (UTF-8).
        Raises:
            RuntimeError: a response was already started.
        """
        if self.resp_started:
            raise RuntimeError("a response was already sent for this request")
        if isinstance(body, str):
            body = body.encode("utf-8")
        if isinstance(headers, dict):
            headers = list(headers.items())
        if self.rid is not None and self.eng.cfg.request_id:
            headers = list(headers) if headers else []
            headers.append((self.eng.cfg.rid_name, self.rid))
        keep = self.client_keep and not self.eng.closing and self._body_allows_keep()
        if not keep:
            self.client_keep = False
        data = _simple_response(status, b"" if self.head_request else bytes(body), keep, headers)
        if self.head_request and body:
            data = data.replace(b"Content-Length: 0\r\n", b"Content-Length: %d\r\n" % len(body), 1)
        self.resp_started = True
        self.resp_done = True
        self.status = status
        self.response_body_bytes += len(body)
        self._to_client(data)

    def compress_response(self, enabled=True, level=None):
        """Compress this response for the client (``enabled=False``: do
        not), whatever the configured default; ``level`` overrides the
        configured level of the coding chosen. The same rules apply as by
        default (see docs/compression.md): the client must accept a coding,
        the type must be allowed, a response already encoded is left alone
        (unless ``decompress_response`` was asked). Call it before the
        response head goes out (``request_filter`` ...
        ``upstream_response_filter``)."""
        if level is not None and not isinstance(level, int):
            raise TypeError(f"level must be an int or None, got {level!r}")
        self.coding_asked = True
        self.compress_choice = bool(enabled)
        self.compress_level = level

    def decompress_response(self, enabled=True):
        """Undo the upstream's content coding (gzip, deflate, br, zstd) so
        that ``response_body_filter`` sees the plain body; the client then
        gets it compressed again when it accepts a coding and compression is
        on, else plain. Call it before the response head goes out."""
        self.coding_asked = True
        self.decompress_wanted = bool(enabled)

    def limit_rate(self, bytes_per_second, after=0):
        """Send the response body to the client no faster than
        ``bytes_per_second`` (nginx's ``limit_rate``), after the first
        ``after`` bytes (``limit_rate_after``); 0 lifts the limit. The
        proxy then reads the upstream only as fast (the upstream is not
        blamed for the wait). Callable from any hook of the request."""
        if bytes_per_second < 0 or after < 0:
            raise ValueError("limit_rate needs a rate and an 'after' of 0 or more")
        self.rate_limit = float(bytes_per_second)
        self.rate_after = int(after)

    def respond_error(self, int status):
        """Write a small error response with the standard reason phrase."""
        self.respond(status, [("content-type", "text/plain")],
                     f"{status} {(<bytes>sw_reason(status)).decode()}\n")

    async def read_request_body(self):
        """Read the next chunk of the request body (for hooks that run
        before the request goes upstream, e.g. ``request_filter``).

        Returns:
            bytes, or None at the end of the body (at once for a request
            without a body). Chunks read here are still sent upstream, first,
            through ``request_body_filter``.
        Raises:
            RuntimeError: after the request head went upstream (the body is
                then streamed; use ``request_body_filter``).
        """
        if self.up_head_sent:
            raise RuntimeError("read_request_body() is for hooks that run before the request is "
                               "sent upstream; use request_body_filter to see the streamed body")
        if self.body_held:
            # It came after an earlier read_request_body() was cancelled.
            chunk = self.body_held_chunk
            self.body_held = False
            self.body_held_chunk = None
            return chunk
        if not self.req_has_body or self.prefetch_end or self.finished or self.client_gone:
            return None
        if self.body_waiter is not None:
            raise RuntimeError("read_request_body() is already waiting for a chunk")
        if not self.sent_100:
            ex = self.req_header.headers._get("expect", None)
            if ex is not None and ex.lower() == "100-continue" and self.req_header._minor == 1:
                self.sent_100 = True
                self._to_client(_CONTINUE)
        fut = self.eng.loop.create_future()
        self.body_waiter = fut
        self.client.go_on()
        try:
            return await fut
        finally:
            if self.body_waiter is fut:
                self.body_waiter = None  # cancelled (a timeout): the next call may wait again

    cdef object _direct(self):
        """The address the request came from: the connection's peer, or the
        client a PROXY protocol header named (before trusted_proxies)."""
        if self._direct_addr is None and self.client is not None:
            self._direct_addr = self.client.address()
        return self._direct_addr

    cdef bint _direct_trusted(self):
        """Whether the address the request came from is in trusted_proxies
        (decided once per request)."""
        if self._trust == 0:
            self._trust = 2 if _nets_trust(self.eng.cfg.trusted, self._direct()) else 1
        return self._trust == 2

    @property
    def client_addr(self):
        """The client's address: ``(host, port)`` for IPv4, ``(host, port,
        flowinfo, scope_id)`` for IPv6, the socket path (often ``""``) on a
        Unix socket. Behind a load balancer that sends the PROXY protocol
        (``proxy_protocol``), the client its header names; from a proxy in
        ``trusted_proxies``, the client its forwarding header
        (``real_ip_header``) names, as ``(host, port)`` with port 0 when
        the header gave none."""
        return self._client()

    cdef object _client(self):
        """client_addr (decided once per request)."""
        if self._client_addr is None:
            direct = self._direct()
            if self._direct_trusted():     # (the header is read only then)
                self._client_addr, self._via = _session_real_client(self, direct)
            else:
                self._client_addr = direct
        return self._client_addr

    @property
    def forwarded_by(self):
        """The trusted proxy (``trusted_proxies``) the request came through
        last, whose forwarding header named ``client_addr``; None when the
        client connected directly (or through a PROXY protocol balancer)."""
        self.client_addr
        return self._via

    @property
    def server_addr(self):
        """The address the client connected to (the listening socket's, or
        the destination a PROXY protocol header named), in the form of
        ``client_addr``; None once the client's connection is gone."""
        return self.client.local_address() if self.client is not None else None

    @property
    def tls(self):
        """The client connection's TLS, or None when it is plain HTTP.

        Returns:
            a ``sluiceway.TlsInfo`` named tuple: ``version`` (``"TLSv1.3"``,
            ``"TLSv1.2"``), ``cipher`` (OpenSSL's name), ``sni`` (the server
            name the client asked for, lower-case, or None), ``alpn``
            (``"http/1.1"`` or None), ``resumed`` (True when the session was
            resumed). The same object for every request on the connection;
            made the first time a hook asks, so requests that do not ask pay
            nothing. Also valid in ``logging``.
        """
        cdef _Tls t
        if self.client is None:
            return None
        t = self.client.tls_layer()
        return t.describe() if t is not None and t.state == TLS_OPEN else None

    @property
    def client_cert(self):
        """The certificate the client presented, or None (a plain
        connection, a TLS listener with ``client_auth: none``, or
        ``optional`` and the client sent none). With ``client_auth:
        optional`` or ``required`` the handshake verified it against the
        listener's ``client_ca`` before any hook runs.

        Returns:
            a ``sluiceway.ClientCert`` named tuple: ``subject`` and
            ``issuer`` (RFC 4514 strings, ``"CN=alice,O=Example"``),
            ``sans`` (``(type, value)`` pairs such as ``("DNS",
            "alice.example")``), ``serial`` (hex), ``fingerprint_sha256``
            (lower-case hex of the DER), ``not_before``, ``not_after``
            (OpenSSL's text), ``der`` (bytes). Made once per connection,
            when a hook first asks.
        """
        cdef _Tls t
        if self.client is None:
            return None
        t = self.client.tls_layer()
        return t.peer_certificate() if t is not None and t.state == TLS_OPEN else None

    @property
    def request_trailers(self):
        """The request's trailer fields that go upstream: a list of
        ``(name, value)`` bytes pairs, or None when it had none to forward.
        Set when the request body ends (from ``request_body_filter``'s
        ``end_of_stream`` call on). Read-only: changing the list changes
        nothing."""
        return _tail_fields(self.req_leg.tail if self.req_leg is not None else None)

    @property
    def upstream_trailers(self):
        """The upstream response's trailer fields the proxy forwards: a list
        of ``(name, value)`` bytes pairs, or None when it had none. Set when
        the response body ends (from ``response_body_filter``'s
        ``end_of_stream`` call on, and in ``logging``); an HTTP/1.0 client
        does not get them (its response is not chunked). Read-only."""
        return _tail_fields(self.resp_leg.tail if self.resp_leg is not None else None)

    @property
    def upstream_tls(self):
        """The TLS connection to the upstream, once connected (from
        ``upstream_request_filter`` on, ``logging`` included), as a dict:
        ``version`` ("TLSv1.3"), ``cipher``, ``alpn`` (the protocol the
        upstream chose, or None), ``resumed`` (the connection resumed an
        earlier TLS session), ``peer_cert`` (as ``ssl`` decodes it;
        ``{}`` when not verified) and ``peer_cert_der``. None for a plain
        upstream, or before a connection."""
        return self.up_tls.info() if self.up_tls is not None else None

    @property
    def tried_peers(self):
        return tuple(self.tried) if self.tried is not None else ()

    @property
    def request_id(self):
        """This request's id (str): with ``request_id: true``, the client's
        ``X-Request-ID`` when valid (1 to 200 letters, digits or
        ``-_.:/+=@``), else one made here, unique across workers and
        restarts, which goes upstream and back to the client; with request
        ids off, one made when first asked for (for logs), sent nowhere."""
        if self.rid is None:
            self.rid = _new_rid(self.eng)
        return (<bytes>self.rid).decode("ascii")

    @property
    def response_written(self):
        """True once a response head went to the client."""
        return self.resp_started

    @property
    def is_head_request(self):
        return self.head_request

    @property
    def timing(self):
        """Monotonic timestamps (seconds): ``start`` (head parsed),
        ``upstream_connected``, ``response_start`` (upstream head), ``end``,
        and ``elapsed`` (end - start, or until now)."""
        end = self.t_end if self.t_end else _now()
        return {"start": self.t_start, "upstream_connected": self.t_connected or None,
                "response_start": self.t_resp or None, "end": self.t_end or None,
                "elapsed": end - self.t_start}

    def __repr__(self):
        return f"<Session {self.req_header!r} from {_fmt_addr(self.client_addr)}>"

    # --- from the client's end (_Side) ------------------------------------------

    cdef int on_request_body(self, object chunk) except -1:
        """A chunk of the request body."""
        cdef long long limit = self.eng.cfg.max_request_body_bytes
        self.request_body_bytes += len(chunk)
        if limit > 0 and self.request_body_bytes > limit:
            return self._fail(Error(f"request body over max_body_size ({limit} bytes)",
                                    status=413, source=DOWNSTREAM))
        if not self.up_head_sent:
            # A hook is reading the body (read_request_body): keep the chunk
            # for the upstream and hand it over.
            if self.prefetched is None:
                self.prefetched = []
            self.prefetched.append(chunk)
            self.client.hold()
            return self._wake_reader(chunk)
        return self._req_leg().chunk(self, chunk)

    cdef int on_request_end(self, _Reader r) except -1:
        """The request's end (``r``: the parser, for the trailers; None: the
        end a hook already read)."""
        cdef bint keep = True
        if r is not None and self.req_header.chunked:
            # A chunked request goes upstream chunked: its trailers go too.
            self._req_leg().tail = _last_chunk(r, self.req_header.headers, &keep)
            if not keep:
                self.client_keep = False  # the parser takes nothing after it
        self.req_end_seen = True
        if self.req_body_done:
            return self.client.hold()
        if not self.up_head_sent:
            # read_request_body() reached the end of the body.
            self.prefetch_end = True
            self.client.hold()
            return self._wake_reader(None)
        if self.req_has_body:
            return self._req_leg().end(self)
        return self._request_body_sent()

    cdef int on_request_upgrade(self) except -1:
        """The request asked to switch protocols: what follows it is the
        new protocol's (for the upstream, if it agrees)."""
        self.client_keep = False
        return self.on_request_end(None)

    cdef int client_full(self) except -1:
        if self.origin is not None:
            self.origin.peer_full()
        return 0

    cdef int client_drained(self) except -1:
        if self.origin is not None:
            self.origin.peer_drained()
        return 0

    cdef int client_failed(self, object err) except -1:
        return self._fail(err)

    cdef int client_lost(self, object exc) except -1:
        """The client went away."""
        if self.finished:
            return 0
        self.client_gone = True
        self.client_keep = False
        if self.tunneling and exc is None:
            self.resp_done = True  # the client ended the tunnel: a normal end
        elif self.error is None:
            self.error = Error("client closed the connection before the response was complete"
                               + (f" ({exc})" if exc is not None else ""),
                               status=400, source=DOWNSTREAM)
        self._release_origin(False)
        if self.hook_task is not None:
            self.hook_task.cancel()
            return 0  # _hook_done finishes
        return self._finish()

    cdef int count_up(self, Py_ssize_t n) except -1:
        self.request_body_bytes += n
        return 0

    cdef bint awaits_request_body(self):
        return self.req_has_body and not self.req_end_seen and not self.finished

    # --- from the origin's end (_Side) ------------------------------------------

    cdef int on_informational(self, _Reader r) except -1:
        """An interim (1xx) response head other than 101: forwarded to an
        HTTP/1.1 client as received, minus the hop-by-hop fields (103 Early
        Hints, 102 Processing). A 100 Continue is not forwarded: the proxy
        answers the client's Expect itself. No response hook sees it."""
        self.n_informational += 1
        if self.n_informational > MAX_INFORMATIONAL:
            if self.origin is not None:
                self.origin.spoil()
            return self._fail(Error(f"upstream {self.peer} sent more than {MAX_INFORMATIONAL} "
                                    "informational (1xx) responses", status=502, source=UPSTREAM))
        if r.m.status_code == 100 or self.req_header._minor == 0 or self.resp_started or \
                self.client_gone:
            return 0
        return self._to_client(_informational_head(r))

    cdef int on_response_head(self, _Reader r) except -1:
        cdef sw_msg_t *m = &r.m
        cdef ResponseHeader rs
        cdef int st = m.status_code
        if st == 101:
            if not self.want_upgrade:
                return self._fail(Error(f"upstream {self.peer} switched protocols (101) for a "
                                        "request that did not ask to upgrade", status=502,
                                        source=UPSTREAM))
            self.upgrading = True
        self.t_resp = _now()
        self.status = st
        if self.peer is not None and (<HttpPeer>self.peer).balancer is not None:
            _peer_result(self, True)
        self.up_status = st
        self.resp_r = r
        if self.resp_started:
            # request_filter answered and still proxied? Impossible; guard anyway.
            return self._fail(Error("internal: response already started", status=500,
                                    source=INTERNAL))
        if self.head_request or st == 204 or st == 304 or st < 200:
            self.resp_mode = M_NONE
        elif m.has_content_length and self.eng.resp_filters is None:
            self.resp_mode = M_RAW
        elif self.req_header._minor == 1:
            self.resp_mode = M_CHUNKED
        else:
            self.resp_mode = M_CLOSE
        if not m.keep_alive:
            self.origin.spoil()
        if (self.eng.compress_default or self.coding_asked) and self.resp_mode != M_NONE and \
                st >= 200 and not self.upgrading:
            self._plan_coding(r)
        if self.req_header.upgrade:
            self.client_keep = False
        # a body delimited by closing (M_CLOSE) ends the connection too; that
        # is decided with the head (_send_response_head), as a hook may still
        # change the status to one without a body
        if self.resp_hooks:
            if self.resp is None:
                self.resp = self._response_header(r)
            self.origin.hold()
            return _run_stages(self, S_UP_RESP, None)
        return _send_response_head(self)

    cdef int on_response_body(self, _Reader r) except -1:
        if _hold_more(self, r):
            return 0  # joins the held-back bytes
        _flush_held(self)
        return self._resp_leg().chunk(self, r.body_bytes())

    cdef bint on_response_end(self, _Reader r) except -1:
        """The response's end. Returns False for the end of a 101 head (the
        protocol switch follows), True otherwise."""
        cdef bint keep = True
        cdef bytes tail
        if self.upgrading:
            return False
        if r is not None and r.m.chunked:
            # Its trailers go to the client when its response is chunked too.
            tail = _last_chunk(r, self.resp.headers if self.resp is not None else None, &keep)
            if tail is not None:
                self._resp_leg().tail = tail
            if not keep and self.origin is not None:
                self.origin.spoil()  # the parser takes nothing after it
        if self.finished or self.resp_done:
            return True
        if self.resp_leg is not None or self.eng.resp_filters is not None:
            self._resp_leg().end(self)
        else:
            self._response_body_sent()
        return True

    cdef int on_response_upgrade(self) except -1:
        """The upstream switched protocols (101): from now on bytes are
        copied both ways until either end closes."""
        if not (self.upgrading and self.resp_started):
            return self._fail(Error(f"upstream {self.peer} switched protocols unasked",
                                    status=502, source=UPSTREAM))
        if self.client_gone or not self.client.is_open():
            return self._fail(Error("client went away during the protocol switch", status=400,
                                    source=DOWNSTREAM))
        _flush_held(self)
        self.tunneling = True
        self.origin.tunnel(self.client)
        self.client.tunnel(self.origin)
        return 0

    cdef int parsed(self) except -1:
        """The origin's end parsed what it had: write the held-back bytes."""
        return _flush_held(self)

    cdef int origin_full(self) except -1:
        if self.client is not None and not self.client_gone:
            self.client.peer_full()
        return 0

    cdef int origin_drained(self) except -1:
        if self.client is not None and not self.client_gone:
            self.client.peer_drained()
        return 0

    cdef int origin_failed(self, object err) except -1:
        if self.origin is not None and not self.origin.answered() and not self.resp_started \
                and isinstance(err, Error) and (<object>err).source == UPSTREAM:
            _lost_early(self, err)   # timed out before any response byte
        return self._fail(err)

    cdef int origin_lost(self, object exc) except -1:
        return _origin_lost(self, exc)

    cdef int count_down(self, Py_ssize_t n) except -1:
        self.response_body_bytes += n
        return 0

    cdef bint request_sent(self):
        return self.req_body_done

    # --- inside -----------------------------------------------------------------

    cdef int _bind(self, _Upstream u) except -1:
        self.origin = u
        self.up_tls = u.tls
        u.bind(self, self.head_request)
        return 0

    cdef _Leg _req_leg(self):
        if self.req_leg is None:
            # A chunked request goes upstream chunked; so does any body
            # when a filter may change its length.
            self.req_leg = _new_leg(True, self.eng.req_filters, self.req_header.chunked or
                                    (self.eng.req_filters is not None and self.req_has_body),
                                    False)
        return self.req_leg

    cdef _Leg _resp_leg(self):
        if self.resp_leg is None:
            self.resp_leg = _new_leg(False, self.eng.resp_filters,
                                     self.resp_mode == M_CHUNKED, self.resp_mode == M_NONE)
        return self.resp_leg

    cdef ResponseHeader _response_header(self, _Reader r):
        """The response head as hooks see it (its fields stay spans until
        one is changed)."""
        cdef sw_msg_t *m = &r.m
        cdef ResponseHeader rs = ResponseHeader.__new__(ResponseHeader)
        rs.status = m.status_code
        rs._reason = PyBytes_FromStringAndSize(r.head_base + m.reason.off, m.reason.len)
        rs._major = m.major
        rs._minor = m.minor
        rs.headers = _new_map(r.head_buf, r.head_base, m.headers, m.nheaders)
        return rs

    cdef int _plan_coding(self, _Reader r) except -1:
        """Compression or decompression of this response (the policy of
        sluiceway.compression decides); when there is some, the head's
        fields are changed, the length becomes unknown and the response's
        leg gets the coders."""
        cdef object policy = self.eng.compression
        cdef ResponseHeader rs
        cdef _Leg leg
        from sluiceway.compression import CompressionPolicy, edit_headers
        if policy is None:
            policy = self.eng.compression = CompressionPolicy(enabled=False)
        rs = self.resp if self.resp is not None else self._response_header(r)
        plan = policy.plan(self.req_header.headers._get("accept-encoding", None), rs.status,
                           rs.headers, True, self.compress_choice, self.compress_level,
                           self.decompress_wanted)
        if plan is None:
            return 0
        decoder, encoder, coding = plan
        edit_headers(rs.headers, decoder is not None, coding)
        self.resp = rs
        if self.resp_mode == M_RAW:
            self.resp_mode = M_CHUNKED if self.req_header._minor == 1 else M_CLOSE
        leg = self._resp_leg()
        leg.decoder = decoder
        leg.encoder = encoder
        return 0

    cdef bint _body_allows_keep(self):
        """Whether the client connection can be kept after a response
        decided now: yes when the request body has all been read, or when
        the rest is known to be at most DISCARD_MAX bytes (it is then read
        and dropped after the response); otherwise the response says
        `Connection: close` and the connection closes lingering."""
        cdef RequestHeader rq = self.req_header
        if not self.req_has_body or self.req_end_seen:
            return True
        return rq.has_cl and rq.content_length <= <unsigned long long>(
            self.request_body_bytes + DISCARD_MAX)

    cdef int _wake_reader(self, object chunk) except -1:
        cdef object fut = self.body_waiter
        self.body_waiter = None
        if fut is not None and not fut.done():
            fut.set_result(chunk)
        else:
            # Nobody waits any more (the reader was cancelled): keep it for
            # the next read_request_body().
            self.body_held = True
            self.body_held_chunk = chunk
        return 0

    cdef int _keep_for_replay(self, object chunk) except -1:
        """The request body sent upstream is kept (up to retry_buffer_bytes)
        until the first response byte, to send it again if that connection
        fails before answering (see ending.pyx, "Retries")."""
        if self.replay is not None:
            if self.replay_bytes + len(chunk) <= self.eng.cfg.retry_buffer_bytes and \
                    not self.origin.answered():
                self.replay.append(chunk)
                self.replay_bytes += len(chunk)
            else:
                self.replay = None  # too big to send again: no retry
        return 0

    cdef int _to_client(self, object data) except -1:
        if self.client is not None and not self.client_gone:
            self.client.send(data)
        return 0

    cdef int _request_body_sent(self) except -1:
        """The whole request went upstream: the next request waits for this
        response; the response's time starts."""
        self.req_body_done = True
        self.client.hold()
        if self.origin is not None and self.origin.is_open():
            if self.req_has_body:
                self._req_leg().send_end(self)
            self.origin.expect_response()
        if self.resp_done and not self.finished:
            # The response finished before the request body did.
            return self._finish()
        return 0

    cdef int _response_body_sent(self) except -1:
        """The whole response went to the client."""
        if self.finished or self.resp_done:
            return 0
        _flush_held(self)
        if self.resp_leg is not None:
            self.resp_leg.send_end(self)
        elif self.resp_mode == M_CHUNKED:
            self._to_client(_LAST_CHUNK)
        self.resp_done = True
        if not self.req_body_done and self.origin is not None:
            # The upstream answered before reading the whole request body:
            # its connection is not reused (the client's is kept only when
            # the response head said so; see _body_allows_keep).
            self.origin.spoil()
        self._release_origin(True)
        return self._finish()

    cdef int _pace(self) except -1:
        """After a response body chunk went out under a rate limit: when
        ahead of the rate, stop reading the origin until the body is back
        on it."""
        cdef double now = _now()
        cdef double allowed, ahead
        if self.rate_start == 0.0:
            self.rate_start = now
        allowed = self.rate_after + self.rate_limit * (now - self.rate_start)
        ahead = self.response_body_bytes - allowed
        if ahead > 0 and self.origin is not None and self.rate_timer is None:
            self.origin.throttle(True)
            self.rate_timer = self.eng.loop.call_later(ahead / self.rate_limit, self._paced)
        return 0

    def _paced(self):
        self.rate_timer = None
        if self.origin is not None and not self.finished:
            self.origin.throttle(False)

    cdef int _release_origin(self, bint reuse) except -1:
        cdef _Side o = self.origin
        if o is not None:
            self.origin = None
            o.release(reuse)
        return 0

    def _hook_done(self, task):
        try:
            _hook_finished(self, task)
        except BaseException as exc:
            self._internal_error(exc)

    def _internal_error(self, exc):
        """A bug in the engine surfaced in a loop callback: log it and end
        the request rather than leave the client waiting."""
        self.eng.log.error("sluiceway: internal error in a request (this is a bug)", exc_info=exc)
        if self.finished:
            return
        try:
            self._fail(Error("internal error", status=500, source=INTERNAL))
        except BaseException:
            if self.client is not None:
                self.client.close(False)

    # the stage machine and the ends of a request (stages.pyx, ending.pyx)

    cdef int _advance(self, int stage, object value) except -1:
        return _run_stages(self, stage, value)

    cdef int _fail(self, object err) except -1:
        return _fail_request(self, err)

    cdef int _finish(self) except -1:
        return _finish_request(self)

    cdef int _final(self) except -1:
        return _final_request(self)

    cdef object _bad_return(self, str hook, object value, str expected):
        return _bad_hook_return(self, hook, value, expected)
