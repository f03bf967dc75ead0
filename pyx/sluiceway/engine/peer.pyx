# Included by _engine.pyx: HttpPeer and connecting to it.

# Plain (no TLS, default SNI) peers by the address they were given:
# (host, port, path, reuse_key). See HttpPeer.__init__.
cdef dict _PLAIN_PEERS = {}


@cython.final
cdef class HttpPeer:
    """An upstream to send a request to.

    Args:
        address: ``("host", port)``, ``"host:port"`` or ``"unix:/path"``.
        tls: connect with TLS (``sni`` defaults to the host).
        sni: the TLS server name (also the name the certificate must match).
        verify_cert: check the upstream's certificate (default True).
        ca_file: PEM file of the CAs to trust instead of the system store.
        connect_timeout, read_timeout, write_timeout, idle_timeout: seconds;
            None uses the service's configured value.
        backend, balancer: the ``Backend`` this peer stands for and the
            object told how each attempt on it went: after a failed connect,
            or a connection that broke or timed out before any response
            byte, ``balancer.report(backend, False)``; when a response head
            arrives, ``balancer.report(backend, True)``. ``LoadBalancer.peer``
            sets both (passive health checks); by default None.
        proxy_protocol: 1 or 2 to start each connection with a PROXY
            protocol header of that version naming the client (for an
            upstream behind which the client's address matters: HAProxy,
            nginx's ``proxy_protocol`` listeners, another sluiceway). Such
            a connection carries one client's requests only, so it is not
            pooled. With ``tls=True`` the header goes before the TLS
            handshake, in the clear, as the protocol wants.
        load: a ``BackendLoad`` (``LoadBalancer.load(backend)``) in which
            the proxy counts the requests in flight on this peer: 1 more
            when a request is given this peer, 1 less when it is over
            (answered, failed, timed out, its client gone) or a retry moves
            it to another peer. What ``LeastConnections`` and
            ``PowerOfTwoChoices`` read; None counts nothing.

    Connections are pooled by ``reuse_key`` (address, TLS, SNI and the
    certificate options).
    """

    def __init__(self, address, tls=False, sni=None, *, connect_timeout=None,
                 read_timeout=None, write_timeout=None, idle_timeout=None,
                 verify_cert=True, ca_file=None, proxy_protocol=0, load=None,
                 backend=None, balancer=None):
        cdef str host
        cdef tuple known = None
        cdef bint plain = not tls and sni is None and not proxy_protocol and (
            type(address) is str or (type(address) is tuple and len(address) == 2 and
                                     type(address[0]) is str and type(address[1]) is int))
        self.address = address
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        self.idle_timeout = idle_timeout
        # Both are None unless given (set only then: most peers have neither).
        if balancer is not None:
            if not callable(getattr(balancer, "report", None)):
                raise TypeError(f"HttpPeer balancer must have report(backend, ok), got "
                                f"{balancer!r:.60}")
            self.balancer = balancer
        if backend is not None:
            self.backend = backend
        if load is not None:
            self._count_in(load)
        if plain:
            # A plain peer seen before: its checked fields and the one
            # reuse_key object for it (the pool's lookups then match by
            # identity instead of comparing tuples).
            known = _PLAIN_PEERS.get(address)
            if known is not None:
                self.host, self.port, self.path, self.reuse_key = known
                self.sni = self.host or ""
                return
        if isinstance(address, tuple) and len(address) == 2:
            host, port = address
            if not isinstance(host, str) or not isinstance(port, int) or not (0 < port < 65536):
                raise ValueError(f"HttpPeer address must be (host: str, port: 1..65535), got {address!r}")
            self.host = host
            self.port = port
        elif isinstance(address, str) and address.startswith("unix:"):
            self.path = address[5:]
            if not self.path:
                raise ValueError("HttpPeer address 'unix:' needs a socket path, e.g. 'unix:/run/app.sock'")
        elif isinstance(address, str) and ":" in address:
            host, _, port_s = address.rpartition(":")
            if not port_s.isdigit() or not (0 < int(port_s) < 65536):
                raise ValueError(f"HttpPeer address {address!r}: the port must be 1..65535")
            self.host = host.strip("[]")
            self.port = int(port_s)
        else:
            raise ValueError(f"HttpPeer address must be (host, port), 'host:port' or "
                             f"'unix:/path', got {address!r}")
        self.tls = bool(tls)
        if proxy_protocol not in (0, 1, 2) or isinstance(proxy_protocol, bool):
            raise ValueError(f"HttpPeer proxy_protocol must be 1 or 2 (the PROXY protocol "
                             f"version), or 0 for none; got {proxy_protocol!r}")
        self.proxy_protocol = proxy_protocol
        self.sni = sni if sni is not None else (self.host or "")
        if self.path is not None:
            self.reuse_key = ("unix", self.path)
        else:
            if self.tls:
                self.verify_cert = bool(verify_cert)
                self.ca_file = ca_file
                self.reuse_key = (self.host, self.port, True, self.sni, self.verify_cert, ca_file)
            else:
                self.reuse_key = (self.host, self.port, False, self.sni)
        if self.proxy_protocol:
            self.reuse_key = (self.reuse_key, "proxy_protocol", self.proxy_protocol)
        if plain:
            if len(_PLAIN_PEERS) >= 4096:
                _PLAIN_PEERS.clear()  # many distinct addresses: start over
            _PLAIN_PEERS[address] = (self.host, self.port, self.path, self.reuse_key)

    cdef int _count_in(self, object load) except -1:
        cap = getattr(load, "_capsule", None)
        if cap is None:
            raise TypeError(f"HttpPeer load must be a BackendLoad (from LoadBalancer.load(backend)), "
                            f"not {load!r:.60}")
        self.load_cell = <sw_load *>PyCapsule_GetPointer(cap, SW_LOAD_CAPSULE)
        self.load = load
        return 0

    cdef bytes _host_hdr(self):
        """The Host value for requests that came without one."""
        if self._host_header is None:
            if self.path is not None:
                self._host_header = b"localhost"
            else:
                h = f"[{self.host}]" if ":" in self.host else self.host
                self._host_header = (h if self.port in (80, 443) else f"{h}:{self.port}").encode("idna")
        return self._host_header

    def __repr__(self):
        where = f"unix:{self.path}" if self.path is not None else f"{self.host}:{self.port}"
        return (f"HttpPeer({where}{', tls' if self.tls else ''}"
                f"{f', proxy_protocol={self.proxy_protocol}' if self.proxy_protocol else ''})")

    def __str__(self):
        return f"unix:{self.path}" if self.path is not None else f"{self.host}:{self.port}"


cdef dict _SSL_CONTEXTS = {}

cdef object _ssl_context(bint verify, object ca_file):
    """One client SSLContext per (verify, ca_file), made once (loading
    the trust store per connection would cost milliseconds)."""
    key = (verify, ca_file)
    ctx = _SSL_CONTEXTS.get(key)
    if ctx is None:
        import ssl
        ctx = ssl.create_default_context(cafile=ca_file)
        if not verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        _SSL_CONTEXTS[key] = ctx
    return ctx
