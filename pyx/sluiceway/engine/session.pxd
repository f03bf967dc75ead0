# Included by _engine.pxd: see engine/session.pyx.

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
