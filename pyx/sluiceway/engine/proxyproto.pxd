# Included by _engine.pxd: see engine/proxyproto.pyx.

cdef class _Nets:
    cdef list v4                # (network, mask) as integers
    cdef list v6
    cdef readonly tuple cidrs   # the networks as given (normalised)

    cdef bint has(self, object host)
