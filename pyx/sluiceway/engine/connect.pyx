# Included by _engine.pyx: getting a request its upstream connection.

cdef int _connect(Session s, bint force_new) except -1:
    """Give ``s`` a connection to its peer: an idle one from the pool (then
    on at once), or a new one (a Task: the only one on the common path, and
    only for new connections)."""
    cdef _Upstream u = None
    cdef HttpPeer peer = s.peer
    if not force_new and not peer.proxy_protocol:
        u = s.eng.pool.take(peer.reuse_key)
    if u is not None:
        s.upstream_reused = True
        s._bind(u)
        return s._advance(S_CONNECTED, None)
    s.upstream_reused = False
    s.t_connect = _now()
    s.eng.loop.create_task(_open(s, peer)).add_done_callback(_ignore_result)
    return 0


async def _open(Session s, HttpPeer peer):
    try:
        await _open_connection(s, peer)
    except asyncio.CancelledError:
        raise
    except BaseException as exc:
        s._internal_error(exc)


async def _open_connection(Session s, HttpPeer peer):
    """Connect to ``peer`` for ``s`` on the engine's own I/O (and, for a TLS
    peer, do the handshake on the TLS layer), within the connect timeout; on
    failure, ``fail_to_connect`` decides about a retry."""
    cdef _Engine eng = s.eng
    cdef _Upstream u = _Upstream(eng, peer)
    timeout = peer.connect_timeout if peer.connect_timeout is not None \
        else eng.cfg.upstream_connect_timeout_seconds
    err = None
    try:
        coro = _connect_upstream(eng, u, peer,
                                 _pp_header_for(s, peer.proxy_protocol)
                                 if peer.proxy_protocol and peer.tls else None)
        if timeout and timeout > 0:
            await asyncio.wait_for(coro, timeout)
        else:
            await coro
    except asyncio.CancelledError:
        raise
    except (asyncio.TimeoutError, TimeoutError):
        if u.tls is not None:
            err = Error(f"the TLS handshake with upstream {peer} did not finish within "
                        + (f"{timeout:.3g}s (connect_timeout)" if timeout and timeout > 0 else
                           f"{TLS_HANDSHAKE_TIMEOUT}s (with no connect_timeout)"),
                        status=504, source=UPSTREAM, retryable=True)
        else:
            err = Error(f"connecting to upstream {peer} timed out after {timeout:.3g}s "
                        "(connect_timeout)", status=504, source=UPSTREAM, retryable=True)
    except Exception as exc:
        if u.tls is not None:
            err = Error(_handshake_failure(peer, exc), status=502, source=UPSTREAM,
                        retryable=True)
        elif isinstance(exc, OSError):
            err = Error(f"connecting to upstream {peer} failed: {exc.strerror or exc}",
                        status=502, source=UPSTREAM, retryable=True)
        else:
            err = Error(f"connecting to upstream {peer} failed: {type(exc).__name__}: {exc}",
                        status=502, source=UPSTREAM, retryable=True)
        err.__cause__ = exc
    if err is not None:
        err.kind = "connect"   # counted as such (sluiceway_errors_total)
        eng.ups.discard(u)
        if u.tls is not None and u.tls.offered:
            eng.pool.keep_session(peer.reuse_key, None)   # (the next one starts afresh)
    if s.finished or s.client_gone:
        if err is None:
            eng.pool.put(u)  # nobody waits for it any more
        if not s.finished:
            s._finish()
        return
    if err is not None:
        if eng.log.isEnabledFor(logging.WARNING) and not _suppressed(s, err):
            eng.gate.emit(logging.WARNING, "connect", "sluiceway: %s (for %s)",
                          (err.message, _request_summary(s)))
        s.error = err
        h = _hook(s.eng, H_FAIL_CONNECT)
        if h is not None:
            r = _hook_call(s, h, (s, peer, s.ctx, err), S_FAIL_CONNECT_DONE)
            if r is _PENDING or r is _FAILED:
                return
            s._advance(S_FAIL_CONNECT_DONE, r)
        else:
            s._advance(S_FAIL_CONNECT_DONE, err)
        return
    if u.closed:
        s._fail(Error(f"upstream {peer} closed the connection at once"
                      + (f" ({_exc_text(u.lost_exc)}){_tls_alert_hint(u.lost_exc)}"
                         if u.lost_exc is not None else ""),
                      status=502, source=UPSTREAM))
        return
    if peer.proxy_protocol:
        # The header names this client: the connection is its alone.
        u.reusable = False
        if not peer.tls:                  # (a TLS peer's went before the handshake)
            u.t_write(_pp_header_for(s, peer.proxy_protocol))
    s._bind(u)
    s._advance(S_CONNECTED, None)


async def _connect_upstream(_Engine eng, _Upstream u, HttpPeer peer, bytes pp=None):
    """Connect ``u`` to ``peer``: the socket, then for a TLS peer the
    handshake (preceded by ``pp``, a PROXY protocol header, in the clear);
    ``u`` is open (``_made``) when this returns. On failure or cancellation
    nothing is left open."""
    await _connect_socket(eng, u, peer)
    if pp is not None:
        u.t_write(pp)
    if peer.tls:
        try:
            await _handshake(eng, u, peer)
        except BaseException:
            u.waiter = None
            u.t_abandon()
            raise
    u._made()


async def _handshake(_Engine eng, _Upstream u, HttpPeer peer):
    """The TLS handshake on ``u``'s TLS layer (its end sets ``u.waiter``).
    The connect timeout bounds it; with no connect timeout,
    TLS_HANDSHAKE_TIMEOUT does (as asyncio's default)."""
    fut = eng.loop.create_future()
    u.waiter = fut
    # (sni "" sends none: server_hostname None)
    u.t_start_tls(peer.tls_opts.context, False, peer.sni or None, eng.pool.sessions.get(peer.reuse_key))
    timeout = peer.connect_timeout if peer.connect_timeout is not None \
        else eng.cfg.upstream_connect_timeout_seconds
    if timeout and timeout > 0:
        await fut
    else:
        await asyncio.wait_for(fut, TLS_HANDSHAKE_TIMEOUT)


# Why an upstream's TLS handshake failed, by OpenSSL's reason: what to change.
cdef dict _TLS_HINTS = {
    "WRONG_VERSION_NUMBER": "does the upstream speak TLS on this port? (plain HTTP: tls=False)",
    "RECORD_LAYER_FAILURE": "does the upstream speak TLS on this port? (plain HTTP: tls=False)",
    "UNSUPPORTED_PROTOCOL": "the upstream and this proxy have no TLS version in common",
    "TLSV1_ALERT_PROTOCOL_VERSION": "the upstream and this proxy have no TLS version in common",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "the upstream refused the handshake (no cipher in common, "
                                     "or it wants a client certificate: client_cert)",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the upstream wants a client certificate: pass "
                                         "client_cert and client_key",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the upstream did not accept the client certificate "
                                   "(client_cert): is it issued by a CA the upstream trusts?",
    "TLSV1_ALERT_UNKNOWN_CA": "the upstream does not trust the CA that issued the client "
                              "certificate (client_cert)",
    "NO_APPLICATION_PROTOCOL": "the upstream speaks none of the protocols offered (alpn)",
    "TLSV1_ALERT_NO_APPLICATION_PROTOCOL": "the upstream speaks none of the protocols "
                                           "offered (alpn)",
    "TLSV1_ALERT_UNRECOGNIZED_NAME": "the upstream has no certificate for that name: check sni",
}

# ... and for a certificate that was not accepted, by OpenSSL's verify code.
cdef dict _VERIFY_HINTS = {
    10: "the certificate has expired",
    18: "pass the CA that issued it as ca_file, or verify_cert=False to skip the check",
    19: "pass the CA that issued it as ca_file, or verify_cert=False to skip the check",
    20: "pass the CA that issued it as ca_file, or verify_cert=False to skip the check",
    21: "pass the CA that issued it as ca_file, or verify_cert=False to skip the check",
    62: "set sni to a name the certificate holds",
}


cdef str _tls_alert_hint(object exc):
    """``"; what to change"`` for a TLS alert that ended an upstream
    connection after the handshake (TLS 1.3: a refused client certificate
    is told then), or ``""``."""
    if _SSLERR is None or not isinstance(exc, _SSLERR):
        return ""
    hint = _TLS_HINTS.get(getattr(exc, "reason", None))
    return f"; {hint}" if hint else ""


cdef str _handshake_failure(HttpPeer peer, object exc):
    """The message of a failed TLS handshake with ``peer``: what failed and,
    when known, what to change."""
    hint = None
    if _ssl is not None and isinstance(exc, _ssl.SSLCertVerificationError):
        hint = _VERIFY_HINTS.get(exc.verify_code,
                                 "check ca_file and sni, or verify_cert=False to skip the check")
    elif _ssl is not None and isinstance(exc, _ssl.SSLError):
        hint = _TLS_HINTS.get(getattr(exc, "reason", None))
    msg = f"TLS handshake with upstream {peer} (sni {peer.sni or peer.host!r}) failed: {_tls_reason(exc)}"
    return f"{msg}; {hint}" if hint else msg


cdef object _numeric_addr(str host, int port):
    """(family, address) when ``host`` is a numeric IP address, else None."""
    for fam in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(fam, host)
        except OSError:
            continue
        return fam, (host, port)
    return None


async def _connect_socket(_Engine eng, _Upstream u, HttpPeer peer):
    """Connect ``u``'s socket to ``peer`` (TCP or Unix) and register it on
    the engine's own I/O (the loop's sock_connect does the waiting; names
    are resolved with the loop's getaddrinfo and tried in order)."""
    loop = eng.loop
    if peer.path is not None:
        targets = [(socket.AF_UNIX, peer.path)]
    else:
        t = _numeric_addr(peer.host, peer.port)
        if t is not None:
            targets = [t]
        else:
            infos = await loop.getaddrinfo(peer.host, peer.port, type=socket.SOCK_STREAM)
            if not infos:
                raise OSError(f"{peer.host} resolved to no address")
            targets = [(fam, addr) for fam, _, _, _, addr in infos]
    last = None
    for fam, addr in targets:
        sock = socket.socket(fam, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            if fam != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await loop.sock_connect(sock, addr)
        except BaseException as exc:
            sock.close()
            if not isinstance(exc, OSError):
                raise
            last = exc
            continue
        fd = sock.detach()
        try:
            eng.io.register(u, fd)
        except BaseException:
            sw_io_close(fd)
            raise
        return
    raise last
