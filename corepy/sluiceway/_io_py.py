"""Pure-Python reference of the engine's connection write path.

The compiled ``_Conn`` (pyx/sluiceway/_engine.pyx, see "Connection I/O" in
docs/architecture.md) writes to a non-blocking socket in this way:

* Bytes go to the socket at once when nothing is queued; whatever the socket
  does not take is queued, and the rest of a write goes behind it.
* While something is queued, nothing is sent before it: later writes are
  queued too, and the queue is written (in order, several buffers per
  ``sendmsg``) when the socket is writable.
* Past ``HIGH_WATER`` queued bytes ``on_pause`` is called once; when the
  queue has drained to ``LOW_WATER`` or less, ``on_resume``.
* ``close()`` writes what is queued, then closes; writes after it are
  dropped. ``abort()`` drops the queue and closes at once. A failed send
  aborts, with the error.

This class does the same with Python's socket module. It is slow and exists
to pin the behaviour down: ``tests/test_io_queue.py`` drives it and the
compiled write path with the same random writes, partial reads by the peer
and closes, and checks both deliver the same bytes under the same rules.
"""

from collections import deque

HIGH_WATER = 65536
LOW_WATER = 16384


class WriteQueue:
    def __init__(self, sock, on_pause=None, on_resume=None, on_lost=None):
        sock.setblocking(False)
        self.sock = sock
        self.queue = deque()        # bytes not yet written, in order
        self.size = 0               # bytes in the queue
        self.paused = False
        self.closing = False
        self.closed = False
        self.error = None
        self.on_pause = on_pause or (lambda: None)
        self.on_resume = on_resume or (lambda: None)
        self.on_lost = on_lost or (lambda exc: None)

    # --- what the proxy calls -------------------------------------------------

    def write(self, data):
        self.writev([data])

    def writev(self, parts):
        parts = [bytes(p) for p in parts]
        if self.closed or self.closing or not any(parts):
            return
        if self.queue:
            for p in parts:
                self._add(p)
            return
        n = self._send(parts)
        if n is None:
            return
        for p in parts:            # queue what the socket did not take
            if n >= len(p):
                n -= len(p)
                continue
            self._add(p[n:])
            n = 0

    def send(self, head, owner, off, n):
        self.writev([head or b"", owner[off:off + n]])

    def close(self):
        if self.closed or self.closing:
            return
        self.closing = True
        if not self.queue:
            self._finish(None)

    def abort(self, exc=None):
        if not self.closed:
            self.queue.clear()
            self.size = 0
            self._finish(exc)

    # --- what the event loop calls --------------------------------------------

    def writable(self):
        """The socket can take bytes: write the queue."""
        if self.closed or not self.queue:
            return
        n = self._send(list(self.queue)[:64])
        if n is None:
            return
        self.size -= n
        while n:
            head = self.queue[0]
            if n >= len(head):
                n -= len(head)
                self.queue.popleft()
            else:
                self.queue[0] = head[n:]
                n = 0
        if not self.queue and self.closing:
            self._finish(None)
            return
        if self.paused and self.size <= LOW_WATER:
            self.paused = False
            self.on_resume()

    # --- inside -----------------------------------------------------------------

    def _add(self, data):
        if not data:
            return
        self.queue.append(data)
        self.size += len(data)
        if not self.paused and self.size > HIGH_WATER:
            self.paused = True
            self.on_pause()

    def _send(self, parts):
        """Bytes written (0 if none), or None when the send failed (aborted)."""
        try:
            return self.sock.sendmsg([p for p in parts if p])
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as exc:
            self.abort(exc)
            return None

    def _finish(self, exc):
        self.closed = True
        self.error = exc
        self.sock.close()
        self.on_lost(exc)
