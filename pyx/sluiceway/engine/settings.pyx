# Included by _engine.pyx: the engine's settings and the hook table.

# Every setting the engine reads, by its one name: the ServerConf key (YAML)
# and the Settings field are the same word. (name, default)
_SETTINGS = (
    ("downstream_header_timeout_seconds", 10.0),
    ("downstream_keepalive_timeout_seconds", 60.0),
    ("downstream_write_timeout_seconds", 60.0),
    ("downstream_body_timeout_seconds", 60.0),
    ("downstream_body_min_rate", 100.0),
    ("request_timeout_seconds", 0.0),
    ("upstream_connect_timeout_seconds", 5.0),
    ("upstream_read_timeout_seconds", 60.0),
    ("upstream_write_timeout_seconds", 60.0),
    ("upstream_idle_timeout_seconds", 60.0),
    ("lingering_time_seconds", 30.0),
    ("lingering_timeout_seconds", 5.0),
    ("upstream_keepalive_pool_size", 128),
    ("max_connections", 0),
    ("max_connections_mode", "reject"),
    ("max_retries", 1),
    ("retry_buffer_bytes", 65536),
    ("max_request_body_bytes", 0),
    ("max_request_header_bytes", 32768),
    ("max_request_target_bytes", 8192),
    ("max_request_fields", 128),
    ("forwarded_headers", False),
    ("access_log", False),
    ("proxy_protocol", False),
    ("proxy_protocol_from", ()),
    ("access_log_format", "text"),
    ("access_log_sample", 1.0),
    ("access_log_ctx_fields", ()),
    ("request_id", False),
    ("request_id_header", "X-Request-ID"),
    ("trusted_proxies", ()),
    ("real_ip_header", "X-Forwarded-For"),
    ("forwarded_header_style", "x-forwarded"),
)

# real_ip_header values -> (kind, the field's name in lower case)
_REAL_IP_HEADERS = {"x-forwarded-for": (RIP_XFF, b"x-forwarded-for"),
                    "x-real-ip": (RIP_X_REAL_IP, b"x-real-ip"),
                    "forwarded": (RIP_FORWARDED, b"forwarded")}
# forwarded_header_style values -> FWD_* bits
_FWD_STYLES = {"x-forwarded": FWD_X, "rfc7239": FWD_RFC, "both": FWD_X | FWD_RFC}


@cython.final
cdef class Settings:
    """The engine's settings, frozen: each field has the name of the
    ``ServerConf`` key it comes from (``Settings.from_conf(conf)``), or is
    given by keyword (``Settings(upstream_read_timeout_seconds=5)``; the
    others keep their defaults). Timeouts are seconds; 0 turns one off."""

    def __init__(self, **values):
        cdef dict known = dict(_SETTINGS)
        for name in values:
            if name not in known:
                import difflib
                close = difflib.get_close_matches(name, known, n=1)
                raise TypeError(f"unknown engine setting {name!r}"
                                + (f" (did you mean {close[0]}?)" if close else ""))
        known.update(values)
        self.downstream_header_timeout_seconds = known["downstream_header_timeout_seconds"]
        self.downstream_keepalive_timeout_seconds = known["downstream_keepalive_timeout_seconds"]
        self.downstream_write_timeout_seconds = known["downstream_write_timeout_seconds"]
        self.downstream_body_timeout_seconds = known["downstream_body_timeout_seconds"]
        self.downstream_body_min_rate = known["downstream_body_min_rate"]
        self.request_timeout_seconds = known["request_timeout_seconds"]
        self.upstream_connect_timeout_seconds = known["upstream_connect_timeout_seconds"]
        self.upstream_read_timeout_seconds = known["upstream_read_timeout_seconds"]
        self.upstream_write_timeout_seconds = known["upstream_write_timeout_seconds"]
        self.upstream_idle_timeout_seconds = known["upstream_idle_timeout_seconds"]
        self.lingering_time_seconds = known["lingering_time_seconds"]
        self.lingering_timeout_seconds = known["lingering_timeout_seconds"]
        self.upstream_keepalive_pool_size = known["upstream_keepalive_pool_size"]
        self.max_connections = known["max_connections"]
        self.max_connections_mode = known["max_connections_mode"]
        self.max_retries = known["max_retries"]
        self.retry_buffer_bytes = known["retry_buffer_bytes"]
        self.max_request_body_bytes = known["max_request_body_bytes"]
        self.max_request_header_bytes = known["max_request_header_bytes"]
        self.max_request_target_bytes = known["max_request_target_bytes"]
        self.max_request_fields = known["max_request_fields"]
        self.forwarded_headers = known["forwarded_headers"]
        self.access_log = known["access_log"]
        self.proxy_protocol = known["proxy_protocol"]
        self.access_log_format = known["access_log_format"]
        self.access_log_sample = known["access_log_sample"]
        self.access_log_ctx_fields = tuple(str(f) for f in known["access_log_ctx_fields"] or ())
        self.request_id = known["request_id"]
        self.request_id_header = known["request_id_header"]
        if self.access_log_format not in ("text", "json", "combined"):
            raise ValueError(f"access_log_format must be 'text', 'json' or 'combined', got "
                             f"{self.access_log_format!r}")
        self.al_format = ("text", "json", "combined").index(self.access_log_format)
        if not 0.0 <= self.access_log_sample <= 1.0:
            raise ValueError(f"access_log_sample must be between 0 and 1, got "
                             f"{self.access_log_sample!r}")
        if not self.request_id_header or any(c in self.request_id_header for c in " :\r\n\t"):
            raise ValueError(f"request_id_header must be a header name, got "
                             f"{self.request_id_header!r}")
        self.rid_name = self.request_id_header.encode("latin-1")
        self.rid_lname = self.rid_name.lower()
        self.pp_from = _Nets(known["proxy_protocol_from"] or ())
        self.proxy_protocol_from = self.pp_from.cidrs
        if not self.proxy_protocol:
            self.pp_from = None
        elif not self.proxy_protocol_from:
            raise ValueError("proxy_protocol is on but proxy_protocol_from is empty: list the "
                             "addresses of the load balancers that send the header (CIDRs, "
                             "e.g. ['10.0.0.0/8']); connections from any other peer are refused")
        self.trusted = _Nets(known["trusted_proxies"] or ())
        self.trusted_proxies = self.trusted.cidrs
        if not self.trusted_proxies:
            self.trusted = None
        self.real_ip_header = known["real_ip_header"]
        rip = _REAL_IP_HEADERS.get(str(self.real_ip_header).lower())
        if rip is None:
            raise ValueError(f"real_ip_header must be X-Forwarded-For, X-Real-IP or Forwarded, "
                             f"got {self.real_ip_header!r}")
        self.rip_kind, self.rip_name = rip
        self.forwarded_header_style = known["forwarded_header_style"]
        style = _FWD_STYLES.get(str(self.forwarded_header_style).lower())
        if style is None:
            raise ValueError(f"forwarded_header_style must be x-forwarded, rfc7239 or both, got "
                             f"{self.forwarded_header_style!r}")
        self.fwd_style = style
        if self.max_connections_mode not in ("reject", "pause"):
            raise ValueError(f"max_connections_mode must be 'reject' or 'pause', got "
                             f"{self.max_connections_mode!r}")
        if known["max_request_header_bytes"] <= 0 or known["max_request_target_bytes"] <= 0 or \
                known["max_request_fields"] <= 0:
            raise ValueError("max_request_header_bytes, max_request_target_bytes and "
                             "max_request_fields must be positive")
        self.pause_accept = self.max_connections_mode == "pause"
        # The sweep runs at a quarter of the shortest timeout (20 ms to 1 s);
        # a shorter per-peer deadline brings it forward (_Conn.arm_at).
        ts = [t for t in (self.downstream_header_timeout_seconds,
                          self.downstream_keepalive_timeout_seconds,
                          self.downstream_write_timeout_seconds,
                          self.downstream_body_timeout_seconds, self.request_timeout_seconds,
                          self.upstream_read_timeout_seconds, self.upstream_write_timeout_seconds,
                          self.upstream_idle_timeout_seconds, self.lingering_timeout_seconds)
              if t > 0]
        self.tick = min(1.0, max(0.02, min(ts) / 4.0)) if ts else 1.0

    @staticmethod
    def from_conf(conf):
        """The settings of a ``ServerConf`` (keys the engine does not use
        are ignored; keys ServerConf does not have keep their defaults)."""
        return Settings(**{name: getattr(conf, name) for name, _ in _SETTINGS
                           if hasattr(conf, name)})

    def __repr__(self):
        return "Settings(" + ", ".join(f"{n}={getattr(self, n)!r}" for n, _ in _SETTINGS) + ")"


# The hooks of ProxyHttp the engine calls, in the order of the H_* indices
# (consts.pxd): the one list of their names.
HOOK_NAMES = ("new_ctx", "early_request_filter", "request_filter", "request_body_filter",
              "upstream_peer", "connected_to_upstream", "upstream_request_filter",
              "upstream_response_filter", "response_filter", "response_body_filter",
              "logging", "fail_to_connect", "error_while_proxy", "fail_to_proxy",
              "upstream_response_body_filter", "suppress_error_log", "request_summary")


cdef tuple _hook_table(object app, object base_class):
    """The app's hooks in HOOK_NAMES order: its bound method where it
    overrides the base class, else None (found once; a hook left alone is
    never called)."""
    out = []
    for name in HOOK_NAMES:
        fn = getattr(type(app), name, None)
        out.append(None if fn is None or fn is getattr(base_class, name, None)
                   else getattr(app, name))
    if out[H_PEER] is None:
        raise TypeError(f"{type(app).__name__} must override upstream_peer(session, ctx) "
                        "to say where each request goes (return an HttpPeer)")
    return tuple(out)
