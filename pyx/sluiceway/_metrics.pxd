# sluiceway._metrics: the shared metrics store and its cells.
from libc.stdint cimport uint32_t

from sluiceway._shm cimport sw_shm
from sluiceway._mstore cimport sw_ms_handle


cdef class Store:
    cdef sw_shm m
    cdef sw_ms_handle h         # what the engine's capsule points at
    cdef double *mine           # the slab this process writes (the base slab until claim)
    cdef int slab               # its index (-1: the base slab)
    cdef uint32_t nslabs
    cdef uint32_t ncells
    cdef uint32_t nseries
    cdef double *_slab(self, int slab) except NULL


cdef class Cell:
    cdef Store store
    cdef uint32_t i             # first cell
    cdef object bounds          # a histogram's upper bounds, packed doubles (bytes)
    cdef const double *bp       # ... their address
    cdef uint32_t nb            # ... and count
    @staticmethod
    cdef Cell make(Store store, uint32_t first, object bounds)
    cpdef rebind(self, Store store, uint32_t first)
