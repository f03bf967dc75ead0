# Included by _engine.pyx: what the services on one event loop share.

@cython.final
cdef class _LoopState:
    """Per event loop: the epoll set its connections use and the pools of
    the services (engines) running on it. (The cache of parsed peer
    addresses and the scratch buffers for writing heads are per process:
    they hold no state between two calls and the loop is single-threaded.)"""

    def __cinit__(self, object loop):
        self.loop = loop
        self.io = _IoLoop(loop)
        self.pools = []


cdef dict _LOOPS = {}


cdef _LoopState _loop_state(object loop):
    cdef _LoopState st = _LOOPS.get(loop)
    if st is None or st.io.epfd < 0:
        st = _LOOPS[loop] = _LoopState(loop)
    return st


cdef _IoLoop _io_for(object loop):
    return _loop_state(loop).io


def pool_stats(loop=None):
    """Counters of the connection pools of ``loop`` (the running loop by
    default), summed over its services: created, reused, closed, evicted,
    idle."""
    cdef _LoopState st
    cdef _Pool p
    if loop is None:
        loop = asyncio.get_running_loop()
    out = {"created": 0, "reused": 0, "closed": 0, "evicted": 0, "idle": 0}
    st = _LOOPS.get(loop)
    if st is not None:
        for p in st.pools:
            for k, v in p.stats().items():
                out[k] += v
    return out


def forget_pool(loop):
    """Forget ``loop``: its pools' idle connections are closed and its I/O
    set goes (connections still open on it are aborted)."""
    cdef _LoopState st = _LOOPS.pop(loop, None)
    cdef _Pool p
    if st is not None:
        for p in st.pools:
            p.close_idle()
        st.io.close()


def io_connections(loop=None):
    """Connections open on the engine's own I/O of ``loop`` (the running
    loop by default), both sides."""
    if loop is None:
        loop = asyncio.get_running_loop()
    cdef _LoopState st = _LOOPS.get(loop)
    return len(st.io.live) if st is not None else 0
