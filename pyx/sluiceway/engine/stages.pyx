# Included by _engine.pyx: the stages a request walks through.
#
#   S_NEW_CTX -> S_EARLY -> S_REQ_FILTER -> S_REQ_FILTER_DONE -> S_PEER
#     -> S_PEER_DONE -> (pool, or connect.pyx) -> S_CONNECTED -> S_UP_REQ
#     -> S_SEND (head upstream; the request body streams through its leg)
#   response head -> S_UP_RESP -> S_RESP -> S_RESP_SEND (head to the client;
#     the response body streams through its leg) -> end -> logging
#   failures: S_FAIL_CONNECT_DONE, S_ERR_PROXY_DONE, S_FAIL_PROXY_DONE
#
# Each stage that calls a hook goes on at once when the hook returns (or is
# a coroutine that finishes on its first step); a hook that suspends
# resumes the machine at the next stage from its Task's done callback.


cdef int _run_stages(Session s, int stage, object value) except -1:
    cdef _Engine eng = s.eng
    cdef object r, h
    while True:
        if s.finished:
            return 0
        if stage == S_NEW_CTX:
            if _has(eng, H_NEW_CTX):
                r = _hook_call(s, _hook(eng, H_NEW_CTX), (), S_EARLY)
                if r is _PENDING or r is _FAILED:
                    return 0
                value = r
            stage = S_EARLY
        elif stage == S_EARLY:
            if s.ctx is None and value is not None:
                s.ctx = value
            if _has(eng, H_EARLY):
                r = _hook_call_std(s, _hook(eng, H_EARLY), S_REQ_FILTER)
                if r is _PENDING or r is _FAILED:
                    return 0
            stage = S_REQ_FILTER
        elif stage == S_REQ_FILTER:
            if s.resp_started:
                return s._finish()
            if eng.cfg.max_request_body_bytes > 0 and s.req_header.has_cl and \
                    s.req_header.content_length > <unsigned long long>eng.cfg.max_request_body_bytes:
                return s._fail(Error(f"request body of {s.req_header.content_length} bytes is over "
                                     f"max_body_size ({eng.cfg.max_request_body_bytes})",
                                     status=413, source=DOWNSTREAM))
            value = False
            if _has(eng, H_REQ_FILTER):
                r = _hook_call_std(s, _hook(eng, H_REQ_FILTER), S_REQ_FILTER_DONE)
                if r is _PENDING or r is _FAILED:
                    return 0
                value = r
            stage = S_REQ_FILTER_DONE
        elif stage == S_REQ_FILTER_DONE:
            if value or s.resp_started:
                if not s.resp_started:
                    eng.log.error("sluiceway: request_filter returned True without writing a "
                                  "response (call session.respond() first); answering 500")
                    s.respond_error(500)
                return s._finish()
            stage = S_PEER
        elif stage == S_PEER:
            r = _hook_call_std(s, _hook(eng, H_PEER), S_PEER_DONE)
            if r is _PENDING or r is _FAILED:
                return 0
            value = r
            stage = S_PEER_DONE
        elif stage == S_PEER_DONE:
            if s.resp_started:
                return s._finish()  # the hook answered itself
            if not isinstance(value, HttpPeer):
                return s._fail(s._bad_return("upstream_peer", value,
                                             'an HttpPeer, e.g. HttpPeer(("127.0.0.1", 8000))'))
            if s.load_held != NULL or (<HttpPeer>value).load_cell != NULL:
                s._load_move(<HttpPeer>value)   # before the old peer may go
            s.peer = value
            return _connect(s, False)
        elif stage == S_CONNECTED:
            s.t_connected = _now()
            if s.replaying:
                stage = S_SEND  # hooks already ran for this request
                continue
            if _has(eng, H_CONNECTED):
                r = _hook_call(s, _hook(eng, H_CONNECTED), (s, s.upstream_reused, s.peer, s.ctx), S_UP_REQ)
                if r is _PENDING or r is _FAILED:
                    return 0
            stage = S_UP_REQ
        elif stage == S_UP_REQ:
            if _has(eng, H_UP_REQ):
                r = _hook_call(s, _hook(eng, H_UP_REQ), (s, s.req_header, s.ctx), S_SEND)
                if r is _PENDING or r is _FAILED:
                    return 0
            stage = S_SEND
        elif stage == S_SEND:
            if s.resp_started:
                # A hook answered itself: nothing was sent on the connection,
                # so it goes back to the pool.
                s._release_origin(True)
                return s._finish()
            if s.origin is None or not s.origin.is_open():
                # The connection died while a hook ran.
                return _origin_lost(s, None)
            return _send_request(s)
        elif stage == S_REQ_BODY_DONE:
            return s._req_leg().resumed(s, value)
        elif stage == S_UP_RESP:
            if _has(eng, H_UP_RESP):
                r = _hook_call(s, _hook(eng, H_UP_RESP), (s, s.resp, s.ctx), S_RESP)
                if r is _PENDING or r is _FAILED:
                    return 0
            stage = S_RESP
        elif stage == S_RESP:
            if _has(eng, H_RESP):
                r = _hook_call(s, _hook(eng, H_RESP), (s, s.resp, s.ctx), S_RESP_SEND)
                if r is _PENDING or r is _FAILED:
                    return 0
            stage = S_RESP_SEND
        elif stage == S_RESP_SEND:
            if s.resp_started:
                # A response hook answered itself: drop the upstream's
                # response (its connection is not reused).
                if s.origin is not None:
                    s.origin.spoil()
                s.resp_done = True
                s._release_origin(False)
                return s._finish()
            _send_response_head(s)
            if s.origin is not None and not s.finished:
                s.origin.go_on()
            return 0
        elif stage == S_RESP_BODY_DONE:
            return s._resp_leg().resumed(s, value)
        elif stage == S_FAIL_CONNECT_DONE:
            if isinstance(value, Error):
                s.error = value
            elif _has(eng, H_FAIL_CONNECT):
                s._bad_return("fail_to_connect", value, "the Error to continue with "
                              "(the one it was given, by default); going on with that one")
            if isinstance(s.error, Error) and s.error.retryable and s.retries < eng.cfg.max_retries:
                s.retries += 1
                s.error = None
                stage = S_PEER
                continue
            return s._fail(s.error)
        elif stage == S_ERR_PROXY_DONE:
            if isinstance(value, Error):
                s.error = value
            elif _has(eng, H_ERR_PROXY) and s.up_head_sent:
                s._bad_return("error_while_proxy", value, "the Error to continue with "
                              "(the one it was given, by default); going on with that one")
            if s.reuse_failed:
                s.reuse_failed = False
                if isinstance(s.error, Error) and (<object>s.error).retryable and \
                        s.can_replay and not s.client_gone:
                    return _replay(s)
                if isinstance(s.error, Error) and eng.log.isEnabledFor(logging.WARNING):
                    _log_failure(s, s.error)
            # then fail_to_proxy decides the answer
            if _has(eng, H_FAIL_PROXY):
                r = _hook_call(s, _hook(eng, H_FAIL_PROXY), (s, s.error, s.ctx), S_FAIL_PROXY_DONE)
                if r is _PENDING or r is _FAILED:
                    return 0
                value = r
            else:
                value = None
            stage = S_FAIL_PROXY_DONE
        elif stage == S_FAIL_PROXY_DONE:
            return _answer_failure(s, value)
        elif stage == S_LOG_DONE:
            return s._final()
        else:
            raise AssertionError(f"unknown session stage {stage}")


cdef int _send_request(Session s) except -1:
    """The request head goes upstream; then the body (what a hook already
    read first), or the end of a request without one."""
    cdef bint reframe = _has(s.eng, H_REQ_BODY) and s.req_has_body
    s.up_head_sent = True
    s.origin.send(_request_head(s, reframe))
    if s.replaying:
        return _replay_body(s)
    if s.upstream_reused and not s.retried_reused and s.req_has_body:
        # Keep what is sent (up to REPLAY_MAX) until the first response
        # byte, to send it again if this pooled connection turns out dead.
        s.replay = []
        s.replay_bytes = 0
    if not s.req_has_body:
        s.req_body_done = True
        s.origin.expect_response()
    elif s.expect_100 and not s.sent_100:
        s.sent_100 = True
        s._to_client(_CONTINUE)
    if s.prefetched is not None:
        # Chunks a hook already read go first.
        chunk = b"".join(s.prefetched)
        s.prefetched = None
        s.request_body_bytes -= len(chunk)
        s.on_request_body(chunk)
        if s.finished or s.hook_task is not None:
            return 0  # a suspended body filter resumes in S_REQ_BODY_DONE
    if s.prefetch_end:
        return s.on_request_end(None)
    # Let the client's body (or the end of a bodyless request) through.
    if not s.req_end_seen:
        s.client.go_on()
    return 0


cdef int _replay_body(Session s) except -1:
    """On the new connection of a retry: the body sent before, and its end
    when it had ended."""
    cdef list chunks = s.replay
    s.replay = None
    if chunks:
        for c in chunks:
            s._req_leg().out(s, c)
    if s.req_body_done:
        if s.req_has_body:
            s._req_leg().send_end(s)
        s.origin.expect_response()
    if not s.req_end_seen and not s.client_gone:
        s.client.go_on()
    return 0


cdef int _answer_failure(Session s, object value) except -1:
    """fail_to_proxy decided (``value``: its status, or None without the
    hook): a small error response when none started, else the client
    connection closes (the only way to tell it mid-response)."""
    cdef _Engine eng = s.eng
    if _has(eng, H_FAIL_PROXY) and not isinstance(value, int):
        s._bad_return("fail_to_proxy", value, "an int status (0: no answer); answering with "
                      "the error's status")
        value = getattr(s.error, "status", 500)
    if not s.resp_started:
        status = value if isinstance(value, int) and value >= 100 else getattr(s.error, "status", 500)
        if not _has(eng, H_FAIL_PROXY) or (isinstance(value, int) and value >= 100):
            if not s.client_gone:
                s.client_keep = False
                try:
                    s.respond_error(status)
                except Exception:
                    pass
    elif not s.resp_done and s.client is not None and not s.client_gone:
        s.client_keep = False
        s.client.close(s.req_has_body and not s.req_end_seen)
    s.client_keep = False
    return s._finish()
