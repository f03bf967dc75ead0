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
    """Connect to ``peer`` for ``s`` (plain: on the engine's own I/O; TLS:
    an asyncio transport), within the connect timeout; on failure,
    ``fail_to_connect`` decides about a retry."""
    cdef _Engine eng = s.eng
    cdef _Upstream u = _Upstream(eng, peer)
    timeout = peer.connect_timeout if peer.connect_timeout is not None \
        else eng.cfg.upstream_connect_timeout_seconds
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
    if err is not None:
        err.kind = "connect"   # counted as such (sluiceway_errors_total)
        eng.ups.discard(u)
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
        s._fail(Error(f"upstream {peer} closed the connection at once", status=502,
                      source=UPSTREAM))
        return
    if peer.proxy_protocol:
        # The header names this client: the connection is its alone.
        u.reusable = False
        u.t_write(_pp_header_for(s, peer.proxy_protocol))
    s._bind(u)
    s._advance(S_CONNECTED, None)


cdef object _numeric_addr(str host, int port):
    """(family, address) when ``host`` is a numeric IP address, else None."""
    for fam in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(fam, host)
        except OSError:
            continue
        return fam, (host, port)
    return None


async def _connect_plain(_Engine eng, _Upstream u, HttpPeer peer):
    """Connect ``u`` to a plain TCP or Unix socket peer on the engine's own
    I/O (the loop's sock_connect does the waiting; names are resolved with
    the loop's getaddrinfo and tried in order)."""
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
        u._made()
        return
    raise last
