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
        sni: the TLS server name sent (SNI), also the name the certificate
            must hold; ``""`` sends none (then ``verify_hostname=False``
            is needed: there is no name to check). A host that is an IP
            address sends no SNI (TLS has none for addresses) and the
            certificate must hold that address.
        verify_cert: check the upstream's certificate (default True): it
            must chain to a CA of ``ca_file`` or of the system store, and
            hold the name (``verify_hostname``). False checks nothing (a
            warning is logged, once): for tests, not for production.
        verify_hostname: check that the certificate holds ``sni`` (default
            True); False checks the chain only.
        ca_file: PEM file of the CAs to trust instead of the system store.
        client_cert, client_key: PEM files of the certificate (with its
            chain) this proxy presents to an upstream that asks for one
            (mutual TLS), and of its private key; ``client_key`` may be
            left out when ``client_cert`` holds the key too. Read when the
            peer is built (a file that is missing, unreadable, encrypted or
            a key that does not match raises ValueError saying which), once
            per process: a new certificate takes effect on restart or
            reload.
        alpn: the protocols offered by ALPN, e.g. ``["http/1.1"]`` (the
            proxy speaks HTTP/1 upstream, so ``"http/1.1"`` and
            ``"http/1.0"`` only); None offers nothing. What the upstream
            chose is ``session.upstream_tls["alpn"]``.
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

    Connections are pooled by ``reuse_key`` (the address and every TLS
    option above), so a connection is only reused for a peer that would
    have made the same one. A new TLS connection resumes the TLS session of
    the last one made with the same ``reuse_key`` when the upstream allows
    it (``pool_stats()``: ``tls_resumed`` and ``tls_full``).
    """

    def __init__(self, address, tls=False, sni=None, *, connect_timeout=None,
                 read_timeout=None, write_timeout=None, idle_timeout=None,
                 verify_cert=True, ca_file=None, client_cert=None, client_key=None,
                 alpn=None, verify_hostname=True, proxy_protocol=0, load=None,
                 backend=None, balancer=None):
        cdef str host
        cdef tuple known = None
        cdef bint plain = not tls and sni is None and not proxy_protocol and \
            ca_file is None and client_cert is None and client_key is None and alpn is None and (
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
        if sni is not None and not isinstance(sni, str):
            raise TypeError(f"HttpPeer sni must be a str (\"\" sends none), got {sni!r:.60}")
        self.sni = sni if sni is not None else (self.host or "")
        if self.tls:
            self._tls_options(verify_cert, verify_hostname, ca_file, client_cert, client_key,
                              alpn)
        elif (client_cert, client_key, ca_file, alpn) != (None, None, None, None):
            raise ValueError("HttpPeer ca_file, client_cert, client_key and alpn are TLS "
                             "options: pass tls=True too")
        if self.path is not None:
            self.reuse_key = ("unix", self.path)
            if self.tls:
                self.reuse_key = (self.reuse_key, True, self.sni, self.tls_opts)
        elif self.tls:
            # (the options object, one per distinct set, hashes by identity)
            self.reuse_key = (self.host, self.port, True, self.sni, self.tls_opts)
        else:
            self.reuse_key = (self.host, self.port, False, self.sni)
        if self.proxy_protocol:
            self.reuse_key = (self.reuse_key, "proxy_protocol", self.proxy_protocol)
        if plain:
            if len(_PLAIN_PEERS) >= 4096:
                _PLAIN_PEERS.clear()  # many distinct addresses: start over
            _PLAIN_PEERS[address] = (self.host, self.port, self.path, self.reuse_key)

    cdef int _tls_options(self, object verify_cert, object verify_hostname, object ca_file,
                          object client_cert, object client_key, object alpn) except -1:
        """Take the _PeerTls of these options (made the first time, then
        shared by every peer that has them)."""
        global _LAST_TLS
        cdef _PeerTls o, last = _LAST_TLS
        cdef tuple given
        # The same objects as the last TLS peer's (an app that builds its
        # peers per request from the same constants): no lookup.
        if last is not None and last.given_alpn is alpn and last.given_ca is ca_file and \
                last.given_cert is client_cert and last.given_key is client_key and \
                last.given_verify is verify_cert and last.given_name is verify_hostname:
            o = last.canon
        else:
            if alpn is not None and type(alpn) is not tuple:
                alpn = _alpn_tuple(alpn)
            given = (verify_cert, verify_hostname, ca_file, client_cert, client_key, alpn)
            o = _TLS_OPTIONS.get(given)
            if o is None:
                o = _new_peer_tls(verify_cert, verify_hostname, ca_file, client_cert, client_key,
                                  alpn, self)
                if len(_TLS_OPTIONS) >= 512:
                    _TLS_OPTIONS.clear()    # many distinct options (a bug in the app?): start over
                # one object per distinct set of options, however given
                o = _TLS_OPTIONS.setdefault(o.key, o)
                _TLS_OPTIONS[given] = o
            _LAST_TLS = o.given_by(verify_cert, verify_hostname, ca_file, client_cert,
                                   client_key, alpn)
        if o.verify_hostname and not self.sni:
            raise ValueError("HttpPeer sni=\"\" sends no server name, so there is no name to "
                             "check the upstream's certificate against: pass "
                             "verify_hostname=False (the chain is still checked) or an sni")
        self.tls_opts = o
        return 0

    # The TLS options, as given (normalized), and what they make.
    @property
    def verify_cert(self):
        return self.tls_opts.verify_cert if self.tls_opts is not None else False

    @property
    def verify_hostname(self):
        return self.tls_opts.verify_hostname if self.tls_opts is not None else False

    @property
    def ca_file(self):
        return self.tls_opts.ca_file if self.tls_opts is not None else None

    @property
    def client_cert(self):
        return self.tls_opts.client_cert if self.tls_opts is not None else None

    @property
    def client_key(self):
        return self.tls_opts.client_key if self.tls_opts is not None else None

    @property
    def alpn(self):
        return self.tls_opts.alpn if self.tls_opts is not None else None

    @property
    def ssl_context(self):
        """The ``ssl.SSLContext`` its TLS connections use (shared by every
        peer with the same TLS options: do not change it), or None."""
        return self.tls_opts.context if self.tls_opts is not None else None

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
                h = h if self.port in (80, 443) else f"{h}:{self.port}"
                # (the idna codec is looked up by name on every call: about
                # 3 us, for each request without a Host when peers are made
                # per request; an ASCII name encodes the same either way)
                self._host_header = h.encode("ascii") if h.isascii() else h.encode("idna")
        return self._host_header

    def __repr__(self):
        where = f"unix:{self.path}" if self.path is not None else f"{self.host}:{self.port}"
        return (f"HttpPeer({where}{', tls' if self.tls else ''}"
                f"{f', proxy_protocol={self.proxy_protocol}' if self.proxy_protocol else ''})")

    def __str__(self):
        return f"unix:{self.path}" if self.path is not None else f"{self.host}:{self.port}"


# The TLS options of peers (_PeerTls, with the client SSLContext they make)
# by the options as given: loading a trust store or a certificate costs
# milliseconds, so it is done once per distinct set of options, never per
# connection (and a TLS peer built per request costs a dict lookup).
cdef dict _TLS_OPTIONS = {}
cdef _PeerTls _LAST_TLS = None     # the last TLS peer's (see HttpPeer._tls_options)
cdef bint _warned_unverified = False


@cython.final
cdef class _PeerTls:
    """TLS options shared by the HttpPeers that have them, checked and
    normalized, and the client ``ssl.SSLContext`` they make."""

    def __init__(self):
        raise TypeError("_PeerTls objects are made by HttpPeer")

    cdef _PeerTls given_by(self, object verify_cert, object verify_hostname, object ca_file,
                           object client_cert, object client_key, object alpn):
        """A note of the objects these options were last given as, and of
        this object (``canon``), for the identity check of the next peer."""
        cdef _PeerTls c = _PeerTls.__new__(_PeerTls)
        c.canon = self
        c.given_verify, c.given_name, c.given_ca = verify_cert, verify_hostname, ca_file
        c.given_cert, c.given_key, c.given_alpn = client_cert, client_key, alpn
        return c

    def __repr__(self):
        return f"<TLS options {self.key!r}>"


cdef tuple _alpn_tuple(object alpn):
    if isinstance(alpn, (str, bytes)):
        raise TypeError(f"HttpPeer alpn must be a list of protocol names, e.g. [\"http/1.1\"], "
                        f"got {alpn!r:.60}")
    try:
        return tuple(alpn)
    except TypeError:
        raise TypeError(f"HttpPeer alpn must be a list of protocol names, e.g. [\"http/1.1\"], "
                        f"got {alpn!r:.60}") from None


cdef _PeerTls _new_peer_tls(object verify_cert, object verify_hostname, object ca_file,
                            object client_cert, object client_key, tuple alpn, HttpPeer peer):
    """Check the TLS options and make their SSLContext; a file that cannot
    be used raises ValueError saying what to fix."""
    global _warned_unverified
    cdef _PeerTls o = _PeerTls.__new__(_PeerTls)
    if client_key is not None and client_cert is None:
        raise ValueError("HttpPeer client_key needs client_cert (the certificate that "
                         "goes with the key)")
    for name, v in (("ca_file", ca_file), ("client_cert", client_cert),
                    ("client_key", client_key)):
        if v is not None and not isinstance(v, (str, os.PathLike)):
            raise TypeError(f"HttpPeer {name} must be a file path, got {v!r:.60}")
    if alpn is not None:
        if not all(isinstance(a, str) for a in alpn):
            raise TypeError(f"HttpPeer alpn must be a list of protocol names, e.g. "
                            f"[\"http/1.1\"], got {list(alpn)!r:.60}")
        if not alpn or [a for a in alpn if a not in ("http/1.1", "http/1.0")]:
            raise ValueError(f"HttpPeer alpn {list(alpn)!r}: the proxy speaks HTTP/1 to "
                             f"upstreams, so it may offer \"http/1.1\" and \"http/1.0\" only")
    o.verify_cert = bool(verify_cert)
    o.verify_hostname = bool(verify_hostname) and o.verify_cert
    o.ca_file = os.fspath(ca_file) if ca_file is not None else None
    o.client_cert = os.fspath(client_cert) if client_cert is not None else None
    o.client_key = os.fspath(client_key) if client_key is not None else None
    o.alpn = alpn
    o.key = (o.verify_cert, o.verify_hostname, o.ca_file, o.client_cert, o.client_key, alpn)
    _ssl_load()
    try:
        ctx = _ssl.create_default_context(cafile=o.ca_file)
    except OSError as exc:   # (ssl.SSLError is one)
        raise ValueError(f"HttpPeer ca_file {o.ca_file!r}: "
                         f"{_file_problem(exc, 'CA certificates')}") from exc
    if not o.verify_cert:
        ctx.check_hostname = False
        ctx.verify_mode = _ssl.CERT_NONE
        if not _warned_unverified:
            _warned_unverified = True
            logging.getLogger("sluiceway.error").warning(
                "sluiceway: HttpPeer(verify_cert=False) for upstream %s: its certificate is "
                "not checked, so anyone on the way can pose as it (logged once)", peer)
    elif not o.verify_hostname:
        ctx.check_hostname = False     # (the chain is still checked: CERT_REQUIRED)
    if o.client_cert is not None:
        _load_client_cert(ctx, o.client_cert, o.client_key)
    if alpn is not None:
        ctx.set_alpn_protocols(list(alpn))
    if _NO_RENEG:
        ctx.options |= _NO_RENEG
    o.context = ctx
    return o


cdef str _file_problem(object exc, str what):
    """Why a PEM file could not be used, in words."""
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, PermissionError):
        return "not readable by this process (check its permissions)"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not a file"
    if _ssl is not None and isinstance(exc, _ssl.SSLError):
        return f"holds no {what} in PEM form ({_tls_reason(exc)})"
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


def _no_password():
    raise _EncryptedKey()


class _EncryptedKey(Exception):
    pass


cdef int _load_client_cert(object ctx, str cert, object keyfile) except -1:
    """Load the client certificate and key into ``ctx``, or raise ValueError
    naming the file and what is wrong with it."""
    for name, path, marker, what in (("client_cert", cert, "-----BEGIN CERTIFICATE-----",
                                      "certificate"),
                                     ("client_key" if keyfile is not None else "client_cert",
                                      keyfile if keyfile is not None else cert,
                                      "PRIVATE KEY-----", "private key")):
        try:
            with open(path, "rb") as f:
                text = f.read(1 << 20)
        except OSError as exc:
            raise ValueError(f"HttpPeer {name} {path!r}: {_file_problem(exc, what)}") from exc
        if marker.encode() not in text:
            more = " (pass the key file as client_key)" if keyfile is None and \
                what == "private key" else ""
            raise ValueError(f"HttpPeer {name} {path!r} holds no {what} in PEM form "
                             f"(\"{marker.strip('-')}\" not found){more}")
    try:
        ctx.load_cert_chain(cert, keyfile, password=_no_password)
    except _EncryptedKey:
        raise ValueError(f"HttpPeer client_key {keyfile or cert!r} is encrypted with a passphrase: "
                         f"give the proxy a key without one (openssl pkey -in KEY -out NEWKEY)") \
            from None
    except _ssl.SSLError as exc:
        if getattr(exc, "reason", None) == "KEY_VALUES_MISMATCH":
            raise ValueError(f"HttpPeer client_key {keyfile or cert!r} does not match "
                             f"client_cert {cert!r}: pass the key the certificate was made "
                             f"for") from exc
        raise ValueError(f"HttpPeer client_cert {cert!r} / client_key {keyfile or cert!r}: "
                         f"{_tls_reason(exc)}") from exc
    return 0
