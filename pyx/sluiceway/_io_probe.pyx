# distutils: language = c
"""Test support, not used by the proxy: ``IoProbe``, a connection of the
engine's own I/O with no protocol on it, so that tests can drive the write
path (``_Conn``'s queue, partial writes, closing) directly and compare it with
its pure-Python reference, ``sluiceway._io_py.WriteQueue``
(tests/test_io_queue.py), and drive the TLS layer as a client or as a server
(tests/test_tls_layer.py); and ``detached_client``/``feed``, a client
connection with no socket for benchmarks of the per-request path
(bench/bench_hooks.py). It lives apart from ``sluiceway._engine`` so that
the engine module carries no test code."""

cimport cython

from sluiceway._engine cimport _Conn, _Downstream, _Engine, _io_for


@cython.final
cdef class IoProbe(_Conn):
    """A connection with no protocol, for tests of the write path: the
    ``t_*`` methods as Python methods, and a list of what the I/O called
    (``("data", bytes)``, ``("eof",)``, ``("pause", queued)``,
    ``("resume", queued)``, ``("lost", exc)``, and with TLS
    ``("handshake", exc)``). See _io_py.WriteQueue, its pure-Python
    reference."""
    cdef public list events

    def __cinit__(self, *args, **kwargs):
        self.events = []

    def attach(self, loop, int fd):
        """Take over the connected socket ``fd`` (non-blocking) on ``loop``."""
        _io_for(loop).register(self, fd)

    def start_tls(self, ctx, server_side=False, server_hostname=None):
        """Start TLS on the attached connection (``ctx``: an
        ``ssl.SSLContext``); its end is recorded as ``("handshake", exc)``."""
        self.t_start_tls(ctx, server_side, server_hostname)

    @property
    def tls_info(self):
        """The TLS handshake's result (a dict), or None on a plain
        connection."""
        return self.tls.info() if self.tls is not None else None

    def write(self, data):
        self.t_write(data)

    def writev(self, parts):
        self.t_writev(tuple(parts))

    def send(self, head, bytes owner, Py_ssize_t off, Py_ssize_t n):
        if off < 0 or n < 0 or off + n > len(owner):
            raise ValueError("the slice is outside owner")
        self.t_send(head, owner, off, n)

    def close(self, flush_timeout=None):
        """Close after writing the queue; ``flush_timeout`` (seconds) is
        how long the peer may take to read it (60 by default)."""
        if flush_timeout is not None:
            self.flush_timeout = flush_timeout
        self.t_close()

    def abort(self):
        self.t_abort(None)

    def pause_reading(self):
        self.t_pause_reading()

    def resume_reading(self):
        self.t_resume_reading()

    @property
    def queued(self):
        """Bytes waiting in the write queue."""
        return self.wq_size

    @property
    def fileno(self):
        return self.fd

    cdef int on_data(self, object data) except -1:
        self.events.append(("data", data))
        return 0

    cdef int on_eof(self) except -1:
        self.events.append(("eof",))
        return 0

    cdef int on_lost(self, object exc) except -1:
        self.events.append(("lost", exc))
        return 0

    cdef int on_pause_writing(self) except -1:
        self.events.append(("pause", self.wq_size))
        return 0

    cdef int on_resume_writing(self) except -1:
        self.events.append(("resume", self.wq_size))
        return 0

    cdef int on_handshake(self, object exc) except -1:
        self.events.append(("handshake", exc))
        return 0


def detached_client(_Engine eng):
    """A client connection of ``eng`` with no socket: what the engine writes
    to it is dropped; ``feed`` hands it bytes as if they were received."""
    cdef _Downstream d = _Downstream(eng)
    d._made()
    return d


def feed(_Downstream d, bytes data):
    """Hand ``data`` to a detached client connection, as a read would."""
    d.on_data(data)
