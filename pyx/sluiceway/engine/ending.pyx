# Included by _engine.pyx: how a request ends: failures, retries, logging,
# and handing the client's end back.
#
# Retries. A request whose upstream attempt fails before any response byte
# can be sent again, by one rule: the Error's ``retryable`` decides (the
# hooks may change it: fail_to_connect for a failed connect,
# error_while_proxy once the request went upstream), and the request must
# still be whole (a body sent is kept up to retry_buffer_bytes, until the
# first response byte, in ``Session.replay``). The engine sets ``retryable``
# to what is safe: a failed connect sent nothing (always); a connection
# that broke, was reset or timed out after the request went on may have been
# acted on, so only idempotent methods (RFC 9110 9.2.2). Then:
#   - a pooled connection the peer had closed (the keep-alive race) is
#     replaced by a new connection to the same peer, once, without asking
#     upstream_peer (``_replay``);
#   - any other failure asks upstream_peer again, for at most max_retries
#     times per request (``_retry``); ``session.tried_peers`` lists the
#     peers that failed, so it can choose another. The hooks between
#     upstream_peer and sending (connected_to_upstream,
#     upstream_request_filter) ran once and do not run again: the request
#     goes as it went the first time.
# A peer made by a LoadBalancer (``HttpPeer.balancer``) is told each
# outcome (``_peer_result``): the passive health checks.

cdef int _fail_request(Session s, object err) except -1:
    """The request failed with ``err`` (an Error): release the upstream,
    stop a hook in progress, then error_while_proxy (when the request went
    upstream) and fail_to_proxy decide what happens (S_ERR_PROXY_DONE)."""
    cdef _Engine eng = s.eng
    cdef object r, h
    if s.finished:
        return 0
    if s.error is None or s.error is not err:
        s.error = err
    if s.reuse_failed or s.lost_early:
        pass  # logged once it is decided whether it is sent again
    elif isinstance(err, Error) and eng.log.isEnabledFor(logging.WARNING) and \
            (<object>err).source != INTERNAL:
        _log_failure(s, err)
    _flush_held(s)
    s._release_origin(False)
    if s.client is not None:
        s.client.hold()
    if s.hook_task is not None:
        t = s.hook_task
        s.hook_task = None
        t.remove_done_callback(s._hook_done)
        t.cancel()
    if s.client_gone:
        return s._finish()
    h = _hook(eng, H_ERR_PROXY)
    if h is not None and s.up_head_sent:
        r = _hook_call(s, h, (s, s.peer, err, s.ctx, s.client.served() > 1), S_ERR_PROXY_DONE)
        if r is _PENDING or r is _FAILED:
            return 0
        return s._advance(S_ERR_PROXY_DONE, r)
    return s._advance(S_ERR_PROXY_DONE, None)


cdef int _origin_lost(Session s, object exc) except -1:
    """The upstream connection closed under the request."""
    cdef _Side o = s.origin
    if s.finished or o is None:
        return 0
    if s.tunneling:
        # The upstream ended the tunnel: a normal end.
        s.resp_done = True
        s.client_keep = False
        s._release_origin(False)
        return s._finish()
    if not o.answered() and s.upstream_reused and not s.retried_reused and not s.resp_started:
        # A pooled connection the peer had closed (before or while we sent
        # the request). Whether the origin acted on the request is unknown:
        # it is sent once more on a new connection only when its method is
        # idempotent, or error_while_proxy marks the error retryable (see
        # S_ERR_PROXY_DONE), and it can be sent as it was (the body sent so
        # far was kept, no body filter is waiting).
        s.reuse_failed = True
        s.can_replay = (not s.req_has_body or s.replay is not None) and s.hook_task is None
        return s._fail(Error(f"upstream {s.peer} closed a reused connection without answering"
                             + (f" ({_exc_text(exc)})" if exc is not None else ""), status=502,
                             source=UPSTREAM, retryable=s.req_header._method in _IDEMPOTENT))
    if not o.answered() and not s.resp_started:
        err = Error(f"upstream {s.peer} closed the connection without sending a response"
                    + (f" ({_exc_text(exc)}){_tls_alert_hint(exc)}" if exc is not None else ""),
                    status=502, source=UPSTREAM)
        _lost_early(s, err)
        return s._fail(err)
    # (nothing answered and nothing sent to the client went above)
    if s.resp_started:
        what = "closed the connection before the response was complete"
    else:
        what = "closed the connection in the middle of the response head"
    if exc is not None:
        what += f" ({_exc_text(exc)})"
    return s._fail(Error(f"upstream {s.peer} {what}", status=502, source=UPSTREAM))


cdef int _lost_early(Session s, object err) except -1:
    """The upstream connection of ``s`` broke, was reset or timed out before
    any response byte (``err``): the request may go to upstream_peer again
    (S_ERR_PROXY_DONE decides, after error_while_proxy). It is safe when
    nothing was sent, or the method is idempotent."""
    s.lost_early = True
    s.can_replay = (not s.req_has_body or s.replay is not None) and s.hook_task is None
    err.retryable = not s.up_head_sent or s.req_header._method in _IDEMPOTENT
    return 0


cdef int _retry(Session s) except -1:
    """Ask upstream_peer again (``session.tried_peers`` ends with the peer
    that failed), then send the request as it was sent before."""
    cdef _Engine eng = s.eng
    s.retries += 1
    eng.retried += 1
    if s.tried is None:
        s.tried = []
    s.tried.append(s.peer)
    if eng.log.isEnabledFor(logging.DEBUG):
        eng.log.debug("sluiceway: %s; asking upstream_peer again (retry %d of %d) for %s %s "
                      "from %s", s.error.message, s.retries, eng.cfg.max_retries,
                      s.req_header._method, s.req_header.uri, _fmt_addr(s.client_addr))
    s.error = None
    if s.up_head_sent:
        s.replaying = True   # the request goes again as it went (hooks already ran)
        s.up_head_sent = False
    return _run_stages(s, S_PEER, None)


cdef int _peer_result(Session s, bint ok) except -1:
    """Tell a LoadBalancer's peer how the attempt went (passive health)."""
    cdef HttpPeer p = s.peer if isinstance(s.peer, HttpPeer) else None
    if p is None or p.balancer is None:
        return 0
    try:
        p.balancer.report(p.backend, ok)
    except Exception:
        s.eng.log.exception("sluiceway: %r.report() failed", p.balancer)
    return 0


cdef int _replay(Session s) except -1:
    """Send the request again on a new connection (after a pooled one died
    before answering), without running the hooks again. The client's end
    stays held: more body waits for the new connection."""
    cdef _Engine eng = s.eng
    eng.replayed += 1
    if eng.log.isEnabledFor(logging.DEBUG):
        eng.log.debug("sluiceway: %s; sending it again on a new connection (%s %s from %s)",
                      s.error.message, s.req_header._method, s.req_header.uri,
                      _fmt_addr(s.client_addr))
    s.error = None
    s.retried_reused = True
    s.replaying = True
    s.up_head_sent = False
    return _connect(s, True)


cdef int _log_failure(Session s, object err) except -1:
    if not _suppressed(s, err):
        s.eng.gate.emit(logging.WARNING, "failed request", "sluiceway: %d for %s: %s",
                        (err.status, _request_summary(s), err.message))
    return 0


cdef bint _suppressed(Session s, object err) except -1:
    """Whether the app's ``suppress_error_log`` hook says not to log this
    request's error (a hook that raises does not suppress)."""
    if not _has(s.eng, H_SUPPRESS_ERROR_LOG):
        return False
    try:
        return bool(_hook(s.eng, H_SUPPRESS_ERROR_LOG)(s, s.ctx, err))
    except Exception:
        s.eng.log.exception("sluiceway: hook suppress_error_log failed")
        return False


cdef str _request_summary(Session s):
    """How error lines name the request: the app's ``request_summary``, or
    its method, target and client."""
    if _has(s.eng, H_REQUEST_SUMMARY):
        try:
            return str(_hook(s.eng, H_REQUEST_SUMMARY)(s, s.ctx))
        except Exception:
            s.eng.log.exception("sluiceway: hook request_summary failed")
    return f"{s.req_header._method} {s.req_header.uri} from {_fmt_addr(s.client_addr)}"


cdef object _bad_hook_return(Session s, str hook, object value, str expected):
    """Log a hook's wrong return value (its name, the value, what was
    expected) and return the Error to answer with. Logged here because an
    INTERNAL error is not logged by _fail_request."""
    cdef str shown = repr(value)
    if len(shown) > 120:
        shown = shown[:117] + "..."
    msg = (f"{type(s.eng.app).__name__}.{hook} returned {shown} "
           f"({type(value).__name__}); it must return {expected}")
    s.eng.log.error("sluiceway: %s, for %s %s", msg, s.req_header._method, s.req_header.uri)
    return Error(msg, status=500, source=INTERNAL)


cdef int _finish_request(Session s) except -1:
    """The request is over: release the upstream, then the logging hook."""
    cdef object r, h
    if s.finished:
        return 0
    s.finished = True
    if s.rate_timer is not None:
        s.rate_timer.cancel()
        s.rate_timer = None
    # The clock itself, not the batch's reading: an answer written by the
    # proxy within the batch that brought the request would otherwise last
    # 0 ms.
    s.t_end = sw_clock_now()
    if s.origin is not None:
        s._release_origin(s.resp_done and s.req_body_done)
    if s.load_held != NULL:
        s._load_leave()
    if _has(s.eng, H_LOGGING):
        r = _hook_call(s, _hook(s.eng, H_LOGGING), (s, s.error, s.ctx), S_LOG_DONE)
        if r is _PENDING or r is _FAILED:
            return 0  # _hook_finished / _hook_failed call _final_request
    return _final_request(s)


cdef int _final_request(Session s) except -1:
    """After logging: the access line, and the client's end back (kept for
    the next request, or closed)."""
    cdef _Side client = s.client
    cdef bint keep, pending
    s.finished = True
    if not s.counted_out:
        s.counted_out = True
        s.eng.inflight -= 1
    if s.eng.mslab != NULL:
        _m_request(s)
    if s.span is not None:
        span, s.span = s.span, None
        try:
            s.eng.tracer.end(s, span)
        except Exception:
            s.eng.log.exception("sluiceway: ending the request's span failed")
    if s.eng.cfg.access_log:
        if s.eng.alog_writer is not None:
            _access_record(s)
        elif s.eng.alog.isEnabledFor(logging.INFO):
            _access_line(s)
    keep = s.client_keep and s.resp_done and not s.client_gone
    # The client may still be sending the body: the connection is kept
    # (and the rest dropped) only as the response head announced.
    pending = s.req_has_body and not s.req_end_seen
    if pending and not s._body_allows_keep():
        keep = False
    s.client = None
    s.resp = None
    s.resp_r = None
    if client is not None and not s.client_gone:
        # A client that timed out is not waited for any longer.
        client.request_done(keep, pending and not (isinstance(s.error, Error) and
                                                   (<object>s.error).status == 408),
                            pending and keep)
    return 0


cdef int _access_line(Session s) except -1:
    try:
        s.eng.alog.info('%s "%s %s HTTP/%s" %d %d %.3fms upstream=%s%s',
                        _fmt_addr(s.client_addr), s.req_header._method, s.req_header.uri,
                        s.req_header.version, s.status, s.response_body_bytes,
                        (s.t_end - s.t_start) * 1000.0, s.peer,
                        " reused" if s.upstream_reused else "")
    except Exception:
        s.eng.log.exception("sluiceway: could not write the access log line")
    return 0
