# Included by _engine.pyx: idle upstream connections.

# ------------------------------------------------------------------- pool --

@cython.final
cdef class _Pool:
    """Idle upstream connections of one worker, by the peer's reuse key.

    Each key has a LIFO stack (the most recently used connection is reused
    first, so extra connections idle out). Counters: ``created`` (new
    connections), ``reused`` (requests sent on a pooled connection),
    ``closed`` (connections closed for any reason) and ``evicted`` (idle
    connections the pool closed: over ``max_idle`` or idle too long).
    """

    def __cinit__(self, int max_idle=128, double idle_timeout=60.0):
        self.idle = {}
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout

    cdef _Upstream take(self, object key):
        cdef list stack = self.idle.get(key)
        cdef _Upstream c
        while stack:
            c = stack.pop()
            c.idle = False
            if not c.closed:
                self.reused += 1
                return c
        return None

    cdef int put(self, _Upstream c) except -1:
        cdef list stack
        cdef _Upstream old
        if c.closed or not c.reusable or self.max_idle <= 0:
            c._close()
            return 0
        stack = self.idle.get(c.key)
        if stack is None:
            stack = self.idle[c.key] = []
        c.idle = True
        c.s = None
        idle = c.peer.idle_timeout
        c.deadline = _now() + (self.idle_timeout if idle is None else <double>idle)
        c.dl_kind = DL_POOL
        stack.append(c)
        if len(stack) > self.max_idle:
            old = stack.pop(0)
            old.idle = False
            self.evicted += 1
            old._close()

    cdef int drop(self, _Upstream c) except -1:
        cdef list stack
        if not c.idle:
            return 0
        c.idle = False
        stack = self.idle.get(c.key)
        if stack is not None:
            try:
                stack.remove(c)
            except ValueError:
                pass
            if not stack:
                del self.idle[c.key]

    cdef int sweep(self, double now) except -1:
        cdef list stack
        cdef _Upstream c
        cdef list dead = []
        for key, stack in self.idle.items():
            for c in stack:
                if c.deadline and now >= c.deadline:
                    dead.append(c)
        for c in dead:
            self.drop(c)
            self.evicted += 1
            c._close()

    def stats(self):
        """Counters and the number of idle connections, as a dict."""
        return {"created": self.created, "reused": self.reused, "closed": self.closed,
                "evicted": self.evicted,
                "idle": sum(len(s) for s in self.idle.values())}

    def close_idle(self):
        """Close every idle connection (at shutdown)."""
        cdef _Upstream c
        for stack in list(self.idle.values()):
            for c in list(stack):
                self.drop(c)
                c._close()


cdef dict _POOLS = {}

cdef _Pool _pool_for(object loop, int max_idle, double idle_timeout):
    cdef _Pool p = _POOLS.get(loop)
    if p is None:
        p = _POOLS[loop] = _Pool(max_idle, idle_timeout)
    else:
        p.max_idle = max_idle
        p.idle_timeout = idle_timeout
    return p


def pool_stats(loop=None):
    """Counters of the connection pool of ``loop`` (the running loop by
    default): created, reused, closed, evicted, idle."""
    if loop is None:
        loop = asyncio.get_running_loop()
    p = _POOLS.get(loop)
    if p is None:
        return {"created": 0, "reused": 0, "closed": 0, "evicted": 0, "idle": 0}
    return p.stats()


def forget_pool(loop):
    """Drop ``loop``'s pool (its idle connections are closed) and its I/O
    set (connections still open on it are aborted)."""
    p = _POOLS.pop(loop, None)
    if p is not None:
        p.close_idle()
    cdef _IoLoop io = _IOS.pop(loop, None)
    if io is not None:
        io.close()


def io_connections(loop=None):
    """Connections open on the engine's own I/O of ``loop`` (the running
    loop by default), both sides."""
    if loop is None:
        loop = asyncio.get_running_loop()
    cdef _IoLoop io = _IOS.get(loop)
    return len(io.live) if io is not None else 0
