"""What a server's processes do for observability: the metrics store (made
by the master before it forks, a slab claimed by each worker, an ended
worker's counts kept), the engine's series and access-log writer per
service, the load balancers' and circuit breakers' series, and OpenTelemetry
when asked for. The admin listener that reads it all is ``_admin``."""

from __future__ import annotations

import logging
import os
from typing import Dict, Optional

from . import metrics

log = logging.getLogger("sluiceway.error")

_writers: Dict[Optional[str], object] = {}


# --- master ---------------------------------------------------------------------

def master_setup(conf) -> None:
    """Before the first fork: the shared store (``metrics: true``)."""
    if conf.metrics and not metrics.shared():
        slabs = max(16, 4 * conf.threads + 4)
        metrics.install(metrics.make_store(conf.metrics_max_series, slabs), shared=True)
    _master_families()


_M: dict = {}


def _master_families() -> dict:
    if not _M:
        _M.update(
            workers=metrics.Gauge("sluiceway_workers", "Worker processes serving"),
            generation=metrics.Gauge("sluiceway_generation",
                                     "The configuration generation serving (reloads)"),
            restarts=metrics.Counter("sluiceway_worker_restarts_total",
                                     "Workers of the current generation that died and were "
                                     "replaced"),
            reloads=metrics.Counter("sluiceway_reloads_total", "Reloads (SIGHUP), by result",
                                    ["result"]),
        )
    return _M


def worker_ended(pid: int) -> None:
    """In the master, once a worker has been reaped."""
    metrics.retire(pid)


# --- worker ---------------------------------------------------------------------

def worker_setup() -> None:
    """In a new worker, before it serves: a slab of its own."""
    metrics.claim_slab()
    _breaker_observer_install()


def attach(engine, conf, service: str, loop) -> None:
    """Give a service's engine its metrics cells and access-log writer."""
    if conf.metrics:
        handle, st = metrics.engine_handle()
        engine.enable_metrics(handle, st, metrics.engine_cells(service))
    if conf.access_log and conf.access_log_format != "text":
        w = _writers.get(conf.access_log_file)
        if w is None:
            from ._accesslog import AccessLogWriter

            w = AccessLogWriter(conf.access_log_file, conf.access_log_buffer_bytes,
                                conf.access_log_flush_seconds)
            w.start(loop)
            _writers[conf.access_log_file] = w
        engine.set_access_log(w)
    if conf.otel:
        from . import _otel

        _otel.attach(engine, conf)


def reopen() -> None:
    """SIGUSR1 in a worker: the access logs' files again."""
    for w in list(_writers.values()):
        try:
            w.reopen()
        except OSError as exc:
            log.error("sluiceway: reopening the access log %s failed: %s", w.path or "(stdout)",
                      exc)


def worker_stopped() -> None:
    """The services have drained: write what the access logs hold."""
    for key, w in list(_writers.items()):
        w.close()
        del _writers[key]
    import sys

    if "sluiceway._otel" in sys.modules:
        sys.modules["sluiceway._otel"].shutdown()


# --- the load balancers' and breakers' series --------------------------------

_LB: dict = {}


def _writer_process() -> bool:
    """Only a worker with a slab of its own writes state gauges (the master's
    would never go away)."""
    st = metrics.store()
    return st is not None and st.my_slab >= 0


def backend_health(addr: str, healthy: bool, changed: bool) -> None:
    """A load balancer's backend is (still, or newly) healthy or not."""
    if not _writer_process():
        return
    if not _LB:
        _LB.update(
            healthy=metrics.Gauge("sluiceway_backend_healthy",
                                  "1 when a worker's health checks find the backend healthy",
                                  ["backend"], mode="max"),
            unhealthy=metrics.Counter("sluiceway_upstream_unhealthy_total",
                                      "Backends turning unhealthy (counted by each worker's "
                                      "checks)", ["backend"]),
        )
    _LB["healthy"].labels(addr).set(1.0 if healthy else 0.0)
    if changed and not healthy:
        _LB["unhealthy"].labels(addr).inc()


_STATE = {"closed": 0.0, "half_open": 1.0, "open": 2.0}


def _breaker_changed(t) -> None:
    if not _writer_process():
        return
    if "circuit" not in _LB:
        _LB["circuit"] = metrics.Gauge("sluiceway_circuit_state",
                                       "Circuit breaker state by upstream: 0 closed, 1 half-open, "
                                       "2 open (the highest any worker sees)", ["upstream"],
                                       mode="max")
        _LB["trips"] = metrics.Counter("sluiceway_circuit_transitions_total",
                                       "Circuit breaker state changes", ["upstream", "to"])
    key = str(t.key)
    _LB["circuit"].labels(key).set(_STATE.get(t.new.value, 0.0))
    _LB["trips"].labels(key, t.new.value).inc()


def _breaker_observer_install() -> None:
    from ._base import limits as _bl

    if _breaker_changed not in _bl.observers:
        _bl.observers.append(_breaker_changed)


def status_backends() -> list:
    """The backends' health as the workers see it (for ``/status``)."""
    snap = metrics.snapshot()
    healthy = snap.get("sluiceway_backend_healthy", {})
    unhealthy = snap.get("sluiceway_upstream_unhealthy", {})
    return [{"backend": k[0], "healthy": bool(v), "unhealthy_total": unhealthy.get(k, 0.0)}
            for k, v in sorted(healthy.items())]
