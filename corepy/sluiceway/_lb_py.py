"""Pure-Python reference of ``sluiceway._lb`` (the compiled selection core).

Every class here makes exactly the same choices as its compiled twin for the
same backends, keys and seeds; ``tests/test_lb_select.py`` drives both with
hypothesis.  The reference is written for clarity, not speed: it exists to pin
down the algorithms (see ``csrc/sw_lb.h`` for the contract they share) and as
a fallback for debugging, and it is what ``LoadBalancer`` runs on when given
one of these classes as ``selection``.
"""

import bisect
import heapq
import itertools
import os
import zlib
from fractions import Fraction
from math import gcd

MAX_WEIGHT = 65535
MAX_SLOTS = 1 << 24
MAX_BACKENDS = 1 << 20
KETAMA_POINTS = 160
LOAD_CLAMP = 1 << 46      # counts compare as at most this (csrc/sw_lb.h)

_M64 = (1 << 64) - 1
_FNV_BASIS = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3


def fnv1a64(data):
    """64-bit FNV-1a of ``data`` (bytes)."""
    h = _FNV_BASIS
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & _M64
    return h


def mix64(z):
    """splitmix64's output function (a bijection on 64-bit ints)."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def _key_bytes(key):
    if isinstance(key, bytes):
        return key
    if isinstance(key, str):
        return key.encode("utf-8")
    if key is None:
        return b""
    raise TypeError(
        f"a selection key must be str, bytes or None, not {type(key).__name__} "
        f"({key!r:.60}); convert it, e.g. str(key) or key.encode()")


def _checked_weight(backend, i):
    try:
        w = backend.weight
    except AttributeError:
        raise TypeError(f"backend #{i} ({backend!r:.80}) has no 'weight'; "
                        "pass sluiceway.lb.Backend objects") from None
    if isinstance(w, bool) or not isinstance(w, int):
        raise TypeError(f"backend #{i} ({backend!r:.80}) has weight {w!r}; "
                        "a weight must be an int")
    if w < 1 or w > MAX_WEIGHT:
        raise ValueError(f"backend #{i} ({backend!r:.80}) has weight {w}; "
                         f"a weight must be between 1 and {MAX_WEIGHT}")
    return w


def _too_big(what):
    return ValueError(
        f"the {what} would need more than {MAX_SLOTS} entries; "
        "use fewer backends or smaller weights (only their ratios matter)")


def weighted_table(weights):
    """The stride-scheduled weighted table of ``csrc/sw_lb.h`` (a list of indexes)."""
    if not weights:
        return []
    g = 0
    for w in weights:
        g = gcd(g, w)
    reduced = [w // g for w in weights]
    if sum(reduced) > MAX_SLOTS:
        raise _too_big("weighted table")
    # Backend i's j-th slot sits at virtual time (2j+1)/(2w_i); ties by index.
    heap = [(Fraction(1, 2 * w), i, 0) for i, w in enumerate(reduced)]
    heapq.heapify(heap)
    table = []
    while heap:
        _, i, j = heapq.heappop(heap)
        table.append(i)
        if j + 1 < reduced[i]:
            heapq.heappush(heap, (Fraction(2 * j + 3, 2 * reduced[i]), i, j + 1))
    return table


def fallback_walk(first, n, seed):
    """Yield the backends after ``first`` in the order of sw_walk (each once)."""
    if n <= 2:
        stride = 1
    else:
        stride = 1 + seed % (n - 1)
        while gcd(stride, n) != 1:
            stride = stride % (n - 1) + 1
    cur = first
    for _ in range(n - 1):
        cur = (cur + stride) % n
        yield cur


class _Weighted:
    def __init__(self, backends):
        backends = list(backends)
        if len(backends) > MAX_BACKENDS:
            raise ValueError(f"{len(backends)} backends is more than the "
                             f"{MAX_BACKENDS} supported")
        weights = [_checked_weight(b, i) for i, b in enumerate(backends)]
        self._n = len(weights)
        self._table = weighted_table(weights)

    def __len__(self):
        return self._n

    def _draw(self, key):
        """Return (h, seed): the slot hash and the fallback-walk seed."""
        raise NotImplementedError

    def iter(self, key=None):
        """Yield the first choice, then every other backend once."""
        h, seed = self._draw(_key_bytes(key))
        return self._gen(h, seed)

    def _gen(self, h, seed):
        if not self._n:
            return
        first = self._table[h % len(self._table)]
        yield first
        yield from fallback_walk(first, self._n, seed)

    def next(self, key=None):
        """Return the index of the first choice for ``key``."""
        for i in self.iter(key):
            return i
        raise LookupError(f"{type(self).__name__} has no backends to choose from")

    def __repr__(self):
        return f"<{type(self).__module__}.{type(self).__name__} over {self._n} backends>"


class RoundRobin(_Weighted):
    """Reference of ``sluiceway._lb.RoundRobin``."""

    def __init__(self, backends):
        super().__init__(backends)
        self._counter = 0

    def _draw(self, key):
        c = self._counter
        self._counter = (c + 1) & _M64
        return c, 0


class FNVHash(_Weighted):
    """Reference of ``sluiceway._lb.FNVHash``."""

    def _draw(self, key):
        h = fnv1a64(key)
        return h, mix64(h)


def _seed_state(seed):
    if seed is None:
        return int.from_bytes(os.urandom(8), "little")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int or None, not {seed!r:.60}")
    return seed & _M64


class Random(_Weighted):
    """Reference of ``sluiceway._lb.Random`` (same splitmix64 sequence per seed)."""

    def __init__(self, backends, seed=None):
        super().__init__(backends)
        self._state = _seed_state(seed)

    def _next64(self):
        self._state = (self._state + 0x9E3779B97F4A7C15) & _M64
        return mix64(self._state)

    def _draw(self, key):
        h = self._next64()
        return h, self._next64()


# ---- selection by load (csrc/sw_lb.h, part 5) ------------------------------

class BackendLoad:
    """Reference of ``sluiceway._lb.BackendLoad``: one backend's requests in flight."""

    __slots__ = ("inflight",)

    def __init__(self):
        self.inflight = 0

    def _acquire(self):
        self.inflight += 1

    def _release(self):
        self.inflight -= 1

    def __repr__(self):
        return f"<BackendLoad inflight={self.inflight}>"


class _LoadView:
    """What a load-aware algorithm reads: live load cells, live usable flags
    and the weights (None loads: every load is 0; None ok: all usable)."""

    def __init__(self, loads, ok, weights):
        self.loads, self.ok, self.w = loads, ok, weights

    def load(self, i):
        if self.loads is None:
            return 0
        return min(max(self.loads[i].inflight, 0), LOAD_CLAMP)

    def usable(self, i):
        return self.ok is None or bool(self.ok[i])

    def less_loaded(self, i, j):
        return self.load(i) * self.w[j] < self.load(j) * self.w[i]

    def better(self, i, j):
        ui, uj = self.usable(i), self.usable(j)
        if ui != uj:
            return ui
        return self.less_loaded(i, j)


class LeastConnections:
    """Reference of ``sluiceway._lb.LeastConnections`` (nginx's least_conn)."""

    _reads_load = True

    def __init__(self, backends):
        backends = list(backends)
        if len(backends) > MAX_BACKENDS:
            raise ValueError(f"{len(backends)} backends is more than the "
                             f"{MAX_BACKENDS} supported")
        self._w = [_checked_weight(b, i) for i, b in enumerate(backends)]
        self._n = len(self._w)
        self._cw = [0] * self._n

    def __len__(self):
        return self._n

    def _first(self, v):
        """The least loaded usable backend (smooth WRR among ties), or None."""
        w, n = self._w, self._n
        best, many = None, False
        for i in range(n):
            if not v.usable(i):
                continue
            if best is None or v.less_loaded(i, best):
                best, many = i, False
            elif not v.less_loaded(best, i):
                many = True
        if best is None or not many:
            return best
        tied = [i for i in range(best, n)
                if v.usable(i) and v.load(i) * w[best] == v.load(best) * w[i]]
        win, total = best, 0
        for i in tied:
            self._cw[i] += w[i]
            total += w[i]
            if self._cw[i] > self._cw[win]:
                win = i
        self._cw[win] -= total
        return win

    def iter(self, key=None, loads=None, ok=None, stop_unusable=False):
        """The first choice (computed now), then the rest best first."""
        _key_bytes(key)
        if not self._n:
            return iter(())
        v = _LoadView(loads, ok, self._w)
        return self._gen(v, self._first(v), stop_unusable)

    def _gen(self, v, first, stop_unusable):
        n = self._n
        seen = set()
        if first is not None:
            seen.add(first)
            yield first
        origin = 0 if first is None else first
        while len(seen) < n:
            best = None
            for k in range(n):
                i = (origin + k) % n
                if i not in seen and (best is None or v.better(i, best)):
                    best = i
            if stop_unusable and not v.usable(best):
                return
            seen.add(best)
            yield best

    def next(self, key=None):
        """Return the index of the first choice (every load 0)."""
        for i in self.iter(key):
            return i
        raise LookupError("LeastConnections has no backends to choose from")

    def __repr__(self):
        return f"<{type(self).__module__}.LeastConnections over {self._n} backends>"


class PowerOfTwoChoices(Random):
    """Reference of ``sluiceway._lb.PowerOfTwoChoices``."""

    _reads_load = True

    def __init__(self, backends, seed=None):
        backends = list(backends)
        super().__init__(backends, seed)
        self._w = [b.weight for b in backends]

    def iter(self, key=None, loads=None, ok=None, stop_unusable=False):
        """The less loaded of the first two usable backends of a weighted
        random sequence, then the rest of its usable ones in pairs (each
        pair less loaded first), then the unusable ones."""
        _key_bytes(key)
        if not self._n:
            return iter(())
        r1, r2, r3 = self._next64(), self._next64(), self._next64()
        t = self._table
        c1 = t[r1 % len(t)]
        c2 = t[r2 % len(t)]
        if c2 == c1:
            c2 = next(fallback_walk(c1, self._n, r3), c1)
        head = [c1] if self._n < 2 else [c1, c2]
        seq = head + [x for x in fallback_walk(c1, self._n, r3) if x not in head]
        return self._pairs(_LoadView(loads, ok, self._w), seq, stop_unusable)

    @staticmethod
    def _pairs(v, seq, stop_unusable):
        skipped = set()
        pending = None
        for x in seq:                       # phase 0: usable ones, in pairs
            if not v.usable(x):
                skipped.add(x)
                continue
            if pending is None:
                pending = x
                continue
            a, pending = pending, None
            if v.less_loaded(x, a):
                yield x
                yield a
            else:
                yield a
                yield x
        if pending is not None:
            yield pending
        if stop_unusable:
            return
        for x in seq:                       # phase 1: those passed over
            if x in skipped:
                yield x


def ketama_server_hash_input(addr):
    """Split an nginx ``server`` string as nginx's chash does: (host, port) bytes."""
    raw = addr.encode("utf-8")
    if len(raw) >= 5 and raw[:5].lower() == b"unix:":
        return raw[5:], b""
    j = raw.rfind(b":")
    if j < 0:
        return raw, b""
    return raw[:j], raw[j + 1:]


def ketama_points(addr, weight):
    """The ring points (crc32 values) nginx gives one server, in generation order."""
    host, port = ketama_server_hash_input(addr)
    prefix = host + b"\0" + port
    prev = 0
    out = []
    for _ in range(weight * KETAMA_POINTS):
        prev = zlib.crc32(prefix + prev.to_bytes(4, "little"))
        out.append(prev)
    return out


class Consistent:
    """Reference of ``sluiceway._lb.Consistent`` (nginx-compatible Ketama)."""

    def __init__(self, backends):
        backends = list(backends)
        if len(backends) > MAX_BACKENDS:
            raise ValueError(f"{len(backends)} backends is more than the "
                             f"{MAX_BACKENDS} supported")
        weights = [_checked_weight(b, i) for i, b in enumerate(backends)]
        if sum(weights) * KETAMA_POINTS > MAX_SLOTS:
            raise _too_big("consistent-hash ring")
        pts = []
        for i, b in enumerate(backends):
            addr = getattr(b, "addr", None)
            if not isinstance(addr, str):
                raise TypeError(f"backend #{i} ({b!r:.80}) has addr {addr!r:.60}; "
                                "Consistent needs a str addr such as '10.0.0.1:80'")
            pts.extend((h, i) for h in ketama_points(addr, weights[i]))
        pts.sort()
        ring = []
        for h, i in pts:
            if not ring or ring[-1][0] != h:
                ring.append((h, i))
        self._ring = ring
        self._hashes = [h for h, _ in ring]
        self._n = len(backends)

    def __len__(self):
        return self._n

    def points(self):
        """Return the ring as a list of ``(hash, backend_index)`` sorted by hash."""
        return list(self._ring)

    def _find(self, h):
        i = bisect.bisect_left(self._hashes, h)
        return 0 if i == len(self._hashes) else i

    def iter(self, key=None):
        """Yield backends in ring order from the key's point, each once."""
        h = zlib.crc32(_key_bytes(key))
        return self._gen(h)

    def _gen(self, h):
        if not self._n:
            return
        start = self._find(h)
        seen = set()
        np = len(self._ring)
        for step in range(np):
            b = self._ring[(start + step) % np][1]
            if b not in seen:
                seen.add(b)
                yield b
                if len(seen) == self._n:
                    return

    def next(self, key=None):
        """Return the index of the first choice for ``key``."""
        for i in self.iter(key):
            return i
        raise LookupError("Consistent has no backends to choose from")

    def __repr__(self):
        return f"<{type(self).__module__}.Consistent over {self._n} backends>"


class BalancerCore:
    """Reference of ``sluiceway._lb.BalancerCore``: select over a snapshot."""

    def __init__(self):
        self._snap = (None, (), [])
        self._cells = ()

    def _install(self, algo, backends, usable, loads=None):
        backends = tuple(backends)
        if len(usable) != len(backends):
            raise ValueError(f"got {len(usable)} usable flags for {len(backends)} backends")
        if not callable(getattr(algo, "iter", None)):
            raise TypeError(f"selection algorithm {algo!r:.80} has no iter(key) method")
        if len(algo) != len(backends):
            raise ValueError(f"selection algorithm {algo!r:.80} was built for "
                             f"{len(algo)} backends, not {len(backends)}")
        cells = tuple(BackendLoad() for _ in backends) if loads is None else tuple(loads)
        if len(cells) != len(backends):
            raise ValueError(f"got {len(cells)} loads for {len(backends)} backends")
        self._snap = (algo, backends, [bool(u) for u in usable])
        self._cells = cells

    def _set_usable(self, index, usable):
        ok = self._snap[2]
        if index < 0 or index >= len(ok):
            raise IndexError(f"backend index {index} out of range for {len(ok)} backends")
        ok[index] = bool(usable)

    @property
    def _selection(self):
        return self._snap[0], self._snap[1]

    @property
    def _loads(self):
        return self._cells

    def select(self, key=None, max_iterations=256):
        """See ``sluiceway._lb.BalancerCore.select``."""
        return self._select(key, max_iterations, None)

    def select_with(self, key, max_iterations, accept):
        """See ``sluiceway._lb.BalancerCore.select_with``."""
        if not callable(accept):
            raise TypeError(f"accept must be callable, not {accept!r:.60}")
        return self._select(key, max_iterations, accept)

    def _select(self, key, max_iterations, accept):
        if max_iterations < 0:
            raise ValueError(f"max_iterations must be >= 0, not {max_iterations}")
        algo, backends, ok = self._snap
        _key_bytes(key)
        if algo is None or max_iterations == 0:
            return None
        if getattr(algo, "_reads_load", False):
            order = algo.iter(key, loads=self._cells, ok=ok, stop_unusable=accept is None)
        else:
            order = algo.iter(key)
        for it, raw in enumerate(order):
            if it >= max_iterations:
                break
            idx = raw.__index__()
            if idx < 0 or idx >= len(backends):
                raise IndexError(f"selection algorithm {algo!r:.80} yielded index {idx} "
                                 f"but there are {len(backends)} backends")
            if accept is None:
                if ok[idx]:
                    return backends[idx]
            elif accept(backends[idx], ok[idx]):
                return backends[idx]
        return None
