"""Metrics for the whole server: the engine's and your own, in shared memory.

Define metrics anywhere (at import of your app, or in a hook) and update
them from hooks; every worker writes its own slab of one shared region and
the admin listener's ``/metrics`` sums them (docs/observability.md)::

    from sluiceway.metrics import Counter, Histogram

    TENANT_REQUESTS = Counter("myapp_tenant_requests_total", "Requests by tenant",
                              ["tenant"])

    class App(ProxyHttp):
        def request_filter(self, session, ctx):
            TENANT_REQUESTS.labels(session.req_header.get("x-tenant", "none")).inc()

An update is a few tens of nanoseconds (one store into this process's
slab); ``labels(...)`` finds its series in a dict after the first time.

Kinds: :class:`Counter` (only goes up; an ended worker's counts are kept),
:class:`Gauge` (each worker sets its own value; ``/metrics`` shows the sum
over live workers, or the largest with ``mode="max"``) and
:class:`Histogram` (fixed buckets). Label sets per metric are bounded
(``max_label_sets``); past the bound, updates go to one series whose labels
are all ``"_other"``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import struct
import threading
import weakref
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from . import _metrics

__all__ = ["Counter", "Gauge", "Histogram", "DEFAULT_BUCKETS", "collector", "exposition",
           "snapshot"]

log = logging.getLogger("sluiceway.error")

#: Upper bounds (seconds) of the engine's duration histograms, and the
#: default of :class:`Histogram`.
DEFAULT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
OTHER = "_other"

_lock = threading.Lock()
_store: Optional[_metrics.Store] = None
_families: "weakref.WeakValueDictionary[str, _Family]" = weakref.WeakValueDictionary()
_void: Optional[_metrics.Store] = None
_shared = False


# --- the store ----------------------------------------------------------------

def make_store(max_series: int = 8192, slabs: int = 16) -> _metrics.Store:
    """A store for a server: ``max_series`` series (rounded up to a power of
    two), ``slabs`` writer processes at once."""
    n = 1
    while n < max_series + 1:
        n *= 2
    return _metrics.Store(slabs, max(64 * n, 4096), n, max(160 * n, 65536))


def install(store: Optional[_metrics.Store], shared: bool = False) -> None:
    """Make ``store`` the one this process's metrics write to (the master
    does, before it forks, with ``shared``; None: back to no store).
    Metrics defined before are moved to it."""
    global _store, _shared
    with _lock:
        _store = store
        _shared = shared and store is not None
        for fam in list(_families.values()):
            fam._rebind()


def shared() -> bool:
    """Whether the installed store is a server's, shared by its workers."""
    return _shared


def store() -> Optional[_metrics.Store]:
    """The installed store, or None."""
    return _store


def _target() -> _metrics.Store:
    """Where updates go: the installed store, else a process-local one (a
    program without a server: updates are kept, nobody scrapes them)."""
    global _store
    if _store is None:
        _store = make_store(1024, 2)
    return _store


def claim_slab() -> int:
    """In a new worker: write into a slab of our own from now on."""
    s = _store
    if s is None:
        return -1
    rc = s.claim(os.getpid())
    if rc < 0:
        log.error("sluiceway: no free metrics slab for worker %d (more workers than metrics "
                  "slabs); its counts go to the shared base slab", os.getpid())
    return rc


def retire(pid: int) -> None:
    """In the master, once worker ``pid`` has ended: keep its counts."""
    s = _store
    if s is not None:
        s.retire(pid)


def _void_store() -> _metrics.Store:
    global _void
    if _void is None:
        _void = _metrics.Store(1, 4096, 2, 64)
    return _void


# --- families -------------------------------------------------------------------

def _key(name: str, values: Sequence[str]) -> bytes:
    return (name + "\0" + "\0".join(values)).encode("utf-8", "surrogateescape")


class _Family:
    kind = 0
    type_name = ""

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str] = (),
                 max_label_sets: int = 1000, _buckets: Sequence[float] = (),
                 _mode: str = "sum") -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"metric name {name!r}: use letters, digits, '_' and ':' "
                             "(not starting with a digit)")
        labelnames = tuple(labelnames)
        for ln in labelnames:
            if not isinstance(ln, str) or not _LABEL.match(ln) or ln.startswith("__") or \
                    ln in ("le", "quantile"):
                raise ValueError(f"label name {ln!r} of {name}: use letters, digits and '_' "
                                 "(not 'le', 'quantile' or a leading '__')")
        self.name = name
        self.documentation = str(documentation)
        self.labelnames = labelnames
        self.max_label_sets = max_label_sets
        self._buckets = tuple(_buckets)
        self._packed = struct.pack(f"{len(self._buckets)}d", *self._buckets) \
            if self.kind == _metrics.HISTOGRAM else None
        self._mode = _mode
        self._children: Dict[tuple, _metrics.Cell] = {}
        self._warned = False
        self._meta = json.dumps({"type": self.type_name, "help": self.documentation,
                                 "labels": list(labelnames), "buckets": list(self._buckets),
                                 "mode": _mode}, sort_keys=True).encode()
        with _lock:
            old = _families.get(name)
            if old is not None and old._meta != self._meta:
                raise ValueError(f"metric {name} is already defined differently "
                                 f"({old.type_name} with labels {list(old.labelnames)})")
            _families[name] = self
        self._default = None
        if not labelnames:
            self._default = self._child(())
        # labels(...) of a set already made: found in C (see _metrics.Labels)
        self.labels = _metrics.Labels(self._children, self._labels, tuple(labelnames))  # type: ignore[method-assign]

    @property
    def _ncells(self) -> int:
        return len(self._buckets) + 2 if self.kind == _metrics.HISTOGRAM else 1

    def _register(self, st: _metrics.Store, values: tuple) -> int:
        """The first cell of this series in ``st`` (-1: it cannot have one)."""
        rc, _ = st.series(b"\x01" + self.name.encode(), self._meta, _metrics.INFO, 0)
        if rc == -22:
            raise ValueError(f"metric {self.name} is already defined differently in this server")
        if rc < 0:
            return -1
        rc, first = st.series(_key(self.name, values), b"", self.kind, self._ncells)
        if rc == -22:
            raise ValueError(f"metric {self.name} is already defined differently in this server")
        return first if rc >= 0 else -1

    def _bind(self, values: tuple) -> Tuple[_metrics.Store, int]:
        st = _target()
        first = self._register(st, values)
        if first < 0:
            if not self._warned:
                self._warned = True
                log.error("sluiceway: the metrics store is full (metrics_max_series): "
                          "%s%s is not recorded", self.name, list(values) if values else "")
            return _void_store(), 0
        return st, first

    def _child(self, values: tuple) -> _metrics.Cell:
        with _lock:
            c = self._children.get(values)
            if c is not None:
                return c
            st, first = self._bind(values)
            c = _metrics.make_cell(st, first, self._packed)
            self._children[values] = c
            return c

    def _rebind(self) -> None:
        for values, c in self._children.items():
            st, first = self._bind(values)
            c.rebind(st, first)

    def labels(self, *values, **kw) -> _metrics.Cell:
        """The series for these label values (positional, in ``labelnames``
        order, or by name): an object with ``inc``/``dec``/``set``/
        ``observe``. Keep it to skip the lookup."""
        return self._labels(*values, **kw)

    def _labels(self, *values, **kw) -> _metrics.Cell:
        c = self._children.get(values)
        if c is not None:
            return c
        if kw:
            if values:
                raise ValueError("give label values by position or by name, not both")
            try:
                values = tuple(kw[n] for n in self.labelnames)
            except KeyError as exc:
                raise ValueError(f"{self.name} needs labels {list(self.labelnames)}, "
                                 f"missing {exc.args[0]!r}") from None
            if len(kw) != len(self.labelnames):
                raise ValueError(f"{self.name} has labels {list(self.labelnames)}, "
                                 f"got {sorted(kw)}")
            c = self._children.get(values)
            if c is not None:
                return c
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} has labels {list(self.labelnames)}; "
                             f"got {len(values)} values")
        values = tuple(str(v).replace("\0", "") for v in values)
        if values not in self._children and len(self._children) >= self.max_label_sets:
            if not self._warned:
                self._warned = True
                log.warning("sluiceway: metric %s has %d label sets (max_label_sets): further "
                            "ones are counted as %r", self.name, self.max_label_sets, OTHER)
            values = (OTHER,) * len(self.labelnames)
        return self._child(values)

    def _no_labels(self) -> _metrics.Cell:
        if self._default is None:
            raise ValueError(f"{self.name} has labels {list(self.labelnames)}: "
                             "use .labels(...) first")
        return self._default


class Counter(_Family):
    """A counter (Prometheus ``counter``). A name ending in ``_total`` is
    shown as is; otherwise ``_total`` is added."""

    kind = _metrics.COUNTER
    type_name = "counter"

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str] = (),
                 max_label_sets: int = 1000) -> None:
        if name.endswith("_total"):
            name = name[:-6]
        super().__init__(name, documentation, labelnames, max_label_sets)
        if self._default is not None:   # no labels: straight to the one series
            self.inc = self._default.inc  # type: ignore[method-assign]

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount`` (no labels)."""
        self._no_labels().inc(amount)


class Gauge(_Family):
    """A gauge. Each worker sets or moves its own value; ``/metrics`` shows
    the sum over live workers (``mode="sum"``) or the largest
    (``mode="max"``). A worker that ends takes its value with it."""

    type_name = "gauge"

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str] = (),
                 max_label_sets: int = 1000, mode: str = "sum") -> None:
        if mode not in ("sum", "max"):
            raise ValueError(f"Gauge mode must be 'sum' or 'max', got {mode!r}")
        self.kind = _metrics.GAUGE if mode == "sum" else _metrics.GAUGE_MAX
        super().__init__(name, documentation, labelnames, max_label_sets, _mode=mode)
        if self._default is not None:   # no labels: straight to the one series
            self.inc = self._default.add  # type: ignore[method-assign]
            self.dec = self._default.dec  # type: ignore[method-assign]
            self.set = self._default.set  # type: ignore[method-assign]

    def inc(self, amount: float = 1.0) -> None:
        self._no_labels().add(amount)

    def dec(self, amount: float = 1.0) -> None:
        self._no_labels().dec(amount)

    def set(self, value: float) -> None:
        self._no_labels().set(value)


class Histogram(_Family):
    """A histogram with fixed upper bounds (``buckets``, ascending; +Inf is
    added)."""

    kind = _metrics.HISTOGRAM
    type_name = "histogram"

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str] = (),
                 buckets: Sequence[float] = DEFAULT_BUCKETS, max_label_sets: int = 1000) -> None:
        b = [float(x) for x in buckets if not math.isinf(x)]
        if not b or any(x >= y for x, y in zip(b, b[1:])) or any(math.isnan(x) for x in b):
            raise ValueError(f"{name}: buckets must be ascending numbers, got {list(buckets)}")
        super().__init__(name, documentation, labelnames, max_label_sets, _buckets=b)
        if self._default is not None:   # no labels: straight to the one series
            self.observe = self._default.observe  # type: ignore[method-assign]

    def observe(self, value: float) -> None:
        self._no_labels().observe(value)


# --- the engine's series ---------------------------------------------------------

# The engine's per-service series, in the order of its MC_* cells
# (pyx/sluiceway/engine/consts.pxd): (family, labels beyond service).
_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx", "none")
ERROR_KINDS = ("connect", "timeout", "invalid_response", "client_abort", "client",
               "upstream", "load_shed", "internal", "tls")
POOL_CLOSE_REASONS = ("pool_full", "other")

_E: Dict[str, _Family] = {}


def _engine_families() -> Dict[str, _Family]:
    if _E:
        return _E
    _E.update(
        requests=Counter("sluiceway_requests_total", "Requests answered, by status class "
                         "(none: no response was sent)", ["service", "code"]),
        duration=Histogram("sluiceway_request_duration_seconds",
                           "From the request head to the end of the response", ["service"]),
        connect=Histogram("sluiceway_upstream_connect_seconds",
                          "Time to open a new upstream connection", ["service"]),
        ttfb=Histogram("sluiceway_upstream_first_byte_seconds",
                       "From having the upstream connection to its response head", ["service"]),
        rx=Counter("sluiceway_request_body_bytes_total", "Request body bytes received from clients",
                   ["service"]),
        tx=Counter("sluiceway_response_body_bytes_total", "Response body bytes sent to clients",
                   ["service"]),
        conn_open=Gauge("sluiceway_client_connections", "Client connections open", ["service"]),
        conn_acc=Counter("sluiceway_client_connections_accepted_total",
                         "Client connections accepted", ["service"]),
        conn_rej=Counter("sluiceway_client_connections_rejected_total",
                         "Client connections refused at max_connections", ["service"]),
        pool_idle=Gauge("sluiceway_upstream_connections_idle", "Idle pooled upstream connections",
                        ["service"]),
        pool_busy=Gauge("sluiceway_upstream_connections_in_use",
                        "Upstream connections carrying a request", ["service"]),
        pool_opened=Counter("sluiceway_upstream_connections_opened_total",
                            "Upstream connections opened", ["service"]),
        pool_reused=Counter("sluiceway_upstream_connections_reused_total",
                            "Requests sent on a pooled upstream connection", ["service"]),
        pool_closed=Counter("sluiceway_upstream_connections_closed_total",
                            "Upstream connections closed, by reason (pool_full: evicted from a "
                            "full pool)", ["service", "reason"]),
        errors=Counter("sluiceway_errors_total", "Failed requests by kind of error (tls: client "
                       "connections whose TLS handshake failed, not requests)",
                       ["service", "kind"]),
        retries=Counter("sluiceway_upstream_retries_total",
                        "Requests sent to a peer again (upstream_peer asked again, or resent "
                        "after a pooled connection died)", ["service"]),
        tls_handshakes=Counter("sluiceway_upstream_tls_handshakes_total",
                               "New TLS upstream connections, by whether they resumed an "
                               "earlier TLS session", ["service", "resumed"]),
    )
    return _E


def engine_cells(service: str) -> Tuple[int, ...]:
    """Register a service's series; their first cells in MC_* order."""
    f = _engine_families()
    cells: List[int] = [f["requests"].labels(service, c).first for c in _CLASSES]
    cells += [f[n].labels(service).first for n in ("duration", "connect", "ttfb", "rx", "tx",
                                                    "conn_open", "conn_acc", "conn_rej",
                                                    "pool_idle", "pool_busy", "pool_opened",
                                                    "pool_reused")]
    cells += [f["pool_closed"].labels(service, r).first for r in POOL_CLOSE_REASONS]
    cells += [f["errors"].labels(service, k).first for k in ERROR_KINDS]
    cells.append(f["retries"].labels(service).first)
    cells += [f["tls_handshakes"].labels(service, r).first for r in ("false", "true")]
    return tuple(cells)


def engine_handle():
    """(capsule, store) for an engine, or (None, None) without metrics."""
    st = _target()
    return st.handle(), st


# --- reading ------------------------------------------------------------------------

def _families_in(st: _metrics.Store):
    """{name: (meta, [(label values, cells)])} read from the store."""
    metas: Dict[str, dict] = {}
    series: List[tuple] = []
    for key, val, kind, first, n in st.entries():
        if kind == _metrics.INFO:
            metas[key[1:].decode()] = json.loads(val)
        else:
            series.append((key, kind, first, n))
    out: Dict[str, tuple] = {}
    for key, kind, first, n in series:
        name, _, rest = key.decode("utf-8", "surrogateescape").partition("\0")
        meta = metas.get(name)
        if meta is None:
            continue
        values = tuple(rest.split("\0")) if meta["labels"] else ()
        out.setdefault(name, (meta, []))[1].append((values, st.read(first, n, kind)))
    return out


def snapshot(st: Optional[_metrics.Store] = None) -> Dict[str, Dict[tuple, object]]:
    """Every series' current value, for tests and ``/status``: ``{name:
    {label values: value}}``; a histogram's value is ``(bucket counts
    cumulative with +Inf last, sum)``; counters by their name without
    ``_total``."""
    st = st or _store
    out: Dict[str, Dict[tuple, object]] = {}
    if st is None:
        return out
    for name, (meta, rows) in _families_in(st).items():
        d = out[name] = {}
        for values, cells in rows:
            if meta["type"] == "histogram":
                cum, acc = [], 0.0
                for c in cells[:-1]:
                    acc += c
                    cum.append(acc)
                d[values] = (cum, cells[-1])
            else:
                d[values] = cells[0]
    return out


class _Collector:
    """A prometheus_client collector reading the store."""

    def __init__(self, st_getter) -> None:
        self._get = st_getter

    def collect(self):
        from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                            HistogramMetricFamily)

        st = self._get()
        if st is None:
            return
        fams = _families_in(st)
        for name in sorted(fams):
            meta, rows = fams[name]
            labels = meta["labels"]
            rows.sort()
            if meta["type"] == "counter":
                m = CounterMetricFamily(name, meta["help"], labels=labels)
                for values, cells in rows:
                    m.add_metric(values, cells[0])
            elif meta["type"] == "gauge":
                m = GaugeMetricFamily(name, meta["help"], labels=labels)
                for values, cells in rows:
                    m.add_metric(values, cells[0])
            else:
                m = HistogramMetricFamily(name, meta["help"], labels=labels)
                bounds = [_fmt_bound(b) for b in meta["buckets"]] + ["+Inf"]
                for values, cells in rows:
                    acc, buckets = 0.0, []
                    for b, c in zip(bounds, cells[:-1]):
                        acc += c
                        buckets.append((b, acc))
                    m.add_metric(values, buckets, cells[-1])
            yield m


def _fmt_bound(b: float) -> str:
    return repr(float(b))


def collector(st_getter=store) -> _Collector:
    """A prometheus_client collector for the store ``st_getter()`` returns
    (register it in your own CollectorRegistry to serve it elsewhere)."""
    return _Collector(st_getter)


def exposition(accept: str = "", st: Optional[_metrics.Store] = None) -> Tuple[bytes, str]:
    """The store in Prometheus' text format, or OpenMetrics when ``accept``
    asks for it: ``(body, content type)``."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.exposition import choose_encoder

    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Collector(lambda: st if st is not None else _store))
    encoder, ctype = choose_encoder(accept or "")
    return encoder(reg), ctype
