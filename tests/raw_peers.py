"""Raw-socket peers for tests of what real clients and origins do on the
wire: an origin whose every connection is handled by a plain function in a
thread, and clients that upload while reading, so that a reset shows up as
the error it is.

Everything listens and connects on 127.0.0.1, with timeouts, and stops by
itself (``with RawOrigin(handler) as o: ...``).
"""

from __future__ import annotations

import socket
import threading
import time


def read_head(conn, buf=b"", timeout=5.0):
    """Read until the end of a head; returns (head, rest) or (None, buf) at
    EOF."""
    conn.settimeout(timeout)
    while b"\r\n\r\n" not in buf:
        try:
            d = conn.recv(65536)
        except OSError:
            return None, buf
        if not d:
            return None, buf
        buf += d
    i = buf.index(b"\r\n\r\n") + 4
    return buf[:i], buf[i:]


def content_length(head):
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def read_exact(conn, n, buf=b""):
    """Read until ``buf`` holds ``n`` bytes; returns (them, the rest)."""
    while len(buf) < n:
        d = conn.recv(65536)
        if not d:
            break
        buf += d
    return buf[:n], buf[n:]


def linger_close(conn, timeout=2.0):
    """Close as nginx does: shut down writing, read and drop what still
    comes (bounded), then close."""
    try:
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(timeout)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if not conn.recv(65536):
                break
    except OSError:
        pass
    conn.close()


class RawOrigin:
    """A listening socket on 127.0.0.1 whose connections are each handled by
    ``handler(conn, origin)`` in a thread. ``origin.received`` collects what
    handlers append to it (heads, bodies); ``origin.connections`` counts
    accepted connections."""

    def __init__(self, handler):
        self.handler = handler
        self.received = []
        self.connections = 0
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(512)
        self.port = self.sock.getsockname()[1]
        self.addr = ("127.0.0.1", self.port)
        self._conns = []
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop = True
        try:
            socket.create_connection(self.addr, timeout=1).close()
        except OSError:
            pass
        self._thread.join(5)
        self.sock.close()
        for c in self._conns:
            try:
                c.close()
            except OSError:
                pass

    def _accept(self):
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            if self._stop:
                c.close()
                return
            with self.lock:
                self.connections += 1
            self._conns.append(c)
            threading.Thread(target=self._run, args=(c,), daemon=True).start()

    def _run(self, c):
        try:
            self.handler(c, self)
        except OSError:
            pass
        finally:
            try:
                c.close()
            except OSError:
                pass


class Upload:
    """A client that sends ``data`` from a thread while the calling thread
    reads the answer, as curl and browsers do.

    ``result()`` waits and returns (received bytes, recv error or None,
    send error or None); the receive side reads until EOF, an error, or
    ``until(buf)`` returning True."""

    def __init__(self, port, data, *, timeout=10.0, until=None, chunks=65536):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.data = data
        self.chunks = chunks
        self.until = until
        self.timeout = timeout
        self.send_error = None
        self.recv_error = None
        self.got = b""
        self._sender = threading.Thread(target=self._send, daemon=True)
        self._sender.start()

    def _send(self):
        try:
            for i in range(0, len(self.data), self.chunks):
                self.sock.sendall(self.data[i:i + self.chunks])
        except OSError as exc:
            self.send_error = exc

    def send_more(self, data):
        """Send more bytes (after the first data went out)."""
        self._sender.join(self.timeout)
        self.sock.sendall(data)

    def read(self, until=None):
        """Read until EOF, an error, or ``until(received)``; returns what
        came so far."""
        until = until or self.until
        end = time.monotonic() + self.timeout
        while time.monotonic() < end:
            if until is not None and until(self.got):
                break
            try:
                d = self.sock.recv(65536)
            except socket.timeout:
                self.recv_error = TimeoutError("no answer in time")
                break
            except OSError as exc:
                self.recv_error = exc
                break
            if not d:
                break
            self.got += d
        return self.got

    def result(self):
        self.read()
        self._sender.join(self.timeout)
        self.sock.close()
        return self.got, self.recv_error, self.send_error


def responses(buf):
    """Split ``buf`` into complete Content-Length-framed responses:
    [(head bytes, body bytes), ...]."""
    out = []
    while True:
        i = buf.find(b"\r\n\r\n")
        if i < 0:
            return out
        head = buf[:i + 4]
        n = content_length(head)
        if len(buf) < i + 4 + n:
            return out
        out.append((head, buf[i + 4:i + 4 + n]))
        buf = buf[i + 4 + n:]


def n_responses(k):
    """An ``until`` for Upload: stop once ``k`` responses are complete."""
    return lambda buf: len(responses(buf)) >= k
