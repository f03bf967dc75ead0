"""Handing the listening sockets from a running sluiceway to its successor.

Theory of operation
-------------------
As in Pingora, the *new* process (started with ``--upgrade``) binds the Unix
socket ``upgrade_sock`` and waits; the *running* one, on SIGQUIT, connects to
it and sends every listening socket it holds in one message: a JSON line
(``{"sluiceway": 1, "pid": ...}``) with the descriptors attached
(SCM_RIGHTS). The receiver finds what each descriptor is bound to with
``getsockname``, so no list of names has to agree.

One step is ours: the sender keeps serving until the receiver answers
``ok <pid>`` on the same connection, which it does once its own workers
accept. Only then does the old process stop accepting and drain. If the new
process fails after taking the sockets (its workers do not start, it is
killed), the connection closes without ``ok`` and the old process keeps
serving: a failed upgrade never leaves the port without a listener.

A listening socket is never closed while a connection may wait in its queue:
the descriptors are copies of one kernel socket, which lives while any
process holds one.

Either side waits ``upgrade_wait_seconds`` (:data:`WAIT_SECONDS` by
default) for the other, so the new process can be started first (it waits
for SIGQUIT to reach the old one) or SIGQUIT sent first (the old one keeps
trying to connect).
"""

from __future__ import annotations

import errno
import json
import os
import select
import socket
import stat
import struct
import time
from typing import Dict, List, Optional

# How long the new process waits for the old one to send, and the old one
# keeps trying to connect.
WAIT_SECONDS = 10.0
# How long the old process waits for the new one's workers to accept.
ACK_SECONDS = 60.0
MAX_FDS = 253   # SCM_MAX_FD is 253 on Linux


class HandoverError(Exception):
    """The sockets could not be handed over; the message says why and what to
    check."""


def sock_key(s: socket.socket):
    """What a listening socket is bound to: ``("tcp", host, port)`` or
    ``("unix", path)``."""
    if s.family == socket.AF_UNIX:
        name = s.getsockname()
        return ("unix", name.decode() if isinstance(name, bytes) else name)
    host, port = s.getsockname()[:2]
    return ("tcp", host, port)


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


class Receiver:
    """The new process's end: bind ``path``, wait for the old process's
    sockets, and later tell it (``ok``) that they are served.

    Raises:
        HandoverError: the path cannot be bound, nothing came within the
            wait, or what came is not a sluiceway's handover.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.conn: Optional[socket.socket] = None
        self.old_pid = 0

    def receive(self, timeout: float = WAIT_SECONDS) -> List[socket.socket]:
        path = self.path
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise HandoverError(f"upgrade_sock {path}: the folder {folder} does not exist")
        if os.path.lexists(path):
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                raise HandoverError(f"upgrade_sock {path} exists and is not a socket; "
                                    "remove it or set another upgrade_sock")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
                raise HandoverError(f"another upgrade already waits on upgrade_sock {path}")
            except OSError:
                pass
            finally:
                probe.close()
            try:
                os.unlink(path)
            except OSError as exc:
                raise HandoverError(f"cannot remove the stale upgrade_sock {path}: "
                                    f"{exc.strerror}") from None
        lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            old_umask = os.umask(0o177)   # the socket file is 0600: this user (or root) only
            try:
                lsock.bind(path)
            finally:
                os.umask(old_umask)
            lsock.listen(1)
        except OSError as exc:
            lsock.close()
            raise HandoverError(f"cannot listen on upgrade_sock {path}: {exc.strerror} "
                                "(the folder must be writable by this user)") from None
        try:
            deadline = time.monotonic() + timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise HandoverError(
                        f"no running sluiceway handed over its listening sockets on upgrade_sock "
                        f"{path} within {timeout:g}s (upgrade_wait_seconds): start this with "
                        f"--upgrade only while the old one runs, and send the old one SIGQUIT "
                        f"(kill -QUIT PID) meanwhile; both must use the same upgrade_sock. "
                        f"Nothing was bound.")
                r, _, _ = select.select([lsock], [], [], left)
                if not r:
                    continue
                conn, _ = lsock.accept()
                uid = _peer_uid(conn)
                if uid not in (0, os.getuid()):
                    conn.close()
                    continue   # not the same user (nor root): not our old process
                break
        finally:
            lsock.close()
            try:
                os.unlink(path)
            except OSError:
                pass
        conn.settimeout(5.0)
        try:
            msg, fds, _flags, _addr = socket.recv_fds(conn, 65536, MAX_FDS)
        except OSError as exc:
            conn.close()
            raise HandoverError(f"reading the handover on upgrade_sock {path} failed: {exc}") from None
        socks = [socket.socket(fileno=fd) for fd in fds]
        try:
            info = json.loads(msg.decode())
            assert info.get("sluiceway") == 1
        except Exception:
            for s in socks:
                s.close()
            conn.close()
            raise HandoverError(f"what came on upgrade_sock {path} is not a sluiceway handover") from None
        self.old_pid = int(info.get("pid", 0))
        self.conn = conn
        for s in socks:
            s.setblocking(False)
        return socks

    def ack(self, ok: bool, text: str = "") -> None:
        """Tell the old process that the new one serves (``ok``), or that it
        gave up (it then keeps serving)."""
        conn, self.conn = self.conn, None
        if conn is None:
            return
        try:
            conn.sendall((f"ok {os.getpid()}\n" if ok else f"fail {text}\n").encode())
        except OSError:
            pass
        conn.close()


class Sender:
    """The old process's end, stepped by the master's loop without blocking
    it: ``step()`` tries to connect (for ``wait`` seconds), sends,
    then waits for the answer (until :data:`ACK_SECONDS`). ``fileno()`` is
    the connection to watch for the answer while ``state == "sent"``.

    States: ``connecting``, ``sent``, ``done`` (the new process serves;
    ``new_pid``), ``failed`` (``error`` says why; keep serving).
    """

    def __init__(self, path: str, socks: List[socket.socket], wait: float = WAIT_SECONDS,
                 ack_wait: float = ACK_SECONDS) -> None:
        self.path = path
        self.socks = socks
        self.state = "connecting"
        self.error = ""
        self.new_pid = 0
        self.conn: Optional[socket.socket] = None
        self.wait = wait
        self.connect_deadline = time.monotonic() + wait
        self.ack_wait = ack_wait
        self.ack_deadline = 0.0
        self.last_errno = 0
        self._buf = b""

    def fileno(self) -> int:
        return self.conn.fileno() if self.conn is not None and self.state == "sent" else -1

    def _fail(self, why: str) -> str:
        self.state = "failed"
        self.error = why
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        return self.state

    def step(self) -> str:
        now = time.monotonic()
        if self.state == "connecting":
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(self.path)
            except OSError as exc:
                s.close()
                self.last_errno = exc.errno or 0
                if now < self.connect_deadline and exc.errno in (errno.ENOENT, errno.ECONNREFUSED,
                                                                 errno.EAGAIN):
                    return self.state
                hint = {errno.ENOENT: "nothing waits there: start the new process with "
                                      "--upgrade (same upgrade_sock) first, or within the wait",
                        errno.ECONNREFUSED: "nothing accepts there (a stale socket file)",
                        errno.EACCES: "permission denied: run the new process as the same user"}
                return self._fail(f"cannot hand the listening sockets over on upgrade_sock "
                                  f"{self.path} within {self.wait:g}s: {exc.strerror}; "
                                  f"{hint.get(exc.errno, 'see the new process for why')}")
            self.conn = s
            payload = json.dumps({"sluiceway": 1, "pid": os.getpid(),
                                  "addresses": [list(sock_key(x)) for x in self.socks]}).encode()
            try:
                s.settimeout(5.0)
                socket.send_fds(s, [payload], [x.fileno() for x in self.socks])
                s.setblocking(False)
            except OSError as exc:
                return self._fail(f"sending the listening sockets on upgrade_sock {self.path} "
                                  f"failed: {exc}")
            self.state = "sent"
            self.ack_deadline = now + self.ack_wait
            return self.state
        if self.state == "sent":
            try:
                chunk = self.conn.recv(4096)
            except BlockingIOError:
                chunk = None
            except OSError as exc:
                return self._fail(f"the new process's connection failed: {exc}")
            if chunk == b"":
                return self._fail("the new process took the sockets but exited (or gave up) "
                                  "before serving; see its output")
            if chunk:
                self._buf += chunk
                if b"\n" in self._buf:
                    line = self._buf.split(b"\n", 1)[0].decode(errors="replace")
                    if line.startswith("ok"):
                        self.new_pid = int(line.split()[1]) if len(line.split()) > 1 else 0
                        self.state = "done"
                        self.conn.close()
                        self.conn = None
                        return self.state
                    return self._fail(f"the new process gave up: {line[5:] or line}")
            if now > self.ack_deadline:
                return self._fail(f"the new process did not start serving within "
                                  f"{self.ack_wait:.0f}s")
        return self.state


def match(socks: List[socket.socket]) -> Dict[tuple, socket.socket]:
    """Received sockets by what they are bound to."""
    return {sock_key(s): s for s in socks}

