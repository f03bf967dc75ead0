"""Server configuration: defaults, YAML loading and validation.

Keys follow Pingora's server configuration where they apply (``threads`` is
the number of worker *processes* here). Unknown keys and wrong types are
errors that name the key and the line of the file.

Example ``conf.yaml``::

    version: 1
    threads: 2
    pid_file: /tmp/sluiceway.pid
    error_log: /tmp/sluiceway.err
    grace_period_seconds: 5
    graceful_shutdown_timeout_seconds: 10
    upstream_keepalive_pool_size: 128
    max_retries: 1
    listen: ["0.0.0.0:8080"]
    upstream_connect_timeout_seconds: 5
    redis:                          # for RedisRateLimiter(..., backend=None)
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
from typing import Any, Dict, List, Optional

__all__ = ["ServerConf", "ConfigError", "load_config"]


class ConfigError(ValueError):
    """A configuration file or value is wrong; the message names the key and,
    for files, the line."""


@dataclass
class ServerConf:
    """Settings of a :class:`~sluiceway.server.Server` and its proxy services.

    Pingora keys:
        version: configuration format version (1).
        threads: worker processes (each runs one event loop; they share the
            listening ports with SO_REUSEPORT).
        pid_file: where ``-d`` (daemon) writes the master's pid.
        error_log: file for the ``sluiceway.error`` log (stderr when unset).
        daemon: run in the background (as ``-d``).
        grace_period_seconds: after SIGTERM, how long in-flight requests may
            take before connections are closed.
        graceful_shutdown_timeout_seconds: how long the master waits for
            workers to exit after SIGTERM before killing them.
        upstream_keepalive_pool_size: idle upstream connections kept per
            peer (0 disables pooling).
        max_retries: how many times ``upstream_peer`` is asked again after a
            retryable connect failure.

    sluiceway keys (timeouts in seconds; 0 disables):
        listen: addresses to listen on for services built by the CLI.
        downstream_header_timeout_seconds: a client must send a whole
            request head within this (slowloris guard).
        downstream_keepalive_timeout_seconds: idle keep-alive client
            connections are closed after this.
        request_timeout_seconds: total time for one request (504 after it).
        downstream_write_timeout_seconds: a client that reads nothing of the
            response for this long is disconnected (nginx's send_timeout).
        upstream_connect_timeout_seconds, upstream_read_timeout_seconds,
            upstream_write_timeout_seconds: per upstream operation (504).
        upstream_idle_timeout_seconds: pooled connections idle longer are
            closed.
        max_connections: client connections per worker. 0 = unlimited.
        max_connections_mode: what happens at max_connections: "reject"
            (the default: the connection is accepted, answered 503 with
            Retry-After and closed) or "pause" (the worker stops accepting
            until one of its connections closes; new clients wait in the
            kernel's listen backlog, or go to another worker).
        max_request_header_bytes: request head size limit (431).
        max_request_body_bytes: request body limit (413); 0 = unlimited.
        forwarded_headers: add X-Forwarded-For/-Proto/-Host upstream.
        access_log: log a line per request on ``sluiceway.access``.
        redis: the Redis server that ``RedisRateLimiter``s made with
            ``backend=None`` share (limits across machines), a mapping of:
            ``url`` (``redis://`` or ``rediss://`` for TLS; or ``host``,
            ``port``, ``db``), ``username`` (an ACL user), ``password``,
            ``tls`` (bool), ``tls_ca_file``, ``key_prefix`` (default
            ``"sluiceway:"``), ``on_failure`` (``open``: decide from local
            counts while Redis is unreachable, the default; ``closed``: refuse),
            ``timeout_seconds`` (0.05), ``sync_interval_seconds`` (0.005),
            ``sync_events`` (64), ``reconnect_delay_seconds`` (0.1),
            ``max_reconnect_delay_seconds`` (2).
    """

    version: int = 1
    threads: int = 1
    pid_file: str = "/tmp/sluiceway.pid"
    error_log: Optional[str] = None
    daemon: bool = False
    grace_period_seconds: float = 5.0
    graceful_shutdown_timeout_seconds: float = 10.0
    upstream_keepalive_pool_size: int = 128
    max_retries: int = 1
    listen: List[str] = field(default_factory=list)
    downstream_header_timeout_seconds: float = 10.0
    downstream_keepalive_timeout_seconds: float = 60.0
    request_timeout_seconds: float = 0.0
    upstream_connect_timeout_seconds: float = 5.0
    upstream_read_timeout_seconds: float = 60.0
    upstream_write_timeout_seconds: float = 60.0
    downstream_write_timeout_seconds: float = 60.0
    upstream_idle_timeout_seconds: float = 60.0
    max_connections: int = 0
    max_connections_mode: str = "reject"
    max_request_header_bytes: int = 32768
    max_request_body_bytes: int = 0
    forwarded_headers: bool = False
    access_log: bool = False
    redis: Optional[Dict[str, Any]] = None

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
        if self.version != 1:
            raise ConfigError(f"{where('version')}version must be 1, got {self.version}")
        self.redis_backend_args(where("redis"))

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

    def engine_settings(self) -> dict:
        """Keyword arguments for the compiled engine."""
        return dict(
            head_timeout=self.downstream_header_timeout_seconds,
            keepalive_timeout=self.downstream_keepalive_timeout_seconds,
            request_timeout=self.request_timeout_seconds,
            connect_timeout=self.upstream_connect_timeout_seconds,
            read_timeout=self.upstream_read_timeout_seconds,
            write_timeout=self.upstream_write_timeout_seconds,
            downstream_write_timeout=self.downstream_write_timeout_seconds,
            max_connections=self.max_connections,
            pause_accept=self.max_connections_mode == "pause",
            max_retries=self.max_retries,
            max_body_size=self.max_request_body_bytes,
            forwarded=self.forwarded_headers,
            access_log=self.access_log,
            pool_size=self.upstream_keepalive_pool_size,
            pool_idle_timeout=self.upstream_idle_timeout_seconds,
            max_head_size=self.max_request_header_bytes,
        )


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


def load_config(path: str) -> ServerConf:
    """Read and validate a YAML configuration file.

    Raises:
        ConfigError: unreadable file, invalid YAML, unknown key or bad value
            (the message names the file, line and key).
    """
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from exc
    try:
        data: Any = yaml.safe_load(text)
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
