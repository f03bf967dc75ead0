# Included by _engine.pyx: PROXY protocol headers (csrc/sw_pp.h).

from sluiceway._proxyproto_py import ProxyHeader


cdef tuple _pp_result(long n, sw_pp_t *h):
    if n == SW_PP_BAD:
        return (-1, None, h.reason.decode("ascii"))
    if n == SW_PP_NEED:
        return (0, None, None)
    return (n, ProxyHeader(h.version, bool(h.local), h.family,
                           h.src.decode("ascii"), h.dst.decode("ascii"),
                           h.src_port, h.dst_port), None)


def pp_parse(data):
    """Read a PROXY protocol header at the start of ``data``: the compiled
    twin of ``sluiceway._proxyproto_py.parse`` (same results)."""
    cdef sw_pp_t h
    cdef bytes b = bytes(data)
    cdef long n = sw_pp_parse(<const unsigned char *>PyBytes_AS_STRING(b),
                              <size_t>PyBytes_GET_SIZE(b), &h)
    return _pp_result(n, &h)


def pp_write(int version, int family, str src, str dst, int sport, int dport):
    """A PROXY protocol header (``version`` 1 or 2) for a connection from
    ``src:sport`` to ``dst:dport``: the compiled twin of
    ``sluiceway._proxyproto_py.write_v1``/``write_v2``."""
    cdef char out[128]
    cdef long n
    cdef bytes s = src.encode("ascii", "replace"), d = dst.encode("ascii", "replace")
    if version not in (1, 2) or family not in (4, 6):
        raise ValueError(f"version must be 1 or 2 and family 4 or 6, got {version}, {family}")
    if not (0 <= sport <= 65535 and 0 <= dport <= 65535):
        raise ValueError("ports must be 0..65535")
    if b"\0" in s or b"\0" in d:
        n = -1
    elif version == 1:
        n = sw_pp_write_v1(out, family, s, d, <uint16_t>sport, <uint16_t>dport)
    else:
        n = sw_pp_write_v2(<unsigned char *>out, family, s, d, <uint16_t>sport, <uint16_t>dport)
    if n < 0:
        raise ValueError(f"{src!r} or {dst!r} is not an IPv{family} address")
    return PyBytes_FromStringAndSize(out, n)


cdef object _pp_header_for(Session s, int version):
    """The PROXY header an upstream connection of ``s`` starts with: the
    client's address and the one it connected to (both from the client's
    own PROXY header when it came through a balancer). A client on a Unix
    socket, or a header without addresses, gives v1 ``UNKNOWN`` / v2
    ``LOCAL``."""
    src = s.client_addr
    dst = s.client.local_address() if s.client is not None else None
    if type(src) is tuple and type(dst) is tuple:
        fam = 6 if ":" in src[0] else 4
        dfam = 6 if ":" in dst[0] else 4
        if fam == dfam:
            return pp_write(version, fam, src[0], dst[0], src[1], dst[1])
        # one side IPv4, the other IPv6 (a dual-stack listener): as IPv6
        s6 = src[0] if fam == 6 else "::ffff:" + src[0]
        d6 = dst[0] if dfam == 6 else "::ffff:" + dst[0]
        return pp_write(version, 6, s6, d6, src[1], dst[1])
    if version == 1:
        return b"PROXY UNKNOWN\r\n"
    return b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"
