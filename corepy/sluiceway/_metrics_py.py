"""Pure-Python twin of ``sluiceway._metrics.Store`` (csrc/sw_metrics.h).

The same operations on plain lists: a table of series (key -> kind, first
cell, size), one slab of cells per writer plus the base slab, ``retire``
folding a writer's counter and histogram cells into the base slab. It
shares nothing between processes; the tests run it and the compiled store
with the same operations and compare every answer.
"""

from __future__ import annotations

import errno
import os
from typing import Dict, List, Sequence, Tuple

COUNTER, GAUGE, GAUGE_MAX, HISTOGRAM, INFO = 1, 2, 3, 4, 5
_RETIRED = (COUNTER, HISTOGRAM)


class Store:
    def __init__(self, slabs: int = 16, cells: int = 65536, series: int = 8192,
                 key_bytes: int = 1 << 20) -> None:
        if not (slabs and cells and series and key_bytes) or series & (series - 1) or \
                slabs > 1 << 16 or cells > 1 << 26 or series > 1 << 24:
            raise ValueError("impossible metrics store shape")
        self.nslabs, self.ncells, self.nseries, self.nbytes = slabs, cells, series, key_bytes
        self.table: Dict[bytes, Tuple[bytes, int, int, int]] = {}
        self.cells_used = 0
        self.bytes_used = 0
        self.slabs: List[List[float]] = [[0.0] * cells for _ in range(slabs + 1)]
        self.owner: List[int] = [0] * slabs
        self.slab = -1

    def series(self, key: bytes, val: bytes, kind: int, ncells: int) -> Tuple[int, int]:
        if not key or not COUNTER <= kind <= INFO or (kind == INFO) != (ncells == 0) or \
                (kind == HISTOGRAM and ncells < 2):
            return -errno.EINVAL, 0
        e = self.table.get(key)
        if e is not None:
            if e[1] != kind or e[3] != ncells:
                return -errno.EINVAL, 0
            return 0, e[2]
        if len(self.table) + 1 >= self.nseries or self.cells_used + ncells > self.ncells or \
                self.bytes_used + len(key) + len(val) > self.nbytes:
            return -errno.ENOSPC, 0
        first = self.cells_used
        self.table[key] = (val, kind, first, ncells)
        self.cells_used += ncells
        self.bytes_used += len(key) + len(val)
        return 1, first

    def claim(self, pid: int) -> int:
        if pid <= 0:
            return -errno.EINVAL
        if pid in self.owner:
            s = self.owner.index(pid)
        elif 0 in self.owner:
            s = self.owner.index(0)
            self.owner[s] = pid
        else:
            return -errno.ENOSPC
        if pid == os.getpid():
            self.slab = s
        return s

    def retire(self, pid: int) -> int:
        if pid <= 0 or pid not in self.owner:
            return -errno.ENOENT
        s = self.owner.index(pid)
        src, dst = self.slabs[s], self.slabs[self.nslabs]
        for _val, kind, first, n in self.table.values():
            if kind in _RETIRED:
                for c in range(first, first + n):
                    if src[c] != 0.0:
                        dst[c] += src[c]
        self.slabs[s] = [0.0] * self.ncells
        self.owner[s] = 0
        return s

    def owners(self) -> List[int]:
        return list(self.owner)

    @property
    def my_slab(self) -> int:
        return self.slab

    def _cells(self, slab: int) -> List[float]:
        if slab == -2:
            return self.slabs[self.slab if self.slab >= 0 else self.nslabs]
        if not 0 <= slab <= self.nslabs:
            raise IndexError(f"no slab {slab}")
        return self.slabs[slab]

    def add(self, cell: int, v: float, slab: int = -2) -> None:
        cs = self._cells(slab)
        if cell >= self.ncells:
            raise IndexError(cell)
        cs[cell] += v

    def set(self, cell: int, v: float, slab: int = -2) -> None:
        cs = self._cells(slab)
        if cell >= self.ncells:
            raise IndexError(cell)
        cs[cell] = v

    def observe(self, cell: int, bounds: Sequence[float], v: float, slab: int = -2) -> None:
        cs = self._cells(slab)
        nb = len(bounds)
        if cell + nb + 2 > self.ncells:
            raise IndexError(cell)
        b = 0
        while b < nb and not v <= bounds[b]:
            b += 1
        cs[cell + b] += 1.0
        if v == v:
            cs[cell + nb + 1] += v

    def read(self, first: int, ncells: int, kind: int) -> List[float]:
        if first + ncells > self.ncells or not COUNTER <= kind <= HISTOGRAM:
            raise ValueError(f"cannot read cells {first}+{ncells} of kind {kind}")
        out = list(self.slabs[self.nslabs][first:first + ncells])
        for s in range(self.nslabs):
            if not self.owner[s]:
                continue
            for c in range(ncells):
                v = self.slabs[s][first + c]
                if kind == GAUGE_MAX:
                    if v > out[c]:
                        out[c] = v
                else:
                    out[c] += v
        return out

    def read_slab(self, slab: int, first: int, ncells: int) -> List[float]:
        return list(self._cells(slab)[first:first + ncells])

    def entries(self) -> list:
        return [(k, v, kind, first, n) for k, (v, kind, first, n) in self.table.items()]

    def usage(self) -> dict:
        return {"series": len(self.table), "cells": self.cells_used, "key_bytes": self.bytes_used,
                "series_capacity": self.nseries - 1, "cells_capacity": self.ncells,
                "key_bytes_capacity": self.nbytes, "slabs": self.nslabs}
