# Declarations of the compiled proxy engine (see _engine.pyx).
from libc.stdint cimport uint32_t, uint64_t
from posix.uio cimport iovec
from cpython.ref cimport PyObject

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
    uint32_t sw_trailer_mark(const char *base, const sw_header_t *t, uint32_t n,
                             const char *conn, size_t conn_len, unsigned char *drop)
    size_t sw_fields_size(const sw_header_t *h, uint32_t n)
    size_t sw_write_fields(char *out, const char *base, const sw_header_t *h, uint32_t n,
                           const unsigned char *drop)
    size_t sw_write_status_line(char *out, int status, const char *reason, size_t rlen)
    const char *sw_reason(int status)
    size_t sw_chunk_header(char *out, uint64_t n)
    double sw_now()


cdef class _IoLoop
cdef class _Conn


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
    cdef bytes _uri             # set when a hook changed it, or from an absolute-form target
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

    cdef int _take_authority(self, sw_span_t auth) except -1


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
    cdef int put(self, _Upstream c) except -1
    cdef int drop(self, _Upstream c) except -1
    cdef int sweep(self, double now) except -1


cdef class _LogKind:
    cdef double since           # start of the current one-second window
    cdef int written            # lines written in it
    cdef long long dropped      # lines counted instead
    cdef int level              # the highest level dropped
    cdef str fmt                # the last line dropped
    cdef tuple args


cdef class _LogGate:
    cdef object log
    cdef dict kinds             # kind (str) -> _LogKind

    cdef int emit(self, int level, str kind, str fmt, tuple args, object exc=*) except -1
    cdef int flush(self, double now) except -1
    cdef int _summary(self, str kind, _LogKind k) except -1


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
    cdef public double body_timeout     # between two reads of a request body (408)
    cdef public double body_min_rate    # bytes/s a request body must average (0: off)
    cdef public double linger_time      # a lingering close lasts at most this
    cdef public double linger_timeout   # ... and ends when the client is quiet this long
    cdef public int max_connections
    cdef bint pause_accept      # at max_connections: stop accepting (else 503)
    cdef bint accept_paused
    cdef list listeners
    cdef public int max_retries
    cdef public long long max_body_size
    cdef public bint forwarded
    cdef public bint access_log
    cdef uint32_t max_head
    cdef uint32_t max_url
    cdef uint32_t max_headers
    cdef public long long requests
    cdef public long long inflight
    cdef public long long replayed  # requests sent again after a pooled connection died
    cdef object log
    cdef object alog
    cdef _LogGate gate          # repeated per-connection lines, rate-limited
    cdef Py_ssize_t peak_conns  # most client connections since memory was last trimmed
    cdef list due               # connections whose deadline passed, not yet acted on
    cdef bint expiring          # _expire has more of them to do
    cdef int _expire(self) except -1

    cdef _IoLoop io
    cdef list wires             # free downstream parsers
    cdef object spare_task      # a _HookTask to reuse (_hook_task.pxi)
    cdef int _schedule(self) except -1
    cdef int _accepted(self, int fd) except -1
    cdef bint _full(self)
    cdef int _conn_closed(self) except -1
    cdef int _close_idle(self, double now) except -1
    cdef _Wire _take_wire(self)
    cdef int _give_wire(self, _Wire w, bint reset=*) except -1


cdef extern from "sw_io.h" nogil:
    enum:
        SW_IO_IN
        SW_IO_OUT
        SW_IO_ERR
        SW_IO_HUP
    ctypedef struct sw_ready_t:
        void *obj
        unsigned events
    int sw_io_open()
    int sw_io_add(int epfd, int fd, unsigned events, void *obj)
    int sw_io_mod(int epfd, int fd, unsigned events, void *obj)
    int sw_io_del(int epfd, int fd)
    int sw_io_ready(int epfd, sw_ready_t *out, int max)
    int sw_io_accept(int lfd)
    ssize_t sw_io_recv(int fd, char *buf, size_t len)
    ssize_t sw_io_send(int fd, const char *buf, size_t len)
    ssize_t sw_io_writev(int fd, const iovec *iov, int n)
    int sw_io_soerror(int fd)
    int sw_io_peername(int fd, char *host, size_t hostlen, int *port,
                       unsigned *flowinfo, unsigned *scope_id)
    int sw_io_shutdown_wr(int fd)
    int sw_io_close(int fd)
    void sw_mem_trim()


cdef class _Listener:
    cdef _Engine eng
    cdef object sock
    cdef int fd
    cdef bint active
    cdef bint closed
    cdef object retry

    cdef int _start(self) except -1
    cdef int _stop(self) except -1
    cdef int _accept_some(self, int limit) except -1


cdef class _IoLoop:
    cdef object loop
    cdef int epfd
    cdef set live               # registered connections (holds them alive)
    cdef list dead              # unregistered during a dispatch, freed after it
    cdef bint dispatching
    cdef sw_ready_t *ready
    cdef PyObject *rbig         # the bytes the next read goes into (owned)

    cdef object recv(self, int fd)

    cdef int register(self, _Conn c, int fd) except -1
    cdef int unregister(self, _Conn c) except -1


cdef class _Conn:
    """I/O of one connection (base of _Downstream and _Upstream): on our own
    epoll set (``io`` is not None, ``fd`` >= 0 while open) or through an
    asyncio transport (TLS upstreams)."""
    cdef object transport       # the asyncio transport (TLS), else None
    cdef _IoLoop io             # our own I/O, else None
    cdef int fd                 # -1 once closed
    cdef unsigned evmask        # the epoll bits asked for
    cdef bint rd_paused
    cdef bint wr_paused         # pause_writing was called
    cdef bint io_closing        # t_close called: flush, then close
    cdef bint linger            # ... then shut down our side and read until EOF
    cdef bint rd_eof            # the peer sent EOF
    cdef bint lost_sent
    cdef list wq                # bytes waiting to be written (None: none)
    cdef Py_ssize_t wq_off      # bytes of wq[0] already written
    cdef Py_ssize_t wq_size     # bytes waiting in all
    cdef double flush_timeout   # after t_close, how long the peer may take to read the rest

    cdef int t_write(self, object data) except -1
    cdef int t_writev(self, tuple parts) except -1
    cdef int t_send(self, object head, object owner, Py_ssize_t off, Py_ssize_t n) except -1
    cdef int t_pause_reading(self) except -1
    cdef int t_resume_reading(self) except -1
    cdef int t_close(self) except -1
    cdef int t_close_linger(self) except -1
    cdef int _linger(self) except -1
    cdef int t_abort(self, object exc) except -1
    cdef object t_peername(self)
    cdef Py_ssize_t _sent(self, Py_ssize_t r) except -2
    cdef int _queue(self, object data, Py_ssize_t off) except -1
    cdef int _set_mask(self, unsigned mask) except -1
    cdef int _io_event(self, unsigned events) except -1
    cdef int _flush(self) except -1
    cdef int _finalize(self, object exc) except -1
    # the protocol, called by the I/O (overridden by both sides)
    cdef int on_data(self, object data) except -1
    cdef int on_eof(self) except -1
    cdef int on_lost(self, object exc) except -1
    cdef int on_pause_writing(self) except -1
    cdef int on_resume_writing(self) except -1
    cdef int on_closing(self) except -1


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
    cdef double linger_until    # a discard or lingering close ends by then
    cdef double idle_since      # when it last became idle (accepted, or a request done)
    cdef double rd_last         # request body: when bytes last came (or waiting resumed)
    cdef double rd_start        # ... when waiting began (moved on by the pauses)
    cdef long long rd_bytes     # ... bytes read since the head
    cdef int dl_kind
    cdef int nreq
    cdef bint discard_body      # body bytes of a finished request are dropped
    cdef bint rejected          # over max_connections: answered 503, closing
    cdef bint tunnel            # after a protocol switch: bytes are copied

    cdef int _made(self) except -1
    cdef int on_data(self, object data) except -1
    cdef int on_eof(self) except -1
    cdef int on_lost(self, object exc) except -1
    cdef int on_pause_writing(self) except -1
    cdef int on_resume_writing(self) except -1
    cdef int on_closing(self) except -1
    cdef int _process(self) except -1
    cdef object _addr(self)
    cdef int _pause_read(self, int why) except -1
    cdef int _resume_read(self, int why) except -1
    cdef int _request_done(self, bint keep, bint linger, bint discard) except -1
    cdef int _unblock(self) except -1
    cdef int _close(self, bint linger=*) except -1
    cdef bint _idle(self)
    cdef int _wait_resumed(self) except -1
    cdef bint _body_due(self, double now)
    cdef int _body_timeout(self, double now) except -1
    cdef int _bad_request(self) except -1
    cdef int _timeout(self, double now) except -1
    cdef int _write_timeout(self) except -1


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

    cdef int _made(self) except -1
    cdef int on_data(self, object data) except -1
    cdef int on_eof(self) except -1
    cdef int on_lost(self, object exc) except -1
    cdef int on_pause_writing(self) except -1
    cdef int on_resume_writing(self) except -1
    cdef int _process(self) except -1
    cdef int _pause_read(self, int why) except -1
    cdef int _resume_read(self, int why) except -1
    cdef int _close(self) except -1
    cdef int _timeout(self, double now) except -1


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
    cdef object hook_fn         # the hook hook_task finishes (for its errors)
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
    cdef int n_informational    # 1xx responses received
    cdef bint reuse_failed      # self.error: a pooled connection died before answering
    cdef bint can_replay        # ... and the request can be sent again as it was
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
    cdef bint body_held         # a chunk came with no reader waiting (it was cancelled)
    cdef object body_held_chunk
    cdef bint body_filter_up
    cdef bint resp_hooks
    cdef int resp_mode
    cdef object pend_data       # upstream bytes held back to write in one go
    cdef object pend_prefix     # a rebuilt head to write before them
    cdef size_t pend_off
    cdef size_t pend_len
    cdef bytes req_tail         # last chunk + trailers for the upstream (None: none)
    cdef bytes resp_tail        # last chunk + the upstream's trailers (None: none)
    cdef double t_start
    cdef double t_connected
    cdef double t_resp
    cdef double t_end

    @staticmethod
    cdef Session _new(_Downstream ds, _Wire w)
    cdef int _bind(self, _Upstream u) except -1
    cdef bytes _extra_fields(self, unsigned flags, bint reframe)
    cdef bytes _head_from_items(self, unsigned extra, bint reframe)
    cdef int _arm_read(self) except -1
    cdef bytes _resp_head_from_items(self, ResponseHeader rs, bint keep)
    cdef int _advance(self, int stage, object value) except -1
    cdef object _call(self, object fn, tuple args, int next_stage)
    cdef object _call2(self, object fn, int next_stage)
    cdef int _send_upstream_head(self) except -1
    cdef int _on_req_body(self, object chunk) except -1
    cdef int _req_body_out(self, object chunk) except -1
    cdef int _on_req_end(self) except -1
    cdef int _keep_req_trailers(self, _Wire w) except -1
    cdef int _keep_resp_trailers(self, _Wire w) except -1
    cdef int _req_end_done(self) except -1
    cdef int _resp_end_done(self) except -1
    cdef int _on_informational(self, _Wire w) except -1
    cdef int _on_resp_head(self, _Wire w) except -1
    cdef int _send_resp_head(self) except -1
    cdef int _on_resp_body(self, object chunk) except -1
    cdef int _resp_body_out(self, object chunk) except -1
    cdef int _on_resp_end(self) except -1
    cdef int _fail(self, object err) except -1
    cdef int _finish(self) except -1
    cdef int _final(self) except -1
    cdef int _access_line(self) except -1
    cdef int _release_upstream(self, bint reuse) except -1
    cdef int _ds_lost(self, object exc) except -1
    cdef int _log_failure(self, object err) except -1
    cdef int _replay(self) except -1
    cdef object _bad_return(self, str hook, object value, str expected)
    cdef int _us_lost(self, object exc) except -1
    cdef int _connect(self, bint force_new) except -1
    cdef int _write_ds(self, object data) except -1
    cdef bint _body_allows_keep(self)
    cdef int _wake_reader(self, object chunk) except -1
    cdef int _flush_pending(self) except -1
    cdef int _start_tunnel(self) except -1
    cdef int _replay_body(self) except -1
    cdef int _head_out(self, bytes head, _Wire w) except -1
