# distutils: sources = csrc/sw_metrics.c csrc/sw_shm.c
# cython: language_level=3
"""The shared metrics store (csrc/sw_metrics.h) and the objects that update it.

Theory of operation
-------------------
A ``Store`` maps one anonymous shared region before the master forks its
workers. Series (a metric's name and label values) are registered in the
region's table, so every process agrees on where a series' cells are. Each
worker claims a slab of its own (``Store.claim``) and is that slab's only
writer: ``Cell.inc`` is one relaxed load and store of a double, no lock and
no atomic read-modify-write. The master reads by summing the live slabs and
the base slab, into which it folds the counts of a worker that ended
(``Store.retire``), so totals never go backwards.

``sluiceway._metrics_py`` is the pure-Python twin of ``Store``; the tests
drive both with the same operations.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem
from cpython.pycapsule cimport PyCapsule_New
from cpython.ref cimport PyObject
from libc.stdint cimport int32_t, uint32_t
from libc.stdlib cimport free, malloc

from sluiceway._shm cimport sw_shm, sw_shm_anon, sw_shm_unmap
from sluiceway._mstore cimport *

import os as _os

COUNTER = SW_MK_COUNTER
GAUGE = SW_MK_GAUGE
GAUGE_MAX = SW_MK_GAUGE_MAX
HISTOGRAM = SW_MK_HISTOGRAM
INFO = SW_MK_INFO


@cython.final
cdef class Store:
    """A metrics store in shared memory.

    Args:
        slabs: how many processes may write at once (workers, including
            those of a generation that is still draining).
        cells: cells per slab (a counter or gauge takes one, a histogram its
            buckets plus two).
        series: capacity of the series table (a power of two; one entry
            stays free).
        key_bytes: room for the series' names, label values and
            descriptions.

    The process that makes it writes into the base slab until it
    ``claim``s one of its own (a worker does, after the fork).
    """

    def __cinit__(self, uint32_t slabs=16, uint32_t cells=65536, uint32_t series=8192,
                  uint32_t key_bytes=1 << 20):
        cdef size_t size = sw_ms_size(slabs, cells, series, key_bytes)
        cdef int rc
        if size == 0:
            raise ValueError(f"impossible metrics store shape: slabs={slabs} cells={cells} "
                             f"series={series} (a power of two) key_bytes={key_bytes}")
        rc = sw_shm_anon(&self.m, size)
        if rc < 0:
            raise OSError(-rc, f"cannot map {size} bytes of shared memory for the metrics: "
                               f"{_os.strerror(-rc)}")
        rc = sw_ms_init(self.m.base, size, slabs, cells, series, key_bytes)
        if rc < 0:
            sw_shm_unmap(&self.m)
            raise ValueError("metrics store: cannot initialise the region")
        self.h.base = self.m.base
        self.mine = sw_ms_slab(self.m.base, slabs)
        self.h.slab = &self.mine
        self.slab = -1
        self.nslabs = slabs
        self.ncells = cells
        self.nseries = series

    def __dealloc__(self):
        sw_shm_unmap(&self.m)

    # --- registration and slabs ------------------------------------------------

    def series(self, bytes key, bytes val, uint32_t kind, uint32_t ncells):
        """Find or add a series: ``(rc, first)`` with rc 0 (it existed), 1
        (added), or a negative errno (-EINVAL: another kind or size; -ENOSPC:
        full), and its first cell."""
        cdef uint32_t first = 0
        cdef int rc = sw_ms_series(self.m.base, PyBytes_AS_STRING(key),
                                   <uint32_t>PyBytes_GET_SIZE(key),
                                   PyBytes_AS_STRING(val), <uint32_t>PyBytes_GET_SIZE(val),
                                   kind, ncells, &first)
        return rc, first

    def claim(self, int32_t pid):
        """Take a slab for ``pid`` (the caller's own, usually) and write into
        it from now on. Returns its index, or -ENOSPC (the base slab is then
        still used)."""
        cdef int rc = sw_ms_claim(self.m.base, pid)
        if rc >= 0 and pid == _os.getpid():
            self.mine = sw_ms_slab(self.m.base, <uint32_t>rc)
            self.slab = rc
        return rc

    def retire(self, int32_t pid):
        """Fold ``pid``'s slab into the base slab and free it (the master,
        once that process has ended). Returns the slab, or -ENOENT."""
        return sw_ms_retire(self.m.base, pid)

    def owners(self):
        """The pid holding each slab (0: free)."""
        return [sw_ms_owner(self.m.base, i) for i in range(self.nslabs)]

    @property
    def my_slab(self):
        """The slab this process writes into (-1: the base slab)."""
        return self.slab

    def usage(self):
        """``{"series": n, "cells": n, "key_bytes": n}`` in use, and the
        capacities."""
        cdef const sw_ms_hdr *h = sw_ms_header(self.m.base)
        return {"series": h.series_used, "cells": h.cells_used, "key_bytes": h.bytes_used,
                "series_capacity": h.nseries - 1, "cells_capacity": h.ncells,
                "key_bytes_capacity": h.nbytes, "slabs": h.nslabs}

    # --- updates (tests and the Python API; hooks use Cell) ---------------------

    def add(self, uint32_t cell, double v, int slab=-2):
        """Add ``v`` to ``cell`` in this process's slab (or in ``slab``;
        ``nslabs`` is the base slab)."""
        cdef double *cs = self.mine if slab == -2 else self._slab(slab)
        if cell >= self.ncells:
            raise IndexError(cell)
        sw_ms_add(cs, cell, v)

    def set(self, uint32_t cell, double v, int slab=-2):
        cdef double *cs = self.mine if slab == -2 else self._slab(slab)
        if cell >= self.ncells:
            raise IndexError(cell)
        sw_ms_set(cs, cell, v)

    def observe(self, uint32_t cell, bounds, double v, int slab=-2):
        """Count ``v`` in the histogram at ``cell`` with upper ``bounds``."""
        cdef double *cs = self.mine if slab == -2 else self._slab(slab)
        cdef uint32_t nb = len(bounds), i
        cdef double *b
        if cell + nb + 2 > self.ncells:
            raise IndexError(cell)
        b = <double *>malloc((nb + 1) * sizeof(double))
        if b == NULL:
            raise MemoryError()
        try:
            for i in range(nb):
                b[i] = bounds[i]
            sw_ms_observe(cs, cell, b, nb, v)
        finally:
            free(b)

    cdef double *_slab(self, int slab) except NULL:
        if slab < 0 or slab > <int>self.nslabs:
            raise IndexError(f"no slab {slab}")
        return sw_ms_slab(self.m.base, <uint32_t>slab)

    # --- reading ---------------------------------------------------------------

    def read(self, uint32_t first, uint32_t ncells, uint32_t kind):
        """A series' cells combined over the live slabs and the base slab
        (summed; the largest for GAUGE_MAX), as a list of floats."""
        cdef double *out = <double *>malloc((ncells + 1) * sizeof(double))
        cdef int rc
        if out == NULL:
            raise MemoryError()
        try:
            rc = sw_ms_read(self.m.base, first, ncells, kind, out)
            if rc < 0:
                raise ValueError(f"cannot read cells {first}+{ncells} of kind {kind}")
            return [out[i] for i in range(ncells)]
        finally:
            free(out)

    def read_slab(self, int slab, uint32_t first, uint32_t ncells):
        """The cells of one slab, as they are (for per-worker figures)."""
        cdef double *cs = self._slab(slab)
        if first + ncells > self.ncells:
            raise IndexError(first)
        return [cs[first + i] for i in range(ncells)]

    def entries(self):
        """Every registered series: a list of ``(key, val, kind, first,
        ncells)`` in table order."""
        cdef sw_ms_ent e
        cdef uint32_t i
        cdef const char *kb
        out = []
        for i in range(self.nseries):
            if sw_ms_entry(self.m.base, i, &e) == 1:
                kb = sw_ms_bytes(self.m.base, 0)
                out.append((kb[e.key_off:e.key_off + e.key_len],
                            kb[e.val_off:e.val_off + e.val_len], e.kind, e.first, e.ncells))
        return out

    def handle(self):
        """A capsule the engine takes its view of the store from."""
        return PyCapsule_New(<void *>&self.h, b"sluiceway._metrics.handle", NULL)


@cython.final
@cython.freelist(32)
cdef class Cell:
    """One series of a counter, gauge or histogram, bound to its cells.

    Made by ``sluiceway.metrics`` (``Counter.labels(...)`` and friends):
    ``inc``, ``dec``, ``set`` and ``observe`` write this process's slab.
    """

    def __init__(self, *args):
        raise TypeError("Cell objects are made by sluiceway.metrics")

    @staticmethod
    cdef Cell make(Store store, uint32_t first, object bounds):
        cdef Cell c = Cell.__new__(Cell)
        c.store = store
        c.i = first
        c.bounds = bounds
        if bounds is not None:
            c.nb = <uint32_t>(PyBytes_GET_SIZE(bounds) // sizeof(double))
            c.bp = <const double *>PyBytes_AS_STRING(bounds)
        return c

    def inc(self, double amount=1.0):
        """Add ``amount`` (a counter: 0 or more)."""
        if amount < 0.0:
            raise ValueError("a counter only goes up; use a gauge")
        sw_ms_add(self.store.mine, self.i, amount)

    def dec(self, double amount=1.0):
        """Subtract ``amount`` (a gauge)."""
        sw_ms_add(self.store.mine, self.i, -amount)

    def add(self, double amount=1.0):
        """Add ``amount`` (a gauge; negative is allowed)."""
        sw_ms_add(self.store.mine, self.i, amount)

    def set(self, double value):
        """Set this process's value (a gauge)."""
        sw_ms_set(self.store.mine, self.i, value)

    def observe(self, double value):
        """Count ``value`` in a histogram."""
        sw_ms_observe(self.store.mine, self.i, self.bp, self.nb, value)

    @property
    def first(self):
        return self.i

    @property
    def store_(self):
        return self.store

    cpdef rebind(self, Store store, uint32_t first):
        """Point at the same series in another store."""
        self.store = store
        self.i = first


cdef extern from "Python.h":
    ctypedef PyObject *(*_vectorcallfunc "vectorcallfunc")(
        PyObject *, PyObject *const *, size_t, PyObject *) except NULL
    ctypedef struct _TypeVC "PyTypeObject":
        unsigned long tp_flags
        Py_ssize_t tp_vectorcall_offset
    unsigned long _HAVE_VECTORCALL "Py_TPFLAGS_HAVE_VECTORCALL"
    Py_ssize_t _VC_NARGS "PyVectorcall_NARGS"(size_t nargsf)
    object _vectorcall "PyObject_Vectorcall"(object callable, PyObject *const *args,
                                             size_t nargsf, PyObject *kwnames)
    PyObject *_dict_get_raw "PyDict_GetItem"(PyObject *d, PyObject *key)
    void _incref_raw "Py_INCREF"(PyObject *o)


@cython.final
cdef class Labels:
    """A family's ``labels(...)`` as called from hooks: a label set already
    made is found in C, through the vectorcall protocol (no Python frame,
    no keyword dict, no argument tuple: a dict lookup per label);
    anything else (values by name, a new set, values to convert) goes to
    ``slow``, the family's own method, with the same arguments.

    Args:
        children: the family's dict of label-value tuples to Cells (it only
            grows: a Cell is rebound in place, never removed).
        slow: the family's full ``labels`` implementation.
        names: the family's label names, in order (for values by name).
    """

    cdef _vectorcallfunc vc     # this instance's vectorcall entry
    cdef dict children
    cdef dict one               # str values, level by level -> their Cell (see below)
    cdef object slow
    cdef tuple names

    def __init__(self, dict children, slow, tuple names=()):
        self.vc = _labels_vectorcall
        self.children = children
        self.one = {}
        self.slow = slow
        self.names = names

    def __call__(self, *values, **kw):
        # what a call with a tuple and a dict (PyObject_Call) reaches;
        # calls from Python code take _labels_vectorcall
        cdef PyObject *c
        if not kw:
            c = PyDict_GetItem(self.children, values)
            if c != NULL:
                return <object>c
        return self.slow(*values, **kw)


cdef enum:
    _FAST_LABELS = 8    # families with up to this many labels take the walk below


cdef PyObject *_labels_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf,
                                  PyObject *kwnames) except NULL:
    """Labels(...) from Python. The values, by position or put in order by
    name, are walked down ``one``: a dict of first values, each holding a
    dict of second values, and so on, the last holding the Cell; no tuple,
    no hash of one. Anything not found there takes the slow path, whose
    answer is remembered when every value was a str and the answer is that
    label set's own Cell (never ``_other``'s)."""
    cdef Labels me = <Labels>callable
    cdef Py_ssize_t n = _VC_NARGS(nargsf), m = len(me.names), i
    cdef PyObject *c
    cdef PyObject *vals[_FAST_LABELS]
    cdef PyObject *const *v = NULL
    if 0 < m <= _FAST_LABELS:
        if kwnames == NULL:
            if n == m:
                v = args
        elif n == 0 and _by_name(me.names, args, <tuple>kwnames, vals):
            v = vals
    if v != NULL:
        c = <PyObject *>me.one
        for i in range(m):
            c = _dict_get_raw(c, v[i])    # a dict on every level but the last
            if c == NULL:
                break
        else:
            _incref_raw(c)
            return c
    cell = _vectorcall(me.slow, args, nargsf, kwnames)
    if v != NULL:
        _remember(me, v, m, cell)
    _incref_raw(<PyObject *>cell)
    return <PyObject *>cell


cdef bint _by_name(tuple names, PyObject *const *args, tuple kwnames,
                   PyObject **vals) except -1:
    """Put the values given by name in ``names`` order into ``vals``; False
    unless the names are exactly the family's (the slow path says what is
    wrong)."""
    cdef Py_ssize_t m = len(names), i, j
    if len(kwnames) != m:
        return False
    for i in range(m):
        for j in range(m):
            # a call site's names are interned constants: mostly the same object
            if kwnames[j] is names[i] or kwnames[j] == names[i]:
                break
        else:
            return False
        vals[i] = args[j]
    return True


cdef int _remember(Labels me, PyObject *const *v, Py_ssize_t m, object cell) except -1:
    """File ``cell`` under its values in ``me.one`` when they are all str
    and it is that label set's own Cell (the slow path makes values str and
    counts a set past max_label_sets as ``_other``: neither is filed)."""
    cdef Py_ssize_t i
    cdef dict d
    for i in range(m):
        if type(<object>v[i]) is not str:
            return 0
    if me.children.get(tuple([<object>v[i] for i in range(m)])) is not cell:
        return 0
    d = me.one
    for i in range(m - 1):
        nxt = d.get(<object>v[i])
        if nxt is None:
            nxt = d[<object>v[i]] = {}
        d = <dict>nxt
    d[<object>v[m - 1]] = cell
    return 0


cdef _enable_vectorcall():
    """Let calls of a Labels take _labels_vectorcall: the type says where
    an instance keeps its entry (the ``vc`` field)."""
    cdef Labels probe = Labels.__new__(Labels)
    cdef _TypeVC *t = <_TypeVC *><PyObject *>Labels
    t.tp_vectorcall_offset = <Py_ssize_t>(<char *>&probe.vc - <char *><PyObject *>probe)
    t.tp_flags |= _HAVE_VECTORCALL


_enable_vectorcall()


def make_cell(Store store, uint32_t first, bounds=None):
    """A Cell on ``store`` at ``first`` (``bounds``: a histogram's upper
    bounds packed as doubles)."""
    return Cell.make(store, first, bounds)
