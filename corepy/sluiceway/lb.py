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
:class:`RoundRobin`, :class:`Random`, :class:`FNVHash` and :class:`Consistent`
(nginx-compatible Ketama); any Python class with ``__len__`` and
``iter(key)`` (see :class:`SelectionAlgorithm`) can replace them.

Theory of operation
-------------------
The balancer keeps per-backend state (healthy, enabled, last error, last
check) keyed by address, and a compiled *snapshot* of (algorithm, backends,
usable flags).  A health change or ``set_enable`` flips one flag in place.  A
discovery result that differs from the current set builds a new algorithm and
swaps the snapshot in one step; backends that stay keep their ``Backend``
object (so connection pools keyed by it survive) and their health state.

The background service (``run``/``start``/``stop``) runs on the worker's event
loop: one task re-runs discovery every ``update_frequency`` seconds, another
runs a health-check round every ``health_check_frequency`` seconds.  Errors go
to the ``sluiceway.error`` logger; a failed discovery keeps the previous set.
"""

import asyncio
import inspect
import ipaddress
import json
import logging
import os
import socket
import ssl as _ssl
import time
from types import MappingProxyType

from sluiceway import _compiled

_lb = _compiled.load("_lb")

RoundRobin = _lb.RoundRobin
Random = _lb.Random
FNVHash = _lb.FNVHash
Consistent = _lb.Consistent

logger = logging.getLogger("sluiceway.error")

MAX_WEIGHT = _lb.MAX_WEIGHT
_UNIX_PATH_MAX = 107  # sun_path is 108 bytes including the terminating NUL

__all__ = [
    "Backend", "BackendState", "LoadBalancer", "SelectionAlgorithm",
    "RoundRobin", "Random", "FNVHash", "Consistent",
    "ServiceDiscovery", "Static", "DNS", "File", "DiscoveryError",
    "HealthCheck", "TcpHealthCheck", "HttpHealthCheck", "HealthCheckError",
]


# ---------------------------------------------------------------------------
# Backends


def _check_weight(weight, what):
    if isinstance(weight, bool) or not isinstance(weight, int):
        raise TypeError(f"{what}: weight must be an int, not {weight!r:.60}")
    if not 1 <= weight <= MAX_WEIGHT:
        raise ValueError(f"{what}: weight {weight} is out of range; use 1..{MAX_WEIGHT}")
    return weight


def _parse_addr(addr):
    """Return (canonical addr, family, host, port, path) or raise ValueError."""
    if not isinstance(addr, str):
        raise TypeError(f"a backend address must be a str such as '10.0.0.1:80', "
                        f"'[::1]:80' or 'unix:/run/app.sock', not {addr!r:.60}")
    if addr.startswith("unix:") or addr.startswith("/"):
        path = addr[5:] if addr.startswith("unix:") else addr
        if not path:
            raise ValueError(f"backend address {addr!r}: the Unix socket path is empty")
        if "\0" in path:
            raise ValueError(f"backend address {addr!r}: the Unix socket path contains NUL")
        if len(os.fsencode(path)) > _UNIX_PATH_MAX:
            raise ValueError(f"backend address {addr!r}: the Unix socket path is longer "
                             f"than {_UNIX_PATH_MAX} bytes; use a shorter path")
        return "unix:" + path, socket.AF_UNIX, None, None, path
    if addr.startswith("["):
        end = addr.find("]")
        if end < 0 or addr[end + 1:end + 2] != ":":
            raise ValueError(f"backend address {addr!r}: write IPv6 as '[addr]:port', "
                             "e.g. '[::1]:8080'")
        host, port_s = addr[1:end], addr[end + 2:]
        try:
            ip = ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"backend address {addr!r}: {host!r} is not an IPv6 address") from None
    else:
        host, sep, port_s = addr.rpartition(":")
        if not sep or not host:
            raise ValueError(f"backend address {addr!r}: expected 'host:port' with an "
                             "IP address host (e.g. '10.0.0.1:80'), '[v6]:port' or "
                             "'unix:/path'")
        if ":" in host:
            raise ValueError(f"backend address {addr!r}: put an IPv6 address in brackets, "
                             f"e.g. '[{host}]:{port_s}'")
        try:
            ip = ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"backend address {addr!r}: {host!r} is not an IPv4 address; "
                             "resolve host names with the DNS discovery") from None
    if not port_s.isdigit() or not port_s.isascii():
        raise ValueError(f"backend address {addr!r}: port {port_s!r} is not a number")
    port = int(port_s)
    if not 1 <= port <= 65535:
        raise ValueError(f"backend address {addr!r}: port {port} is out of range 1..65535")
    if ip.version == 6:
        return f"[{ip.compressed}]:{port}", socket.AF_INET6, ip.compressed, port, None
    return f"{ip}:{port}", socket.AF_INET, str(ip), port, None


class Backend:
    """One upstream server: a TCP address or a Unix socket, a weight, metadata.

    Backends are immutable and compare (and hash) equal when address and
    weight are equal; metadata does not take part.

    Args:
        addr: ``"10.0.0.1:80"``, ``"[2001:db8::1]:443"`` (IPv6 in brackets),
            ``"unix:/run/app.sock"`` or an absolute socket path.  Hosts must be
            IP addresses; use :class:`DNS` discovery for names.  The address is
            kept in canonical form (IPv6 compressed, Unix paths as ``unix:``),
            which is also the text ``Consistent`` hashes, so write nginx's
            ``server`` lines the same way.
        weight: an int in 1..65535: the backend's share relative to the others
            (``Consistent`` gives it ``weight * 160`` ring points).
        metadata: an optional mapping for your own use (e.g. TLS SNI, a zone);
            stored as a read-only copy.

    Raises:
        TypeError: addr is not a str, weight not an int, metadata not a mapping.
        ValueError: the address or weight is invalid (the message names it).
    """

    __slots__ = ("addr", "family", "host", "port", "path", "weight", "metadata", "_key")

    def __init__(self, addr, weight=1, metadata=None):
        canon, family, host, port, path = _parse_addr(addr)
        _check_weight(weight, f"backend {addr!r}")
        if metadata is None:
            meta = MappingProxyType({})
        else:
            try:
                meta = MappingProxyType(dict(metadata))
            except (TypeError, ValueError):
                raise TypeError(f"backend {addr!r}: metadata must be a mapping, "
                                f"not {metadata!r:.60}") from None
        for name, value in (("addr", canon), ("family", family), ("host", host),
                            ("port", port), ("path", path), ("weight", weight),
                            ("metadata", meta), ("_key", (canon, weight))):
            object.__setattr__(self, name, value)

    def __setattr__(self, name, value):
        raise AttributeError("Backend is immutable; create a new one")

    def __delattr__(self, name):
        raise AttributeError("Backend is immutable")

    def __eq__(self, other):
        if not isinstance(other, Backend):
            return NotImplemented
        return self._key == other._key

    def __hash__(self):
        return hash(self._key)

    def __repr__(self):
        w = f", weight={self.weight}" if self.weight != 1 else ""
        m = f", metadata={dict(self.metadata)!r}" if self.metadata else ""
        return f"Backend({self.addr!r}{w}{m})"

    def __reduce__(self):
        return (Backend, (self.addr, self.weight, dict(self.metadata)))

    @property
    def sockaddr(self):
        """What ``socket.connect`` takes: ``(host, port)`` or the socket path."""
        return self.path if self.path is not None else (self.host, self.port)

    @classmethod
    def coerce(cls, item, what="backend"):
        """Return ``item`` as a Backend.

        Args:
            item: a Backend, an address str, or a mapping with ``addr`` and
                optional ``weight`` and ``metadata``.
        Raises:
            TypeError, ValueError: the item cannot describe a backend.
        """
        if isinstance(item, Backend):
            return item
        if isinstance(item, str):
            return cls(item)
        if isinstance(item, dict):
            unknown = set(item) - {"addr", "weight", "metadata"}
            if unknown:
                raise ValueError(f"{what} {item!r:.80}: unknown keys {sorted(unknown)}; "
                                 "allowed are addr, weight, metadata")
            if "addr" not in item:
                raise ValueError(f"{what} {item!r:.80}: missing 'addr'")
            return cls(item["addr"], item.get("weight", 1), item.get("metadata"))
        raise TypeError(f"{what} {item!r:.80}: expected a Backend, an address str or "
                        "a mapping with 'addr'")


def _same_set(a, b):
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x._key != y._key or x.metadata != y.metadata:
            return False
    return True


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
# Discovery


class DiscoveryError(Exception):
    """Discovery could not produce a backend set; the balancer keeps the old one."""


class ServiceDiscovery:
    """Base class for discovery: implement ``async discover()``.

    ``discover`` returns the complete current backend list (Backends, address
    strings or mappings with ``addr``/``weight``/``metadata``).  Raising keeps
    the previous set and logs the error on ``sluiceway.error``.  Set
    ``interval`` (seconds) to suggest how often the balancer should call it
    when the balancer has no ``update_frequency`` of its own; None means once.
    """

    interval = None

    async def discover(self):
        """Return the current list of backends.

        Raises:
            Exception: any error; the balancer logs it and keeps the old set.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement discover()")


class Static(ServiceDiscovery):
    """A fixed backend list, changeable by hand with ``set``.

    Args:
        backends: an iterable of Backends or address strings.
    """

    def __init__(self, backends=()):
        self._backends = [Backend.coerce(b) for b in backends]

    def set(self, backends):
        """Replace the list; the balancer applies it on its next update."""
        self._backends = [Backend.coerce(b) for b in backends]

    def current(self):
        """The list as it is now (no I/O)."""
        return list(self._backends)

    async def discover(self):
        return list(self._backends)


class DNS(ServiceDiscovery):
    """Backends from resolving a host name with the event loop's resolver.

    Every address the name resolves to becomes ``Backend(ip:port, weight)``.
    Resolution that fails or returns nothing raises, so the balancer keeps the
    last good set.

    Args:
        name: the host name.
        port: the port the backends listen on.
        interval: seconds between resolutions (used when the balancer's
            ``update_frequency`` is None); default 30.
        family: ``socket.AF_INET``, ``socket.AF_INET6`` or 0 for both.
        weight: weight for every resolved backend.
        metadata: metadata for every resolved backend.
        timeout: seconds one resolution may take.

    Raises:
        ValueError, TypeError: bad name, port, interval or weight.
    """

    def __init__(self, name, port, *, interval=30.0, family=0, weight=1, metadata=None,
                 timeout=5.0):
        if not isinstance(name, str) or not name:
            raise ValueError(f"DNS name must be a non-empty str, not {name!r:.60}")
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ValueError(f"DNS port must be an int in 1..65535, not {port!r:.60}")
        if family not in (0, socket.AF_INET, socket.AF_INET6):
            raise ValueError(f"DNS family must be 0, AF_INET or AF_INET6, not {family!r}")
        self.interval = _positive(interval, "DNS interval", allow_none=True)
        self.timeout = _positive(timeout, "DNS timeout")
        _check_weight(weight, f"DNS {name!r}")
        self.name, self.port, self.family = name, port, family
        self.weight, self.metadata = weight, metadata

    async def discover(self):
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(self.name, self.port, family=self.family,
                                 type=socket.SOCK_STREAM),
                self.timeout)
        except asyncio.TimeoutError:
            raise DiscoveryError(f"resolving {self.name!r} took longer than "
                                 f"{self.timeout}s") from None
        except OSError as exc:
            raise DiscoveryError(f"resolving {self.name!r} failed: {exc}") from exc
        out, seen = [], set()
        for family, _, _, _, sockaddr in infos:
            ip = sockaddr[0]
            if family == socket.AF_INET6:
                ip = ip.split("%", 1)[0]
                addr = f"[{ip}]:{self.port}"
            elif family == socket.AF_INET:
                addr = f"{ip}:{self.port}"
            else:
                continue
            if addr not in seen:
                seen.add(addr)
                out.append(Backend(addr, self.weight, self.metadata))
        if not out:
            raise DiscoveryError(f"{self.name!r} resolved to no usable address")
        return out


class File(ServiceDiscovery):
    """Backends listed in a YAML or JSON file, reloaded when the file changes.

    The file holds a list whose items are address strings or mappings with
    ``addr`` and optional ``weight`` and ``metadata``::

        - 10.0.0.1:80
        - {addr: "10.0.0.2:80", weight: 3, metadata: {zone: b}}

    ``.json`` files are parsed as JSON, anything else as YAML.  The file is
    re-read only when its modification time, size or inode changes.  A file
    that is missing or invalid raises (the balancer keeps the old set and logs
    why) until it is fixed.

    Args:
        path: the file.
        interval: seconds between checks for a change (used when the
            balancer's ``update_frequency`` is None); default 1.
    """

    def __init__(self, path, *, interval=1.0):
        self.path = os.fspath(path)
        self.interval = _positive(interval, "File interval", allow_none=True)
        self._sig = None
        self._last = None

    def _signature(self):
        st = os.stat(self.path)
        return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)

    def _load(self):
        try:
            sig = self._signature()
        except OSError as exc:
            raise DiscoveryError(f"cannot read backend file {self.path}: {exc}") from exc
        if sig == self._sig and self._last is not None:
            return self._last
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise DiscoveryError(f"cannot read backend file {self.path}: {exc}") from exc
        try:
            if self.path.endswith(".json"):
                doc = json.loads(data)
            else:
                import yaml
                doc = yaml.safe_load(data)
        except Exception as exc:  # json/yaml syntax errors of many types
            raise DiscoveryError(f"backend file {self.path} is not valid "
                                 f"{'JSON' if self.path.endswith('.json') else 'YAML'}: {exc}") from exc
        if not isinstance(doc, list):
            raise DiscoveryError(f"backend file {self.path} must hold a list of backends, "
                                 f"not {type(doc).__name__}")
        backends = []
        for i, item in enumerate(doc):
            try:
                backends.append(Backend.coerce(item, f"item #{i}"))
            except (TypeError, ValueError) as exc:
                raise DiscoveryError(f"backend file {self.path}: {exc}") from exc
        self._sig, self._last = sig, backends
        return backends

    async def discover(self):
        loop = asyncio.get_running_loop()
        return list(await loop.run_in_executor(None, self._load))


# ---------------------------------------------------------------------------
# Health checks


def _positive(value, what, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{what} must be a positive number of seconds, not {value!r:.60}")
    return float(value)


def _threshold(value, what):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be an int >= 1, not {value!r:.60}")
    return value


class HealthCheckError(Exception):
    """A health check failed; the message says why."""


class HealthCheck:
    """Base class for health checks: implement ``async check(backend)``.

    ``check`` returns normally when the backend is healthy and raises (any
    exception; its text becomes the backend's ``last_error``) when not.  The
    balancer cancels a check that takes longer than ``timeout``.  A healthy
    backend becomes unhealthy after ``consecutive_failure`` failed checks in a
    row, and an unhealthy one healthy after ``consecutive_success`` passed
    checks in a row.

    Args:
        consecutive_success: passes in a row to become healthy (>= 1).
        consecutive_failure: failures in a row to become unhealthy (>= 1).
        timeout: seconds one check may take.
    """

    def __init__(self, *, consecutive_success=1, consecutive_failure=1, timeout=1.0):
        self.consecutive_success = _threshold(consecutive_success, "consecutive_success")
        self.consecutive_failure = _threshold(consecutive_failure, "consecutive_failure")
        self.timeout = _positive(timeout, "health check timeout")

    def threshold(self, success):
        """Results in a row needed to flip to ``success`` (healthy if True)."""
        return self.consecutive_success if success else self.consecutive_failure

    async def check(self, backend):
        """Raise if ``backend`` is unhealthy."""
        raise NotImplementedError(f"{type(self).__name__} must implement check(backend)")

    async def close(self):
        """Release resources (e.g. reused connections); called by ``stop``."""


def _tls_context(tls):
    if tls is None or tls is False:
        return None
    if tls is True:
        return _ssl.create_default_context()
    if isinstance(tls, _ssl.SSLContext):
        return tls
    raise TypeError(f"tls must be None, True or an ssl.SSLContext, not {tls!r:.60}")


async def _connect(backend, port, ctx, server_hostname):
    kw = {}
    if ctx is not None:
        kw["ssl"] = ctx
        kw["server_hostname"] = server_hostname or backend.host or "localhost"
    if backend.path is not None:
        return await asyncio.open_unix_connection(backend.path, **kw)
    return await asyncio.open_connection(backend.host, port or backend.port, **kw)


async def _close_writer(writer):
    writer.close()
    try:
        await writer.wait_closed()
    except (OSError, _ssl.SSLError):
        pass


class TcpHealthCheck(HealthCheck):
    """Healthy when a TCP (or Unix socket) connection, and optionally a TLS
    handshake, succeeds within ``timeout``.

    Args:
        tls: None for plain TCP, True for a TLS handshake verified with the
            default context, or an ``ssl.SSLContext``.
        server_hostname: SNI and certificate name for TLS; defaults to the
            backend's metadata ``"sni"`` or its IP.
        port_override: connect to this port instead of the backend's.
        consecutive_success, consecutive_failure, timeout: see HealthCheck.
    """

    def __init__(self, *, tls=None, server_hostname=None, port_override=None, **kw):
        super().__init__(**kw)
        self.tls = _tls_context(tls)
        self.server_hostname = server_hostname
        self.port_override = _port_or_none(port_override)

    async def check(self, backend):
        sni = self.server_hostname or backend.metadata.get("sni")
        _, writer = await _connect(backend, self.port_override, self.tls, sni)
        await _close_writer(writer)


def _port_or_none(port):
    if port is None:
        return None
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"port_override must be an int in 1..65535, not {port!r:.60}")
    return port


_MAX_HEAD = 64 * 1024
_MAX_BODY = 1024 * 1024


class HttpHealthCheck(HealthCheck):
    """Healthy when an HTTP/1.1 request gets an expected response.

    Args:
        host: the Host header to send (also the TLS SNI unless
            ``server_hostname`` is given).
        path: the request target, default ``"/"``.
        method: default ``"GET"``; ``"HEAD"`` responses are read without body.
        headers: extra request headers (a mapping or list of pairs).
        expected_status: an int or a collection of ints (default 200).
        validator: optional ``validator(status, headers, body)`` called after
            the status matched, with headers as a list of (name, value) str
            pairs (names lower-cased) and the body as bytes; it fails the
            check by raising or returning False.
        reuse_connection: keep one connection per backend open between checks
            (re-opened when the server closes it).
        port_override: connect to this port instead of the backend's.
        tls, server_hostname: as for TcpHealthCheck.
        consecutive_success, consecutive_failure, timeout: see HealthCheck.

    Raises:
        ValueError, TypeError: bad arguments (the message names them).
    """

    def __init__(self, host, *, path="/", method="GET", headers=None, expected_status=200,
                 validator=None, reuse_connection=False, port_override=None, tls=None,
                 server_hostname=None, **kw):
        super().__init__(**kw)
        for what, value in (("host", host), ("path", path), ("method", method)):
            if not isinstance(value, str) or not value or any(c in value for c in "\r\n\0 "):
                raise ValueError(f"HttpHealthCheck {what} must be a non-empty str without "
                                 f"spaces or line breaks, not {value!r:.60}")
        if not path.startswith("/") and path != "*":
            raise ValueError(f"HttpHealthCheck path must start with '/', not {path!r:.60}")
        if isinstance(expected_status, int) and not isinstance(expected_status, bool):
            expected = frozenset([expected_status])
        else:
            try:
                expected = frozenset(expected_status)
            except TypeError:
                raise TypeError("expected_status must be an int or a collection of ints, "
                                f"not {expected_status!r:.60}") from None
        if not expected or not all(isinstance(s, int) and 100 <= s <= 599 for s in expected):
            raise ValueError(f"expected_status must hold HTTP status codes 100..599, "
                             f"not {expected_status!r:.60}")
        if validator is not None and not callable(validator):
            raise TypeError(f"validator must be callable, not {validator!r:.60}")
        extra = list(headers.items() if hasattr(headers, "items") else headers or ())
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "User-Agent: sluiceway-health"]
        names = {"host", "user-agent"}
        for name, value in extra:
            if any(c in str(name) + str(value) for c in "\r\n\0") or not str(name):
                raise ValueError(f"bad health check header {name!r}: {value!r:.60}")
            if str(name).lower() in names:
                lines = [ln for ln in lines if not ln.lower().startswith(str(name).lower() + ":")]
            lines.append(f"{name}: {value}")
        if not reuse_connection:
            lines.append("Connection: close")
        self.request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.host, self.path, self.method = host, path, method
        self.expected_status = expected
        self.validator = validator
        self.reuse_connection = bool(reuse_connection)
        self.port_override = _port_or_none(port_override)
        self.tls = _tls_context(tls)
        self.server_hostname = server_hostname
        self._conns = {}   # addr -> (reader, writer) when reuse_connection

    async def check(self, backend):
        conn = self._conns.pop(backend.addr, None) if self.reuse_connection else None
        if conn is not None and (conn[1].is_closing() or conn[0].at_eof()):
            await _close_writer(conn[1])
            conn = None
        if conn is None:
            conn = await _connect(backend, self.port_override, self.tls,
                                  self.server_hostname or self.host)
        reader, writer = conn
        keep = False
        try:
            writer.write(self.request)
            await writer.drain()
            status, headers, body, keep = await _read_response(reader, self.method == "HEAD")
        finally:
            if keep and self.reuse_connection:
                self._conns[backend.addr] = conn
            else:
                await _close_writer(writer)
        if status not in self.expected_status:
            raise HealthCheckError(f"HTTP status {status}, expected "
                                   f"{' or '.join(map(str, sorted(self.expected_status)))}")
        if self.validator is not None:
            ok = self.validator(status, headers, body)
            if inspect.isawaitable(ok):
                ok = await ok
            if ok is False:
                raise HealthCheckError("the response validator returned False")

    async def close(self):
        conns, self._conns = self._conns, {}
        for _, writer in conns.values():
            await _close_writer(writer)


async def _read_response(reader, head_request):
    """Read one HTTP/1.x response: (status, headers, body, keep_alive)."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        raise HealthCheckError("connection closed before a complete response head "
                               f"({len(exc.partial)} bytes)") from None
    except asyncio.LimitOverrunError:
        raise HealthCheckError("response head too long") from None
    if len(head) > _MAX_HEAD:
        raise HealthCheckError("response head too long")
    lines = head[:-4].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit() \
            or len(parts[1]) != 3:
        raise HealthCheckError(f"not an HTTP/1.x response: {lines[0][:80]!r}")
    status = int(parts[1])
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HealthCheckError(f"malformed response header line {line[:80]!r}")
        headers.append((name.lower(), value.strip()))
    hmap = {}
    for name, value in headers:
        hmap.setdefault(name, value)
    conn_tokens = {t.strip().lower() for t in hmap.get("connection", "").split(",")}
    keep = parts[0] == "HTTP/1.1" and "close" not in conn_tokens
    if head_request or status in (204, 304) or 100 <= status < 200:
        return status, headers, b"", keep
    te = hmap.get("transfer-encoding", "").lower()
    if te:
        if te.split(",")[-1].strip() != "chunked":
            raise HealthCheckError(f"unsupported transfer-encoding {te!r}")
        return status, headers, await _read_chunked(reader), keep
    if "content-length" in hmap:
        cl = hmap["content-length"]
        if not cl.isdigit():
            raise HealthCheckError(f"bad content-length {cl!r}")
        n = int(cl)
        if n > _MAX_BODY:
            raise HealthCheckError(f"response body of {n} bytes is over the {_MAX_BODY} limit")
        try:
            return status, headers, await reader.readexactly(n), keep
        except asyncio.IncompleteReadError:
            raise HealthCheckError("connection closed inside the response body") from None
    body = await reader.read(_MAX_BODY + 1)
    while body and len(body) <= _MAX_BODY:
        more = await reader.read(_MAX_BODY + 1 - len(body))
        if not more:
            break
        body += more
    if len(body) > _MAX_BODY:
        raise HealthCheckError(f"response body over the {_MAX_BODY} byte limit")
    return status, headers, body, False


async def _read_chunked(reader):
    body = bytearray()
    while True:
        try:
            line = await reader.readuntil(b"\r\n")
            size_s = line[:-2].split(b";", 1)[0].strip()
            size = int(size_s, 16)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            raise HealthCheckError("malformed chunked response body") from None
        if size == 0:
            while True:  # trailers
                try:
                    t = await reader.readuntil(b"\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    raise HealthCheckError("malformed chunked trailer") from None
                if t == b"\r\n":
                    return bytes(body)
        if len(body) + size > _MAX_BODY:
            raise HealthCheckError(f"response body over the {_MAX_BODY} byte limit")
        try:
            body += await reader.readexactly(size)
            if await reader.readexactly(2) != b"\r\n":
                raise HealthCheckError("malformed chunked response body")
        except asyncio.IncompleteReadError:
            raise HealthCheckError("connection closed inside a chunked body") from None


# ---------------------------------------------------------------------------
# The load balancer


class BackendState:
    """A read-only view of one backend's state at the moment it was taken.

    Attributes:
        backend: the Backend.
        healthy: the health checks' verdict (True until checks say otherwise).
        enabled: False after ``set_enable(backend, False)``.
        usable: healthy and enabled: ``select`` may return it.
        last_error: text of the last failed check, or None.
        last_check: ``time.time()`` of the last finished check, or None.
        consecutive: results in a row that disagree with ``healthy`` so far.
    """

    __slots__ = ("backend", "healthy", "enabled", "last_error", "last_check", "consecutive")

    def __init__(self, backend, healthy=True, enabled=True):
        self.backend = backend
        self.healthy = healthy
        self.enabled = enabled
        self.last_error = None
        self.last_check = None
        self.consecutive = 0

    @property
    def usable(self):
        return self.healthy and self.enabled

    def _copy(self):
        c = BackendState(self.backend, self.healthy, self.enabled)
        c.last_error, c.last_check, c.consecutive = self.last_error, self.last_check, self.consecutive
        return c

    def __repr__(self):
        return (f"<BackendState {self.backend.addr} healthy={self.healthy} "
                f"enabled={self.enabled} last_error={self.last_error!r}>")


class LoadBalancer(_lb.BalancerCore):
    """Backends, their health, and per-request selection.

    Args:
        discovery: a ServiceDiscovery (Static, DNS, File or your own).
        selection: a callable building the algorithm from the backend list:
            RoundRobin (default), Random, FNVHash, Consistent, a
            SelectionAlgorithm subclass, or e.g.
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

    Raises:
        TypeError, ValueError: bad arguments.

    ``select(key=None, max_iterations=256)`` and
    ``select_with(key, max_iterations, accept)`` are documented on
    ``sluiceway._lb.BalancerCore``: they return the first usable backend among
    the algorithm's first choice and fallbacks, or None.
    """

    def __init__(self, discovery, selection=RoundRobin, *, health_check=None,
                 health_check_frequency=None, update_frequency=None,
                 parallel_health_check=False, on_health_change=None):
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
        self._states = {}      # addr -> BackendState
        self._index = {}       # addr -> index in the current snapshot
        self._backends = ()
        self._task = None
        self._stopping = None
        self._rebuild([])

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

    def _rebuild(self, backends):
        algo = self.selection(list(backends))
        usable = [self._states[b.addr].usable for b in backends]
        self._install(algo, backends, usable)
        self._backends = tuple(backends)
        self._index = {b.addr: i for i, b in enumerate(backends)}

    def _apply(self, found):
        """Install ``found`` if it differs from the current set; return True if so."""
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
            return False
        old = {b.addr: b for b in self._backends}
        merged = []
        for b in unique:
            prev = old.get(b.addr)
            # Keep the object of a backend that stays, so pools keyed by it survive.
            if prev is not None and prev._key == b._key and prev.metadata == b.metadata:
                b = prev
            merged.append(b)
        states = {}
        for b in merged:
            st = self._states.get(b.addr)
            if st is None:
                st = BackendState(b)
            st.backend = b
            states[b.addr] = st
        self._states = states
        self._rebuild(merged)
        return True

    async def update(self):
        """Run discovery once and install the result if the set changed.

        Returns:
            True if the backend set changed.  A discovery error is logged on
            ``sluiceway.error`` and returns False, keeping the old set.
        """
        try:
            found = await self.discovery.discover()
            return self._apply(found)
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
            return
        st.consecutive += 1
        if st.consecutive < self.health_check.threshold(ok):
            return
        st.healthy = ok
        st.consecutive = 0
        self._sync_flag(st)
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
