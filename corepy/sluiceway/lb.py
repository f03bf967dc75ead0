"""Load balancing: backends, selection, discovery and health checks.

A :class:`LoadBalancer` owns a set of :class:`Backend` objects, found by a
*discovery* (:class:`Static`, :class:`DNS`, :class:`File` or your own
:class:`ServiceDiscovery`), checked by an optional *health check*
(:class:`TcpHealthCheck`, :class:`HttpHealthCheck` or your own
:class:`HealthCheck`), and picks one per request with ``select(key)``::

    lb = LoadBalancer.from_iter(["10.0.0.1:80", "10.0.0.2:80"], Consistent)
    backend = lb.select(request_path, 8)      # inside upstream_peer

Selection is compiled (``sluiceway._lb``): ``select`` hashes the key in place
and returns a backend without creating Python objects.  The algorithms are
:class:`RoundRobin`, :class:`Random`, :class:`FNVHash`, :class:`Consistent`
(nginx-compatible Ketama), and, on the requests in flight per backend,
:class:`LeastConnections` (nginx's ``least_conn``) and
:class:`PowerOfTwoChoices`; any Python class with ``__len__`` and
``iter(key)`` (see :class:`SelectionAlgorithm`) can replace them.

Theory of operation
-------------------
The balancer keeps per-backend state (healthy, enabled, last error, last
check) keyed by address, and a compiled *snapshot* of (algorithm, backends,
usable flags, load cells).  A backend's load cell (:meth:`LoadBalancer.load`)
follows its address from snapshot to snapshot, and is found again when the
backend comes back while something still holds it; the proxy counts in it
through the HttpPeers it is lent to (``HttpPeer(addr, load=...)``).  A health change or ``set_enable`` flips one flag in place.  A
discovery result that differs from the current set builds a new algorithm and
swaps the snapshot in one step; backends that stay keep their ``Backend``
object (so connection pools keyed by it survive) and their health state.

The background service (``run``/``start``/``stop``) runs on the worker's event
loop: one task re-runs discovery every ``update_frequency`` seconds, another
runs a health-check round every ``health_check_frequency`` seconds.  Errors go
to the ``sluiceway.error`` logger; a failed discovery keeps the previous set.

Passive health.  A peer made by ``peer(backend)`` (or ``select_peer``)
carries its backend and this balancer, and the proxy reports how each
attempt on it went (``report``): a failed connect, or a connection that
broke or timed out before any response byte, is a failure; a response head a
success.  As nginx's ``max_fails``/``fail_timeout``: after ``max_fails``
failures within ``fail_timeout`` seconds the backend is left out of
selection for ``fail_timeout`` seconds; it then comes back on probation (one
more failure leaves it out again at once, a success ends the probation).  An
active health check that turns it healthy again ends the exclusion at once.
The counts are per worker process, as nginx's are without a shared zone.
"""

import asyncio
import functools
import logging
import time
from typing import Optional
import weakref

from sluiceway import _compiled, _observe
from sluiceway._lb_backend import MAX_WEIGHT, Backend, _parse_addr, _positive, _same_set
from sluiceway._lb_discovery import DNS, DiscoveryError, File, ServiceDiscovery, Static
from sluiceway._lb_health import (HealthCheck, HealthCheckError, HttpHealthCheck,
                                  TcpHealthCheck)

_lb = _compiled.load("_lb")

RoundRobin = _lb.RoundRobin
Random = _lb.Random
FNVHash = _lb.FNVHash
Consistent = _lb.Consistent
LeastConnections = _lb.LeastConnections
PowerOfTwoChoices = _lb.PowerOfTwoChoices
BackendLoad = _lb.BackendLoad

logger = logging.getLogger("sluiceway.error")

#: update() builds a compiled algorithm for this many backends or more off the
#: event loop (a 1,000-backend Ketama ring takes a few ms, 10,000 about 60 ms).
OFF_LOOP_BUILD = 512

# The public classes live in private modules; present them as sluiceway.lb's.
for _cls in (Backend, ServiceDiscovery, Static, DNS, File, DiscoveryError, HealthCheck,
             TcpHealthCheck, HttpHealthCheck, HealthCheckError):
    _cls.__module__ = __name__
del _cls

__all__ = [
    "Backend", "BackendState", "LoadBalancer", "SelectionAlgorithm",
    "RoundRobin", "Random", "FNVHash", "Consistent", "LeastConnections", "PowerOfTwoChoices",
    "BackendLoad",
    "ServiceDiscovery", "Static", "DNS", "File", "DiscoveryError",
    "HealthCheck", "TcpHealthCheck", "HttpHealthCheck", "HealthCheckError",
    "MAX_WEIGHT",
]


# ---------------------------------------------------------------------------
# Custom selection


class SelectionAlgorithm:
    """Base class for selection algorithms written in Python.

    ``LoadBalancer(..., selection=MyAlgorithm)`` builds one with the list of
    backends whenever the set changes.  Implement ``next(key) -> int``; the
    default ``iter(key)`` yields ``next(key)`` and then the other backends in
    order.  Override ``iter`` for your own fallback order.  Indexes refer to
    ``self.backends``.  A Python algorithm costs a few microseconds per
    ``select``, the compiled ones well under one.

    Args:
        backends: the list of Backend objects, in discovery order.
    """

    def __init__(self, backends):
        self.backends = list(backends)

    def __len__(self):
        return len(self.backends)

    def next(self, key):
        """Return the index of the first choice for ``key`` (str, bytes or None)."""
        raise NotImplementedError(f"{type(self).__name__} must implement next(key)")

    def iter(self, key):
        """Yield the first choice, then fallbacks (each index at most once)."""
        n = len(self.backends)
        if not n:
            return
        first = self.next(key)
        yield first
        for step in range(1, n):
            yield (first + step) % n


# ---------------------------------------------------------------------------
# The load balancer


class BackendState:
    """A read-only view of one backend's state at the moment it was taken.

    Attributes:
        backend: the Backend.
        healthy: the health checks' verdict (True until checks say otherwise).
        enabled: False after ``set_enable(backend, False)``.
        usable: healthy, enabled and not left out by the passive checks:
            ``select`` may return it.
        last_error: text of the last failed check, or None.
        last_check: ``time.time()`` of the last finished check, or None.
        consecutive: results in a row that disagree with ``healthy`` so far.
        fails: failed attempts counted by the passive checks in the current
            ``fail_timeout`` window.
        left_out: True while the passive checks leave it out (``max_fails``
            failures within ``fail_timeout``).
    """

    __slots__ = ("backend", "healthy", "enabled", "last_error", "last_check", "consecutive",
                 "fails", "first_fail", "left_out_until", "probation", "_timer")

    def __init__(self, backend, healthy=True, enabled=True):
        self.backend = backend
        self.healthy = healthy
        self.enabled = enabled
        self.last_error = None
        self.last_check = None
        self.consecutive = 0
        self.fails = 0
        self.first_fail = 0.0
        self.left_out_until = 0.0   # time.monotonic(); 0: not left out
        self.probation = False
        self._timer = None

    @property
    def left_out(self):
        return self.left_out_until > 0.0

    @property
    def usable(self):
        return self.healthy and self.enabled and not self.left_out_until

    def _copy(self):
        c = BackendState(self.backend, self.healthy, self.enabled)
        c.last_error, c.last_check, c.consecutive = self.last_error, self.last_check, self.consecutive
        c.fails, c.first_fail = self.fails, self.first_fail
        c.left_out_until, c.probation = self.left_out_until, self.probation
        return c

    def __repr__(self):
        return (f"<BackendState {self.backend.addr} healthy={self.healthy} "
                f"enabled={self.enabled} left_out={self.left_out} fails={self.fails} "
                f"last_error={self.last_error!r}>")


class LoadBalancer(_lb.BalancerCore):
    """Backends, their health, and per-request selection.

    Args:
        discovery: a ServiceDiscovery (Static, DNS, File or your own).
        selection: a callable building the algorithm from the backend list:
            RoundRobin (default), Random, FNVHash, Consistent,
            LeastConnections, PowerOfTwoChoices, a SelectionAlgorithm
            subclass, or e.g.
            ``functools.partial(Random, seed=7)``.
        health_check: an optional HealthCheck.
        health_check_frequency: seconds between health-check rounds
            (default 1 when health_check is given).
        update_frequency: seconds between discovery runs; None uses the
            discovery's ``interval``, and if that is None too discovery runs
            once when the service starts.
        parallel_health_check: check all backends concurrently instead of one
            after another.
        on_health_change: optional ``callback(backend, healthy)`` called on
            every change of a backend's health (exceptions are logged).
        max_fails: passive health checks: failed attempts (reported by the
            proxy for peers made by ``peer``/``select_peer``) within
            ``fail_timeout`` that leave a backend out of selection; 0 turns
            them off. Default 1, as nginx's.
        fail_timeout: seconds: the window in which failures are counted, and
            how long a backend is then left out. Default 10, as nginx's.
        peer_options: keyword arguments for the HttpPeer of each backend
            (``tls``, ``sni``, timeouts, ...).

    Raises:
        TypeError, ValueError: bad arguments.

    ``select(key=None, max_iterations=256)`` and
    ``select_with(key, max_iterations, accept)`` are documented on
    ``sluiceway._lb.BalancerCore``: they return the first usable backend among
    the algorithm's first choice and fallbacks, or None.
    """

    def __init__(self, discovery, selection=RoundRobin, *, health_check=None,
                 health_check_frequency=None, update_frequency=None,
                 parallel_health_check=False, on_health_change=None, max_fails=1,
                 fail_timeout=10.0, peer_options=None):
        if not isinstance(discovery, ServiceDiscovery):
            raise TypeError(f"discovery must be a ServiceDiscovery (Static, DNS, File, ...), "
                            f"not {discovery!r:.60}")
        if not callable(selection):
            raise TypeError(f"selection must be an algorithm class such as RoundRobin, "
                            f"not {selection!r:.60}")
        if health_check is not None and not isinstance(health_check, HealthCheck):
            raise TypeError(f"health_check must be a HealthCheck, not {health_check!r:.60}")
        if on_health_change is not None and not callable(on_health_change):
            raise TypeError(f"on_health_change must be callable, not {on_health_change!r:.60}")
        self.discovery = discovery
        self.selection = selection
        self.health_check = health_check
        if health_check_frequency is None and health_check is not None:
            health_check_frequency = 1.0
        self.health_check_frequency = _positive(health_check_frequency,
                                                "health_check_frequency", allow_none=True)
        if update_frequency is None:
            update_frequency = getattr(discovery, "interval", None)
        self.update_frequency = _positive(update_frequency, "update_frequency", allow_none=True)
        self.parallel_health_check = bool(parallel_health_check)
        self.on_health_change = on_health_change
        if isinstance(max_fails, bool) or not isinstance(max_fails, int) or max_fails < 0:
            raise ValueError(f"max_fails must be an int >= 0 (0: no passive health checks), "
                             f"not {max_fails!r:.60}")
        self.max_fails = max_fails
        self.fail_timeout = _positive(fail_timeout, "fail_timeout")
        self.peer_options = dict(peer_options or {})
        self._peers = {}       # Backend -> its HttpPeer
        self._states = {}      # addr -> BackendState
        self._cells = {}       # addr -> BackendLoad of a current backend
        self._gone = weakref.WeakValueDictionary()  # addr -> BackendLoad still held elsewhere
        self._index = {}       # addr -> index in the current snapshot
        self._backends = ()
        self._task = None
        self._stopping = None
        self._commit([], self.selection([]))

    @classmethod
    def from_iter(cls, backends, selection=RoundRobin, **kwargs):
        """Build a balancer over a fixed list, ready to ``select`` at once.

        Args:
            backends: Backends, address strings or mappings with ``addr``.
            selection, **kwargs: as for LoadBalancer.
        Raises:
            TypeError, ValueError: a backend is invalid (the message names it).
        """
        static = Static(backends)
        lb = cls(static, selection, **kwargs)
        lb._apply(static.current())
        return lb

    # -- state -------------------------------------------------------------

    def backends(self):
        """The current backends, as a tuple in discovery order."""
        return self._backends

    def _state_of(self, backend):
        addr = backend.addr if isinstance(backend, Backend) else _parse_addr(backend)[0]
        st = self._states.get(addr)
        if st is None:
            raise KeyError(f"{backend!r} is not a backend of this load balancer")
        return st

    def state(self, backend):
        """Return a BackendState snapshot for ``backend`` (a Backend or address).

        Raises:
            KeyError: the backend is not in the current set.
        """
        return self._state_of(backend)._copy()

    def states(self):
        """BackendState snapshots of every current backend, in discovery order."""
        return [self._states[b.addr]._copy() for b in self._backends]

    def load(self, backend):
        """Return the BackendLoad of ``backend`` (a Backend or address): its
        requests in flight, as the proxy counts them when it is lent to the
        backend's HttpPeer (``HttpPeer(backend.addr, load=lb.load(backend))``).

        LeastConnections and PowerOfTwoChoices read these counts; the other
        algorithms ignore them.  Counts are per process (per worker).

        Raises:
            KeyError: the backend is not in the current set.
        """
        return self._cells[self._state_of(backend).backend.addr]

    def set_enable(self, backend, enabled):
        """Enable or disable (drain) a backend by hand.

        A disabled backend is never returned by ``select``; requests already
        using it are unaffected.  Health checks keep running on it.

        Raises:
            KeyError: the backend is not in the current set.
        """
        st = self._state_of(backend)
        st.enabled = bool(enabled)
        self._sync_flag(st)

    def _sync_flag(self, st):
        i = self._index.get(st.backend.addr)
        if i is not None:
            self._set_usable(i, st.usable)

    # -- discovery ---------------------------------------------------------

    def _plan(self, found):
        """Return the backend list to install if ``found`` differs from the
        current set, else None.  Backends that stay keep their object."""
        found = [Backend.coerce(b, "discovered backend") for b in found]
        unique, seen = [], set()
        for b in found:
            if b.addr in seen:
                logger.warning("load balancer: discovery listed %s twice; keeping the first",
                               b.addr)
                continue
            seen.add(b.addr)
            unique.append(b)
        if _same_set(unique, self._backends):
            return None
        old = {b.addr: b for b in self._backends}
        merged = []
        for b in unique:
            prev = old.get(b.addr)
            # Keep the object of a backend that stays, so pools keyed by it survive.
            if prev is not None and prev._key == b._key and prev.metadata == b.metadata:
                b = prev
            merged.append(b)
        return merged

    def _commit(self, backends, algo):
        """Swap in ``algo`` (built for ``backends``); state follows the address."""
        states = {}
        for b in backends:
            prev = self._states.get(b.addr)
            st = BackendState(b)
            if prev is not None:
                st.healthy, st.enabled = prev.healthy, prev.enabled
                st.last_error, st.last_check = prev.last_error, prev.last_check
                st.consecutive = prev.consecutive
                st.fails, st.first_fail = prev.fails, prev.first_fail
                st.left_out_until, st.probation = prev.left_out_until, prev.probation
                st._timer, prev._timer = prev._timer, None
            states[b.addr] = st
        for addr, prev in self._states.items():
            if addr not in states and prev._timer is not None:
                prev._timer.cancel()
        keep = set(backends)
        self._peers = {b: p for b, p in self._peers.items() if b in keep and p.backend is b}
        cells = {}
        for b in backends:
            cell = self._cells.get(b.addr) or self._gone.get(b.addr)
            cells[b.addr] = cell if cell is not None else _lb.BackendLoad()
        self._install(algo, backends, [states[b.addr].usable for b in backends],
                      [cells[b.addr] for b in backends])
        for addr, cell in self._cells.items():
            if addr not in cells:
                self._gone[addr] = cell   # requests may still be in flight there
        self._states = states
        self._cells = cells
        self._backends = tuple(backends)
        self._index = {b.addr: i for i, b in enumerate(backends)}

    def _apply(self, found):
        """Install ``found`` now if it differs from the current set; return True if so.

        Nothing changes if building the algorithm fails.
        """
        merged = self._plan(found)
        if merged is None:
            return False
        self._commit(merged, self.selection(list(merged)))
        return True

    def _builds_in_c(self):
        sel = self.selection
        cls = sel.func if isinstance(sel, functools.partial) else sel
        return isinstance(cls, type) and issubclass(cls, _lb.Algorithm)

    async def update(self):
        """Run discovery once and install the result if the set changed.

        A compiled algorithm for a large set (``OFF_LOOP_BUILD`` backends or
        more) is built in the loop's default executor, without the GIL, so the
        loop keeps serving meanwhile.

        Returns:
            True if the backend set changed.  A discovery error is logged on
            ``sluiceway.error`` and returns False, keeping the old set.
        """
        try:
            found = await self.discovery.discover()
            merged = self._plan(found)
            if merged is None:
                return False
            if len(merged) >= OFF_LOOP_BUILD and self._builds_in_c():
                base = self._backends
                loop = asyncio.get_running_loop()
                algo = await loop.run_in_executor(None, self.selection, list(merged))
                if self._backends is not base:   # changed meanwhile: redo on the loop
                    return self._apply(found)
            else:
                algo = self.selection(list(merged))
            self._commit(merged, algo)
            return True
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.error("load balancer: discovery %s failed, keeping %d backends: %s",
                         type(self.discovery).__name__, len(self._backends), exc)
            return False

    # -- health ------------------------------------------------------------

    async def _check_one(self, hc, backend):
        try:
            await asyncio.wait_for(hc.check(backend), hc.timeout)
            ok, err = True, None
        except asyncio.CancelledError:
            raise
        except asyncio.TimeoutError:
            ok, err = False, f"health check timed out after {hc.timeout}s"
        except Exception as exc:
            ok, err = False, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        self._observe(backend, ok, err)

    def _observe(self, backend, ok, err):
        st = self._states.get(backend.addr)
        if st is None or st.backend is not backend:
            return  # removed or replaced while the check ran
        st.last_check = time.time()
        if err is not None:
            st.last_error = err
        if ok == st.healthy:
            st.consecutive = 0
            _observe.backend_health(backend.addr, ok, False)
            return
        st.consecutive += 1
        if st.consecutive < self.health_check.threshold(ok):
            return
        st.healthy = ok
        st.consecutive = 0
        if ok and st.left_out_until:
            self._end_left_out(st)   # it came back: the active check says so
        self._sync_flag(st)
        _observe.backend_health(backend.addr, ok, True)
        if ok:
            logger.info("load balancer: backend %s is healthy again", backend.addr)
        else:
            logger.warning("load balancer: backend %s is unhealthy: %s", backend.addr, err)
        if self.on_health_change is not None:
            try:
                self.on_health_change(backend, ok)
            except Exception:
                logger.exception("load balancer: on_health_change callback failed for %s",
                                 backend.addr)

    # -- passive health --------------------------------------------------------

    def peer(self, backend):
        """The HttpPeer for ``backend`` (one per backend, made once, with
        ``peer_options``), wired to this balancer: the proxy reports each
        attempt on it (``report``), which drives the passive health checks
        and keeps its pooled connections together, and counts its requests
        in flight in ``load(backend)`` (what LeastConnections and
        PowerOfTwoChoices select on).

        Raises:
            KeyError: ``backend`` is not one of this balancer's.
        """
        p = self._peers.get(backend)
        if p is not None and p.backend is backend:
            return p
        st = self._state_of(backend)
        backend = st.backend
        from sluiceway.proxy import HttpPeer

        addr = ("unix:" + backend.path) if backend.path is not None else (backend.host, backend.port)
        opts = dict(self.peer_options)
        opts.setdefault("load", self._cells[backend.addr])   # counted for selection by load
        p = HttpPeer(addr, backend=backend, balancer=self, **opts)
        self._peers[backend] = p
        return p

    def select_peer(self, key=None, max_iterations=256, avoid=()):
        """``select`` then ``peer``: the HttpPeer of the first usable backend
        for ``key``, or None when there is none. Call it from
        ``upstream_peer`` with ``avoid=session.tried_peers``: a retry then
        goes to a backend this request has not failed on, while one is
        usable (else to the first usable one).

        Args:
            avoid: HttpPeers (or one) whose backends to pass over.
        """
        if avoid:
            skip = {id(getattr(p, "backend", None))
                    for p in (avoid if isinstance(avoid, (tuple, list, set)) else (avoid,))}
            b = self.select_with(key, max_iterations,
                                 lambda c, usable: usable and id(c) not in skip)
            if b is None:
                b = self.select(key, max_iterations)
        else:
            b = self.select(key, max_iterations)
        return None if b is None else self.peer(b)

    def report(self, backend, ok: bool, error: Optional[str] = None) -> None:
        """How an attempt on ``backend`` went (the proxy calls this for peers
        made by ``peer``; call it yourself for your own idea of a failure,
        e.g. a 503 from ``logging``). See "Passive health" in the module's
        documentation."""
        st = self._states.get(backend.addr)
        if st is None or st.backend is not backend:
            return
        if st.left_out_until and st._timer is None and time.monotonic() >= st.left_out_until:
            self._left_out_ends(st)   # no loop ran the timer
        if ok:
            if st.fails or st.probation:
                st.fails = 0
                st.probation = False
            return
        if not self.max_fails or st.left_out_until:
            return
        now = time.monotonic()
        if not st.fails or now - st.first_fail > self.fail_timeout:
            st.fails = 0
            st.first_fail = now
        st.fails += 1
        if st.fails < self.max_fails and not st.probation:
            return
        st.left_out_until = now + self.fail_timeout
        if st.probation:
            logger.warning("load balancer: backend %s failed again after coming back%s; left "
                           "out of selection for %gs", backend.addr,
                           f" ({error})" if error else "", self.fail_timeout)
        else:
            logger.warning("load balancer: backend %s failed %d time%s within %gs%s; left out "
                           "of selection for %gs", backend.addr, st.fails,
                           "s" if st.fails != 1 else "", self.fail_timeout,
                           f" ({error})" if error else "", self.fail_timeout)
        st.probation = True
        st.fails = 0
        self._sync_flag(st)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return   # no loop: the next report after the timeout ends it
        st._timer = loop.call_later(self.fail_timeout, self._left_out_ends, st)

    def _left_out_ends(self, st):
        st._timer = None
        if self._states.get(st.backend.addr) is st and st.left_out_until:
            st.left_out_until = 0.0
            self._sync_flag(st)
            logger.info("load balancer: backend %s is back in selection after %gs (one more "
                        "failure leaves it out again)", st.backend.addr, self.fail_timeout)

    def _end_left_out(self, st):
        st.left_out_until = 0.0
        st.fails = 0
        st.probation = False
        if st._timer is not None:
            st._timer.cancel()
            st._timer = None

    async def check_health(self):
        """Run one health-check round over the current backends (no-op without
        a health check)."""
        hc = self.health_check
        if hc is None:
            return
        backends = self._backends
        if self.parallel_health_check:
            await asyncio.gather(*(self._check_one(hc, b) for b in backends))
        else:
            for b in backends:
                await self._check_one(hc, b)

    # -- background service ------------------------------------------------

    async def run(self):
        """Run discovery and health checks until ``stop()`` is called.

        Discovery runs at once and then every ``update_frequency`` seconds;
        health checks every ``health_check_frequency`` seconds.  Meant for the
        Server's background services; call ``start`` to run it on a loop.
        """
        if self._stopping is None or self._stopping.is_set():
            self._stopping = asyncio.Event()
        stopping = self._stopping
        await self.update()
        tasks = []
        if self.update_frequency is not None:
            tasks.append(asyncio.ensure_future(
                self._every(self.update_frequency, self.update, stopping)))
        if self.health_check is not None and self.health_check_frequency is not None:
            tasks.append(asyncio.ensure_future(
                self._every(self.health_check_frequency, self.check_health, stopping,
                            first_now=True)))
        try:
            await stopping.wait()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.health_check is not None:
                try:
                    await self.health_check.close()
                except Exception:
                    logger.exception("load balancer: closing the health check failed")

    @staticmethod
    async def _every(period, fn, stopping, first_now=False):
        loop = asyncio.get_running_loop()
        next_at = loop.time() + (0 if first_now else period)
        while not stopping.is_set():
            delay = next_at - loop.time()
            if delay > 0:
                try:
                    await asyncio.wait_for(stopping.wait(), delay)
                    return
                except asyncio.TimeoutError:
                    pass
            try:
                await fn()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("load balancer: background %s failed", fn.__name__)
            next_at = max(next_at + period, loop.time())

    def start(self, loop=None):
        """Start ``run()`` as a task on ``loop`` (default: the running loop).

        Returns:
            The asyncio Task.
        Raises:
            RuntimeError: already started and not stopped.
        """
        if self._task is not None and not self._task.done():
            raise RuntimeError("this load balancer is already running; call stop() first")
        if loop is None:
            loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._task = loop.create_task(self.run())
        return self._task

    async def stop(self):
        """Stop the background service and wait for it to finish."""
        if self._stopping is not None:
            self._stopping.set()
        task, self._task = self._task, None
        if task is not None:
            await task

    def __repr__(self):
        algo = self._selection[0]
        return (f"<LoadBalancer {type(algo).__name__} over "
                f"{sum(1 for b in self._backends if self._states[b.addr].usable)}/"
                f"{len(self._backends)} usable backends>")
