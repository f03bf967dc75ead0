"""Health checks: TcpHealthCheck, HttpHealthCheck and the HealthCheck base
(see sluiceway.lb for the overview)."""

import asyncio
import inspect
import ssl as _ssl

from sluiceway._lb_backend import _positive


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
