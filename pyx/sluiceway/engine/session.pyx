# Included by _engine.pyx: a request's life (phases, hooks, failures).

# ---------------------------------------------------------------- session --

@cython.final
@cython.freelist(64)
cdef class Session:
    """One request's life in the proxy, given to every hook.

    Attributes:
        req_header: the request head (:class:`RequestHeader`); hooks may
            change it before ``upstream_request_filter`` sends it on.
        client_addr: the client's address (``(host, port)``).
        ctx: the per-request context ``new_ctx()`` returned.
        peer: the HttpPeer chosen by ``upstream_peer`` (None before).
        error: the Error that ended the request, or None.
        retries: how many times ``upstream_peer`` was asked again.
        upstream_reused: whether the upstream connection came from the pool.
        status: the status sent to the client (0 before the response).
        request_body_bytes, response_body_bytes: body bytes proxied.
    """

    def __init__(self):
        raise TypeError("Session objects are made by the proxy")

    @staticmethod
    cdef Session _new(_Downstream ds, _Wire w):
        cdef Session s = Session.__new__(Session)
        cdef RequestHeader rq = RequestHeader.__new__(RequestHeader)
        cdef sw_msg_t *m = &w.m
        cdef int mi = m.method
        name = _METHODS[mi]
        if name is None:
            name = _METHODS[mi] = (<bytes>API.method_name(w.p)).decode("ascii")
        rq._method = name
        rq._buf = w.head_buf
        rq._target = m.url
        rq._head.off = m.msg_start
        rq._head.len = m.head_len
        rq._major = m.major
        rq._minor = m.minor
        rq.keep_alive = m.keep_alive
        rq.chunked = m.chunked
        rq.has_cl = m.has_content_length
        rq.content_length = m.content_length
        rq.upgrade = m.upgrade
        rq.headers = _new_map(w.head_buf, w.head_base, m.headers, m.nheaders)
        if m.target_authority.len:
            rq._take_authority(m.target_authority)
        s.req_header = rq
        s.eng = ds.eng
        s.ds = ds
        s.t_start = _now()
        ds.eng.inflight += 1
        s.client_keep = m.keep_alive and not m.upgrade
        s.want_upgrade = m.upgrade and mi != HTTP_CONNECT
        s.req_has_body = m.chunked or (m.has_content_length and m.content_length > 0)
        s.head_request = mi == HTTP_HEAD
        s.body_filter_up = ds.eng.h_req_body is not None
        s.resp_hooks = ds.eng.h_up_resp is not None or ds.eng.h_resp is not None
        return s

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
        self._write_ds(data)

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
        if not self.req_has_body or self.prefetch_end or self.finished or self.ds is None:
            return None
        if self.body_waiter is not None:
            raise RuntimeError("read_request_body() is already waiting for a chunk")
        if not self.sent_100:
            ex = self.req_header.headers._get("expect", None)
            if ex is not None and ex.lower() == "100-continue" and self.req_header._minor == 1:
                self.sent_100 = True
                self._write_ds(_CONTINUE)
        fut = self.eng.loop.create_future()
        self.body_waiter = fut
        self.ds._unblock()
        try:
            return await fut
        finally:
            if self.body_waiter is fut:
                self.body_waiter = None  # cancelled (a timeout): the next call may wait again

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

    @property
    def client_addr(self):
        """The client's address: ``(host, port)`` for TCP."""
        if self._client_addr is None and self.ds is not None:
            self._client_addr = self.ds._addr()
        return self._client_addr

    @property
    def request_trailers(self):
        """The request's trailer fields that go upstream: a list of
        ``(name, value)`` bytes pairs, or None when it had none to forward.
        Set when the request body ends (from ``request_body_filter``'s
        ``end_of_stream`` call on). Read-only: changing the list changes
        nothing."""
        return _tail_fields(self.req_tail)

    @property
    def upstream_trailers(self):
        """The upstream response's trailer fields the proxy forwards: a list
        of ``(name, value)`` bytes pairs, or None when it had none. Set when
        the response body ends (from ``response_body_filter``'s
        ``end_of_stream`` call on, and in ``logging``); an HTTP/1.0 client
        does not get them (its response is not chunked). Read-only."""
        return _tail_fields(self.resp_tail)

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

    # --- hook calls ---------------------------------------------------------

    cdef object _call2(self, object fn, int next_stage):
        """``_call(fn, (self, self.ctx), next_stage)`` without building the
        argument tuple (the common hook signature; a vectorcall)."""
        cdef object r
        try:
            r = fn(self, self.ctx)
            if r is None or type(r) is bool or type(r) is HttpPeer:
                return r
        except BaseException as exc:
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            self.hook_next = 0
            self._hook_failed(exc, getattr(fn, "__name__", "?"), next_stage)
            return _FAILED
        return self._call(None, (r,), next_stage)

    cdef object _call(self, object fn, tuple args, int next_stage):
        """Call hook ``fn(*args)``; with ``fn`` None, ``args[0]`` is the
        result of a call already made."""
        cdef object r, y, prev
        cdef PyObject *out = NULL
        cdef PySendResult sr = PYGEN_ERROR
        cdef _Engine eng
        cdef _HookTask st
        cdef Py_ssize_t refs
        try:
            r = fn(*args) if fn is not None else args[0]
            if r is None or type(r) is bool or type(r) is HttpPeer:
                return r
            if PyCoro_CheckExact(r) or hasattr(type(r), "__await__"):
                if not PyCoro_CheckExact(r):
                    r = _await_wrapper(r)
                # The first step runs with a stand-in as the loop's current
                # task (see _hook_task.pxi); the previous one (the connect
                # Task, or none) is put back after it.
                eng = self.eng
                if eng.spare_task is not None:
                    st = <_HookTask>eng.spare_task
                    eng.spare_task = None
                else:
                    st = _new_hook_task(eng.loop)
                refs = Py_REFCNT(st)
                prev = _enter_hook_task(eng.loop, st)
                try:
                    # PyIter_Send: a coroutine that returns gives its value
                    # without a StopIteration being raised and caught.
                    sr = PyIter_Send(r, None, &out)
                    if sr == PYGEN_ERROR:
                        raise_current()
                finally:
                    _leave_hook_task(eng.loop, prev)
                    if Py_REFCNT(st) == refs and st.pending == 0 and not sw_has_weakrefs(st):
                        eng.spare_task = st  # nobody kept it: the next hook's
                        st = None
                    elif sr != PYGEN_NEXT:
                        st.ended = True
                if sr == PYGEN_RETURN:
                    y = _steal(out)
                    if st is not None and st.pending:
                        # It cancelled its own task and returned: a Task
                        # would end cancelled.
                        raise asyncio.CancelledError(st.msg)
                    return y
                y = _steal(out)
                self.hook_next = next_stage
                self.hook_fn = fn if fn is not None else args[0]  # for messages
                self.hook_task = eng.loop.create_task(_drive(r, y, st))
                self.hook_task.add_done_callback(self._hook_done)
                if st is not None:
                    st.task = self.hook_task
                return _PENDING
            return r
        except BaseException as exc:
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            self.hook_next = 0
            self._hook_failed(exc, getattr(fn if fn is not None else args[0], "__qualname__", "?"), next_stage)
            return _FAILED

    def _hook_done(self, task):
        try:
            self._hook_done_impl(task)
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
            if self.ds is not None:
                self.ds._close()

    def _hook_done_impl(self, task):
        cdef int stage = self.hook_next
        name = getattr(self.hook_fn, "__qualname__", None) or "hook"
        self.hook_task = None
        self.hook_fn = None
        if stage == S_LOG_DONE:
            if not task.cancelled() and task.exception() is not None:
                self._hook_failed(task.exception(), name, stage)
            else:
                self._final()
            return
        if task.cancelled():
            if not self.finished:
                if self.ds_gone:
                    self._finish()
                else:
                    self._hook_failed(asyncio.CancelledError("hook cancelled"), name, stage)
            return
        exc = task.exception()
        if exc is not None:
            self._hook_failed(exc, name, stage)
            return
        if self.ds_gone and stage != S_LOG_DONE:
            self._finish()
            return
        self._advance(stage, task.result())

    def _hook_failed(self, exc, name, stage):
        err = _wrap_hook_error(exc, name)
        if not isinstance(exc, Error) and self.eng.log.isEnabledFor(logging.ERROR):
            self.eng.gate.emit(logging.ERROR, "hook " + str(name),
                               "sluiceway: hook %s failed for %s %s",
                               (name, self.req_header._method, self.req_header.uri), exc)
        if stage == S_LOG_DONE:
            self._final()
        elif stage == S_FAIL_PROXY_DONE:
            # fail_to_proxy itself failed: answer with the original error's status.
            self._advance(stage, getattr(self.error, "status", 500))
        elif stage in (S_ERR_PROXY_DONE, S_FAIL_CONNECT_DONE):
            # A failure while handling a failure: go on with the original.
            self._advance(stage, self.error)
        else:
            self._fail(err)

    # --- the stage machine --------------------------------------------------

    cdef int _advance(self, int stage, object value) except -1:
        cdef _Engine eng = self.eng
        cdef object r
        while True:
            if self.finished:
                return 0
            if stage == S_NEW_CTX:
                if eng.h_new_ctx is not None:
                    r = self._call(eng.h_new_ctx, (), S_EARLY)
                    if r is _PENDING or r is _FAILED:
                        return 0
                    value = r
                stage = S_EARLY
                continue
            if stage == S_EARLY:
                if self.ctx is None and value is not None:
                    self.ctx = value
                if eng.h_early is not None:
                    r = self._call2(eng.h_early, S_REQ_FILTER)
                    if r is _PENDING or r is _FAILED:
                        return 0
                stage = S_REQ_FILTER
                continue
            if stage == S_REQ_FILTER:
                if self.resp_started:
                    self._finish()
                    return 0
                if eng.max_body_size > 0 and self.req_header.has_cl and \
                        self.req_header.content_length > <unsigned long long>eng.max_body_size:
                    self._fail(Error(f"request body of {self.req_header.content_length} bytes is over "
                                     f"max_body_size ({eng.max_body_size})", status=413, source=DOWNSTREAM))
                    return 0
                value = False
                if eng.h_req_filter is not None:
                    r = self._call2(eng.h_req_filter, S_REQ_FILTER_DONE)
                    if r is _PENDING or r is _FAILED:
                        return 0
                    value = r
                stage = S_REQ_FILTER_DONE
                continue
            if stage == S_REQ_FILTER_DONE:
                if value or self.resp_started:
                    if not self.resp_started:
                        self.eng.log.error("sluiceway: request_filter returned True without "
                                           "writing a response (call session.respond() first); "
                                           "answering 500")
                        self.respond_error(500)
                    self._finish()
                    return 0
                stage = S_PEER
                continue
            if stage == S_PEER:
                r = self._call2(eng.h_peer, S_PEER_DONE)
                if r is _PENDING or r is _FAILED:
                    return 0
                value = r
                stage = S_PEER_DONE
                continue
            if stage == S_PEER_DONE:
                if self.resp_started:
                    self._finish()  # the hook answered itself
                    return 0
                if not isinstance(value, HttpPeer):
                    self._fail(self._bad_return("upstream_peer", value,
                                                'an HttpPeer, e.g. HttpPeer(("127.0.0.1", 8000))'))
                    return 0
                self.peer = value
                self._connect(False)
                return 0
            if stage == S_CONNECTED:
                self.t_connected = _now()
                if self.replaying:
                    stage = S_SEND  # hooks already ran for this request
                    continue
                if eng.h_connected is not None:
                    r = self._call(eng.h_connected, (self, self.upstream_reused, self.peer, self.ctx), S_UP_REQ)
                    if r is _PENDING or r is _FAILED:
                        return 0
                stage = S_UP_REQ
                continue
            if stage == S_UP_REQ:
                if eng.h_up_req is not None:
                    r = self._call(eng.h_up_req, (self, self.req_header, self.ctx), S_SEND)
                    if r is _PENDING or r is _FAILED:
                        return 0
                stage = S_SEND
                continue
            if stage == S_SEND:
                if self.resp_started:
                    # A hook answered itself: nothing was sent on the
                    # connection, so it goes back to the pool.
                    self._release_upstream(True)
                    self._finish()
                    return 0
                if self.us is None or self.us.closed:
                    # The connection died while a hook ran.
                    self._us_lost(None)
                    return 0
                self._send_upstream_head()
                return 0
            if stage == S_REQ_BODY_DONE:
                self._req_body_out(value if value is not None else self.pending_chunk)
                self.pending_chunk = None
                if self.pending_end:
                    self.pending_end = False
                    self._req_end_done()
                elif self.prefetch_end and not self.req_body_done:
                    self._on_req_end()
                elif not self.finished and self.ds is not None:
                    self.ds._unblock()
                return 0
            if stage == S_UP_RESP:
                if eng.h_up_resp is not None:
                    r = self._call(eng.h_up_resp, (self, self.resp, self.ctx), S_RESP)
                    if r is _PENDING or r is _FAILED:
                        return 0
                stage = S_RESP
                continue
            if stage == S_RESP:
                if eng.h_resp is not None:
                    r = self._call(eng.h_resp, (self, self.resp, self.ctx), S_RESP_SEND)
                    if r is _PENDING or r is _FAILED:
                        return 0
                stage = S_RESP_SEND
                continue
            if stage == S_RESP_SEND:
                if self.resp_started:
                    # A response hook answered itself: drop the upstream's
                    # response (its connection is not reused).
                    if self.us is not None:
                        self.us.reusable = False
                    self.resp_done = True
                    self._release_upstream(False)
                    self._finish()
                    return 0
                self._send_resp_head()
                if self.us is not None and not self.finished:
                    self.us.blocked = False
                    self.us._resume_read(R_BUFFERED)
                    self.us._process()
                return 0
            if stage == S_RESP_BODY_DONE:
                self._resp_body_out(value if value is not None else self.pending_chunk)
                self.pending_chunk = None
                if self.pending_end:
                    self.pending_end = False
                    self._resp_end_done()
                    return 0
                if self.us is not None and not self.finished:
                    self.us.blocked = False
                    self.us._resume_read(R_BUFFERED)
                    self.us._process()
                return 0
            if stage == S_FAIL_CONNECT_DONE:
                if isinstance(value, Error):
                    self.error = value
                elif eng.h_fail_connect is not None:
                    self._bad_return("fail_to_connect", value, "the Error to continue with "
                                     "(the one it was given, by default); going on with that one")
                if isinstance(self.error, Error) and self.error.retryable and self.retries < eng.max_retries:
                    self.retries += 1
                    self.error = None
                    stage = S_PEER
                    continue
                self._fail(self.error)
                return 0
            if stage == S_ERR_PROXY_DONE:
                if isinstance(value, Error):
                    self.error = value
                elif eng.h_err_proxy is not None and self.up_head_sent:
                    self._bad_return("error_while_proxy", value, "the Error to continue with "
                                     "(the one it was given, by default); going on with that one")
                if self.reuse_failed:
                    self.reuse_failed = False
                    if isinstance(self.error, Error) and (<object>self.error).retryable and \
                            self.can_replay and not self.ds_gone:
                        self._replay()
                        return 0
                    if isinstance(self.error, Error) and eng.log.isEnabledFor(logging.WARNING):
                        self._log_failure(self.error)
                # then fail_to_proxy decides the answer
                if eng.h_fail_proxy is not None:
                    r = self._call(eng.h_fail_proxy, (self, self.error, self.ctx), S_FAIL_PROXY_DONE)
                    if r is _PENDING or r is _FAILED:
                        return 0
                    value = r
                else:
                    value = None
                stage = S_FAIL_PROXY_DONE
                continue
            if stage == S_FAIL_PROXY_DONE:
                if eng.h_fail_proxy is not None and not isinstance(value, int):
                    self._bad_return("fail_to_proxy", value, "an int status (0: no answer); "
                                     "answering with the error's status")
                    value = getattr(self.error, "status", 500)
                if not self.resp_started:
                    status = value if isinstance(value, int) and value >= 100 else getattr(self.error, "status", 500)
                    if eng.h_fail_proxy is None or (isinstance(value, int) and value >= 100):
                        if not self.ds_gone:
                            self.client_keep = False
                            try:
                                self.respond_error(status)
                            except Exception:
                                pass
                elif not self.resp_done and self.ds is not None:
                    # Mid-response: the client can only learn it from the close.
                    self.client_keep = False
                    self.ds._close(self.req_has_body and not self.req_end_seen)
                self.client_keep = False
                self._finish()
                return 0
            if stage == S_LOG_DONE:
                self._final()
                return 0
            raise AssertionError(f"unknown session stage {stage}")

    # --- upstream connection ----------------------------------------------

    cdef int _connect(self, bint force_new) except -1:
        cdef _Upstream u = None
        cdef HttpPeer peer = self.peer
        if not force_new:
            u = self.eng.pool.take(peer.reuse_key)
        if u is not None:
            self.upstream_reused = True
            self._bind(u)
            self._advance(S_CONNECTED, None)
            return 0
        self.upstream_reused = False
        self.eng.loop.create_task(self._open(peer)).add_done_callback(_ignore_result)

    cdef int _bind(self, _Upstream u) except -1:
        self.us = u
        u.s = self
        u.idle = False
        u.got_bytes = False
        u.blocked = False
        u.in_1xx = False
        u.nreq += 1
        u.deadline = 0.0
        u.dl_kind = DL_NONE
        API.set_skip_body(u.w.p, self.head_request)

    async def _open(self, HttpPeer peer):
        try:
            await self._open_impl(peer)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._internal_error(exc)

    async def _open_impl(self, HttpPeer peer):
        cdef _Engine eng = self.eng
        cdef _Upstream u = _Upstream(eng, peer)
        timeout = peer.connect_timeout if peer.connect_timeout is not None else eng.connect_timeout
        loop = eng.loop
        err = None
        try:
            if peer.tls:
                coro = loop.create_connection(lambda: u, peer.host, peer.port,
                                              ssl=_ssl_context(peer.verify_cert, peer.ca_file),
                                              server_hostname=peer.sni or peer.host)
            else:
                coro = _connect_plain(eng, u, peer)
            if timeout and timeout > 0:
                await asyncio.wait_for(coro, timeout)
            else:
                await coro
        except asyncio.CancelledError:
            raise
        except (asyncio.TimeoutError, TimeoutError):
            err = Error(f"connecting to upstream {peer} timed out after {timeout:.3g}s "
                        "(connect_timeout)", status=504, source=UPSTREAM)
        except OSError as exc:
            err = Error(f"connecting to upstream {peer} failed: {exc.strerror or exc}",
                        status=502, source=UPSTREAM)
            err.__cause__ = exc
        except Exception as exc:
            err = Error(f"connecting to upstream {peer} failed: {type(exc).__name__}: {exc}",
                        status=502, source=UPSTREAM)
            err.__cause__ = exc
        if self.finished or self.ds_gone:
            if err is None:
                eng.pool.put(u)  # nobody waits for it any more
            if not self.finished:
                self._finish()
            return
        if err is not None:
            if eng.log.isEnabledFor(logging.WARNING):
                eng.gate.emit(logging.WARNING, "connect", "sluiceway: %s (for %s %s from %s)",
                              (err.message, self.req_header._method, self.req_header.uri,
                               _fmt_addr(self.client_addr)))
            self.error = err
            if eng.h_fail_connect is not None:
                r = self._call(eng.h_fail_connect, (self, peer, self.ctx, err), S_FAIL_CONNECT_DONE)
                if r is _PENDING or r is _FAILED:
                    return
                self._advance(S_FAIL_CONNECT_DONE, r)
            else:
                self._advance(S_FAIL_CONNECT_DONE, err)
            return
        if u.closed:
            self._fail(Error(f"upstream {peer} closed the connection at once", status=502, source=UPSTREAM))
            return
        self._bind(u)
        self._advance(S_CONNECTED, None)

    # --- request head and body --------------------------------------------

    cdef int _send_upstream_head(self) except -1:
        cdef RequestHeader rq = self.req_header
        cdef HeaderMap hm = rq.headers
        cdef _Engine eng = self.eng
        cdef unsigned extra = SW_DROP_EXPECT
        cdef unsigned flags
        cdef unsigned char *drop
        cdef char *out
        cdef char *o
        cdef size_t need, n
        cdef bint reframe = self.body_filter_up and self.req_has_body
        cdef bytes head
        self.req_up_chunked = rq.chunked or reframe
        if eng.forwarded:
            extra |= SW_DROP_XFF
        if reframe:
            extra |= SW_DROP_CONTENT_LENGTH | SW_DROP_TRANSFER_ENCODING
        if hm._items is None:
            drop = _need_drop(hm._n)
            flags = sw_hop_mark(hm._base, hm._h, hm._n, drop, extra)
            self.expect_100 = (flags & SW_F_EXPECT_100) != 0 and rq._minor == 1
            if not (flags & SW_F_DROPPED) and rq._minor == 1 and (flags & SW_F_HOST) \
                    and not eng.forwarded and not rq._edited_line and not self.expect_100 \
                    and not self.want_upgrade:
                # Untouched: forward the received head as it is.
                if rq._head.off == 0 and rq._head.len == PyBytes_GET_SIZE(rq._buf):
                    head = rq._buf
                else:
                    head = PyBytes_FromStringAndSize(PyBytes_AS_STRING(rq._buf) + rq._head.off, rq._head.len)
            else:
                uri = rq.raw_uri
                meth = rq._method.encode("ascii")
                extras = self._extra_fields(flags, reframe)
                need = len(meth) + len(uri) + 16 + sw_fields_size(hm._h, hm._n) + len(extras) + 2
                out = _need_scratch(need)
                o = out
                memcpy(o, PyBytes_AS_STRING(meth), len(meth)); o += len(meth)
                o[0] = b' '; o += 1
                memcpy(o, PyBytes_AS_STRING(uri), len(uri)); o += len(uri)
                memcpy(o, b" HTTP/1.1\r\n", 11); o += 11
                o += sw_write_fields(o, hm._base, hm._h, hm._n, drop)
                memcpy(o, PyBytes_AS_STRING(extras), len(extras)); o += len(extras)
                o[0] = b'\r'; o[1] = b'\n'; o += 2
                head = PyBytes_FromStringAndSize(out, o - out)
        else:
            head = self._head_from_items(extra, reframe)
        self.up_head_sent = True
        self.us.t_write(head)
        if self.replaying:
            self._replay_body()
            return 0
        if self.upstream_reused and not self.retried_reused and self.req_has_body:
            # Keep what is sent (up to 64 KiB) until the first response byte,
            # to send it again if this pooled connection turns out dead.
            self.replay = []
            self.replay_bytes = 0
        if not self.req_has_body:
            self.req_body_done = True
            self._arm_read()
        elif self.expect_100 and not self.sent_100:
            self.sent_100 = True
            self._write_ds(_CONTINUE)
        if self.prefetched is not None:
            # Chunks a hook already read go first.
            chunk = b"".join(self.prefetched)
            self.prefetched = None
            self.request_body_bytes -= len(chunk)
            self._on_req_body(chunk)
            if self.finished or self.hook_task is not None:
                return 0  # a pending body filter resumes in S_REQ_BODY_DONE
        if self.prefetch_end:
            self._on_req_end()
            return 0
        # Let the client's body (or the END of a bodyless request) through.
        if not self.req_end_seen:
            self.ds._unblock()

    cdef int _replay_body(self) except -1:
        """On the new connection of a retry: send the body sent before."""
        cdef list chunks = self.replay
        self.replay = None
        if chunks:
            for c in chunks:
                self._req_body_out(c)
        if self.req_body_done:
            if self.req_has_body and self.req_up_chunked and self.us is not None:
                self.us.t_write(self.req_tail if self.req_tail is not None else _LAST_CHUNK)
            self._arm_read()
        if not self.req_end_seen and self.ds is not None:
            self.ds._unblock()

    cdef bytes _extra_fields(self, unsigned flags, bint reframe):
        cdef list parts = []
        cdef RequestHeader rq = self.req_header
        cdef HeaderMap hm = rq.headers
        if not (flags & SW_F_HOST):
            # An HTTP/1.0 client may send no Host (the parser refuses an
            # HTTP/1.1 request without one), or a hook removed it: the
            # HTTP/1.1 request sent upstream needs one.
            parts.append(b"Host: " + (<HttpPeer>self.peer)._host_hdr() + _CRLF)
        if reframe:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        if self.want_upgrade:
            i = hm._find(b"upgrade", 0)
            if i >= 0:
                parts.append(b"Connection: upgrade\r\nUpgrade: " + hm._value_at(i) + _CRLF)
        if self.eng.forwarded:
            addr = self.client_addr
            client = addr[0] if isinstance(addr, tuple) else "unix"
            prior = hm.getall("x-forwarded-for")
            xff = ", ".join(prior + [client]) if prior else client
            parts.append(b"X-Forwarded-For: " + _as_value(xff) + _CRLF)
            parts.append(b"X-Forwarded-Proto: http\r\n")
            host = hm.get_bytes("host")
            if host is not None:
                parts.append(b"X-Forwarded-Host: " + host + _CRLF)
        return b"".join(parts)

    cdef bytes _head_from_items(self, unsigned extra, bint reframe):
        """The slow path: a hook edited the headers."""
        cdef RequestHeader rq = self.req_header
        cdef HeaderMap hm = rq.headers
        cdef list items = hm._items
        cdef set named = set()
        cdef unsigned flags = 0
        for n, v in items:
            ln = (<bytes>n).lower()
            if ln == b"connection":
                for tok in (<bytes>v).split(b","):
                    tok = tok.strip().lower()
                    if tok and tok not in (b"content-length", b"transfer-encoding", b"host"):
                        named.add(tok)
            elif ln == b"host":
                flags |= SW_F_HOST
            elif ln == b"expect" and (<bytes>v).strip().lower() == b"100-continue" and rq._minor == 1:
                self.expect_100 = True
        parts = [rq._method.encode("ascii"), b" ", rq.raw_uri, b" HTTP/1.1\r\n"]
        for n, v in items:
            ln = (<bytes>n).lower()
            if ln in _HOP and ln != b"transfer-encoding":
                continue
            if ln in named or ln == b"expect":
                continue
            if reframe and ln in (b"content-length", b"transfer-encoding"):
                continue
            if self.eng.forwarded and ln in (b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"):
                continue
            parts.append(n + b": " + v + _CRLF)
        parts.append(self._extra_fields(flags, reframe))
        parts.append(_CRLF)
        return b"".join(parts)

    cdef int _arm_read(self) except -1:
        cdef _Upstream u = self.us
        if u is not None and u.read_timeout > 0 and u.dl_kind != DL_WRITE:
            u.deadline = _now() + u.read_timeout
            u.dl_kind = DL_READ

    cdef int _on_req_body(self, object chunk) except -1:
        cdef object r
        self.request_body_bytes += len(chunk)
        if self.eng.max_body_size > 0 and self.request_body_bytes > self.eng.max_body_size:
            self._fail(Error(f"request body over max_body_size ({self.eng.max_body_size} bytes)",
                             status=413, source=DOWNSTREAM))
            return 0
        if not self.up_head_sent:
            # A hook is reading the body (read_request_body): keep the chunk
            # for the upstream and hand it over.
            if self.prefetched is None:
                self.prefetched = []
            self.prefetched.append(chunk)
            if self.ds is not None:
                self.ds.blocked = True
            self._wake_reader(chunk)
            return 0
        if self.eng.h_req_body is not None:
            self.pending_chunk = chunk
            self.pending_end = False
            r = self._call(self.eng.h_req_body, (self, chunk, False, self.ctx), S_REQ_BODY_DONE)
            if r is _FAILED:
                return 0
            if r is _PENDING:
                self.ds.blocked = True
                return 0
            self.pending_chunk = None
            if r is not None:
                chunk = r
        self._req_body_out(chunk)

    cdef int _req_body_out(self, object chunk) except -1:
        cdef char hdr[24]
        cdef size_t k
        cdef _Upstream u = self.us
        if u is None or u.closed or chunk is None:
            return 0
        if isinstance(chunk, str):
            chunk = (<str>chunk).encode("utf-8")
        elif not isinstance(chunk, (bytes, memoryview, bytearray)):
            # only a request_body_filter can hand over anything else
            self._fail(self._bad_return("request_body_filter", chunk, "bytes, str or None"))
            return 0
        if not chunk:
            return 0
        if self.replay is not None:
            if self.replay_bytes + len(chunk) <= REPLAY_MAX and not u.got_bytes:
                self.replay.append(chunk)
                self.replay_bytes += len(chunk)
            else:
                self.replay = None  # too big to send again: no retry
        if self.req_up_chunked:
            k = sw_chunk_header(hdr, len(chunk))
            u.t_writev((PyBytes_FromStringAndSize(hdr, k), chunk, _CRLF))
        else:
            u.t_write(chunk)

    cdef int _on_req_end(self) except -1:
        cdef object r
        self.req_end_seen = True
        if self.req_body_done:
            if self.ds is not None:
                self.ds.blocked = True
            return 0
        if not self.up_head_sent:
            # read_request_body() reached the end of the body.
            self.prefetch_end = True
            if self.ds is not None:
                self.ds.blocked = True
            self._wake_reader(None)
            return 0
        if self.eng.h_req_body is not None and self.req_has_body:
            self.pending_chunk = None
            self.pending_end = True
            r = self._call(self.eng.h_req_body, (self, b"", True, self.ctx), S_REQ_BODY_DONE)
            if r is _FAILED:
                return 0
            if r is _PENDING:
                if self.ds is not None:
                    self.ds.blocked = True
                return 0
            self.pending_end = False
            if r:
                self._req_body_out(r)
        self._req_end_done()

    cdef int _keep_req_trailers(self, _Wire w) except -1:
        """At the request's end (before request_body_filter's last call):
        keep its trailer fields for the upstream. A chunked request goes
        upstream chunked, so they can always be forwarded."""
        cdef bint keep = True
        if self.req_header.chunked:
            self.req_tail = _last_chunk(w, self.req_header.headers, &keep)
            if not keep:
                self.client_keep = False  # the parser takes nothing after it
        return 0

    cdef int _req_end_done(self) except -1:
        self.req_body_done = True
        if self.ds is not None:
            self.ds.blocked = True  # the next request waits for this response
        if self.us is not None and not self.us.closed:
            if self.req_up_chunked:
                self.us.t_write(self.req_tail if self.req_tail is not None else _LAST_CHUNK)
            self._arm_read()
        if self.resp_done and not self.finished:
            # The response finished before the request body did.
            self._finish()

    # --- response -----------------------------------------------------------

    cdef int _on_informational(self, _Wire w) except -1:
        """An interim (1xx) response head other than 101: forwarded to an
        HTTP/1.1 client as received, minus the hop-by-hop fields (103 Early
        Hints, 102 Processing). A 100 Continue is not forwarded: the proxy
        answers the client's Expect itself. No response hook sees it."""
        cdef sw_msg_t *m = &w.m
        cdef unsigned char *drop
        cdef char *out
        cdef char *o
        self.n_informational += 1
        if self.n_informational > MAX_INFORMATIONAL:
            if self.us is not None:
                self.us.reusable = False
            self._fail(Error(f"upstream {self.peer} sent more than {MAX_INFORMATIONAL} "
                             "informational (1xx) responses", status=502, source=UPSTREAM))
            return 0
        if m.status_code == 100 or self.req_header._minor == 0 or self.resp_started or \
                self.ds_gone:
            return 0
        drop = _need_drop(m.nheaders)
        sw_hop_mark(w.head_base, m.headers, m.nheaders, drop,
                    SW_DROP_TRANSFER_ENCODING | SW_DROP_CONTENT_LENGTH)
        out = _need_scratch(64 + m.reason.len + sw_fields_size(m.headers, m.nheaders) + 2)
        o = out
        o += sw_write_status_line(o, m.status_code, w.head_base + m.reason.off, m.reason.len)
        o += sw_write_fields(o, w.head_base, m.headers, m.nheaders, drop)
        o[0] = b'\r'; o[1] = b'\n'; o += 2
        self._write_ds(PyBytes_FromStringAndSize(out, o - out))
        return 0

    cdef int _on_resp_head(self, _Wire w) except -1:
        cdef sw_msg_t *m = &w.m
        cdef ResponseHeader rs
        cdef int st = m.status_code
        self.t_resp = _now()
        self.status = st
        if self.resp_started:
            # request_filter answered and still proxied? Impossible; guard anyway.
            self._fail(Error("internal: response already started", status=500, source=INTERNAL))
            return 0
        if self.head_request or st == 204 or st == 304 or st < 200:
            self.resp_mode = M_NONE
        elif m.has_content_length and self.eng.h_resp_body is None:
            self.resp_mode = M_RAW
        elif self.req_header._minor == 1:
            self.resp_mode = M_CHUNKED
        else:
            self.resp_mode = M_CLOSE
        if not m.keep_alive:
            self.us.reusable = False
        if self.resp_mode == M_CLOSE or self.req_header.upgrade:
            self.client_keep = False
        if self.resp_hooks:
            rs = ResponseHeader.__new__(ResponseHeader)
            rs.status = st
            rs._reason = PyBytes_FromStringAndSize(w.head_base + m.reason.off, m.reason.len)
            rs._major = m.major
            rs._minor = m.minor
            rs.headers = _new_map(w.head_buf, w.head_base, m.headers, m.nheaders)
            self.resp = rs
            self.us.blocked = True
            self._advance(S_UP_RESP, None)
        else:
            self._send_resp_head()

    cdef int _send_resp_head(self) except -1:
        cdef _Wire w = self.us.w if self.us is not None else None
        cdef sw_msg_t *m
        cdef ResponseHeader rs = self.resp
        cdef HeaderMap hm
        cdef unsigned extra = SW_DROP_TRANSFER_ENCODING
        cdef unsigned flags
        cdef unsigned char *drop
        cdef const char *base
        cdef const sw_header_t *hh
        cdef uint32_t nh
        cdef char *out
        cdef char *o
        cdef size_t need
        cdef bytes reason
        cdef int status
        cdef bint keep
        if self.finished or w is None:
            return 0
        m = &w.m
        if self.resp_mode == M_CHUNKED or self.resp_mode == M_CLOSE:
            extra |= SW_DROP_CONTENT_LENGTH
        keep = self.client_keep and not self.eng.closing and self._body_allows_keep()
        if rs is not None:
            status = rs.status
            if status != m.status_code:
                self.status = status
                if status == 204 or status == 304:
                    self.resp_mode = M_NONE
        else:
            status = m.status_code
        if rs is not None and rs.headers._items is not None:
            self._head_out(self._resp_head_from_items(rs, keep), w)
            self.resp_started = True
            self.client_keep = keep
            return 0
        if rs is not None:
            hm = rs.headers
            base = hm._base
            hh = hm._h
            nh = hm._n
        else:
            base = w.head_base
            hh = m.headers
            nh = m.nheaders
        drop = _need_drop(nh)
        flags = sw_hop_mark(base, hh, nh, drop, extra)
        self.client_keep = keep
        if not (flags & SW_F_DROPPED) and m.major == 1 and m.minor == 1 and keep and \
                self.req_header._minor == 1 and rs is None and \
                (self.resp_mode == M_RAW or self.resp_mode == M_NONE):
            # Forward the received head unchanged. When it lies in the bytes
            # being parsed, hold it back: body bytes that follow it in the
            # same buffer join it and everything goes out in one write.
            if w.head_buf is w.data and self.resp_mode == M_RAW and self.eng.h_resp_body is None:
                self.pend_data = w.data
                self.pend_off = m.msg_start
                self.pend_len = m.head_len
            elif m.msg_start == 0 and m.head_len == PyBytes_GET_SIZE(w.head_buf):
                self._write_ds(w.head_buf)
            else:
                self._write_ds(PyBytes_FromStringAndSize(w.head_base + m.msg_start, m.head_len))
        else:
            if rs is not None:
                reason = rs._reason
            else:
                reason = PyBytes_FromStringAndSize(w.head_base + m.reason.off, m.reason.len)
            upgrade_lines = b""
            if self.upgrading:
                ui = sw_find(base, hh, nh, b"upgrade", 7, 0)
                if ui >= 0:
                    upgrade_lines = b"Connection: upgrade\r\nUpgrade: " + PyBytes_FromStringAndSize(
                        base + hh[ui].value.off, hh[ui].value.len) + _CRLF
            need = 64 + len(reason) + sw_fields_size(hh, nh) + 64 + len(upgrade_lines)
            out = _need_scratch(need)
            o = out
            o += sw_write_status_line(o, status, PyBytes_AS_STRING(reason), len(reason))
            o += sw_write_fields(o, base, hh, nh, drop)
            if self.resp_mode == M_CHUNKED:
                memcpy(o, b"Transfer-Encoding: chunked\r\n", 28); o += 28
            if self.upgrading:
                memcpy(o, PyBytes_AS_STRING(upgrade_lines), len(upgrade_lines)); o += len(upgrade_lines)
            elif not keep:
                memcpy(o, b"Connection: close\r\n", 19); o += 19
            elif self.req_header._minor == 0:
                memcpy(o, b"Connection: keep-alive\r\n", 24); o += 24
            o[0] = b'\r'; o[1] = b'\n'; o += 2
            self._head_out(PyBytes_FromStringAndSize(out, o - out), w)
        self.resp_started = True

    cdef bytes _resp_head_from_items(self, ResponseHeader rs, bint keep):
        cdef list items = rs.headers._items
        cdef set named = set()
        for n, v in items:
            if (<bytes>n).lower() == b"connection":
                for tok in (<bytes>v).split(b","):
                    tok = tok.strip().lower()
                    if tok and tok not in (b"content-length", b"transfer-encoding"):
                        named.add(tok)
        parts = [b"HTTP/1.1 %d " % rs.status, rs._reason, _CRLF]
        for n, v in items:
            ln = (<bytes>n).lower()
            if ln in _HOP or ln in named:
                continue
            if ln == b"content-length" and (self.resp_mode == M_CHUNKED or self.resp_mode == M_CLOSE):
                continue
            parts.append(n + b": " + v + _CRLF)
        if self.resp_mode == M_CHUNKED:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        if self.upgrading:
            i = rs.headers._find(b"upgrade", 0)
            if i >= 0:
                parts.append(b"Connection: upgrade\r\nUpgrade: " + rs.headers._value_at(i) + _CRLF)
        elif not keep:
            parts.append(b"Connection: close\r\n")
        elif self.req_header._minor == 0:
            parts.append(b"Connection: keep-alive\r\n")
        parts.append(_CRLF)
        return b"".join(parts)

    cdef int _on_resp_body(self, object chunk) except -1:
        cdef object r
        if self.eng.h_resp_body is not None:
            self.pending_chunk = chunk
            self.pending_end = False
            r = self._call(self.eng.h_resp_body, (self, chunk, False, self.ctx), S_RESP_BODY_DONE)
            if r is _FAILED:
                return 0
            if r is _PENDING:
                if self.us is not None:
                    self.us.blocked = True
                return 0
            self.pending_chunk = None
            if r is not None:
                chunk = r
        self._resp_body_out(chunk)

    cdef int _resp_body_out(self, object chunk) except -1:
        cdef char hdr[24]
        cdef size_t k
        if chunk is None or self.resp_mode == M_NONE or self.ds_gone:
            return 0
        if isinstance(chunk, str):
            chunk = (<str>chunk).encode("utf-8")
        elif not isinstance(chunk, (bytes, memoryview, bytearray)):
            # only a response_body_filter can hand over anything else
            self._fail(self._bad_return("response_body_filter", chunk, "bytes, str or None"))
            return 0
        if not chunk:
            return 0
        self.response_body_bytes += len(chunk)
        if self.resp_mode == M_CHUNKED:
            k = sw_chunk_header(hdr, len(chunk))
            self.ds.t_writev((PyBytes_FromStringAndSize(hdr, k), chunk, _CRLF))
        else:
            self.ds.t_write(chunk)

    cdef int _on_resp_end(self) except -1:
        cdef object r
        if self.finished or self.resp_done:
            return 0
        if self.eng.h_resp_body is not None:
            self.pending_chunk = None
            self.pending_end = True
            r = self._call(self.eng.h_resp_body, (self, b"", True, self.ctx), S_RESP_BODY_DONE)
            if r is _FAILED:
                return 0
            if r is _PENDING:
                if self.us is not None:
                    self.us.blocked = True
                return 0
            self.pending_end = False
            if r:
                self._resp_body_out(r)
        self._resp_end_done()

    cdef int _keep_resp_trailers(self, _Wire w) except -1:
        """At the end of a chunked response (before response_body_filter's
        last call): keep its trailer fields. They go to the client only when
        its response is chunked too (not to HTTP/1.0 clients)."""
        cdef bint keep = True
        if w.m.chunked:
            self.resp_tail = _last_chunk(w, self.resp.headers if self.resp is not None else None, &keep)
            if not keep and self.us is not None:
                self.us.reusable = False  # the parser takes nothing after it
        return 0

    cdef int _resp_end_done(self) except -1:
        if self.finished or self.resp_done:
            return 0
        self._flush_pending()
        if self.resp_mode == M_CHUNKED and not self.ds_gone:
            self._write_ds(self.resp_tail if self.resp_tail is not None else _LAST_CHUNK)
        self.resp_done = True
        if not self.req_body_done and self.us is not None:
            # The upstream answered before reading the whole request body:
            # its connection is not reused (the client's is kept only when
            # the response head said so; see _body_allows_keep).
            self.us.reusable = False
        self._release_upstream(True)
        self._finish()

    cdef int _release_upstream(self, bint reuse) except -1:
        cdef _Upstream u = self.us
        if u is None:
            return 0
        self.us = None
        u.s = None
        if u.read_pause & (R_PEER_FULL | R_BUFFERED):
            u._resume_read(R_PEER_FULL | R_BUFFERED)
        u.blocked = False
        if reuse and u.reusable and not u.closed and u.w.unread() == 0:
            self.eng.pool.put(u)
        else:
            u._close()

    cdef int _head_out(self, bytes head, _Wire w) except -1:
        """Send a rebuilt response head, or hold it back so that body bytes
        following it in the same buffer go out in the same (vectored) write."""
        if w.head_buf is w.data and self.resp_mode == M_RAW and self.eng.h_resp_body is None:
            self.pend_prefix = head
            self.pend_data = w.data
            self.pend_off = w.m.msg_start + w.m.head_len
            self.pend_len = 0
        else:
            self._write_ds(head)

    cdef int _start_tunnel(self) except -1:
        """The upstream switched protocols (101): from now on bytes are
        copied both ways until either side closes."""
        cdef _Upstream u = self.us
        cdef _Downstream ds = self.ds
        cdef _Wire w
        if u is None or ds is None or self.ds_gone or ds.closed:
            self._fail(Error("client went away during the protocol switch", status=400, source=DOWNSTREAM))
            return 0
        self._flush_pending()
        self.tunneling = True
        u.tunnel = True
        ds.tunnel = True
        u.deadline = 0.0
        u.dl_kind = DL_NONE
        if ds.dl_kind != DL_TOTAL:
            ds.deadline = 0.0
            ds.dl_kind = DL_NONE
        w = u.w
        if w.data is not None and w.pos < w.dlen:
            ds.t_write(w.data[w.pos:])
        w = ds.w
        if w is not None and not w.carrying and w.data is not None and w.pos < w.dlen:
            u.t_write(w.data[w.pos:])
            w.pos = w.dlen
        ds._resume_read(R_BUFFERED)

    cdef int _flush_pending(self) except -1:
        """Write the held-back head and slice of the upstream's bytes (see
        _send_resp_head)."""
        cdef object d = self.pend_data
        cdef object prefix = self.pend_prefix
        if d is None:
            return 0
        self.pend_data = None
        self.pend_prefix = None
        if self.ds is not None and not self.ds_gone and not self.ds.closed:
            # One vectored write of the head and the slice, no copy.
            self.ds.t_send(prefix, d, <Py_ssize_t>self.pend_off, <Py_ssize_t>self.pend_len)

    cdef int _write_ds(self, object data) except -1:
        if self.ds is not None and not self.ds_gone and not self.ds.closed:
            self.ds.t_write(data)

    # --- failures -------------------------------------------------------------

    cdef int _fail(self, object err) except -1:
        cdef _Engine eng = self.eng
        cdef object r
        if self.finished:
            return 0
        if self.error is None or self.error is not err:
            self.error = err
        if self.reuse_failed:
            pass  # logged once it is decided whether it is sent again
        elif isinstance(err, Error) and eng.log.isEnabledFor(logging.WARNING) and \
                (<object>err).source != INTERNAL:
            self._log_failure(err)
        self._flush_pending()
        self._release_upstream(False)
        if self.ds is not None:
            self.ds.blocked = True
        if self.hook_task is not None:
            t = self.hook_task
            self.hook_task = None
            t.remove_done_callback(self._hook_done)
            t.cancel()
        if self.ds_gone:
            self._finish()
            return 0
        if eng.h_err_proxy is not None and self.up_head_sent:
            r = self._call(eng.h_err_proxy, (self, self.peer, err, self.ctx, self.ds.nreq > 1),
                           S_ERR_PROXY_DONE)
            if r is _PENDING or r is _FAILED:
                return 0
            self._advance(S_ERR_PROXY_DONE, r)
        else:
            self._advance(S_ERR_PROXY_DONE, None)

    cdef int _log_failure(self, object err) except -1:
        self.eng.gate.emit(logging.WARNING, "failed request", "sluiceway: %d for %s %s from %s: %s",
                           (err.status, self.req_header._method, self.req_header.uri,
                            _fmt_addr(self.client_addr), err.message))
        return 0

    cdef int _replay(self) except -1:
        """Send the request again on a new connection (after a pooled one
        died before answering), without running the hooks again."""
        cdef _Engine eng = self.eng
        eng.replayed += 1
        if eng.log.isEnabledFor(logging.DEBUG):
            eng.log.debug("sluiceway: %s; sending it again on a new connection (%s %s from %s)",
                          self.error.message, self.req_header._method,
                          self.req_header.uri, _fmt_addr(self.client_addr))
        self.error = None
        self.retried_reused = True
        self.replaying = True
        self.up_head_sent = False
        # (the client connection stays blocked: more body waits for the new one)
        self._connect(True)
        return 0

    cdef object _bad_return(self, str hook, object value, str expected):
        """Log a hook's wrong return value (its name, the value, what was
        expected) and return the Error to answer with. Logged here because
        an INTERNAL error is not logged by _fail."""
        cdef str shown = repr(value)
        if len(shown) > 120:
            shown = shown[:117] + "..."
        msg = (f"{type(self.eng.app).__name__}.{hook} returned {shown} "
               f"({type(value).__name__}); it must return {expected}")
        self.eng.log.error("sluiceway: %s, for %s %s", msg, self.req_header._method,
                           self.req_header.uri)
        return Error(msg, status=500, source=INTERNAL)

    cdef int _us_lost(self, object exc) except -1:
        """The upstream connection closed under this request."""
        cdef _Upstream u = self.us
        if self.finished or u is None:
            return 0
        if self.tunneling:
            # The upstream ended the tunnel: a normal end.
            self.resp_done = True
            self.client_keep = False
            self._release_upstream(False)
            self._finish()
            return 0
        if self.resp_started and self.resp_mode == M_CLOSE and not self.resp_done:
            # Close-delimited body: handled by eof_received/finish.
            pass
        if not u.got_bytes and self.upstream_reused and not self.retried_reused and \
                not self.resp_started:
            # A pooled connection the peer had closed (before or while we
            # sent the request). Whether the origin acted on the request is
            # unknown: it is sent once more on a new connection only when
            # its method is idempotent, or error_while_proxy marks the error
            # retryable (see S_ERR_PROXY_DONE), and it can be sent as it was
            # (the body sent so far was kept, no body filter is pending).
            self.reuse_failed = True
            self.can_replay = (not self.req_has_body or self.replay is not None) and \
                self.hook_task is None
            self._fail(Error(f"upstream {self.peer} closed a reused connection without answering"
                             + (f" ({exc})" if exc is not None else ""), status=502,
                             source=UPSTREAM, retryable=self.req_header._method in _IDEMPOTENT))
            return 0
        if self.resp_started:
            what = "closed the connection before the response was complete"
        elif u.got_bytes:
            what = "closed the connection in the middle of the response head"
        else:
            what = "closed the connection without sending a response"
        if exc is not None:
            what += f" ({exc})"
        self._fail(Error(f"upstream {self.peer} {what}", status=502, source=UPSTREAM))

    cdef int _ds_lost(self, object exc) except -1:
        """The client went away."""
        if self.finished:
            return 0
        self.ds_gone = True
        self.client_keep = False
        if self.tunneling and exc is None:
            self.resp_done = True  # the client ended the tunnel: a normal end
        elif self.error is None:
            self.error = Error("client closed the connection before the response was complete"
                               + (f" ({exc})" if exc is not None else ""),
                               status=400, source=DOWNSTREAM)
        self._release_upstream(False)
        if self.hook_task is not None:
            self.hook_task.cancel()
            return 0  # _hook_done finishes
        self._finish()

    # --- end --------------------------------------------------------------------

    cdef int _finish(self) except -1:
        cdef object r
        if self.finished:
            return 0
        self.finished = True
        # The clock itself, not the batch's reading: an answer written by
        # the proxy within the batch that brought the request would
        # otherwise last 0 ms.
        self.t_end = sw_clock_now()
        if self.us is not None:
            self._release_upstream(self.resp_done and self.req_body_done)
        if self.eng.h_logging is not None:
            r = self._call(self.eng.h_logging, (self, self.error, self.ctx), S_LOG_DONE)
            if r is _PENDING or r is _FAILED:
                return 0  # _hook_done / _hook_failed call _final
        self._final()

    cdef int _access_line(self) except -1:
        try:
            self.eng.alog.info('%s "%s %s HTTP/%s" %d %d %.3fms upstream=%s%s',
                               _fmt_addr(self.client_addr), self.req_header._method,
                               self.req_header.uri, self.req_header.version, self.status,
                               self.response_body_bytes, (self.t_end - self.t_start) * 1000.0,
                               self.peer, " reused" if self.upstream_reused else "")
        except Exception:
            self.eng.log.exception("sluiceway: could not write the access log line")

    cdef int _final(self) except -1:
        cdef _Downstream ds = self.ds
        cdef bint keep, pending
        self.finished = True
        if not self.counted_out:
            self.counted_out = True
            self.eng.inflight -= 1
        if self.eng.access_log and self.eng.alog.isEnabledFor(logging.INFO):
            self._access_line()
        keep = self.client_keep and self.resp_done and not self.ds_gone
        # The client may still be sending the body: the connection is kept
        # (and the rest dropped) only as the response head announced.
        pending = self.req_has_body and not self.req_end_seen
        if pending and not self._body_allows_keep():
            keep = False
        self.ds = None
        self.resp = None
        if ds is not None and ds.cur is self:
            if not self.req_has_body and not self.req_body_done:
                # The END of a bodyless request is still in the parser: skip it.
                ds.discard_body = True
            # A client that timed out is not waited for any longer.
            ds._request_done(keep, pending and not (isinstance(self.error, Error) and
                                                    (<object>self.error).status == 408),
                             pending and keep)
