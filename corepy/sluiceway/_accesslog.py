"""The buffered access-log writer (``access_log_format: json`` or
``combined``).

The engine formats each request's record (pyx/sluiceway/engine/observe.pyx,
csrc/sw_alog.c) into a C buffer of its own and hands the batch over when
it is full or the writer flushes (the writer calls each of its ``sources``
first): written straight from that buffer with :meth:`AccessLogWriter.write`
when nothing waits here, what the descriptor did not take copied into this
writer's buffer. Python code hands records to :meth:`AccessLogWriter.add`. The buffer goes out in one ``write`` system call when it holds
``access_log_buffer_bytes``, and on a timer every
``access_log_flush_seconds``; a stop writes what is left. The file is opened
with ``O_APPEND`` (lines of several workers never interleave within a
``write`` of a regular file) and reopened by ``reopen`` (SIGUSR1, after
logrotate moved it away). Standard output is reopened through
``/proc/self/fd/1`` with ``O_NONBLOCK`` on its own file description, so a
reader that stalls a pipe cannot stall the loop: records wait in the buffer
(up to 16 times its size, then they are dropped and the drop is counted and
logged).
"""

from __future__ import annotations

import errno
import logging
import os
from typing import Optional

log = logging.getLogger("sluiceway.error")


class AccessLogWriter:
    """Buffered, non-blocking writes of access-log records (bytes lines).

    Args:
        path: the file, or None for standard output.
        buffer_bytes: write when this much is buffered.
        flush_seconds: the timer's period (``start``).
    """

    def __init__(self, path: Optional[str], buffer_bytes: int = 65536,
                 flush_seconds: float = 1.0) -> None:
        self.path = path
        self.limit = max(int(buffer_bytes), 1)
        self.flush_seconds = flush_seconds
        self.buf = bytearray()
        self.sources: list = []     # called by flush() first: they append to buf
        self.dropped = 0
        self.writes = 0
        self.fd = -1
        self._timer = None
        self._loop = None
        self.open()

    def open(self) -> None:
        if self.path:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        else:
            try:
                fd = os.open("/proc/self/fd/1", os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
                os.set_blocking(fd, False)
            except OSError:
                fd = os.dup(1)
        old, self.fd = self.fd, fd
        if old >= 0:
            os.close(old)

    def add(self, line: bytes) -> None:
        """Buffer one record; write when the buffer is full."""
        self.buf += line
        if len(self.buf) >= self.limit:
            self.flush()

    def write(self, data) -> int:
        """One ``write`` of ``data`` (bytes-like) to the descriptor; how many
        bytes are done with: those written (0 when it would block), or all
        of them when the write failed (logged and counted as dropped).
        Sources call it with their batch when nothing is buffered here."""
        if self.fd < 0:
            return 0
        try:
            n = os.write(self.fd, data)
            self.writes += 1
            return n
        except BlockingIOError:
            return 0
        except OSError as exc:
            if exc.errno == errno.EINTR:
                return 0
            log.error("sluiceway: writing the access log failed: %s; %d bytes dropped",
                      exc.strerror or exc, len(data))
            self.dropped += len(data)
            return len(data)

    def flush(self) -> None:
        """One write of what is buffered (what the descriptor does not take
        stays for the next); the sources first hand over what they hold."""
        for source in self.sources:
            source()
        buf = self.buf
        if not buf or self.fd < 0:
            return
        n = self.write(buf)
        del buf[:n]
        if len(buf) > 16 * self.limit:
            log.error("sluiceway: the access log's reader does not keep up: %d bytes dropped",
                      len(buf))
            self.dropped += len(buf)
            del buf[:]

    def start(self, loop) -> None:
        """Flush every ``flush_seconds`` on ``loop``."""
        self._loop = loop
        self._timer = loop.call_later(self.flush_seconds, self._tick)

    def _tick(self) -> None:
        try:
            self.flush()
        finally:
            if self._loop is not None:
                self._timer = self._loop.call_later(self.flush_seconds, self._tick)

    def reopen(self) -> None:
        """Write what is buffered, then open the path again (SIGUSR1)."""
        self.flush()
        self.open()

    def close(self) -> None:
        """Stop the timer, write everything left, close."""
        self._loop = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for _ in range(100):
            before = len(self.buf)
            self.flush()
            if not self.buf or len(self.buf) == before:
                break
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
