# Included by _engine.pyx: calling the app's hooks.

include "hook_task.pxi"


cdef object _hook_call_std(Session s, object fn, int next_stage):
    """``_hook_call(s, fn, (s, s.ctx), next_stage)`` without building the
    argument tuple (the common hook signature; a vectorcall)."""
    cdef object r
    try:
        r = fn(s, s.ctx)
        if r is None or type(r) is bool or type(r) is HttpPeer:
            return r
    except BaseException as exc:
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        s.hook_next = 0
        _hook_failed(s, exc, getattr(fn, "__name__", "?"), next_stage)
        return _FAILED
    return _hook_call(s, None, (r,), next_stage)


cdef object _hook_call(Session s, object fn, tuple args, int next_stage):
    """Call hook ``fn(*args)`` (with ``fn`` None, ``args[0]`` is the result
    of a call already made). Returns its result; ``_PENDING`` when it is a
    coroutine that suspended (it goes on in a Task whose done callback
    resumes the stage machine at ``next_stage``); ``_FAILED`` when it raised
    (the request was failed)."""
    cdef object r, y, prev
    cdef PyObject *out = NULL
    cdef PySendResult sr = PYGEN_ERROR
    cdef _Engine eng
    cdef _HookTask st
    cdef Py_ssize_t refs
    try:
        r = fn(*args) if fn is not None else args[0]
        if r is None or type(r) is bool or type(r) is HttpPeer:
            return r
        if PyCoro_CheckExact(r) or hasattr(type(r), "__await__"):
            if not PyCoro_CheckExact(r):
                r = _await_wrapper(r)
            # The first step runs with a stand-in as the loop's current
            # task (see hook_task.pxi); the previous one (the connect Task,
            # or none) is put back after it.
            eng = s.eng
            if eng.spare_task is not None:
                st = <_HookTask>eng.spare_task
                eng.spare_task = None
            else:
                st = _new_hook_task(eng.loop)
            refs = Py_REFCNT(st)
            prev = _enter_hook_task(eng.loop, st)
            try:
                # PyIter_Send: a coroutine that returns gives its value
                # without a StopIteration being raised and caught.
                sr = PyIter_Send(r, None, &out)
                if sr == PYGEN_ERROR:
                    raise_current()
            finally:
                _leave_hook_task(eng.loop, prev)
                if Py_REFCNT(st) == refs and st.pending == 0 and not sw_has_weakrefs(st):
                    eng.spare_task = st  # nobody kept it: the next hook's
                    st = None
                elif sr != PYGEN_NEXT:
                    st.ended = True
            if sr == PYGEN_RETURN:
                y = _steal(out)
                if st is not None and st.pending:
                    # It cancelled its own task and returned: a Task would
                    # end cancelled.
                    raise asyncio.CancelledError(st.msg)
                return y
            y = _steal(out)
            s.hook_next = next_stage
            s.hook_fn = fn if fn is not None else args[0]  # for messages
            s.hook_task = eng.loop.create_task(_drive(r, y, st))
            s.hook_task.add_done_callback(s._hook_done)
            if st is not None:
                st.task = s.hook_task
            return _PENDING
        return r
    except BaseException as exc:
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        s.hook_next = 0
        _hook_failed(s, exc, getattr(fn if fn is not None else args[0], "__qualname__", "?"),
                     next_stage)
        return _FAILED


cdef int _hook_finished(Session s, object task) except -1:
    """A suspended hook's Task ended: go on at the stage it was called for."""
    cdef int stage = s.hook_next
    name = getattr(s.hook_fn, "__qualname__", None) or "hook"
    s.hook_task = None
    s.hook_fn = None
    if stage == S_LOG_DONE:
        if not task.cancelled() and task.exception() is not None:
            _hook_failed(s, task.exception(), name, stage)
        else:
            s._final()
        return 0
    if task.cancelled():
        if not s.finished:
            if s.client_gone:
                s._finish()
            else:
                _hook_failed(s, asyncio.CancelledError("hook cancelled"), name, stage)
        return 0
    exc = task.exception()
    if exc is not None:
        _hook_failed(s, exc, name, stage)
        return 0
    if s.client_gone:
        s._finish()
        return 0
    return s._advance(stage, task.result())


cdef int _hook_failed(Session s, object exc, object name, int stage) except -1:
    """A hook raised: log it (an Error is not a bug: no traceback) and fail
    the request; a hook that failed while handling a failure goes on with
    the original error."""
    err = _wrap_hook_error(exc, name)
    if not isinstance(exc, Error) and s.eng.log.isEnabledFor(logging.ERROR):
        s.eng.gate.emit(logging.ERROR, "hook " + str(name),
                        "sluiceway: hook %s failed for %s %s",
                        (name, s.req_header._method, s.req_header.uri), exc)
    if stage == S_LOG_DONE:
        s._final()
    elif stage == S_FAIL_PROXY_DONE:
        # fail_to_proxy itself failed: answer with the original error's status.
        s._advance(stage, getattr(s.error, "status", 500))
    elif stage == S_ERR_PROXY_DONE or stage == S_FAIL_CONNECT_DONE:
        s._advance(stage, s.error)
    else:
        s._fail(err)
    return 0
