# distutils: sources = csrc/sw_hash.c csrc/sw_lb.c
"""Compiled backend selection: the algorithms and the ``select`` hot path.

Theory of operation
-------------------
An *algorithm* (``RoundRobin``, ``Random``, ``FNVHash``, ``Consistent``,
``LeastConnections``, ``PowerOfTwoChoices``) is built from a sequence of
backends (objects with an ``addr`` str and an integer ``weight``) and speaks
only in backend indexes: ``next(key)`` is the first choice and ``iter(key)``
yields the first choice and then fallbacks, each backend at most once.  The C
side lives in ``csrc/sw_lb.c``; this module only converts keys and drives a
``Cursor`` (the iteration state) without creating Python objects.

A ``BalancerCore`` holds one immutable *snapshot*: the algorithm, the tuple of
backends it was built for, a byte per backend saying whether it may take
traffic (healthy and enabled) and a ``BackendLoad`` per backend (its requests
in flight, csrc/sw_load.h).  ``select`` points the cursor at the flags and
the loads (which only ``LeastConnections`` and ``PowerOfTwoChoices`` read),
walks it and returns the first usable backend.  Replacing the snapshot (when
discovery changes the set) is one reference swap, so a selection that is
running (``select_with`` calls back into Python) keeps the snapshot it started
with.  The loads are not part of what is replaced: the caller hands the same
``BackendLoad`` to every snapshot that has the backend, and the proxy engine
counts in it through the HttpPeers it was lent to.  Used on its own (``next``,
``iter``), an algorithm sees every load as 0 and every backend as usable.

Keys are ``str`` (hashed as UTF-8, read in place through
``PyUnicode_AsUTF8AndSize``), ``bytes`` (read in place) or ``None`` (the empty
key).  The pure-Python twin is ``sluiceway._lb_py``; both must make identical
choices.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_Check
from cpython.pycapsule cimport PyCapsule_New
from cpython.unicode cimport PyUnicode_Check
from cpython.mem cimport PyMem_Calloc, PyMem_Free, PyMem_Malloc
from libc.stdint cimport int64_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memset

import os


cdef extern from "Python.h":
    const char *PyUnicode_AsUTF8AndSize(object s, Py_ssize_t *size) except NULL


MAX_WEIGHT = SW_LB_MAX_WEIGHT
MAX_SLOTS = SW_LB_MAX_SLOTS
KETAMA_POINTS = SW_KETAMA_POINTS


cdef inline int _key_view(object key, const char **data, Py_ssize_t *size) except -1:
    if PyBytes_Check(key):
        data[0] = PyBytes_AS_STRING(key)
        size[0] = PyBytes_GET_SIZE(key)
    elif PyUnicode_Check(key):
        data[0] = PyUnicode_AsUTF8AndSize(key, size)
    elif key is None:
        data[0] = b""
        size[0] = 0
    else:
        raise TypeError(
            f"a selection key must be str, bytes or None, not {type(key).__name__} "
            f"({key!r:.60}); convert it, e.g. str(key) or key.encode()")
    return 0


cdef uint32_t _checked_weight(object backend, Py_ssize_t i) except? 0:
    try:
        w = backend.weight
    except AttributeError:
        raise TypeError(f"backend #{i} ({backend!r:.80}) has no 'weight'; "
                        "pass sluiceway.lb.Backend objects") from None
    if isinstance(w, bool) or not isinstance(w, int):
        raise TypeError(f"backend #{i} ({backend!r:.80}) has weight {w!r}; "
                        "a weight must be an int")
    if w < 1 or w > SW_LB_MAX_WEIGHT:
        raise ValueError(f"backend #{i} ({backend!r:.80}) has weight {w}; "
                         f"a weight must be between 1 and {SW_LB_MAX_WEIGHT}")
    return <uint32_t>w


cdef int _raise_build_error(int rc, str what) except -1:
    if rc == SW_LB_ENOMEM:
        raise MemoryError(f"out of memory building the {what}")
    if rc == SW_LB_ETOOBIG:
        raise ValueError(
            f"the {what} would need more than {SW_LB_MAX_SLOTS} entries; "
            "use fewer backends or smaller weights (only their ratios matter)")
    raise ValueError(f"cannot build the {what} (code {rc}): "
                     f"at most {SW_LB_MAX_BACKENDS} backends with weights "
                     f"1..{SW_LB_MAX_WEIGHT}")


cdef inline void _cursor_release(Cursor *cur) noexcept:
    if cur.big != NULL:
        free(cur.big)
        cur.big = NULL


cdef uint64_t *_cursor_bitmap(Cursor *cur) except NULL:
    """A zeroed bitmap of the cursor's backends (on its stack for up to 2,048)."""
    if cur.nbackends <= SMALL_BITMAP_WORDS * 64:
        memset(cur.small, 0, sizeof(cur.small))
        return cur.small
    cur.big = <uint64_t *>calloc(sw_bitmap_words(cur.nbackends), sizeof(uint64_t))
    if cur.big == NULL:
        raise MemoryError(f"out of memory walking {cur.nbackends} backends")
    return cur.big


cdef inline void _cursor_clear(Cursor *cur) noexcept:
    """What an algorithm used on its own sees: no loads, all usable."""
    cur.loads = NULL
    cur.ok = NULL
    cur.stop_unusable = 0
    cur.big = NULL


cdef inline int _cursor_next(Cursor *cur, uint32_t *out) except -1:
    """Store the next backend index in out[0]; return 1, or 0 when done."""
    if cur.kind == CUR_EMPTY:
        return 0
    if cur.kind == CUR_WEIGHTED:
        if not cur.started:
            cur.started = 1
            out[0] = cur.first
            return 1
        return sw_walk_next(&cur.walk, out)
    if cur.kind == CUR_P2C:
        if sw_p2c_walk_wants_skipped(&cur.pwalk):
            cur.pwalk.skipped = _cursor_bitmap(cur)
        return sw_p2c_walk_next(&cur.pwalk, out)
    if cur.kind == CUR_LEAST:
        if sw_lc_walk_wants_seen(&cur.lwalk):
            cur.lwalk.seen = _cursor_bitmap(cur)
        return sw_lc_walk_next(&cur.lwalk, out)
    # CUR_RING
    if cur.rwalk.yielded == 1 and cur.rwalk.seen == NULL:
        cur.rwalk.seen = _cursor_bitmap(cur)
    return sw_ring_walk_next(&cur.rwalk, out)


cdef class Algorithm:
    """Base of the compiled selection algorithms (not usable on its own).

    ``next(key)`` returns the index of the first choice; ``iter(key)`` yields
    the first choice and then fallbacks, each index at most once.  A custom
    algorithm written in Python needs only the same two methods and
    ``__len__``; it does not subclass this.
    """

    def __init__(self, *args, **kwargs):
        if type(self) is Algorithm or type(self) is _Weighted:
            raise TypeError("use RoundRobin, Random, FNVHash, Consistent, LeastConnections "
                            "or PowerOfTwoChoices")

    cdef int _start(self, const char *key, Py_ssize_t klen, Cursor *cur) except -1:
        raise NotImplementedError

    def __len__(self):
        return self.n

    def next(self, key=None):
        """Return the index of the first choice for ``key``.

        Args:
            key: str (hashed as UTF-8), bytes, or None (the empty key).
        Returns:
            An index into the backends the algorithm was built from.
        Raises:
            LookupError: the algorithm has no backends.
            TypeError: key is not str, bytes or None.
        """
        cdef const char *p
        cdef Py_ssize_t ln
        cdef Cursor cur
        cdef uint32_t i
        _key_view(key, &p, &ln)
        _cursor_clear(&cur)
        self._start(p, ln, &cur)
        try:
            if not _cursor_next(&cur, &i):
                raise LookupError(f"{type(self).__name__} has no backends to choose from")
        finally:
            _cursor_release(&cur)
        return i

    def iter(self, key=None):
        """Return an iterator of backend indexes: the first choice, then fallbacks.

        Every backend appears at most once.  Weighted algorithms yield all of
        them; ``Consistent`` yields them in ring order from the key's point.

        Args:
            key: str (hashed as UTF-8), bytes, or None (the empty key).
        Raises:
            TypeError: key is not str, bytes or None.
        """
        cdef const char *p
        cdef Py_ssize_t ln
        cdef _IndexIter it = _IndexIter.__new__(_IndexIter)
        _key_view(key, &p, &ln)
        it.algo = self
        _cursor_clear(&it.cur)
        self._start(p, ln, &it.cur)
        return it

    def __repr__(self):
        return f"<{type(self).__module__}.{type(self).__name__} over {self.n} backends>"


@cython.final
cdef class _IndexIter:
    def __cinit__(self):
        self.cur.big = NULL
        self.cur.kind = CUR_EMPTY

    def __init__(self):
        raise TypeError("use Algorithm.iter(key)")

    def __dealloc__(self):
        _cursor_release(&self.cur)

    def __iter__(self):
        return self

    def __next__(self):
        cdef uint32_t i
        if _cursor_next(&self.cur, &i):
            return i
        _cursor_release(&self.cur)
        raise StopIteration


cdef uint32_t *_read_weights(object backends, Py_ssize_t n) except NULL:
    """The backends' checked weights in a new PyMem array (the caller frees it)."""
    cdef Py_ssize_t i
    cdef uint32_t *weights
    if n > SW_LB_MAX_BACKENDS:
        raise ValueError(f"{n} backends is more than the {SW_LB_MAX_BACKENDS} supported")
    weights = <uint32_t *>PyMem_Malloc(max(n, 1) * sizeof(uint32_t))
    if weights == NULL:
        raise MemoryError()
    try:
        for i, b in enumerate(backends):
            weights[i] = _checked_weight(b, i)
    except BaseException:
        PyMem_Free(weights)
        raise
    return weights


cdef class _Weighted(Algorithm):
    def __cinit__(self, *args, **kwargs):
        self.table.slots = NULL
        self.table.nslots = 0
        self.weights = NULL
        self.n = 0

    def __dealloc__(self):
        sw_wtable_free(&self.table)
        PyMem_Free(self.weights)

    cdef int _build(self, backends) except -1:
        cdef Py_ssize_t n = len(backends)
        cdef uint32_t *weights
        cdef int rc
        if self.weights != NULL:
            raise TypeError(f"{type(self).__name__} is already initialised; build a new one")
        weights = _read_weights(backends, n)
        with nogil:
            rc = sw_wtable_build(&self.table, weights, <uint32_t>n)
        if rc:
            PyMem_Free(weights)
            _raise_build_error(rc, f"{type(self).__name__} table")
        self.weights = weights
        self.n = <uint32_t>n
        return 0

    cdef void _begin(self, Cursor *cur, uint64_t h, uint64_t seed) noexcept:
        cur.started = 0
        cur.big = NULL
        cur.nbackends = self.n
        if self.n == 0:
            cur.kind = CUR_EMPTY
            return
        cur.kind = CUR_WEIGHTED
        cur.first = self.table.slots[h % self.table.nslots]
        sw_walk_init(&cur.walk, cur.first, self.n, seed)


cdef class RoundRobin(_Weighted):
    """Weighted round robin: each call takes the next slot of the weighted table.

    The key is ignored.  Fallbacks are the following backends in order.

    Args:
        backends: a sequence of backends (objects with an int ``weight``).
    Raises:
        TypeError, ValueError: a weight is not an int in 1..65535.
    """

    def __init__(self, backends):
        self._build(backends)
        self.counter = 0

    cdef int _start(self, const char *key, Py_ssize_t klen, Cursor *cur) except -1:
        cdef uint64_t c = self.counter
        self.counter = c + 1
        self._begin(cur, c, 0)
        return 0


cdef class FNVHash(_Weighted):
    """Weighted hashing: the slot is FNV-1a-64(key) modulo the table size.

    Fallbacks walk the other backends with a stride derived from the hash, so
    the load of a dead backend spreads over the rest.

    Args:
        backends: a sequence of backends (objects with an int ``weight``).
    Raises:
        TypeError, ValueError: a weight is not an int in 1..65535.
    """

    def __init__(self, backends):
        self._build(backends)

    cdef int _start(self, const char *key, Py_ssize_t klen, Cursor *cur) except -1:
        cdef uint64_t h = sw_fnv1a64(key, <size_t>klen)
        self._begin(cur, h, sw_mix64(h))
        return 0


cdef class Random(_Weighted):
    """Weighted random choice driven by a splitmix64 generator.

    The key is ignored.  Each selection draws two numbers: the slot and the
    stride of the fallback walk.

    Args:
        backends: a sequence of backends (objects with an int ``weight``).
        seed: an int for a reproducible sequence (the pure-Python twin with the
            same seed makes the same choices); None seeds from os.urandom.
    Raises:
        TypeError, ValueError: a weight is not an int in 1..65535, or seed is
            not an int.
    """

    def __init__(self, backends, seed=None):
        self._build(backends)
        self.state = <uint64_t>_seed_state(seed)

    cdef int _start(self, const char *key, Py_ssize_t klen, Cursor *cur) except -1:
        cdef uint64_t h = sw_splitmix64(&self.state)
        cdef uint64_t s = sw_splitmix64(&self.state)
        self._begin(cur, h, s)
        return 0


cdef object _seed_state(object seed):
    if seed is None:
        return int.from_bytes(os.urandom(8), "little")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int or None, not {seed!r:.60}")
    return seed & 0xFFFFFFFFFFFFFFFF


cdef class PowerOfTwoChoices(_Weighted):
    """Power of two choices: the less loaded of two random backends.

    Two distinct backends are drawn at random, each in proportion to its
    weight (splitmix64, as ``Random``); the one with fewer requests in flight
    per unit of weight is the first choice (on a tie, the first drawn).  The
    other one is the first fallback; then the rest in ``Random``'s stride
    order, compared two at a time the same way.  An unusable (unhealthy or
    disabled) backend drawn is passed over for the next usable one, so two
    usable backends are always compared; the unusable ones come last.  The
    key is ignored; with every backend usable a selection costs O(1)
    whatever the number of backends.  The loads are those of the ``LoadBalancer`` it serves (the
    proxy counts them); used on its own it sees every load as 0.

    Args:
        backends: a sequence of backends (objects with an int ``weight``).
        seed: an int for a reproducible sequence (the pure-Python twin with the
            same seed makes the same choices); None seeds from os.urandom.
    Raises:
        TypeError, ValueError: a weight is not an int in 1..65535, or seed is
            not an int.
    """

    def __init__(self, backends, seed=None):
        self._build(backends)
        self.state = <uint64_t>_seed_state(seed)

    cdef int _start(self, const char *key, Py_ssize_t klen, Cursor *cur) except -1:
        cdef sw_loadview v
        cur.nbackends = self.n
        if self.n == 0:
            cur.kind = CUR_EMPTY
            return 0
        cur.kind = CUR_P2C
        v.loads = cur.loads
        v.ok = cur.ok
        v.weights = self.weights
        v.n = self.n
        sw_p2c_walk_init(&cur.pwalk, &v, &self.table, &self.state, cur.stop_unusable)
        return 0


cdef class LeastConnections(Algorithm):
    """Least connections, as nginx's ``least_conn``: the usable backend with
    the fewest requests in flight per unit of weight.

    When several are equally loaded, smooth weighted round robin chooses
    among them (nginx's method), so an idle set is shared by weight.  Then
    the other backends, usable ones first, in increasing load (ties: in index
    order after the first choice).  The key is ignored.  The first choice
    looks at every backend, and so does each fallback: O(n).  The loads are
    those of the ``LoadBalancer`` it serves (the proxy counts them); used on
    its own it sees every load as 0 and is a weighted round robin.

    Args:
        backends: a sequence of backends (objects with an int ``weight``).
    Raises:
        TypeError, ValueError: a weight is not an int in 1..65535.
    """

    def __cinit__(self, *args, **kwargs):
        self.weights = NULL
        self.cw = NULL
        self.n = 0

    def __dealloc__(self):
        PyMem_Free(self.weights)
        PyMem_Free(self.cw)

    def __init__(self, backends):
        cdef Py_ssize_t n = len(backends)
        if self.weights != NULL:
            raise TypeError("LeastConnections is already initialised; build a new one")
        weights = _read_weights(backends, n)
        self.cw = <int64_t *>PyMem_Calloc(max(n, 1), sizeof(int64_t))
        if self.cw == NULL:
            PyMem_Free(weights)
            raise MemoryError()
        self.weights = weights
        self.n = <uint32_t>n

    cdef int _start(self, const char *key, Py_ssize_t klen, Cursor *cur) except -1:
        cdef sw_loadview v
        cur.nbackends = self.n
        if self.n == 0:
            cur.kind = CUR_EMPTY
            return 0
        cur.kind = CUR_LEAST
        v.loads = cur.loads
        v.ok = cur.ok
        v.weights = self.weights
        v.n = self.n
        sw_lc_walk_init(&cur.lwalk, &v, self.cw, cur.stop_unusable)
        return 0


cdef class Consistent(Algorithm):
    """Ketama consistent hashing, placing keys exactly like nginx's
    ``hash $key consistent``.

    Each backend gets ``weight * 160`` points on a ring of CRC-32 values
    computed from its ``addr`` as nginx does from the ``server`` text
    (``"10.0.0.1:80"``, ``"[::1]:80"``, ``"unix:/path"``); a key goes to the
    first point at or after ``crc32(key)``.  Fallbacks continue around the
    ring, which is also nginx's order when the first choice is down.  Adding or
    removing one of n backends moves about 1/n of the keys.

    Args:
        backends: a sequence of backends (objects with a str ``addr`` and an
            int ``weight``), in the order of nginx's ``server`` lines (only
            matters if two points collide).
    Raises:
        TypeError, ValueError: an addr is not a str or a weight is not an int
            in 1..65535, or the ring would exceed 16M points.
    """

    def __cinit__(self, *args, **kwargs):
        self.ring.points = NULL
        self.ring.npoints = 0
        self.n = 0

    def __dealloc__(self):
        sw_ring_free(&self.ring)

    def __init__(self, backends):
        cdef Py_ssize_t n = len(backends), i
        cdef uint32_t *weights
        cdef const char **names
        cdef int rc
        cdef size_t *lens
        if self.ring.points != NULL:
            # Iterators point into the ring; rebuilding it under them is unsafe.
            raise TypeError("Consistent is already initialised; build a new one")
        if n > SW_LB_MAX_BACKENDS:
            raise ValueError(f"{n} backends is more than the {SW_LB_MAX_BACKENDS} supported")
        encoded = []
        weights = <uint32_t *>PyMem_Malloc(max(n, 1) * sizeof(uint32_t))
        names = <const char **>PyMem_Malloc(max(n, 1) * sizeof(char *))
        lens = <size_t *>PyMem_Malloc(max(n, 1) * sizeof(size_t))
        try:
            if weights == NULL or names == NULL or lens == NULL:
                raise MemoryError()
            for i, b in enumerate(backends):
                weights[i] = _checked_weight(b, i)
                addr = getattr(b, "addr", None)
                if not isinstance(addr, str):
                    raise TypeError(f"backend #{i} ({b!r:.80}) has addr {addr!r:.60}; "
                                    "Consistent needs a str addr such as '10.0.0.1:80'")
                raw = addr.encode("utf-8")
                encoded.append(raw)
                names[i] = PyBytes_AS_STRING(raw)
                lens[i] = <size_t>PyBytes_GET_SIZE(raw)
            with nogil:   # big rings take milliseconds; let other threads run
                rc = sw_ring_build(&self.ring, names, lens, weights, <uint32_t>n)
            if rc:
                _raise_build_error(rc, "consistent-hash ring")
            self.n = <uint32_t>n
        finally:
            PyMem_Free(weights)
            PyMem_Free(names)
            PyMem_Free(lens)

    cdef int _start(self, const char *key, Py_ssize_t klen, Cursor *cur) except -1:
        cur.started = 0
        cur.big = NULL
        cur.nbackends = self.n
        if self.n == 0:
            cur.kind = CUR_EMPTY
            return 0
        cur.kind = CUR_RING
        sw_ring_walk_init(&cur.rwalk, &self.ring, sw_crc32(key, <size_t>klen))
        return 0

    def points(self):
        """Return the ring as a list of ``(hash, backend_index)`` sorted by hash."""
        return [(self.ring.points[i].hash, self.ring.points[i].backend)
                for i in range(self.ring.npoints)]


@cython.final
cdef class BackendLoad:
    """One backend's requests in flight, as the proxy counts them.

    ``LoadBalancer.load(backend)`` returns it; lent to an HttpPeer
    (``HttpPeer(backend.addr, load=lb.load(backend))``), it counts the
    requests the proxy sends there: 1 more when ``upstream_peer`` returns
    that peer, 1 less when the request is over or a retry moves it.
    ``LeastConnections`` and ``PowerOfTwoChoices`` read it.  It lives as long
    as the backend is in the set or anything holds it, so a backend that
    leaves and comes back while requests are still in flight keeps its
    count.
    """

    def __cinit__(self):
        self.c.inflight = 0
        self._capsule = PyCapsule_New(&self.c, SW_LOAD_CAPSULE, NULL)

    @property
    def inflight(self):
        """Requests in flight on the backend (in this process)."""
        return self.c.inflight

    def _acquire(self):
        """Count one request more (what the proxy does; for tests and for
        code that sends requests by other means)."""
        sw_load_up(&self.c)

    def _release(self):
        """Count one request less."""
        sw_load_down(&self.c)

    def __repr__(self):
        return f"<BackendLoad inflight={self.c.inflight}>"


@cython.final
cdef class _Snapshot:
    def __cinit__(self):
        self.ok = NULL
        self.loads = NULL
        self.n = 0

    def __init__(self):
        raise TypeError("_Snapshot is internal to BalancerCore")

    def __dealloc__(self):
        PyMem_Free(self.ok)
        PyMem_Free(self.loads)


cdef inline object _checked_index(object algo, object i, Py_ssize_t n):
    try:
        idx = i.__index__()
    except AttributeError:
        raise TypeError(f"selection algorithm {algo!r:.80} yielded {i!r:.60}, "
                        "not an int index") from None
    if idx < 0 or idx >= n:
        raise IndexError(f"selection algorithm {algo!r:.80} yielded index {idx} "
                         f"but there are {n} backends")
    return idx


cdef class BalancerCore:
    """The selection hot path of a load balancer (subclassed by ``LoadBalancer``).

    Holds a snapshot of (algorithm, backends, usable flags).  ``select`` is
    the only method meant for the request path.
    """

    def __cinit__(self, *args, **kwargs):
        self._snap = _Snapshot.__new__(_Snapshot)
        self._snap.backends = ()
        self._snap.cells = ()
        self._snap.algo = None
        self._snap.calgo = None

    def _install(self, algo, backends, usable, loads=None):
        """Replace the snapshot: ``algo`` built for ``backends`` (a tuple),
        ``usable`` (a sequence of bools, one per backend) and ``loads`` (a
        BackendLoad per backend; None makes new ones).

        Raises:
            ValueError: lengths disagree.
            TypeError: algo lacks ``iter``, or a load is not a BackendLoad.
        """
        cdef _Snapshot s = _Snapshot.__new__(_Snapshot)
        cdef Py_ssize_t i, n
        cdef BackendLoad cell
        backends = tuple(backends)
        n = len(backends)
        if len(usable) != n:
            raise ValueError(f"got {len(usable)} usable flags for {n} backends")
        if not callable(getattr(algo, "iter", None)):
            raise TypeError(f"selection algorithm {algo!r:.80} has no iter(key) method")
        if len(algo) != n:
            raise ValueError(f"selection algorithm {algo!r:.80} was built for "
                             f"{len(algo)} backends, not {n}")
        cells = tuple(BackendLoad() for _ in range(n)) if loads is None else tuple(loads)
        if len(cells) != n:
            raise ValueError(f"got {len(cells)} loads for {n} backends")
        s.ok = <unsigned char *>PyMem_Malloc(max(n, 1))
        s.loads = <sw_load **>PyMem_Malloc(max(n, 1) * sizeof(sw_load *))
        if s.ok == NULL or s.loads == NULL:
            raise MemoryError()
        for i in range(n):
            s.ok[i] = 1 if usable[i] else 0
            if not isinstance(cells[i], BackendLoad):
                raise TypeError(f"load #{i} is {cells[i]!r:.60}, not a BackendLoad")
            cell = <BackendLoad>cells[i]
            s.loads[i] = &cell.c
        s.n = n
        s.backends = backends
        s.cells = cells
        s.algo = algo
        s.calgo = algo if isinstance(algo, Algorithm) else None
        self._snap = s

    def _set_usable(self, Py_ssize_t index, bint usable):
        """Mark backend ``index`` of the current snapshot usable or not."""
        cdef _Snapshot s = self._snap
        if index < 0 or index >= s.n:
            raise IndexError(f"backend index {index} out of range for {s.n} backends")
        s.ok[index] = usable

    @property
    def _selection(self):
        """(algorithm, backends tuple) of the current snapshot."""
        return self._snap.algo, self._snap.backends

    @property
    def _loads(self):
        """The BackendLoad of each backend of the current snapshot (a tuple)."""
        return self._snap.cells

    def select(self, key=None, Py_ssize_t max_iterations=256):
        """Return the first usable (healthy and enabled) backend for ``key``.

        Looks at no more than ``max_iterations`` candidates: the algorithm's
        first choice and then its fallbacks.

        Args:
            key: str (hashed as UTF-8), bytes, or None.  RoundRobin and Random
                ignore it.
            max_iterations: how many candidates to try; 0 selects nothing.
        Returns:
            A Backend, or None when no candidate within the limit is usable.
        Raises:
            TypeError: key is not str, bytes or None.
            ValueError: max_iterations is negative.
        """
        cdef _Snapshot s = self._snap
        cdef const char *p
        cdef Py_ssize_t ln, it = 0
        cdef Cursor cur
        cdef uint32_t i
        if max_iterations < 0:
            raise ValueError(f"max_iterations must be >= 0, not {max_iterations}")
        _key_view(key, &p, &ln)
        if max_iterations == 0:
            return None     # select nothing, and do not advance round robin
        if s.calgo is None:
            return _select_py(s, key, max_iterations, None)
        cur.loads = s.loads
        cur.ok = s.ok
        cur.stop_unusable = 1
        cur.big = NULL
        s.calgo._start(p, ln, &cur)
        try:
            while it < max_iterations and _cursor_next(&cur, &i):
                it += 1
                if s.ok[i]:
                    return s.backends[i]
            return None
        finally:
            _cursor_release(&cur)

    def select_with(self, key, Py_ssize_t max_iterations, accept):
        """Like ``select`` but ``accept(backend, usable)`` decides.

        Args:
            key: str, bytes or None.
            max_iterations: how many candidates to offer; 0 offers none.
            accept: called with each candidate and whether it is healthy and
                enabled; the first candidate for which it returns a true value
                is selected.  Exceptions propagate.
        Returns:
            The accepted Backend, or None.
        Raises:
            TypeError: key is not str, bytes or None, or accept is not callable.
            ValueError: max_iterations is negative.
        """
        cdef _Snapshot s = self._snap
        cdef const char *p
        cdef Py_ssize_t ln, it = 0
        cdef Cursor cur
        cdef uint32_t i
        if max_iterations < 0:
            raise ValueError(f"max_iterations must be >= 0, not {max_iterations}")
        if not callable(accept):
            raise TypeError(f"accept must be callable, not {accept!r:.60}")
        _key_view(key, &p, &ln)
        if max_iterations == 0:
            return None
        if s.calgo is None:
            return _select_py(s, key, max_iterations, accept)
        cur.loads = s.loads
        cur.ok = s.ok
        cur.stop_unusable = 0
        cur.big = NULL
        s.calgo._start(p, ln, &cur)
        try:
            while it < max_iterations and _cursor_next(&cur, &i):
                it += 1
                b = s.backends[i]
                if accept(b, s.ok[i] != 0):
                    return b
            return None
        finally:
            _cursor_release(&cur)


cdef object _select_py(_Snapshot s, object key, Py_ssize_t max_iterations, object accept):
    """Selection through a selection algorithm written in Python."""
    cdef Py_ssize_t it = 0, idx
    if s.algo is None or max_iterations == 0:
        return None
    if getattr(s.algo, "_reads_load", False):
        # a load-aware algorithm in Python (the reference classes): lend it
        # the loads and a copy of the flags
        order = s.algo.iter(key, loads=s.cells, ok=[s.ok[i] != 0 for i in range(s.n)],
                            stop_unusable=accept is None)
    else:
        order = s.algo.iter(key)
    for raw in order:
        if it >= max_iterations:
            break
        it += 1
        idx = _checked_index(s.algo, raw, s.n)
        b = s.backends[idx]
        if accept is None:
            if s.ok[idx]:
                return b
        elif accept(b, s.ok[idx] != 0):
            return b
    return None
