# ConcurrencyLimiter and Permit: a cap on requests in flight per upstream.
# Included by _limits.pyx (one extension module, one concern per file).

# Mirrors _limits_py step for step (the tests compare them); the rare path
# (waiting) calls into Python, the per-request path stays in C.

@cython.final
@cython.no_gc_clear
@cython.freelist(32)
cdef class Permit:
    """One request's place under a ``ConcurrencyLimiter`` cap; release it when done.

    Released exactly once: by ``release()``, by leaving a ``with`` /
    ``async with`` block, or when garbage collected.  Releasing wakes the next
    waiter for the same upstream.  Made only by the limiter.
    """

    def __init__(self, *args, **kwargs):
        raise TypeError("Permit objects are made by ConcurrencyLimiter.try_acquire/acquire")

    cdef int give_back(self) except -1:
        cdef Py_ssize_t size
        cdef const char *buf
        if self.released:
            return 0
        self.released = True
        buf = key_bytes(self.key, &size)
        cms_add(&self.limiter.inflight_.c, self.limiter.inflight_.shared, buf, size, -1)
        if self.limiter.waiters:
            self.limiter.wake(self.key)
        return 1

    def release(self):
        """Give the place back.

        Returns:
            True if this call released it, False if it was already released.
        """
        return self.give_back() == 1

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.give_back()
        return False

    async def __aenter__(self):
        return self

    async def __aexit__(self, exc_type, exc, tb):
        self.give_back()
        return False

    def __dealloc__(self):
        if self.released or self.limiter is None:
            return
        try:
            self.give_back()
        except BaseException:  # interpreter shutdown: nothing left to wake
            pass

    def __repr__(self):
        return f"<Permit key={self.key!r} {'released' if self.released else 'held'}>"


cdef inline object wait_key(key):
    """Queue key: "a" and b"a" count as one upstream, so they queue as one."""
    return (<str>key).encode("utf-8") if isinstance(key, str) else key


class _Expired(Exception):
    pass


class _Poll(Exception):
    pass


def _expire(fut):
    if not fut.done():
        fut.set_exception(_Expired())


def _poll(fut):
    if not fut.done():
        fut.set_exception(_Poll())


# A waiter for a shared cap looks again this often: permits released by other
# processes wake nobody here.
cdef double SHARED_POLL = 0.005


@cython.final
cdef class ConcurrencyLimiter:
    """Cap the requests in flight to each upstream; shed or queue the rest.

    Built on ``Inflight``: the count per upstream key never falls below the
    permits really held (a sketch collision can only make it larger, with odds
    around (1/8192)**4 with the default shape).

    Over the cap, ``try_acquire`` fails fast; ``acquire`` (async) waits in a
    FIFO queue per upstream for up to ``wait`` seconds (``wait=0`` means fail
    fast), then raises.  Waiters are woken one per released permit.

    Args:
        max_inflight: cap per upstream key (int >= 1).
        wait: default seconds ``acquire`` may wait (>= 0; 0 fails fast).
        retryable: the ``retryable`` flag of the refusal (True: the engine may
            try another upstream).
        inflight: the ``Inflight`` to count in (default: a new one, of
            ``scope`` and ``name``).
        scope: ``"process"`` (default: a cap per worker process) or
            ``"server"``: one cap per upstream for the whole server, counted
            in shared memory (make the limiter before the workers fork).
            Waiters in ``acquire`` are woken at once by releases in their own
            process, and look again every 5 ms for places freed by others.
        name: with ``scope="server"``, share by name with any process on
            this machine (see ``Inflight``).

    Raises:
        TypeError, ValueError: an argument is invalid.
    """

    def __cinit__(self, max_inflight, *, wait=0.0, retryable=True, inflight=None,
                  scope="process", name=None):
        owner = "ConcurrencyLimiter"
        self.max_inflight = positive(owner, "max_inflight", max_inflight, integer=True)
        self.wait = positive(owner, "wait", wait, allow_zero=True)
        self.retryable = retryable
        if inflight is None:
            inflight = Inflight(scope=scope, name=name)
        elif not isinstance(inflight, Inflight):
            raise TypeError(f"{owner}: inflight must be None or an Inflight of the same "
                            f"implementation, got {type(inflight).__name__}")
        elif scope != "process" or name is not None:
            raise ValueError(f"{owner}: give either inflight= or scope=/name=, not both "
                             f"(the Inflight has its own scope)")
        self.inflight_ = inflight
        self.waiters = {}
        self.shed = 0

    def inflight(self, key):
        """Requests in flight for ``key`` (an estimate never below the truth)."""
        return self.inflight_.get(key)

    def waiting(self, key):
        """Callers queued in ``acquire`` for ``key``."""
        q = self.waiters.get(wait_key(key))
        return sum(1 for f in q if not f.done()) if q else 0

    cdef Permit take(self, key):
        cdef Py_ssize_t size
        cdef const char *buf = key_bytes(key, &size)
        cdef Permit permit
        cdef Inflight inf = self.inflight_
        if cms_add(&inf.c, inf.shared, buf, size, 1) <= self.max_inflight:
            permit = Permit.__new__(Permit)
            permit.limiter = self
            permit.key = key
            return permit
        cms_add(&inf.c, inf.shared, buf, size, -1)
        return None

    cdef refuse(self, key, double waited):
        self.shed += 1
        return concurrency_refusal(key, self.max_inflight, waited, self.retryable)

    def try_acquire(self, key):
        """Take a place for ``key`` now or refuse; for sync hooks.

        Returns:
            A ``Permit``.

        Raises:
            ConcurrencyLimitExceeded: ``key`` is at its cap (status 503).
            TypeError: key is not str or bytes.
        """
        cdef Permit permit = self.take(key)
        if permit is None:
            raise self.refuse(key, 0)
        return permit

    async def acquire(self, key, timeout=None):
        """Take a place for ``key``, waiting up to ``timeout`` seconds in FIFO order.

        Args:
            key: the upstream, str or bytes.
            timeout: seconds to wait (default: the limiter's ``wait``); 0 fails fast.

        Returns:
            A ``Permit``.

        Raises:
            ConcurrencyLimitExceeded: still at the cap when the time ran out.
            asyncio.CancelledError: the caller was cancelled while waiting (its
                turn passes to the next waiter).
        """
        cdef double limit_s
        if timeout is None:
            limit_s = self.wait
        else:
            limit_s = positive("ConcurrencyLimiter.acquire", "timeout", timeout, allow_zero=True)
        wkey = wait_key(key)
        if not self.waiters.get(wkey):
            permit = self.take(key)
            if permit is not None:
                return permit
        if limit_s <= 0:
            raise self.refuse(key, 0)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit_s
        front = False
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise self.refuse(key, limit_s)
            fut = loop.create_future()
            q = self.waiters.get(wkey)
            if q is None:
                q = self.waiters[wkey] = collections.deque()
            if front:
                q.appendleft(fut)
            else:
                q.append(fut)
            if self.inflight_.shared and remaining > SHARED_POLL:
                timer = loop.call_later(SHARED_POLL, _poll, fut)
            else:
                timer = loop.call_later(remaining, _expire, fut)
            try:
                await fut
            except _Expired:
                raise self.refuse(key, limit_s) from None
            except _Poll:
                pass  # fall through: try to take a place freed by another process
            except BaseException:
                # Cancelled: if we had just been woken, hand the turn on.
                if fut.done() and not fut.cancelled() and fut.exception() is None:
                    self.wake(key)
                raise
            finally:
                timer.cancel()
                self.forget(key, fut)
            permit = self.take(key)
            if permit is not None:
                return permit
            front = True  # lost the race to a fail-fast caller: keep our turn

    cdef forget(self, key, fut):
        key = wait_key(key)
        q = self.waiters.get(key)
        if q is None:
            return
        try:
            q.remove(fut)
        except ValueError:
            pass
        if not q:
            del self.waiters[key]

    cdef wake(self, key):
        key = wait_key(key)
        q = self.waiters.get(key)
        while q:
            fut = q.popleft()
            if not fut.done():
                fut.set_result(None)
                break
        if q is not None and not q:
            self.waiters.pop(key, None)

    def __repr__(self):
        return (f"<ConcurrencyLimiter max_inflight={self.max_inflight} wait={self.wait!r} "
                f"scope={self.inflight_.scope}>")

    @property
    def scope(self):
        """``"process"`` or ``"server"``: the scope of its ``Inflight``."""
        return self.inflight_.scope

    @property
    def memory(self):
        """Bytes of counters, fixed at creation (its ``Inflight``'s)."""
        return self.inflight_.memory
