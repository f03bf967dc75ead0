# Included by _engine.pyx: the current task of a coroutine hook.
#
# Theory of operation
# -------------------
# A coroutine hook's first step runs inline, inside whatever callback the
# engine is in (``data_received``, a done callback, the connect Task), with
# no Task of its own: creating one per hook would cost a Task, a context copy
# and a loop iteration even for hooks that never suspend. But asyncio code
# that looks up its task (``asyncio.timeout``, ``TaskGroup``, libraries built
# on ``current_task()``) must find one, and must find one that belongs to the
# hook, not to the connect Task the hook happens to be called from.
#
# So for the duration of that first step a ``_HookTask`` is made the loop's
# current task (``_enter_hook_task``), then the previous task (usually none)
# is put back (``_leave_hook_task``). Most hooks finish in that step and
# nobody kept the stand-in: it is reused for the next hook (its reference
# count tells), so such hooks allocate nothing. A hook that suspends goes on
# in a Task (``_drive``). If the stand-in was kept (``asyncio.timeout``
# records its task, so does ``TaskGroup``), it is handed to ``_drive``,
# which binds it to that Task on its first step: from then on ``cancel``,
# ``cancelling``, ``uncancel``, ``done`` ... act on the Task, so a timeout
# that expires while the hook awaits cancels exactly what the hook is
# awaiting, as with any Task. The stand-in also stays the current task
# during every later step of that hook, so ``current_task()`` is one object
# for the hook's whole life (anyio, and so httpx's AsyncClient, key their
# state by it and check it on exit).
#
# Cancellations asked for before the Task runs (during the first step, or
# between it and the Task's first step, e.g. ``asyncio.timeout(0)``) are
# counted on the stand-in and re-issued by ``_drive`` from inside the Task,
# where ``Task.cancel`` has its usual meaning: cancel the future the
# coroutine waits on next. (Cancelling a Task that has not started would
# throw into ``_drive`` before it could pass the cancellation to the hook.)
# A hook that asks for its own cancellation and then returns without
# suspending ends cancelled, as it would in a Task.

import asyncio.tasks as _aio_tasks

from cpython.dict cimport PyDict_DelItem, PyDict_GetItem, PyDict_SetItem


cdef extern from *:
    """
    /* Whether a weak reference to o exists (1 when o's type has no
       weak-reference slot we can read: callers then assume one does). */
    static inline int sw_has_weakrefs(PyObject *o) {
        Py_ssize_t off = Py_TYPE(o)->tp_weaklistoffset;
        return off <= 0 || *(PyObject **)((char *)o + off) != NULL;
    }
    """
    bint sw_has_weakrefs(object o)


def _swap_generic(loop, task):
    """``_swap_current_task`` from the public-ish functions every asyncio has
    (Python 3.10 and later): used when neither faster way is available."""
    prev = _aio_tasks.current_task(loop)
    if prev is not None:
        _aio_tasks._leave_task(loop, prev)
    if task is not None:
        _aio_tasks._enter_task(loop, task)
    return prev


# Python 3.12 and later: asyncio's own swap (C, or its pure-Python twin).
# Before: the dict ``_enter_task``/``_leave_task`` and ``current_task`` use
# (the C module's when ``_asyncio`` is there), changed in place.
cdef object _SWAP = getattr(_aio_tasks, "_swap_current_task", None)
cdef dict _CURRENT = None
if _SWAP is None:
    if type(getattr(_aio_tasks, "_current_tasks", None)) is dict:
        _CURRENT = _aio_tasks._current_tasks
    else:
        _SWAP = _swap_generic


cdef inline object _enter_hook_task(object loop, object task):
    """Make ``task`` the current task of ``loop``; return the task that was
    current (or None), to be given to ``_leave_hook_task``."""
    cdef PyObject *p
    if _SWAP is not None:
        return _SWAP(loop, task)
    p = PyDict_GetItem(_CURRENT, loop)
    PyDict_SetItem(_CURRENT, loop, task)
    return <object>p if p != NULL else None


cdef inline int _leave_hook_task(object loop, object prev) except -1:
    """Undo ``_enter_hook_task``: ``prev`` (or no task) is current again."""
    if _SWAP is not None:
        _SWAP(loop, prev)
    elif prev is not None:
        PyDict_SetItem(_CURRENT, loop, prev)
    else:
        PyDict_DelItem(_CURRENT, loop)
    return 0


def _task_swap_impl(fn):
    """Tests: swap the current task with ``fn(loop, task)`` (None: the
    built-in choice for this Python). Returns the previous function."""
    global _SWAP, _CURRENT
    old = _SWAP
    if fn is None:
        _SWAP = getattr(_aio_tasks, "_swap_current_task", None)
        if _SWAP is None and _CURRENT is None:
            _SWAP = _swap_generic
    else:
        _SWAP = fn
    return old


@cython.final
cdef class _HookTask:
    """What ``asyncio.current_task()`` returns in a coroutine hook's first
    step (until it first suspends), and for the rest of the hook if it was
    kept during that step.

    It stands for the Task that runs the rest of the hook: once that Task
    runs, every method acts on it. Before, or when the hook finished
    without suspending, it answers like a Task that is running (or done):
    ``cancel()`` is remembered and delivered when the Task starts, ``done()``
    is False until the hook returned.

    Not an ``asyncio.Task`` instance. A hook that did not keep it sees the
    real Task after its first suspension.
    """
    cdef object loop
    cdef object task        # the Task finishing the hook, once it suspended
    cdef bint started       # that Task runs: forward everything to it
    cdef bint ended         # the hook finished in its first step
    cdef int pending        # cancel() calls not yet delivered
    cdef object msg         # the last cancel() message
    cdef object __weakref__

    def __init__(self):
        raise TypeError("_HookTask objects are made by the proxy")

    cdef int _start(self, object task) except -1:
        """Called by ``_drive`` on its first step, inside ``task``."""
        cdef int n = self.pending
        self.task = task
        self.started = True
        self.pending = 0
        while n > 0:
            n -= 1
            task.cancel(self.msg)
        self.msg = None
        return 0

    def get_loop(self):
        return self.loop

    def cancel(self, msg=None):
        """Like ``Task.cancel``: True if a cancellation was requested."""
        if self.started:
            return self.task.cancel(msg)
        if self.done():
            return False
        self.pending += 1
        self.msg = msg
        return True

    def cancelling(self):
        if self.started:
            return self.task.cancelling()
        return self.pending

    def uncancel(self):
        if self.started:
            return self.task.uncancel()
        if self.pending > 0:
            self.pending -= 1
        return self.pending

    def done(self):
        if self.task is not None:
            return self.task.done()
        return self.ended

    def cancelled(self):
        if self.task is not None:
            return self.task.cancelled()
        return self.ended and self.pending > 0

    def result(self):
        if self.task is not None:
            return self.task.result()
        raise asyncio.InvalidStateError("the hook's result is given to the proxy, not kept here")

    def exception(self):
        if self.task is not None:
            return self.task.exception()
        raise asyncio.InvalidStateError("the hook's outcome is given to the proxy, not kept here")

    def __getattr__(self, name):
        # add_done_callback, get_name, get_coro, get_context, get_stack ...
        if self.task is not None and not name.startswith("__"):
            return getattr(self.task, name)
        raise AttributeError(f"{name!r}: a coroutine hook has no Task until it first suspends "
                             "(asyncio.current_task() stands in for it until then)")

    def __repr__(self):
        if self.task is not None:
            return f"<sluiceway hook task, now {self.task!r}>"
        return f"<sluiceway hook task ({'done' if self.ended else 'first step'})>"


cdef _HookTask _new_hook_task(object loop):
    cdef _HookTask t = _HookTask.__new__(_HookTask)
    t.loop = loop
    return t


async def _drive(coro, yielded, hook_task):
    """Finish a hook coroutine that suspended on its first step.

    ``yielded`` is what the coroutine's first ``send(None)`` produced (a
    Future, or None for a bare yield). This runs as a Task, so inside the
    hook timeouts and cancellation work. ``hook_task`` is the ``_HookTask``
    the first step ran under if someone kept it (else None): it is bound to
    this Task now and stays the hook's current task for every later step, so
    ``asyncio.current_task()`` is the same object all through the hook.
    """
    cdef _HookTask st = hook_task
    cdef object loop = None, task = None, err
    if st is not None:
        loop = st.loop
        task = asyncio.current_task()
        st._start(task)
    while True:
        err = None
        try:
            if yielded is None:
                await asyncio.sleep(0)
            else:
                # The hook's own await marked the future as being waited on
                # (as a Task would see it); clear that so we can wait on it.
                yielded._asyncio_future_blocking = False
                await yielded
        except BaseException as exc:
            if yielded is None or not yielded.done():
                err = exc  # else the coroutine reads the future's outcome itself
        if st is not None:
            _enter_hook_task(loop, st)
        try:
            if err is None:
                yielded = coro.send(None)
            else:
                yielded = coro.throw(err)
        except StopIteration as stop:
            return stop.value
        finally:
            if st is not None:
                _leave_hook_task(loop, task)
