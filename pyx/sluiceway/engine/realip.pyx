# Included by _engine.pyx: who the client is behind other proxies (the
# rules are documented in sluiceway._realip_py, the pure-Python twin), and
# the address lists that say whom to trust.

cdef extern from "<arpa/inet.h>" nogil:
    int inet_pton(int af, const char *src, void *dst)
    const char *inet_ntop(int af, const void *src, char *dst, unsigned size)

from sluiceway._realip_py import forwarded_for_nodes as _forwarded_for_nodes

cdef inline uint64_t _be64(const unsigned char *p):
    cdef uint64_t v = 0
    cdef int i
    for i in range(8):
        v = (v << 8) | p[i]
    return v


@cython.final
cdef class _Nets:
    """A set of IP networks (CIDRs) to test addresses against, parsed once
    into integer arrays. An IPv4-mapped IPv6 address (``::ffff:10.0.0.1``,
    from a dual-stack socket) matches the IPv4 networks. The entry
    ``unix:`` trusts peers on Unix sockets."""

    def __init__(self, cidrs):
        import ipaddress
        v4, v6, out = [], [], []
        for c in cidrs:
            c = str(c).strip()
            if c == "unix:":
                self.trust_unix = True
                out.append(c)
                continue
            try:
                net = ipaddress.ip_network(c, strict=False)
            except ValueError as exc:
                raise ValueError(f"{c!r} is not an IP network (write an address such as "
                                 f"'10.0.0.5' or a CIDR such as '10.0.0.0/8'): {exc}") from None
            (v4 if net.version == 4 else v6).append(
                (int(net.network_address), int(net.netmask)))
            out.append(str(net))
        self.cidrs = tuple(out)
        self.v4 = <uint32_t *>malloc(sizeof(uint32_t) * 2 * len(v4) + 1)
        self.v6 = <uint64_t *>malloc(sizeof(uint64_t) * 4 * len(v6) + 1)
        if self.v4 == NULL or self.v6 == NULL:
            raise MemoryError()
        for i, (net, mask) in enumerate(v4):
            self.v4[2 * i] = net
            self.v4[2 * i + 1] = mask
        for i, (net, mask) in enumerate(v6):
            self.v6[4 * i] = net >> 64
            self.v6[4 * i + 1] = net & 0xFFFFFFFFFFFFFFFF
            self.v6[4 * i + 2] = mask >> 64
            self.v6[4 * i + 3] = mask & 0xFFFFFFFFFFFFFFFF
        self.n4 = len(v4)
        self.n6 = len(v6)

    def __dealloc__(self):
        free(self.v4)
        free(self.v6)

    cdef bint has_packed(self, const unsigned char *a, int alen):
        """Whether the address in network byte order (4 or 16 bytes) is in
        one of the networks."""
        cdef uint32_t x
        cdef uint64_t hi, lo
        cdef int i
        if alen == 16 and _be64(a) == 0 and a[8] == 0 and a[9] == 0 and a[10] == 0xFF \
                and a[11] == 0xFF:
            a += 12
            alen = 4
        if alen == 4:
            x = (<uint32_t>a[0] << 24) | (<uint32_t>a[1] << 16) | (<uint32_t>a[2] << 8) | a[3]
            for i in range(self.n4):
                if x & self.v4[2 * i + 1] == self.v4[2 * i]:
                    return True
            return False
        hi = _be64(a)
        lo = _be64(a + 8)
        for i in range(self.n6):
            if hi & self.v6[4 * i + 2] == self.v6[4 * i] and lo & self.v6[4 * i + 3] == self.v6[4 * i + 1]:
                return True
        return False

    cdef bint has(self, object host):
        """Whether ``host`` (a numeric address, str) is in the networks
        (False for anything that is not an IP address)."""
        cdef unsigned char buf[16]
        cdef bytes b
        if type(host) is not str or len(<str>host) > 64:
            return False
        try:
            b = (<str>host).encode("ascii")
        except UnicodeError:
            return False
        if inet_pton(AF_INET, b, buf) == 1:
            return self.has_packed(buf, 4)
        if inet_pton(AF_INET6, b, buf) == 1:
            return self.has_packed(buf, 16)
        return False

    def __contains__(self, host):
        if type(host) is not str:
            return self.trust_unix
        return self.has(host)

    def __repr__(self):
        return f"_Nets({list(self.cidrs)!r})"


cdef int _parse_token(const char *p, Py_ssize_t n, bint bracket_alone,
                      unsigned char *out, int *port) noexcept:
    """An address token (see sluiceway._realip_py.parse_token) into ``out``
    (network order): returns 4 or 16, or 0 when it is not one."""
    cdef char tmp[72]
    cdef Py_ssize_t i, end, colon
    cdef int v
    port[0] = 0
    if n <= 0 or n > 64:
        return 0
    memcpy(tmp, p, n)
    tmp[n] = 0
    for i in range(n):
        if tmp[i] == 0:
            return 0
    if inet_pton(AF_INET, tmp, out) == 1:
        return 4
    if inet_pton(AF_INET6, tmp, out) == 1:
        return 16
    if tmp[0] == b'[':
        end = -1
        for i in range(1, n):
            if tmp[i] == b']':
                end = i
                break
        if end < 0:
            return 0
        if end == n - 1:
            if not bracket_alone:
                return 0
        elif tmp[end + 1] != b':' or _port_of(tmp + end + 2, n - end - 2, port) < 0:
            return 0
        tmp[end] = 0
        return 16 if inet_pton(AF_INET6, tmp + 1, out) == 1 else 0
    colon = -1
    for i in range(n):
        if tmp[i] == b':':
            colon = i
            break
    if colon < 0 or _port_of(tmp + colon + 1, n - colon - 1, port) < 0:
        return 0
    tmp[colon] = 0
    return 4 if inet_pton(AF_INET, tmp, out) == 1 else 0


cdef int _port_of(const char *p, Py_ssize_t n, int *port) noexcept:
    cdef int v = 0
    cdef Py_ssize_t i
    if n <= 0 or n > 5:
        return -1
    for i in range(n):
        if p[i] < b'0' or p[i] > b'9':
            return -1
        v = v * 10 + (p[i] - 48)
    if v < 1 or v > 65535:
        return -1
    port[0] = v
    return 0


cdef tuple _addr_tuple(const unsigned char *a, int alen, int port):
    cdef char text[64]
    inet_ntop(AF_INET if alen == 4 else AF_INET6, a, text, sizeof(text))
    return ((<bytes>text).decode("ascii"), port)


cdef bint _nets_trust(_Nets nets, object direct):
    """Whether ``direct`` (an address tuple, a Unix socket path, or None)
    is in ``nets`` (None: nobody is trusted)."""
    if nets is None or direct is None:
        return False
    if type(direct) is tuple:
        return nets.has(direct[0])
    return nets.trust_unix


cdef tuple _real_client(_Nets nets, int kind, bytes values, list nodes, object direct,
                        bint trusted):
    """``(client, via)`` for a request from ``direct`` (an address tuple,
    or a Unix socket path; ``trusted``: it is in ``nets``) whose forwarding
    header values are ``values`` (X-Forwarded-For fields joined by commas,
    or the X-Real-IP value) or, for Forwarded, ``nodes`` (the for= nodes,
    left to right). See sluiceway._realip_py.real_client."""
    cdef unsigned char a[16]
    cdef const char *p
    cdef Py_ssize_t n, end, i
    cdef int alen, port
    cdef object cur = direct, via = None
    if not trusted:
        return direct, None
    if kind == RIP_FORWARDED:
        for i in range(len(nodes) - 1, -1, -1):
            node = nodes[i]
            if node is None:
                break
            b = (<str>node).encode("latin-1")
            alen = _parse_token(b, len(b), True, a, &port)
            if alen == 0:
                break
            via = cur
            cur = _addr_tuple(a, alen, port)
            if not nets.has_packed(a, alen):
                break
        return cur, via
    p = PyBytes_AS_STRING(values)
    n = PyBytes_GET_SIZE(values)
    if kind == RIP_X_REAL_IP:
        i = 0
        while i < n and (p[i] == b' ' or p[i] == b'\t'):
            i += 1
        while n > i and (p[n - 1] == b' ' or p[n - 1] == b'\t'):
            n -= 1
        if n > i:
            alen = _parse_token(p + i, n - i, False, a, &port)
            if alen:
                return _addr_tuple(a, alen, port), cur
        return cur, None
    end = n
    i = n
    while True:
        # the next token to the left: [i, end)
        while end > 0 and (p[end - 1] == b' ' or p[end - 1] == b','):
            end -= 1
        if end == 0:
            break
        i = end
        while i > 0 and p[i - 1] != b' ' and p[i - 1] != b',':
            i -= 1
        alen = _parse_token(p + i, end - i, False, a, &port)
        if alen == 0:
            break
        via = cur
        cur = _addr_tuple(a, alen, port)
        if not nets.has_packed(a, alen):
            break
        end = i
    return cur, via


def realip_resolve(int kind, values, direct, _Nets nets):
    """The compiled rule on plain values (``values``: the header fields, a
    list of str): the twin of ``sluiceway._realip_py.real_client`` for
    tests."""
    cdef bint trusted = _nets_trust(nets, direct)
    if kind == RIP_FORWARDED:
        return _real_client(nets, kind, b"", _forwarded_for_nodes(values), direct, trusted)
    if kind == RIP_X_REAL_IP:
        return _real_client(nets, kind, values[len(values) - 1].encode("latin-1") if values else b"",
                            None, direct, trusted)
    return _real_client(nets, kind, ",".join(values).encode("latin-1"), None, direct, trusted)


def make_nets(cidrs):
    """A compiled network list (for tests and benchmarks)."""
    return _Nets(cidrs)


# ----------------------------------------------------- forwarding fields --

cdef bytes _TCHARS = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


cdef bytes _rfc7239_value(bytes v):
    """``v`` as an RFC 7239 value: a token as it is, else a quoted string."""
    if v and not v.translate(None, _TCHARS):
        return v
    return b'"' + v.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


cdef bytes _rfc7239_node(object addr):
    if type(addr) is tuple:
        host = <str>addr[0]
        if ":" in host:
            return b'"[' + host.encode("ascii") + b']"'
        return host.encode("ascii")
    return b"unknown"


cdef bytes _joined(HeaderMap hm, bytes lname):
    """Every value of a field, joined by ", " (None when absent)."""
    cdef int i = hm._find(lname, 0)
    if i < 0:
        return None
    out = [hm._value_at(i)]
    i = hm._find(lname, i + 1)
    while i >= 0:
        out.append(hm._value_at(i))
        i = hm._find(lname, i + 1)
    return b", ".join([v.strip(b" \t") for v in out if v.strip(b" \t")]) if len(out) > 1 \
        else out[0].strip(b" \t")


cdef int _forwarding_fields(Session s, list parts) except -1:
    """With ``forwarded_headers`` on: the forwarding fields for the upstream
    (the received ones were dropped by sw_hop_mark). From a trusted proxy
    (``trusted_proxies``) the received chains go on with the peer's address
    appended; from anyone else they are replaced: a client cannot plant
    addresses. The fields of a style that is not written go on only from
    trusted proxies. (sluiceway._forward_py.forwarding_fields is the same
    rule in plain Python.)"""
    cdef HeaderMap hm = s.req_header.headers
    cdef Settings cfg = s.eng.cfg
    cdef object direct = s._direct()
    cdef bint trusted = s._direct_trusted()
    cdef bytes host = hm.get_bytes("host")
    cdef bytes prior, proto, fhost
    cdef bytes scheme = b"https" if s.client is not None and s.client.tls_layer() is not None \
        else b"http"
    node = ((<str>direct[0]).encode("ascii") if type(direct) is tuple else
            b"unix" if direct is not None else b"unknown")
    if cfg.fwd_style & FWD_X:
        prior = _joined(hm, b"x-forwarded-for") if trusted else None
        parts.append(b"X-Forwarded-For: " + (prior + b", " + node if prior else node) + _CRLF)
        proto = _joined(hm, b"x-forwarded-proto") if trusted else None
        parts.append(b"X-Forwarded-Proto: " + (proto if proto else scheme) + _CRLF)
        fhost = _joined(hm, b"x-forwarded-host") if trusted else None
        if fhost or host is not None:
            parts.append(b"X-Forwarded-Host: " + (fhost if fhost else host) + _CRLF)
    elif trusted:
        for name, lname in ((b"X-Forwarded-For", b"x-forwarded-for"),
                            (b"X-Forwarded-Proto", b"x-forwarded-proto"),
                            (b"X-Forwarded-Host", b"x-forwarded-host")):
            prior = _joined(hm, lname)
            if prior:
                parts.append(name + b": " + prior + _CRLF)
    if cfg.fwd_style & FWD_RFC:
        prior = _joined(hm, b"forwarded") if trusted else None
        el = b"for=" + _rfc7239_node(direct) + b";proto=" + scheme
        if host is not None:
            el += b";host=" + _rfc7239_value(host)
        parts.append(b"Forwarded: " + (prior + b", " + el if prior else el) + _CRLF)
    elif trusted:
        prior = _joined(hm, b"forwarded")
        if prior:
            parts.append(b"Forwarded: " + prior + _CRLF)
    return 0


cdef tuple _session_real_client(Session s, object direct):
    """(client, via) of ``s``, by the configured real_ip_header."""
    cdef Settings cfg = s.eng.cfg
    cdef HeaderMap hm = s.req_header.headers
    cdef int kind = cfg.rip_kind
    cdef bytes values
    cdef int i
    if kind == RIP_FORWARDED:
        return _real_client(cfg.trusted, kind, b"", _forwarded_for_nodes(hm.getall("forwarded")),
                            direct, s._direct_trusted())
    if kind == RIP_X_REAL_IP:
        values = b""
        i = hm._find(b"x-real-ip", 0)
        while i >= 0:
            values = hm._value_at(i)
            i = hm._find(b"x-real-ip", i + 1)
        return _real_client(cfg.trusted, kind, values, None, direct, s._direct_trusted())
    values = _joined(hm, b"x-forwarded-for")
    return _real_client(cfg.trusted, kind, values if values is not None else b"", None, direct,
                        s._direct_trusted())
