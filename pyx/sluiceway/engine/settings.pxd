# Included by _engine.pxd: see engine/settings.pyx.

cdef class Settings:
    # every field is a ServerConf key of the same name (docs/configuration.md)
    cdef readonly double downstream_header_timeout_seconds
    cdef readonly double downstream_keepalive_timeout_seconds
    cdef readonly double downstream_write_timeout_seconds
    cdef readonly double downstream_body_timeout_seconds
    cdef readonly double downstream_body_min_rate
    cdef readonly double request_timeout_seconds
    cdef readonly double upstream_connect_timeout_seconds
    cdef readonly double upstream_read_timeout_seconds
    cdef readonly double upstream_write_timeout_seconds
    cdef readonly double upstream_idle_timeout_seconds
    cdef readonly double lingering_time_seconds
    cdef readonly double lingering_timeout_seconds
    cdef readonly int upstream_keepalive_pool_size
    cdef readonly int max_connections
    cdef readonly str max_connections_mode
    cdef readonly int max_retries
    cdef readonly long long retry_buffer_bytes
    cdef readonly long long max_request_body_bytes
    cdef readonly uint32_t max_request_header_bytes
    cdef readonly uint32_t max_request_target_bytes
    cdef readonly uint32_t max_request_fields
    cdef readonly bint forwarded_headers
    cdef readonly bint access_log
    cdef readonly bint proxy_protocol
    cdef readonly tuple proxy_protocol_from
    cdef readonly str access_log_format
    cdef readonly double access_log_sample
    cdef readonly tuple access_log_ctx_fields
    cdef readonly bint request_id
    cdef readonly str request_id_header
    cdef int al_format          # access_log_format as AL_*
    cdef bytes rid_name         # request_id_header, as sent
    cdef bytes rid_lname        # ... lower case, as looked up
    cdef _Nets pp_from          # proxy_protocol_from parsed; None when proxy_protocol is off
    cdef readonly tuple trusted_proxies
    cdef readonly str real_ip_header
    cdef readonly str forwarded_header_style
    cdef _Nets trusted          # trusted_proxies parsed; None when there are none
    cdef int rip_kind           # real_ip_header as RIP_*
    cdef bytes rip_name         # ... its field name, lower case
    cdef int fwd_style          # forwarded_header_style as FWD_* bits
    cdef bint pause_accept      # max_connections_mode == "pause"
    cdef double tick            # the deadline sweep's period (from the timeouts)
