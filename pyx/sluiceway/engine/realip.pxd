# Included by _engine.pxd: see engine/realip.pyx.

cdef class _Nets:
    cdef uint32_t *v4           # (network, mask) pairs, host byte order
    cdef uint64_t *v6           # (network hi, lo, mask hi, lo) quadruples
    cdef int n4
    cdef int n6
    cdef readonly bint trust_unix  # "unix:" was listed: Unix socket peers are trusted
    cdef readonly tuple cidrs   # the networks as given (normalised)

    cdef bint has_packed(self, const unsigned char *a, int alen)
    cdef bint has(self, object host)
