# Declarations of the compiled proxy engine (see _engine.pyx).
from libc.stdint cimport uint32_t, uint64_t

from sluiceway._span cimport (SW_EV_BODY, SW_EV_END, SW_EV_ERROR, SW_EV_HEAD, SW_EV_NEED_DATA,
                              SW_EV_UPGRADE, sw_find, sw_header_t, sw_ieq, sw_span_t)
from sluiceway._view cimport SW_VIEW_API_VERSION, sw_msg_t, sw_parser_api_t


cdef extern from "sw_proxy.h" nogil:
    enum:
        SW_F_DROPPED
        SW_F_HOST
        SW_F_EXPECT_100
        SW_F_CONN_CLOSE
        SW_F_CONN_KA
        SW_F_CONN_UPGRADE
        SW_F_XFF
        SW_DROP_TRANSFER_ENCODING
        SW_DROP_CONTENT_LENGTH
        SW_DROP_EXPECT
        SW_DROP_XFF

    unsigned sw_hop_mark(const char *base, const sw_header_t *h, uint32_t n,
                         unsigned char *drop, unsigned extra)
    size_t sw_fields_size(const sw_header_t *h, uint32_t n)
    size_t sw_write_fields(char *out, const char *base, const sw_header_t *h, uint32_t n,
                           const unsigned char *drop)
    size_t sw_write_status_line(char *out, int status, const char *reason, size_t rlen)
    const char *sw_reason(int status)
    size_t sw_chunk_header(char *out, uint64_t n)
    double sw_now()


cdef class HeaderMap:
    cdef object _buf            # bytes holding the spans' bytes (span mode)
    cdef const char *_base
    cdef sw_header_t *_h
    cdef uint32_t _n
    cdef list _items            # [[name bytes, value bytes], ...] once edited

    cdef int _set_spans(self, object buf, const char *base, const sw_header_t *h,
                        uint32_t n) except -1
    cdef int _materialize(self) except -1
    cdef int _find(self, bytes lname, int start) except -2
    cdef bytes _value_at(self, int i)
    cdef bytes _name_at(self, int i)
    cdef object _get(self, object name, object default)


cdef class RequestHeader:
    cdef readonly HeaderMap headers
    cdef object _buf
    cdef str _method
    cdef bytes _uri             # set when a hook changed it
    cdef sw_span_t _target
    cdef sw_span_t _head        # (msg_start, head_len) in _buf
    cdef int _major
    cdef int _minor
    cdef bint _edited_line
    cdef bint keep_alive
    cdef bint chunked
    cdef bint has_cl
    cdef bint upgrade
    cdef unsigned long long content_length


cdef class ResponseHeader:
    cdef readonly HeaderMap headers
    cdef public int status
    cdef object _reason         # bytes
    cdef int _major
    cdef int _minor


cdef class HttpPeer:
    cdef readonly object address
    cdef readonly str host
    cdef readonly int port
    cdef readonly str path
    cdef readonly bint tls
    cdef readonly str sni
    cdef readonly object reuse_key
    cdef public object connect_timeout
    cdef public object read_timeout
    cdef public object write_timeout
    cdef public object idle_timeout
    cdef readonly bint verify_cert
    cdef readonly object ca_file
    cdef bytes _host_header
    cdef bytes _host_hdr(self)


cdef class _Wire:
    cdef void *p
    cdef sw_msg_t m
    cdef object data
    cdef const char *dptr
    cdef size_t dlen
    cdef size_t pos
    cdef bytearray carry
    cdef size_t cpos
    cdef bint carrying
    cdef bint need              # the parser asked for more bytes
    cdef object head_buf
    cdef const char *head_base
    cdef const char *body_at
    cdef size_t body_len

    cdef int feed(self, object b) except -1
    cdef int next(self) except -2
    cdef int finish(self)
    cdef size_t unread(self)
    cdef object body_bytes(self)


cdef class _Pool:
    cdef dict idle
    cdef public int max_idle
    cdef public double idle_timeout
    cdef public long long created
    cdef public long long reused
    cdef public long long closed
    cdef public long long evicted

    cdef _Upstream take(self, object key)
    cdef void put(self, _Upstream c)
    cdef void drop(self, _Upstream c)
    cdef void sweep(self, double now)


cdef class _Engine:
    cdef object loop
    cdef object app
    cdef _Pool pool
    cdef set conns
    cdef object timer
    cdef double tick
    cdef public bint closing
    # hooks: bound methods, or None when the app does not override them
    cdef object h_new_ctx
    cdef object h_early
    cdef object h_req_filter
    cdef object h_req_body
    cdef object h_peer
    cdef object h_connected
    cdef object h_up_req
    cdef object h_up_resp
    cdef object h_resp
    cdef object h_resp_body
    cdef object h_logging
    cdef object h_fail_connect
    cdef object h_err_proxy
    cdef object h_fail_proxy
    # settings
    cdef public double head_timeout
    cdef public double keepalive_timeout
    cdef public double request_timeout
    cdef public double connect_timeout
    cdef public double read_timeout
    cdef public double write_timeout
    cdef public double ds_write_timeout
    cdef public int max_connections
    cdef public int max_retries
    cdef public long long max_body_size
    cdef public bint forwarded
    cdef public bint access_log
    cdef uint32_t max_head
    cdef uint32_t max_url
    cdef uint32_t max_headers
    cdef public long long requests
    cdef public long long inflight
    cdef object log
    cdef object alog

    cdef list wires             # free downstream parsers
    cdef object spare_task      # a _HookTask to reuse (_hook_task.pxi)
    cdef void _schedule(self)
    cdef _Wire _take_wire(self)
    cdef void _give_wire(self, _Wire w, bint reset=*)


cdef class _Conn:
    """I/O of one connection (base of _Downstream and _Upstream)."""
    cdef object transport       # the asyncio transport

    cdef void t_write(self, object data)
    cdef void t_writev(self, tuple parts)
    cdef void t_pause_reading(self)
    cdef void t_resume_reading(self)
    cdef void t_close(self)
    cdef object t_peername(self)


cdef class _Downstream(_Conn):
    cdef _Engine eng
    cdef _Wire w
    cdef Session cur
    cdef object client_addr
    cdef bint blocked
    cdef bint in_process
    cdef bint closed
    cdef bint write_paused
    cdef int read_pause
    cdef double deadline
    cdef double wdeadline       # the client must read what we wrote by then
    cdef int dl_kind
    cdef int nreq
    cdef bint discard_body      # body bytes of a finished request are dropped
    cdef bint rejected          # over max_connections: answered 503, closing
    cdef bint tunnel            # after a protocol switch: bytes are copied

    cdef void _process(self)
    cdef object _addr(self)
    cdef void _pause_read(self, int why)
    cdef void _resume_read(self, int why)
    cdef void _request_done(self, bint keep)
    cdef void _unblock(self)
    cdef void _close(self)
    cdef void _bad_request(self)
    cdef void _timeout(self, double now)
    cdef void _write_timeout(self)


cdef class _Upstream(_Conn):
    cdef _Engine eng
    cdef _Wire w
    cdef Session s
    cdef object key
    cdef HttpPeer peer
    cdef bint closed
    cdef bint idle
    cdef bint reusable
    cdef bint got_bytes
    cdef bint blocked
    cdef bint in_process
    cdef bint in_1xx
    cdef bint tunnel
    cdef bint write_paused
    cdef int read_pause
    cdef double deadline
    cdef int dl_kind
    cdef double read_timeout
    cdef double write_timeout
    cdef int nreq

    cdef void _process(self)
    cdef void _pause_read(self, int why)
    cdef void _resume_read(self, int why)
    cdef void _close(self)
    cdef void _timeout(self, double now)


cdef class Session:
    cdef readonly RequestHeader req_header
    cdef object _client_addr
    cdef readonly object ctx
    cdef readonly object peer
    cdef readonly object error
    cdef readonly int retries
    cdef readonly bint upstream_reused
    cdef readonly int status
    cdef readonly long long request_body_bytes
    cdef readonly long long response_body_bytes
    cdef _Engine eng
    cdef _Downstream ds
    cdef _Upstream us
    cdef ResponseHeader resp
    cdef object hook_task
    cdef int hook_next
    cdef object pending_chunk
    cdef bint pending_end
    cdef bint resp_started
    cdef bint resp_done
    cdef bint req_has_body
    cdef bint req_body_done
    cdef bint req_up_chunked
    cdef bint up_head_sent
    cdef bint client_keep
    cdef bint finished
    cdef bint ds_gone
    cdef bint expect_100
    cdef bint sent_100
    cdef bint head_request
    cdef bint retried_reused
    cdef bint counted_out
    cdef bint want_upgrade      # the client asked to switch protocols
    cdef bint upgrading         # the upstream answered 101
    cdef bint tunneling
    cdef bint req_end_seen      # the request's end was parsed
    cdef bint replaying         # resending on a new connection after a dead pooled one
    cdef list replay            # body sent on a pooled connection, until a response byte
    cdef long long replay_bytes
    cdef list prefetched        # body chunks read by a hook before forwarding
    cdef bint prefetch_end
    cdef object body_waiter
    cdef bint body_filter_up
    cdef bint resp_hooks
    cdef int resp_mode
    cdef object pend_data       # upstream bytes held back to write in one go
    cdef object pend_prefix     # a rebuilt head to write before them
    cdef size_t pend_off
    cdef size_t pend_len
    cdef double t_start
    cdef double t_connected
    cdef double t_resp
    cdef double t_end

    @staticmethod
    cdef Session _new(_Downstream ds, _Wire w)
    cdef void _bind(self, _Upstream u)
    cdef bytes _extra_fields(self, unsigned flags, bint reframe)
    cdef bytes _head_from_items(self, unsigned extra, bint reframe)
    cdef void _arm_read(self)
    cdef bytes _resp_head_from_items(self, ResponseHeader rs, bint keep)
    cdef void _advance(self, int stage, object value)
    cdef object _call(self, object fn, tuple args, int next_stage)
    cdef object _call2(self, object fn, int next_stage)
    cdef void _send_upstream_head(self)
    cdef void _on_req_body(self, object chunk)
    cdef void _req_body_out(self, object chunk)
    cdef void _on_req_end(self)
    cdef void _req_end_done(self)
    cdef void _resp_end_done(self)
    cdef void _on_resp_head(self, _Wire w)
    cdef void _send_resp_head(self)
    cdef void _on_resp_body(self, object chunk)
    cdef void _resp_body_out(self, object chunk)
    cdef void _on_resp_end(self)
    cdef void _fail(self, object err)
    cdef void _finish(self)
    cdef void _final(self)
    cdef void _access_line(self)
    cdef void _release_upstream(self, bint reuse)
    cdef void _ds_lost(self, object exc)
    cdef void _us_lost(self, object exc)
    cdef void _connect(self, bint force_new)
    cdef void _write_ds(self, object data)
    cdef void _wake_reader(self, object chunk)
    cdef void _flush_pending(self)
    cdef void _start_tunnel(self)
    cdef void _replay_body(self)
    cdef void _head_out(self, bytes head, _Wire w)
