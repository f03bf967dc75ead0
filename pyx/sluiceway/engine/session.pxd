# Included by _engine.pxd: see engine/session.pyx (and stages.pyx, ending.pyx,
# legs.pyx, forward.pyx, hooks.pyx, connect.pyx, which act on a Session).

cdef class Session:
    # seen by hooks
    cdef readonly RequestHeader req_header
    cdef object _client_addr    # the client (behind trusted proxies: the one they name)
    cdef object _direct_addr    # the address the request came from (socket or PROXY header)
    cdef object _via            # the trusted proxy it came through last, or None
    cdef signed char _trust     # whether _direct_addr is in trusted_proxies: 0 not known yet, 1 no, 2 yes
    cdef readonly object ctx
    cdef readonly object peer
    cdef readonly object error
    cdef readonly int retries
    cdef list tried             # the peers of earlier attempts that failed (retries)
    cdef readonly bint upstream_reused
    cdef readonly int status
    cdef readonly long long request_body_bytes
    cdef readonly long long response_body_bytes
    # its two ends, and what it forwards
    cdef _Engine eng
    cdef _Side client           # the client's end (kept until the request is done)
    cdef _Side origin           # the origin's end, while it has one
    cdef _Tls up_tls            # the TLS layer of the upstream connection last bound, or None
    cdef _Leg req_leg           # the request body's way (made when needed)
    cdef _Leg resp_leg          # the response body's way (made when needed)
    cdef ResponseHeader resp    # the response head the hooks see (when they exist)
    cdef _Reader resp_r         # the parser holding the response head
    cdef int resp_mode          # how the response body goes to the client (M_*)
    cdef object held_data       # response bytes held back to go out in one write
    cdef object held_prefix     # ... after this rebuilt head
    cdef size_t held_off
    cdef size_t held_len
    # a hook that suspended
    cdef object hook_task
    cdef object hook_fn         # the hook hook_task finishes (for its errors)
    cdef int hook_next          # the stage it resumes
    # the request
    cdef bint req_has_body
    cdef bint req_end_seen      # its end was parsed
    cdef bint req_body_done     # all of it went upstream
    cdef bint up_head_sent
    cdef bint head_request
    cdef bint expect_100
    cdef bint sent_100
    cdef bint want_upgrade      # the client asked to switch protocols
    cdef list prefetched        # body chunks read by a hook before the head went upstream
    cdef bint prefetch_end
    cdef object body_waiter
    cdef bint body_held         # a chunk came with no reader waiting (it was cancelled)
    cdef object body_held_chunk
    # the response
    cdef bint resp_hooks
    cdef bint resp_started
    cdef bint resp_done
    cdef bint upgrading         # the upstream answered 101
    cdef bint tunneling
    cdef int n_informational    # 1xx responses received
    cdef bint coding_asked      # a hook asked for (de)compression of this response
    cdef object compress_choice # ... compress (True/False; None: the configured default)
    cdef object compress_level  # ... at this level (None: the configured one)
    cdef bint decompress_wanted # ... hand the body filters the upstream's body decoded
    # the client connection, retries, the end
    cdef bint client_keep
    cdef bint client_gone
    cdef bint finished
    cdef bint counted_out
    cdef bint retried_reused
    cdef bint replaying         # resending on a new connection after a dead pooled one
    cdef bint reuse_failed      # self.error: a pooled connection died before answering
    cdef bint lost_early        # self.error: the upstream connection broke or timed out
                                # before any response byte (not a dead pooled one)
    cdef bint can_replay        # ... and the request can be sent again as it was
    cdef list replay            # body sent upstream, kept until a response byte (retries)
    cdef long long replay_bytes
    cdef double rate_limit      # limit_rate(): response body bytes per second (0: none)
    cdef long long rate_after   # ... after this many
    cdef double rate_start      # when the limited body began
    cdef object rate_timer      # the call that reads on again
    cdef object rid             # the request id (bytes; None: request ids are off)
    cdef bint rid_new           # ... made here: it goes upstream as a new field
    cdef object span            # its OpenTelemetry span (otel: true), or None
    cdef int up_status          # the upstream's status (0: none)
    cdef double t_connect       # a new upstream connection was asked for (0: pooled)
    cdef sw_load *load_held     # the count of self.peer this request is in (NULL: none);
                                # the peer's BackendLoad keeps it alive
    cdef double t_start
    cdef double t_connected
    cdef double t_resp
    cdef double t_end

    @staticmethod
    cdef Session _new(_Engine eng, _Side client, _Reader r)
    cdef int start(self) except -1
    cdef void _load_move(self, HttpPeer peer) noexcept
    cdef void _load_leave(self) noexcept
    cdef object _direct(self)
    cdef bint _direct_trusted(self)
    cdef object _client(self)
    # from the client's end
    cdef int on_request_body(self, object chunk) except -1
    cdef int on_request_end(self, _Reader r) except -1
    cdef int on_request_upgrade(self) except -1
    cdef int client_full(self) except -1
    cdef int client_drained(self) except -1
    cdef int client_failed(self, object err) except -1
    cdef int client_lost(self, object exc) except -1
    cdef int count_up(self, Py_ssize_t n) except -1
    cdef bint awaits_request_body(self)
    # from the origin's end
    cdef int on_informational(self, _Reader r) except -1
    cdef int on_response_head(self, _Reader r) except -1
    cdef int on_response_body(self, _Reader r) except -1
    cdef bint on_response_end(self, _Reader r) except -1
    cdef int on_response_upgrade(self) except -1
    cdef int parsed(self) except -1
    cdef int origin_full(self) except -1
    cdef int origin_drained(self) except -1
    cdef int origin_failed(self, object err) except -1
    cdef int origin_lost(self, object exc) except -1
    cdef int count_down(self, Py_ssize_t n) except -1
    cdef bint request_sent(self)
    # inside
    cdef int _bind(self, _Upstream u) except -1
    cdef _Leg _req_leg(self)
    cdef _Leg _resp_leg(self)
    cdef bint _body_allows_keep(self)
    cdef ResponseHeader _response_header(self, _Reader r)
    cdef int _plan_coding(self, _Reader r) except -1
    cdef int _wake_reader(self, object chunk) except -1
    cdef int _keep_for_replay(self, object chunk) except -1
    cdef int _to_client(self, object data) except -1
    cdef int _request_body_sent(self) except -1
    cdef int _response_body_sent(self) except -1
    cdef int _release_origin(self, bint reuse) except -1
    cdef int _pace(self) except -1
    cdef int _advance(self, int stage, object value) except -1
    cdef int _fail(self, object err) except -1
    cdef int _finish(self) except -1
    cdef int _final(self) except -1
    cdef object _bad_return(self, str hook, object value, str expected)


# stages.pyx
cdef int _run_stages(Session s, int stage, object value) except -1
cdef int _send_request(Session s) except -1
cdef int _replay_body(Session s) except -1
cdef int _answer_failure(Session s, object value) except -1
# ending.pyx
cdef int _fail_request(Session s, object err) except -1
cdef int _origin_lost(Session s, object exc) except -1
cdef int _replay(Session s) except -1
cdef int _lost_early(Session s, object err) except -1
cdef int _retry(Session s) except -1
cdef int _peer_result(Session s, bint ok) except -1
cdef int _log_failure(Session s, object err) except -1
cdef bint _suppressed(Session s, object err) except -1
cdef str _request_summary(Session s)
cdef object _bad_hook_return(Session s, str hook, object value, str expected)
cdef int _finish_request(Session s) except -1
cdef int _final_request(Session s) except -1
cdef int _access_line(Session s) except -1
# observe.pyx
cdef int _observe_start(Session s) except -1
cdef int _m_request(Session s) except -1
cdef int _access_record(Session s) except -1
cdef bytes _rid_field(Session s)
cdef char *_put_rid_field(Session s, char *o) noexcept
cdef bytes _head_with_rid(Session s, const char *head, Py_ssize_t n)
# forward.pyx
cdef sw_field_t *_fields_of(HeaderMap hm, uint32_t *n, size_t *size) except NULL
cdef bytes _request_head(Session s, bint reframe)
cdef bytes _extra_fields(Session s, unsigned flags, bint reframe)
cdef int _send_response_head(Session s) except -1
cdef int _forward_head(Session s, _Reader r, int mode) except -1
cdef int _head_out(Session s, bytes head, _Reader r) except -1
cdef bytes _informational_head(_Reader r)
cdef bint _hold_more(Session s, _Reader r)
cdef int _flush_held(Session s) except -1
# hooks.pyx
cdef object _hook_call_std(Session s, object fn, int next_stage)
cdef object _hook_call(Session s, object fn, tuple args, int next_stage)
cdef int _hook_finished(Session s, object task) except -1
cdef int _hook_failed(Session s, object exc, object name, int stage) except -1
# connect.pyx
cdef int _connect(Session s, bint force_new) except -1
