"""Backend: one upstream address with a weight and metadata (see sluiceway.lb)."""

import ipaddress
import os
import socket
from types import MappingProxyType

MAX_WEIGHT = 65535        # == sluiceway._lb.MAX_WEIGHT (tests check)
_UNIX_PATH_MAX = 107      # sun_path is 108 bytes including the terminating NUL


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


def _positive(value, what, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{what} must be a positive number of seconds, not {value!r:.60}")
    return float(value)
