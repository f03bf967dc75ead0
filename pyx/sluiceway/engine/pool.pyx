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

    For TLS it also keeps, by reuse key, the last resumable TLS session a
    connection got (``sessions``): a new connection for that key offers it,
    so the upstream can skip the full handshake. Counters: ``tls_full``
    (new TLS connections that made a full handshake) and ``tls_resumed``
    (those that resumed a session).
    """

    def __cinit__(self, int max_idle=128, double idle_timeout=60.0):
        self.idle = {}
        self.sessions = {}
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
        c.session = None
        idle = c.peer.idle_timeout
        c.arm(DL_POOL, self.idle_timeout if idle is None else <double>idle)
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

    cdef int keep_session(self, object key, object session) except -1:
        """Remember ``session`` as the one to offer for ``key`` (None: forget
        it, after a handshake that failed)."""
        if session is None:
            self.sessions.pop(key, None)
            return 0
        if len(self.sessions) >= 4096 and key not in self.sessions:
            self.sessions.clear()   # many distinct peers: start over
        self.sessions[key] = session
        return 0

    def stats(self):
        """Counters and the number of idle connections, as a dict."""
        return {"created": self.created, "reused": self.reused, "closed": self.closed,
                "evicted": self.evicted,
                "idle": sum(len(s) for s in self.idle.values()),
                "tls_full": self.tls_full, "tls_resumed": self.tls_resumed}

    def close_idle(self):
        """Close every idle connection (at shutdown)."""
        cdef _Upstream c
        for stack in list(self.idle.values()):
            for c in list(stack):
                self.drop(c)
                c._close()
