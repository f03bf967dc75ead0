# distutils: language = c
"""Test support, not used by the proxy: ``IoProbe``, a connection of the
engine's own I/O with no protocol on it, so that tests can drive the write
path (``_Conn``'s queue, partial writes, closing) directly and compare it with
its pure-Python reference, ``sluiceway._io_py.WriteQueue``
(tests/test_io_queue.py). It lives apart from ``sluiceway._engine`` so that
the engine module carries no test code."""

cimport cython

from sluiceway._engine cimport _Conn, _io_for


@cython.final
cdef class IoProbe(_Conn):
    """A connection with no protocol, for tests of the write path: the
    ``t_*`` methods as Python methods, and a list of what the I/O called
    (``("data", bytes)``, ``("eof",)``, ``("pause", queued)``,
    ``("resume", queued)``, ``("lost", exc)``). See _io_py.WriteQueue, its
    pure-Python reference."""
    cdef public list events

    def __cinit__(self, *args, **kwargs):
        self.events = []

    def attach(self, loop, int fd):
        """Take over the connected socket ``fd`` (non-blocking) on ``loop``."""
        _io_for(loop).register(self, fd)

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
