"""Discovery of backends: Static, DNS, File and the ServiceDiscovery base
(see sluiceway.lb for the overview)."""

import asyncio
import json
import os
import socket

from sluiceway._lb_backend import Backend, _check_weight, _positive


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
