"""Server configuration: defaults, YAML loading and validation.

Keys follow Pingora's server configuration where they apply (``threads`` is
the number of worker *processes* here). Unknown keys, keys given twice,
wrong types and malformed addresses are errors that name the key and the
line of the file.

Every key is one field of :class:`ServerConf` with its documentation in the
field's metadata; ``conf.example.yaml`` and the key reference in
``docs/configuration.md`` are generated from them
(``sluiceway config example``, ``sluiceway config reference``) and a test checks
that they agree. One key is a section: ``redis:``, the Redis server that
``RedisRateLimiter``s made with ``backend=None`` share, for example::

    redis:
      url: redis://127.0.0.1:6379/0
      username: sluiceway           # an ACL user (or only a password)
      password: secret
      tls: false
      key_prefix: "sluiceway:"
      on_failure: open              # or closed
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple, Union

__all__ = ["ServerConf", "ConfigError", "load_config", "parse_listen"]


class ConfigError(ValueError):
    """A configuration file or value is wrong; the message names the key and,
    for files, the line."""


def _key(default, doc: str, *, group: str = "server", example: Any = dataclasses.MISSING,
         hint: Optional[str] = None):
    """A configuration key: its default and what it does (one paragraph).
    conf.example.yaml sets it to ``example`` when given (else the default),
    and shows ``hint`` as a commented-out alternative."""
    meta = {"doc": doc, "group": group}
    if example is not dataclasses.MISSING:
        meta["example"] = example
    if hint is not None:
        meta["hint"] = hint
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def parse_listen(addr: str) -> Union[Tuple[str, str, int], Tuple[str, str]]:
    """Parse a listen address.

    Returns:
        ``("tcp", host, port)`` for ``"host:port"`` / ``"[v6]:port"``, or
        ``("unix", path)`` for ``"unix:/path"``.

    Raises:
        ConfigError: the address is malformed; the message shows the forms
            that work.
    """
    if not isinstance(addr, str):
        raise ConfigError(f"listen address {addr!r} must be a string like '127.0.0.1:8080'")
    if addr.startswith("unix:"):
        if not addr[5:]:
            raise ConfigError("listen address 'unix:' needs a path, e.g. 'unix:/run/sluiceway.sock'")
        return ("unix", addr[5:])
    if addr.isdigit():
        raise ConfigError(f"listen address {addr!r} needs a host: write '127.0.0.1:{addr}' "
                          f"(this machine only) or '0.0.0.0:{addr}' (every interface)")
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not host or (":" in host and not host.startswith("[")):
        raise ConfigError(f"listen address {addr!r} must be 'host:port' (e.g. '127.0.0.1:8080', "
                          "'0.0.0.0:8080', '[::1]:8080') or 'unix:/path/to.sock'")
    if int(port) > 65535:
        raise ConfigError(f"listen address {addr!r}: port {port} is above 65535")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host.replace(".", "").replace("-", "").replace(":", "").isalnum():
        raise ConfigError(f"listen address {addr!r}: {host!r} is not a host name or IP address")
    return ("tcp", host, int(port))


@dataclass
class ServerConf:
    """Settings of a :class:`~sluiceway.server.Server` and its proxy services.

    Each key is documented in its field's metadata (``doc``); see
    ``docs/configuration.md`` for the generated reference and
    ``conf.example.yaml`` for a complete commented file. Timeouts are in
    seconds, and 0 disables them.
    """

    version: int = _key(1, "Configuration format version. Must be 1.")
    threads: int = _key(
        1, "Worker processes. Each runs one event loop; a master process binds the "
        "listening sockets once, every worker accepts from them, and the master "
        "restarts a worker that dies (docs/operations.md). (Pingora's name; these "
        "are processes, not threads.)")
    pid_file: str = _key(
        "/tmp/sluiceway.pid", "Where the daemon (`-d` or `daemon: true`) writes the "
        "master's pid once it serves; removed when it exits (left alone when an "
        "upgrade's new process wrote its own). Not written in the foreground. A start "
        "refuses to run beside the live process this file names, unless it is an "
        "upgrade (`--upgrade`).", hint="/run/sluiceway.pid")
    error_log: Optional[str] = _key(
        None, "File for the error log (`sluiceway.error`: start-up, failures, "
        "warnings). Unset: standard error. A daemon has no standard error, so "
        "set it with `-d`.", hint="/var/log/sluiceway/error.log")
    daemon: bool = _key(
        False, "Run in the background (as `-d`): the command returns once the "
        "server listens, or fails with the reason.")
    grace_period_seconds: float = _key(
        5.0, "When workers stop gracefully (SIGTERM, the old workers of a reload or "
        "an upgrade), how long requests in flight may take before their "
        "connections are closed.")
    graceful_shutdown_timeout_seconds: float = _key(
        10.0, "How long the master process waits for stopping workers to exit "
        "before killing them (SIGKILL).")
    upgrade_sock: str = _key(
        "/tmp/sluiceway_upgrade.sock", "The Unix socket over which a running "
        "sluiceway hands its listening sockets to a new one started with "
        "`--upgrade` (when it gets SIGQUIT). Give both the same path; the folder "
        "must be writable by the new one.", hint="/run/sluiceway/upgrade.sock")
    upgrade_wait_seconds: float = _key(
        10.0, "How long a process started with `--upgrade` waits for the running "
        "one's sockets, and how long the running one, after SIGQUIT, keeps trying to "
        "reach it. Either may be started first.", group="sluiceway")
    user: Optional[str] = _key(
        None, "Run the workers as this user once the listening sockets are bound "
        "(the master keeps its user: it binds new addresses on a reload and "
        "reopens the logs). Needs root; unset: the workers keep the user that "
        "started sluiceway.", hint="www-data")
    group: Optional[str] = _key(
        None, "Run the workers with this group (default: the `user`'s group).",
        hint="www-data")
    upstream_keepalive_pool_size: int = _key(
        128, "Idle upstream connections kept per peer for reuse (0 disables pooling).")
    max_retries: int = _key(
        1, "How many times one request may go to `upstream_peer` again after a "
        "retryable failure: a failed connect (retryable unless `fail_to_connect` "
        "says otherwise), or a connection that broke, was reset or timed out before "
        "any response byte when the method is idempotent and the request body was "
        "kept (`retry_buffer_bytes`; `error_while_proxy` decides). 0: never.")
    listen: List[str] = _key(
        [], "Addresses to listen on: `host:port`, `[v6addr]:port` or `unix:/path`. "
        "Used by `sluiceway run` (unless `-l` is given) and by a program's proxy "
        "service (it replaces the addresses the program gave with `add_tcp`). "
        "`sluiceway run` listens on 127.0.0.1:8080 when there is none.",
        group="sluiceway", example=["127.0.0.1:8080"])
    tls_listen: List[Dict[str, Any]] = _key(
        [], "HTTPS addresses (docs/tls.md): a list of mappings, each with `listen` "
        "(`host:port`), `cert` and `key` (PEM files; the cert file holds the chain), "
        "and optionally `certificates` (more `{cert, key}` pairs: other names picked by "
        "SNI, exact or `*.wildcard`, or an ECDSA pair beside an RSA one; the first "
        "certificate's names are the default), `min_version` and `max_version` "
        "(`TLSv1.2`, `TLSv1.3`), `ciphers` (TLS 1.2 suites, OpenSSL syntax; Mozilla's "
        "intermediate profile by default), `ecdh_curve` (one curve; OpenSSL's defaults "
        "when unset), `alpn` (`[http/1.1]`), `session_tickets` (true), "
        "`handshake_timeout` (60 seconds, 0: none), `client_auth` (`none`, `optional`, "
        "`required`) with `client_ca` (PEM CA certificates), `watch_certs` (false; true: "
        "reload when a certificate, key or CA file changes, checked every second). Like "
        "`listen`, it replaces the TLS addresses a program gave with `add_tls`.",
        group="sluiceway",
        hint='[{listen: "0.0.0.0:8443", cert: /etc/sluiceway/cert.pem, key: /etc/sluiceway/key.pem}]')
    downstream_header_timeout_seconds: float = _key(
        10.0, "A client must send a whole request head within this (slowloris "
        "guard; 408 if some bytes came).", group="sluiceway")
    downstream_keepalive_timeout_seconds: float = _key(
        60.0, "Idle keep-alive client connections are closed after this.", group="sluiceway")
    request_timeout_seconds: float = _key(
        0.0, "Total time for one request, head to last byte (504 after it).", group="sluiceway")
    upstream_connect_timeout_seconds: float = _key(
        5.0, "Connecting to an upstream (504 after it).", group="sluiceway")
    upstream_read_timeout_seconds: float = _key(
        60.0, "Waiting for the upstream's next bytes (504 after it).", group="sluiceway")
    upstream_write_timeout_seconds: float = _key(
        60.0, "Waiting for the upstream to accept bytes (504 after it).", group="sluiceway")
    downstream_write_timeout_seconds: float = _key(
        60.0, "A client that reads nothing of the response for this long is "
        "disconnected (nginx's send_timeout).", group="sluiceway")
    downstream_body_timeout_seconds: float = _key(
        60.0, "While the proxy waits for a request body, a client that sends none "
        "of it for this long is answered 408 and disconnected (nginx's "
        "client_body_timeout). Time spent waiting for the upstream or a hook does "
        "not count.", group="sluiceway")
    downstream_body_min_rate: float = _key(
        100.0, "Bytes per second a request body must average, counted from the end "
        "of its first `downstream_body_timeout_seconds` (408 when slower: a body "
        "dripping a byte every few seconds). 0 turns the check off.", group="sluiceway")
    lingering_time_seconds: float = _key(
        30.0, "When the proxy closes a connection whose client may still be sending "
        "(an early answer to an upload, a 413, a malformed request), it first shuts "
        "down its side and reads and drops what still comes, for at most this "
        "long, so the client reads the response instead of a reset (nginx's "
        "lingering_time). 0 closes at once.", group="sluiceway")
    lingering_timeout_seconds: float = _key(
        5.0, "A lingering close ends when the client has been quiet this long "
        "(nginx's lingering_timeout). It also bounds the wait for the rest of a "
        "small request body (up to 64 KiB by Content-Length) that is read and "
        "dropped to keep the connection after an early answer.", group="sluiceway")
    upstream_idle_timeout_seconds: float = _key(
        60.0, "Pooled upstream connections idle longer than this are closed.", group="sluiceway")
    max_connections: int = _key(
        0, "Client connections per worker; 0 = unlimited.", group="sluiceway")
    max_connections_mode: str = _key(
        "reject", "What happens at `max_connections`: `reject` accepts the "
        "connection, answers 503 with Retry-After and closes it; `pause` stops "
        "accepting until a connection closes (new clients wait in the kernel's "
        "listen backlog, or go to another worker).", group="sluiceway")
    max_request_header_bytes: int = _key(
        32768, "Request head size limit (431 above it).", group="sluiceway")
    max_request_body_bytes: int = _key(
        0, "Request body size limit (413 above it); 0 = unlimited.", group="sluiceway")
    retry_buffer_bytes: int = _key(
        65536, "A request body up to this size is kept until the first response "
        "byte, so that the request can be sent again (on a new connection, or to "
        "another peer) when its upstream connection fails before answering; a "
        "larger body is streamed and such a request is not sent again. 0: requests "
        "with a body are never sent again.", group="sluiceway")
    forwarded_headers: bool = _key(
        False, "Write the forwarding fields on requests sent upstream "
        "(`forwarded_header_style`): the client's chain with this hop's peer appended "
        "when the peer is in `trusted_proxies`, else replaced, so a client cannot plant "
        "addresses (docs/client-addresses.md).", group="sluiceway")
    forwarded_header_style: str = _key(
        "x-forwarded", "Which forwarding fields `forwarded_headers` writes: `x-forwarded` "
        "(X-Forwarded-For, -Proto, -Host), `rfc7239` (Forwarded: for=...;proto=...;host=...) "
        "or `both`.", group="sluiceway")
    trusted_proxies: List[str] = _key(
        [], "Proxies in front of this one whose forwarding header is believed: addresses "
        "or CIDRs (`unix:` for Unix socket peers). A request from one of them gets "
        "`session.client_addr` from `real_ip_header`, walking right to left past trusted "
        "addresses as nginx's realip module with `real_ip_recursive on`.",
        group="sluiceway", hint='["10.0.0.0/8"]')
    real_ip_header: str = _key(
        "X-Forwarded-For", "The header that names the client behind `trusted_proxies`: "
        "`X-Forwarded-For`, `X-Real-IP` or `Forwarded` (RFC 7239, its `for=` nodes).",
        group="sluiceway")
    access_log: bool = _key(
        False, "Write a line per request on `sluiceway.access` (format in "
        "docs/configuration.md).", group="sluiceway", example=True)
    access_log_file: Optional[str] = _key(
        None, "File for the access log. Unset: standard output (the error log "
        "goes to standard error), so the two never mix.", group="sluiceway",
        hint="/var/log/sluiceway/access.log")
    access_log_format: str = _key(
        "text", "`text`: the line on the `sluiceway.access` logger described in "
        "docs/configuration.md; `json`: one JSON object per request; `combined`: nginx's "
        "combined format. `json` and `combined` are buffered and written without going "
        "through Python's logging (docs/observability.md).", group="sluiceway",
        hint="json")
    access_log_sample: float = _key(
        1.0, "Fraction of requests written to a `json` or `combined` access log (0 to 1); "
        "requests that failed or were answered 5xx are always written.", group="sluiceway")
    access_log_ctx_fields: List[str] = _key(
        [], "Keys of the request's `ctx` (when `new_ctx` returns a dict) that are added to "
        "each `json` access-log record, e.g. `[tenant, route]`.", group="sluiceway")
    access_log_buffer_bytes: int = _key(
        65536, "A `json` or `combined` access log is written when this many bytes are "
        "buffered (one write system call), or after `access_log_flush_seconds`.",
        group="sluiceway")
    access_log_flush_seconds: float = _key(
        1.0, "Longest time a buffered access-log record waits before it is written.",
        group="sluiceway")
    request_id: bool = _key(
        False, "Give every request an id: the client's `X-Request-ID` (see "
        "`request_id_header`) when it is valid, else a new one unique across workers and "
        "restarts; it goes upstream, back to the client, and into the `json` access log as "
        "`request_id` (`session.request_id`).", group="sluiceway")
    request_id_header: str = _key(
        "X-Request-ID", "The header that carries the request id.", group="sluiceway")
    metrics: bool = _key(
        True, "Count requests, connections, the pool and errors in shared memory for "
        "`/metrics` on `admin_listen` (docs/observability.md); false: the engine counts "
        "nothing.", group="sluiceway")
    metrics_max_series: int = _key(
        8192, "Most metric series (a metric with one set of label values) the server "
        "holds; the engine's take about 40 per service, the rest are for your own metrics.",
        group="sluiceway")
    admin_listen: Optional[str] = _key(
        None, "Address of the admin listener (`host:port` or `unix:/path`), served by the "
        "master process: `/metrics` (Prometheus text, or OpenMetrics when asked), "
        "`/healthz`, `/readyz` and `/status`. Never on the proxy's own address; keep it on "
        "127.0.0.1, a private network or a Unix socket.", group="sluiceway",
        hint="127.0.0.1:9901")
    otel: bool = _key(
        False, "Make every request an OpenTelemetry span exported over OTLP/HTTP (needs "
        "the `sluiceway[otel]` extra); its traceparent goes upstream.", group="sluiceway")
    otel_endpoint: str = _key(
        "http://127.0.0.1:4318/v1/traces", "Where spans are exported (OTLP over HTTP, "
        "protobuf).", group="sluiceway")
    otel_sample_ratio: float = _key(
        1.0, "Fraction of traces recorded when the client sent no sampled traceparent "
        "(0 to 1); a parent's decision is followed.", group="sluiceway")
    otel_service_name: str = _key(
        "sluiceway", "`service.name` of the exported spans.", group="sluiceway")
    proxy_protocol: bool = _key(
        False, "Every connection starts with a PROXY protocol header (version 1 or 2, "
        "told apart by its first bytes) from a load balancer in `proxy_protocol_from`; "
        "the client it names becomes `session.client_addr`. Connections from other "
        "peers are refused, and one without a valid header is closed "
        "(docs/client-addresses.md).", group="sluiceway")
    proxy_protocol_from: List[str] = _key(
        [], "The load balancers allowed to send the PROXY protocol: addresses or "
        "CIDRs (`10.0.0.0/8`, `2001:db8::/32`). Required when `proxy_protocol` is on.",
        group="sluiceway", example=["10.0.0.0/8"])
    compression: bool = _key(
        False, "Compress responses for clients that accept it (gzip, brotli, zstd "
        "chosen by the request's Accept-Encoding q-values), with the settings below; a "
        "hook can turn it on or off per request (`session.compress_response`). Never "
        "compresses twice, adds `Vary: Accept-Encoding`, weakens a strong ETag "
        "(docs/compression.md).", group="sluiceway")
    compression_algorithms: List[str] = _key(
        ["zstd", "br", "gzip"], "The codings offered, in the server's order of "
        "preference (ties in the client's q-values go to the first); br and zstd need "
        "the brotli and zstandard packages (`sluiceway[compression]`) and are skipped "
        "without them.", group="sluiceway")
    compression_min_size: int = _key(
        256, "A response with a Content-Length below this many bytes is sent as it is "
        "(one of unknown length is compressed).", group="sluiceway")
    compression_types: List[str] = _key(
        ["text/*", "application/json", "application/javascript", "application/xml",
         "application/xhtml+xml", "application/rss+xml", "application/atom+xml",
         "application/ld+json", "application/manifest+json", "application/wasm",
         "image/svg+xml", "font/ttf", "font/otf"],
        "Media types that are compressed (`text/*`: every `text/` type).", group="sluiceway")
    compression_gzip_level: int = _key(6, "gzip level, 1 to 9.", group="sluiceway")
    compression_brotli_level: int = _key(4, "brotli quality, 0 to 11.", group="sluiceway")
    compression_zstd_level: int = _key(3, "zstd level, 1 to 22.", group="sluiceway")
    redis: Optional[Dict[str, Any]] = _key(
        None, "The Redis server that `RedisRateLimiter`s made with `backend=None` "
        "share (limits across machines; docs/limits.md), a mapping of: `url` "
        "(`redis://`, or `rediss://` for TLS; or `host`, `port`, `db`), `username` "
        "(an ACL user), `password`, `tls` (true/false), `tls_ca_file`, `key_prefix` "
        "(default `sluiceway:`), `on_failure` (`open`: decide from local counts while "
        "Redis is unreachable, the default; `closed`: refuse), `timeout_seconds` "
        "(0.05), `sync_interval_seconds` (0.005), `sync_events` (64), "
        "`reconnect_delay_seconds` (0.1), `max_reconnect_delay_seconds` (2). Unset: "
        "no Redis.", group="sluiceway",
        hint='{url: "redis://127.0.0.1:6379/0", password: secret, on_failure: open}')

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, lines: Optional[dict] = None, path: str = "<config>") -> None:
        """Check every value; raise ConfigError naming the key (and line)."""
        def where(key: str) -> str:
            if lines and key in lines:
                return f"{path}:{lines[key]}: "
            return f"{path}: " if lines is not None else ""

        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
            ok = True
            if t == "int":
                ok = isinstance(v, int) and not isinstance(v, bool)
            elif t == "float":
                ok = isinstance(v, (int, float)) and not isinstance(v, bool)
                if ok:
                    setattr(self, f.name, float(v))
            elif t == "bool":
                ok = isinstance(v, bool)
            elif t == "Optional[str]":
                ok = v is None or isinstance(v, str)
            elif t == "str":
                ok = isinstance(v, str)
            elif t == "List[str]":
                ok = isinstance(v, list) and all(isinstance(x, str) for x in v)
            if not ok:
                raise ConfigError(f"{where(f.name)}{f.name} must be {t.replace('Optional[str]', 'a string or null').replace('List[str]', 'a list of strings')}, "
                                  f"got {v!r}")
        for name in ("threads", "max_request_header_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{where(name)}{name} must be at least 1, got {getattr(self, name)}")
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v < 0:
                raise ConfigError(f"{where(f.name)}{f.name} must not be negative, got {v}")
        if self.max_connections_mode not in ("reject", "pause"):
            raise ConfigError(f"{where('max_connections_mode')}max_connections_mode must be "
                              f"'reject' or 'pause', got {self.max_connections_mode!r}")
        for name, lookup in (("user", "getpwnam"), ("group", "getgrnam")):
            value = getattr(self, name)
            if value is not None:
                import grp
                import pwd

                try:
                    getattr(pwd if name == "user" else grp, lookup)(value)
                except KeyError:
                    raise ConfigError(f"{where(name)}{name} {value!r} does not exist on this "
                                      f"machine") from None
        if self.access_log_format not in ("text", "json", "combined"):
            raise ConfigError(f"{where('access_log_format')}access_log_format must be 'text', "
                              f"'json' or 'combined', got {self.access_log_format!r}")
        for name in ("access_log_sample", "otel_sample_ratio"):
            if getattr(self, name) > 1:
                raise ConfigError(f"{where(name)}{name} must be between 0 and 1, got "
                                  f"{getattr(self, name)}")
        if self.metrics_max_series < 64:
            raise ConfigError(f"{where('metrics_max_series')}metrics_max_series must be at "
                              f"least 64, got {self.metrics_max_series}")
        if self.admin_listen is not None:
            try:
                parse_listen(self.admin_listen)
            except ConfigError as exc:
                raise ConfigError(f"{where('admin_listen')}admin_listen: {exc}") from None
            if self.admin_listen in self.listen:
                raise ConfigError(f"{where('admin_listen')}admin_listen {self.admin_listen} is "
                                  "also in listen: give the admin listener its own address")
        if not self.request_id_header or any(c in self.request_id_header for c in " :\r\n\t"):
            raise ConfigError(f"{where('request_id_header')}request_id_header must be a header "
                              f"name, got {self.request_id_header!r}")
        if not self.upgrade_sock:
            raise ConfigError(f"{where('upgrade_sock')}upgrade_sock must be a path, e.g. "
                              "/run/sluiceway/upgrade.sock")
        if self.version != 1:
            raise ConfigError(f"{where('version')}version must be 1, got {self.version}")
        for addr in self.listen:
            try:
                parse_listen(addr)
            except ConfigError as exc:
                raise ConfigError(f"{where('listen')}{exc}") from None
        self._check_tls_listen(where("tls_listen"))
        self.redis_backend_args(where("redis"))
        import ipaddress
        for key in ("proxy_protocol_from", "trusted_proxies"):
            for cidr in getattr(self, key):
                if key == "trusted_proxies" and cidr.strip() == "unix:":
                    continue
                try:
                    ipaddress.ip_network(cidr.strip(), strict=False)
                except ValueError:
                    raise ConfigError(f"{where(key)}{cidr!r} is not an IP address or network; "
                                      "write e.g. '10.0.0.5' or '10.0.0.0/8'") from None
        if self.real_ip_header.lower() not in ("x-forwarded-for", "x-real-ip", "forwarded"):
            raise ConfigError(f"{where('real_ip_header')}real_ip_header must be X-Forwarded-For, "
                              f"X-Real-IP or Forwarded, got {self.real_ip_header!r}")
        if self.forwarded_header_style.lower() not in ("x-forwarded", "rfc7239", "both"):
            raise ConfigError(f"{where('forwarded_header_style')}forwarded_header_style must be "
                              f"x-forwarded, rfc7239 or both, got {self.forwarded_header_style!r}")
        if self.proxy_protocol and not self.proxy_protocol_from:
            raise ConfigError(f"{where('proxy_protocol')}proxy_protocol is on but "
                              "proxy_protocol_from is empty: list the load balancers that "
                              "send the header (e.g. proxy_protocol_from: ['10.0.0.0/8'])")
        from .compression import CompressionPolicy
        try:
            CompressionPolicy.from_conf(self)
        except ValueError as exc:
            key = "compression_algorithms" if "algorithm" in str(exc) else "compression"
            raise ConfigError(f"{where(key)}{exc}") from None

    def _check_tls_listen(self, where: str) -> None:
        if not isinstance(self.tls_listen, list):
            raise ConfigError(f"{where}tls_listen must be a list of mappings "
                              f"({{listen: ..., cert: ..., key: ...}}), got {self.tls_listen!r}")
        from .tls import TlsOptions

        for i, entry in enumerate(self.tls_listen):
            if not isinstance(entry, dict) or "listen" not in entry:
                raise ConfigError(f"{where}tls_listen entry {i + 1} must be a mapping with "
                                  f"listen, cert and key, got {entry!r}")
            e = dict(entry)
            addr = e.pop("listen")
            try:
                if parse_listen(addr)[0] != "tcp":
                    raise ConfigError(f"listen address {addr!r}: TLS is for TCP addresses")
                TlsOptions.make(**e)
            except (ConfigError, ValueError, TypeError) as exc:
                raise ConfigError(f"{where}tls_listen entry {i + 1} ({addr}): {exc}") from None
            if addr in self.listen:
                raise ConfigError(f"{where}tls_listen {addr} is also in listen: an address is "
                                  "plain or TLS")

    # YAML key under ``redis:`` -> (RedisBackend argument, allowed types)
    _REDIS_KEYS = {
        "url": ("url", str), "host": ("host", str), "port": ("port", int), "db": ("db", int),
        "username": ("username", str), "password": ("password", str), "tls": ("tls", bool),
        "tls_ca_file": ("tls_ca_file", str), "key_prefix": ("key_prefix", str),
        "on_failure": ("on_failure", str), "timeout_seconds": ("timeout", (int, float)),
        "sync_interval_seconds": ("sync_interval", (int, float)),
        "sync_events": ("sync_events", int),
        "reconnect_delay_seconds": ("reconnect_delay", (int, float)),
        "max_reconnect_delay_seconds": ("max_reconnect_delay", (int, float)),
    }

    def redis_backend_args(self, where: str = "") -> Optional[dict]:
        """The ``redis:`` section as RedisBackend keyword arguments (None when
        unset); raises ConfigError naming the bad key."""
        if self.redis is None:
            return None
        if not isinstance(self.redis, dict):
            raise ConfigError(f"{where}redis must be a mapping (url, password, tls, ...), "
                              f"got {self.redis!r}")
        out = {}
        for key, value in self.redis.items():
            spec = self._REDIS_KEYS.get(key)
            if spec is None:
                import difflib

                close = difflib.get_close_matches(str(key), self._REDIS_KEYS, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise ConfigError(f"{where}unknown key redis.{key}{hint}")
            arg, kinds = spec
            if value is None and key in ("username", "password", "tls_ca_file", "url"):
                continue
            if isinstance(value, bool) and kinds is not bool or not isinstance(value, kinds):
                raise ConfigError(f"{where}redis.{key} has the wrong type: {value!r}")
            out[arg] = value
        if out.get("on_failure", "open") not in ("open", "closed"):
            raise ConfigError(f"{where}redis.on_failure must be 'open' or 'closed', "
                              f"got {out['on_failure']!r}")
        for arg in ("timeout", "sync_interval", "sync_events", "reconnect_delay",
                    "max_reconnect_delay"):
            if arg in out and out[arg] <= 0:
                raise ConfigError(f"{where}redis: {arg} must be positive, got {out[arg]}")
        return out


def _line_numbers(text: str) -> dict:
    """Map each top-level key to its line (1-based) using PyYAML's node marks."""
    import yaml

    lines = {}
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return lines
    if isinstance(node, yaml.MappingNode):
        for k, _v in node.value:
            if isinstance(k, yaml.ScalarNode):
                lines[k.value] = k.start_mark.line + 1
    return lines


class _DuplicateKey(Exception):
    def __init__(self, key, line, first):
        super().__init__(key)
        self.key, self.line, self.first = key, line, first


def _safe_loader():
    """PyYAML's SafeLoader, except that a key given twice in one mapping is
    an error (PyYAML keeps the last one silently)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def mapping(loader, node, deep=False):
        seen = {}
        for k, _v in node.value:
            key = loader.construct_object(k, deep=deep)
            try:
                if key in seen:
                    raise _DuplicateKey(key, k.start_mark.line + 1, seen[key])
                seen[key] = k.start_mark.line + 1
            except TypeError:  # an unhashable key: PyYAML reports it below
                pass
        return yaml.SafeLoader.construct_mapping(loader, node, deep)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return Loader


def load_config(path: str) -> ServerConf:
    """Read and validate a YAML configuration file.

    Raises:
        ConfigError: unreadable file, invalid YAML, a key given twice, an
            unknown key or a bad value (the message names the file, line and
            key).
    """
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from exc
    try:
        data: Any = yaml.load(text, Loader=_safe_loader())
    except _DuplicateKey as exc:
        raise ConfigError(f"{path}:{exc.line}: key {exc.key!r} is given twice (first on line "
                          f"{exc.first}); keep one") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{at}: invalid YAML: {getattr(exc, 'problem', exc)}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the configuration must be a mapping of keys to values")
    lines = _line_numbers(text)
    known = {f.name for f in dataclasses.fields(ServerConf)}
    for key in data:
        if key not in known:
            import difflib

            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"{path}:{lines.get(key, '?')}: unknown key {key!r}{hint}")
    conf = ServerConf.__new__(ServerConf)
    for f in dataclasses.fields(ServerConf):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        setattr(conf, f.name, data.get(f.name, default))
    conf.validate(lines, path)
    return conf


# ------------------------------------------------- generated documentation --

def _default(f):
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]


def _yaml_value(v) -> str:
    import json

    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v == int(v):
        return str(int(v))
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, list):
        return "[" + ", ".join(json.dumps(x) for x in v) + "]"
    return json.dumps(v) if any(c in v for c in ":#{}[],&*!|>'\"%@`") or not v else v


def _plain(doc: str) -> str:
    return doc.replace("`", "")


def _type_name(f) -> str:
    t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    if f.name in ("user", "group"):
        return "name or null"
    return {"int": "integer", "float": "seconds" if f.name.endswith("_seconds") else "number",
            "bool": "true/false", "str": "string", "Optional[str]": "path or null",
            "List[str]": "list of addresses" if f.name == "listen" else "list of strings",
            "List[Dict[str, Any]]": "list of mappings", "Optional[Dict[str, Any]]": "mapping or null"}.get(t, t)


def example_yaml() -> str:
    """A complete, commented configuration file: every key with what it does
    and its default (``conf.example.yaml`` is this text)."""
    import textwrap

    out = ["# sluiceway configuration: every key, with its default.",
           "# Generated from sluiceway.config.ServerConf by",
           "#     sluiceway config example > conf.example.yaml",
           "# Check a file with:  sluiceway run mymodule:App -c conf.yaml -t",
           "# Timeouts are in seconds; 0 disables a timeout.", ""]
    group = None
    for f in dataclasses.fields(ServerConf):
        if f.metadata["group"] != group:
            group = f.metadata["group"]
            out.append("# ---- Pingora's keys ----" if group == "server" else "# ---- sluiceway's keys ----")
            out.append("")
        for line in textwrap.wrap(_plain(f.metadata["doc"]), 76):
            out.append("# " + line)
        default = _default(f)
        if "hint" in f.metadata:
            out.append(f"#   for example: {f.name}: {f.metadata['hint']}")
        if "example" in f.metadata:
            out.append(f"# (default: {_yaml_value(default)})")
            out.append(f"{f.name}: {_yaml_value(f.metadata['example'])}")
        else:
            out.append(f"{f.name}: {_yaml_value(default)}")
        out.append("")
    return "\n".join(out)


def reference_markdown() -> str:
    """The key reference table of docs/configuration.md."""
    out = ["| key | type | default | what it does |", "|---|---|---|---|"]
    for f in dataclasses.fields(ServerConf):
        doc = f.metadata["doc"].replace("|", "\\|")
        out.append(f"| `{f.name}` | {_type_name(f)} | `{_yaml_value(_default(f))}` | {doc} |")
    return "\n".join(out) + "\n"

