"""The master process: workers, their supervision, reloads, upgrades, signals.

Theory of operation
-------------------
``Server.run_forever`` makes the calling process the *master*. It binds the
listening sockets once (or, with ``--upgrade``, receives them from the
running process, see ``_handover``) and forks ``threads`` workers. Every
worker accepts from the same sockets on its own event loop; there is no
SO_REUSEPORT, so a socket belongs to no single worker: a worker that dies
takes no queued connection with it, a replacement accepts from the very same
queue, and a second plain start fails with "address in use". The master
never serves a request and never runs an event loop; it sleeps in one
``select`` on the signal wake-up pipe, the workers' ready pipes and, during a
handover, the connection to the new process.

A *generation* is the set of workers started from one configuration and one
import of the app. A reload (SIGHUP) reads the configuration and imports the
app again in the master, binds any new address, forks a new generation and
waits until each of its workers says it accepts (``ok`` on its pipe to the
master); only then are the old workers told to stop (SIGTERM: they take what
waits in the queues, stop accepting and say so (``stopped``), answer what
they have with ``Connection: close`` and exit within
``grace_period_seconds``). "reloaded" is logged once every old worker
stopped accepting: from then on every new connection reaches the new code.
A mistake (YAML, import, a worker that does not start) is logged with its
file and line and leaves the old generation serving: nothing is
half-applied.

A worker of the current generation that dies is replaced at once and its
death logged (exit status or signal); a slot whose workers keep dying within
seconds of starting is restarted after a growing delay (0.5 s doubling to
30 s). Workers ask the kernel for SIGTERM when the master dies
(PR_SET_PDEATHSIG), so they never outlive it.

Signals to the master: SIGTERM graceful stop; SIGINT fast stop; SIGHUP
reload; SIGQUIT hand the sockets to a process started with ``--upgrade``,
then stop gracefully (when nobody takes them, log why and keep serving);
SIGUSR2 start that process itself (this command line plus ``--upgrade``)
and hand over; SIGUSR1 reopen the log files. Workers: SIGTERM graceful,
SIGINT fast, SIGUSR1 reopen logs; SIGHUP, SIGQUIT and SIGUSR2 are ignored
(a terminal's hang-up reaches the whole process group; the master decides).
"""

from __future__ import annotations

import logging
import os
import select
import signal
import sys
import time
from typing import Dict, List, Optional

from . import _handover, _observe, _startup
from ._startup import StartError

log = logging.getLogger("sluiceway.error")

#: A worker that lived this long is no longer "dying at start": its slot's
#: restart delay starts over.
STABLE_SECONDS = 10.0
#: Restart delays of a slot whose workers keep dying quickly: the second
#: quick death waits FIRST_DELAY, each next one twice as long, up to MAX_DELAY.
FIRST_DELAY = 0.5
MAX_DELAY = 30.0
#: How long a reload's new workers may take to accept before it is given up.
RELOAD_WAIT = 30.0
#: How often the files of TLS listeners with ``watch_certs`` are looked at.
WATCH_CERTS_SECONDS = 1.0

_MASTER_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT,
                   signal.SIGUSR1, signal.SIGUSR2, signal.SIGCHLD)


class _Worker:
    __slots__ = ("pid", "slot", "gen", "ready_r", "started", "ready", "kill_at", "error",
                 "replaces", "stopped", "buf")

    def __init__(self, pid: int, slot: int, gen: int, ready_r: int, replaces: int = 0) -> None:
        self.pid = pid
        self.slot = slot
        self.gen = gen
        self.ready_r = ready_r
        self.started = time.monotonic()
        self.ready = False
        self.kill_at = 0.0       # SIGKILL after this (set when told to stop)
        self.error = ""          # what it wrote on its pipe instead of "ok"
        self.replaces = replaces
        self.stopped = False     # it no longer accepts (said "stopped", or exited)
        self.buf = b""


class _Pending:
    """A reload whose workers are starting."""

    def __init__(self, gen: int, server, added: list) -> None:
        self.gen = gen
        self.server = server
        self.added = added       # sockets bound for it (closed if it fails)
        self.deadline = time.monotonic() + RELOAD_WAIT


def describe_exit(status: int) -> str:
    """'exited with status 3', 'was killed by SIGSEGV', ... with a hint for
    the signals an operator meets."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        hint = {signal.SIGKILL: " (kill -9, or the kernel's out-of-memory killer: see dmesg)",
                signal.SIGSEGV: " (a crash in native code)",
                signal.SIGABRT: " (an abort in native code)"}.get(sig, "")
        return f"was killed by {name}{hint}"
    if os.WIFEXITED(status):
        return f"exited with status {os.WEXITSTATUS(status)}"
    return f"ended (status {status})"


def _ids(conf):
    """(uid, gid, user name) the workers switch to, or None."""
    import grp
    import pwd

    if conf.user is None and conf.group is None:
        return None
    if conf.user is not None:
        pw = pwd.getpwnam(conf.user)
        uid, gid, name = pw.pw_uid, pw.pw_gid, pw.pw_name
    else:
        uid, gid, name = os.geteuid(), os.getegid(), None
    if conf.group is not None:
        gid = grp.getgrnam(conf.group).gr_gid
    return uid, gid, name


def check_user(conf) -> None:
    """Raise StartError when ``user``/``group`` cannot be switched to."""
    ids = _ids(conf)
    if ids is None:
        return
    uid, gid, _ = ids
    if os.geteuid() != 0 and (uid != os.geteuid() or gid != os.getegid()):
        raise StartError(f"user/group ({conf.user or '-'}:{conf.group or '-'}): only root can run "
                         "the workers as another user; start as root, or remove user and group "
                         "from the configuration", 1)


def drop_privileges(conf) -> None:
    """In a worker, after the sockets are bound: become ``user``/``group``."""
    ids = _ids(conf)
    if ids is None:
        return
    uid, gid, name = ids
    if os.geteuid() == uid and os.getegid() == gid:
        return
    if name is not None:
        os.initgroups(name, gid)
    else:
        os.setgroups([gid])
    os.setgid(gid)
    os.setuid(uid)


def give_logs_to(conf) -> None:
    """The master (root) owns the log files it opened; a worker that runs as
    ``user`` reopens them by path (SIGUSR1), so they become its."""
    ids = _ids(conf)
    if ids is None or os.geteuid() != 0:
        return
    for path in (conf.error_log, conf.access_log_file if conf.access_log else None):
        if path:
            try:
                os.chown(path, ids[0], ids[1])
            except OSError:
                pass


def die_with_parent(master_pid: int) -> None:
    """Ask the kernel for SIGTERM when the master dies (a graceful stop, so
    requests in flight still finish), and exit now if it already has."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl")
    except (OSError, AttributeError) as exc:
        log.warning("sluiceway: cannot ask to be stopped with the master (%s); a worker may "
                    "outlive a master killed with SIGKILL", exc)
    if os.getppid() != master_pid:
        os._exit(0)


class Master:
    """Runs a Server's workers until it is stopped. See the module's
    docstring.

    Args:
        server: the Server (configuration and services, sockets bound).
        receiver: for an upgrade, the handover to acknowledge once serving.
    """

    def __init__(self, server, receiver: Optional[_handover.Receiver] = None,
                 admin_sock=None) -> None:
        self.server = server
        self.admin = None
        if admin_sock is not None:
            from ._admin import AdminServer

            self.admin = AdminServer(admin_sock, self)
        self.born = time.time()
        self.pid = os.getpid()
        self.socks: Dict[tuple, object] = {}
        for svc in server.services:
            for s in svc._socks:
                self.socks[_handover.sock_key(s)] = s
        self.receiver = receiver
        self.gen = 0
        self.workers: Dict[int, _Worker] = {}
        self.quick: Dict[int, int] = {}          # slot -> quick deaths in a row
        self.respawn: Dict[int, tuple] = {}      # slot -> (when, pid it replaces)
        self.pending: Optional[_Pending] = None
        self.reload_again = False
        self.quit_after_reload = False
        self.sender: Optional[_handover.Sender] = None
        self.stopping: Optional[str] = None
        self.successors: List[int] = []
        # What to log once the workers in it no longer accept: (pids, line).
        self.stop_notes: List[tuple] = []
        self.started = False
        self.deferred = set()    # signals that came while starting, handled once serving
        self.failure = ""        # why the first workers did not start
        self.code = 0
        self.watch_next = 0.0    # when the watched certificate files are looked at next
        self.watch_tried: Dict[tuple, tuple] = {}   # files -> their state a reload was tried for
        self.wake_r = self.wake_w = -1

    # -- the loop --------------------------------------------------------------

    def run(self) -> int:
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        # The wake-up fd first: a signal caught by a handler is never lost.
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        for sig in _MASTER_SIGNALS:
            signal.signal(sig, _noop)
        # Caught before these handlers existed (config read, app import):
        # done once serving, like those that come while the workers start.
        self.deferred |= _startup.held_signals()
        try:
            for slot in range(self.server.configuration.threads):
                self._spawn(slot, self.server, self.gen)
            while not (self.stopping and not self.workers):
                self._turn()
        finally:
            signal.set_wakeup_fd(-1)
            for fd in (self.wake_r, self.wake_w):
                os.close(fd)
            if self.admin is not None:
                self.admin.close()
            for s in self.socks.values():
                s.close()
            if self.receiver is not None:
                self.receiver.ack(False, "the new process stopped before serving")
        return self.code

    def _turn(self) -> None:
        fds = [self.wake_r] + [w.ready_r for w in self.workers.values() if w.ready_r >= 0]
        if self.sender is not None and self.sender.fileno() >= 0:
            fds.append(self.sender.fileno())
        wfds = []
        if self.admin is not None:
            fds += self.admin.rfds()
            wfds = self.admin.wfds()
        try:
            ready, writable, _ = select.select(fds, wfds, [], self._timeout())
        except InterruptedError:
            ready, writable = [], []
        for sig in self._signals():
            self._on_signal(sig)
        for w in list(self.workers.values()):
            if w.ready_r >= 0 and w.ready_r in ready:
                self._read_ready(w)
        self._reap()
        self._tick()
        if self.admin is not None:
            self.admin.handle(ready, writable)

    def _timeout(self) -> float:
        now = time.monotonic()
        t = 1.0
        if self.sender is not None:
            t = 0.05
        for when, _ in self.respawn.values():
            t = min(t, when - now)
        for w in self.workers.values():
            if w.kill_at:
                t = min(t, w.kill_at - now)
        if self.pending is not None:
            t = min(t, self.pending.deadline - now)
        if self.admin is not None:
            t = min(t, self.admin.timeout())
        return max(t, 0.0)

    def _signals(self) -> List[int]:
        out = []
        while True:
            try:
                data = os.read(self.wake_r, 512)
            except BlockingIOError:
                break
            if not data:
                break
            out.extend(data)
        # Stops first: a worker that died of the same SIGINT is then not
        # taken for a crash.
        out.sort(key=lambda s: s not in (signal.SIGTERM, signal.SIGINT))
        return out

    def _on_signal(self, sig: int) -> None:
        if sig == signal.SIGTERM:
            self._stop("term")
        elif sig == signal.SIGINT:
            self._stop("int")
        elif sig == signal.SIGHUP:
            self._reload()
        elif sig == signal.SIGQUIT:
            self._handover()
        elif sig == signal.SIGUSR2:
            self._handover(start_successor=True)
        elif sig == signal.SIGUSR1:
            self._reopen_logs()

    def _tick(self) -> None:
        now = time.monotonic()
        fam = _observe._master_families()
        fam["workers"].set(sum(1 for w in self.workers.values() if w.ready and not w.kill_at))
        fam["generation"].set(self.gen)
        if self.sender is not None:
            self._step_handover()
        for slot, (when, replaces) in list(self.respawn.items()):
            if now >= when and not self.stopping:
                del self.respawn[slot]
                self._spawn(slot, self.server, self.gen, replaces)
        if self.pending is not None and now > self.pending.deadline:
            self._reload_failed(f"its workers did not start within {RELOAD_WAIT:.0f}s")
        for w in self.workers.values():
            if w.kill_at and now > w.kill_at:
                w.kill_at = 0.0
                log.warning("sluiceway: worker %d did not stop within "
                            "graceful_shutdown_timeout_seconds; killing it", w.pid)
                _kill(w.pid, signal.SIGKILL)
        if now >= self.watch_next:
            self.watch_next = now + WATCH_CERTS_SECONDS
            self._watch_certs()

    def _watch_certs(self) -> None:
        """``watch_certs``: when a TLS listener's certificate, key or CA
        file changed (inode, size or mtime) since its contexts were made,
        reload, as SIGHUP does: the new workers get contexts from the new
        files. A reload that fails (a key that does not match, an expired
        certificate) is logged and leaves the old workers serving; it is
        tried again only when the files change again."""
        if not self.started or self.stopping or self.sender is not None or self.pending is not None:
            return
        from .tls import file_state

        for svc in self.server.services:
            for lt in getattr(svc, "tls_listeners", list)():
                if not lt.options.watch_certs:
                    continue
                files = lt.options.files()
                state = file_state(files)
                if state == lt.state or self.watch_tried.get(files) == state:
                    continue
                self.watch_tried[files] = state
                log.info("sluiceway: the certificate files of a TLS listener changed (%s): "
                         "reloading", ", ".join(files))
                self._reload()
                return

    # -- what the admin listener says ------------------------------------------

    def readiness(self):
        """(ready, what the server is doing) for ``/readyz``."""
        if self.stopping:
            return False, "stopping"
        if self.sender is not None:
            return False, "upgrading: handing the sockets to a new process"
        if not self.started:
            return False, "starting"
        if not any(w.ready and w.gen == self.gen and not w.kill_at
                   for w in self.workers.values()):
            return False, "no worker accepts"
        return True, "ready"

    def status(self) -> dict:
        """What ``/status`` shows."""
        from . import _admin, metrics

        now = time.monotonic()
        ready, state = self.readiness()
        if ready and self.pending is not None:
            state = "reloading"
        workers = []
        for w in sorted(self.workers.values(), key=lambda w: (w.gen, w.slot)):
            d = {"pid": w.pid, "slot": w.slot, "generation": w.gen, "ready": w.ready,
                 "draining": bool(w.kill_at), "uptime_seconds": round(now - w.started, 3)}
            d.update(_admin.worker_figures(w.pid))
            workers.append(d)
        st = metrics.store()
        return {"pid": self.pid, "ready": ready, "state": state, "generation": self.gen,
                "uptime_seconds": round(time.time() - self.born, 3),
                "threads": self.server.configuration.threads,
                "config": self.server.conf_path, "workers": workers,
                "services": _admin.services_status(), "backends": _observe.status_backends(),
                "metrics_store": st.usage() if st is not None else None}

    # -- workers ---------------------------------------------------------------

    def _spawn(self, slot: int, server, gen: int, replaces: int = 0) -> int:
        r, w = os.pipe()
        pid = _fork()
        if pid == 0:
            code = 1
            try:
                os.close(r)
                self._in_child(server)
                code = _worker_process(server, w, self.pid)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                try:
                    log.exception("sluiceway: worker failed")
                except BaseException:
                    pass
            finally:
                os._exit(code)
        os.close(w)
        self.workers[pid] = _Worker(pid, slot, gen, r, replaces)
        return pid

    def _in_child(self, server) -> None:
        """In a new worker: drop what belongs to the master. Its signals
        were blocked across the fork (``_fork``): a SIGTERM or SIGINT that
        came meanwhile now ends it (it serves nothing yet); the signals that
        are the master's business are ignored from here on."""
        signal.set_wakeup_fd(-1)
        for sig in _MASTER_SIGNALS:
            signal.signal(sig, signal.SIG_DFL if sig in (signal.SIGTERM, signal.SIGINT,
                                                         signal.SIGCHLD) else signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _MASTER_SIGNALS)
        os.close(self.wake_r)
        os.close(self.wake_w)
        if self.admin is not None:
            self.admin.close_in_child()
        for w in self.workers.values():
            if w.ready_r >= 0:
                os.close(w.ready_r)
        if self.sender is not None and self.sender.conn is not None:
            self.sender.conn.close()
        if self.receiver is not None and self.receiver.conn is not None:
            self.receiver.conn.close()
        mine = {id(s) for svc in server.services for s in svc._socks}
        for s in self.socks.values():
            if id(s) not in mine:
                s.close()   # a socket only another generation uses
        if self.server._ready_fd >= 0:
            os.close(self.server._ready_fd)

    def _read_ready(self, w: _Worker) -> None:
        """A line from a worker: ``ok`` (it accepts), ``error: ...`` (it
        could not start), ``stopped`` (it no longer accepts); or EOF."""
        try:
            data = os.read(w.ready_r, 4096)
        except OSError:
            data = b""
        if not data:
            os.close(w.ready_r)
            w.ready_r = -1
            return
        w.buf += data
        while b"\n" in w.buf:
            line, w.buf = w.buf.split(b"\n", 1)
            if line == b"ok":
                w.ready = True
                self._worker_ready(w)
            elif line == b"stopped":
                w.stopped = True
                self._check_stop_notes()
            else:
                w.error += line.decode(errors="replace") + "\n"

    def _note_when_stopped(self, pids: List[int], line: str) -> None:
        """Log ``line`` once none of ``pids`` accepts any more."""
        self.stop_notes.append((set(pids), line))
        self._check_stop_notes()

    def _check_stop_notes(self) -> None:
        left = []
        for pids, line in self.stop_notes:
            if all(pid not in self.workers or self.workers[pid].stopped for pid in pids):
                log.info("%s", line)
            else:
                left.append((pids, line))
        self.stop_notes = left

    def _worker_ready(self, w: _Worker) -> None:
        if w.replaces:
            log.info("sluiceway: worker %d accepts (in place of %d)", w.pid, w.replaces)
        if not self.started and w.gen == self.gen and self._all_ready(self.gen):
            self._serving()
        if self.pending is not None and w.gen == self.pending.gen and \
                self._all_ready(self.pending.gen):
            self._commit_reload()

    def _all_ready(self, gen: int) -> bool:
        server = self.pending.server if self.pending is not None and gen == self.pending.gen \
            else self.server
        ws = [w for w in self.workers.values() if w.gen == gen]
        return len(ws) >= server.configuration.threads and all(w.ready for w in ws)

    def _serving(self) -> None:
        """The first generation accepts: say so."""
        self.started = True
        server = self.server
        # The pid file first: once the old master hears "ok" it may exit,
        # and whoever reads the file then (systemd) must find this one.
        if server.configuration.daemon and server.configuration.pid_file:
            _startup.write_pid_file(server.configuration.pid_file)
        if self.receiver is not None:
            server._took_over = self.receiver.old_pid
            self.receiver.ack(True)
            self.receiver = None
        server._started()
        for sig in sorted(self.deferred, key=lambda s: s != signal.SIGHUP):
            self._on_signal(sig)   # a reload first, then a handover
        self.deferred.clear()

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            w = self.workers.pop(pid, None)
            if w is not None:
                _observe.worker_ended(pid)   # its counts join the totals
            if w is None:
                if pid in self.successors:
                    self.successors.remove(pid)
                continue
            if w.ready_r >= 0:
                self._read_ready(w)   # what it wrote before dying
                if w.ready_r >= 0:
                    os.close(w.ready_r)
                    w.ready_r = -1
            self._exited(w, status)
            self._check_stop_notes()

    def _exited(self, w: _Worker, status: int) -> None:
        why = describe_exit(status)
        if self.stopping:
            if os.WIFEXITED(status) and os.WEXITSTATUS(status) != 0:
                self.code = os.WEXITSTATUS(status)
            return
        if self.pending is not None and w.gen == self.pending.gen:
            self._reload_failed(f"new worker {w.pid} {why}{': ' + w.error.strip() if w.error else ''}")
            return
        if w.gen != self.gen or w.kill_at:
            log.debug("sluiceway: old worker %d %s", w.pid, why)
            return
        if not self.started:
            self.failure = f"worker {w.pid} {why} before it served" + (
                ": " + w.error.strip() if w.error else "")
            log.error("sluiceway: %s", self.failure)
            self.code = 1
            self._stop("int")
            return
        now = time.monotonic()
        if now - w.started >= STABLE_SECONDS:
            self.quick[w.slot] = 0
        n = self.quick[w.slot] = self.quick.get(w.slot, 0) + 1
        delay = 0.0 if n <= 1 else min(FIRST_DELAY * 2 ** (n - 2), MAX_DELAY)
        if delay:
            log.error("sluiceway: worker %d %s after %.1fs%s; its workers keep dying, the next "
                      "one starts in %.1fs", w.pid, why, now - w.started,
                      ": " + w.error.strip() if w.error else "", delay)
        else:
            log.error("sluiceway: worker %d %s; starting another", w.pid, why)
        self.respawn[w.slot] = (now + delay, w.pid)
        _observe._master_families()["restarts"].inc()

    # -- stopping --------------------------------------------------------------

    def _stop(self, how: str) -> None:
        if self.stopping == "int" or self.stopping == how:
            return
        self.stopping = how
        timeout = self.server.configuration.graceful_shutdown_timeout_seconds
        sig = signal.SIGTERM if how == "term" else signal.SIGINT
        deadline = time.monotonic() + (timeout if how == "term" else min(timeout, 3.0))
        self.respawn.clear()
        for w in self.workers.values():
            _kill(w.pid, sig)
            w.kill_at = deadline if not w.kill_at else min(w.kill_at, deadline)
        # The workers hold their own copies: they take what waits in the
        # queues before they close them.
        for s in self.socks.values():
            s.close()
        self.socks.clear()
        if self.sender is not None and self.sender.state != "done":
            self.sender._fail("stopped")
            self.sender = None
        if self.receiver is not None:
            self.receiver.ack(False, "the new process was stopped before it served")
            self.receiver = None

    # -- reload (SIGHUP) -------------------------------------------------------

    def _reload(self) -> None:
        if self.stopping or self.sender is not None:
            log.warning("sluiceway: SIGHUP ignored: the server is %s",
                        "stopping" if self.stopping else "handing its sockets over")
            return
        if not self.started:
            self.deferred.add(signal.SIGHUP)   # done once the workers accept
            return
        if self.pending is not None:
            self.reload_again = True
            return
        from .config import ConfigError

        old = self.server
        log.info("sluiceway: SIGHUP: reloading %s", old.conf_path or "(no configuration file)")
        new = None
        added: list = []
        try:
            new = old._reload()
            pool = dict(self.socks)
            for svc in new.services:
                svc._bind(pool)
                for s in svc._socks:
                    if _handover.sock_key(s) not in self.socks:
                        added.append(s)
            check_user(new.configuration)
            _startup.reopen_logs(new.configuration)
            give_logs_to(new.configuration)
        except (ConfigError, StartError, OSError, Exception) as exc:
            for s in added:
                s.close()
            if new is not None:
                new._abandon()
            log.error("sluiceway: reload failed, the old workers keep serving: %s", exc)
            _observe._master_families()["reloads"].labels("failed").inc()
            return
        self.gen += 1
        self.pending = _Pending(self.gen, new, added)
        for s in added:
            self.socks[_handover.sock_key(s)] = s
        for slot in range(new.configuration.threads):
            self._spawn(slot, new, self.gen)

    def _commit_reload(self) -> None:
        p, self.pending = self.pending, None
        _observe._master_families()["reloads"].labels("ok").inc()
        new = p.server
        timeout = new.configuration.graceful_shutdown_timeout_seconds
        old = [w for w in self.workers.values() if w.gen < p.gen]
        for w in old:
            _kill(w.pid, signal.SIGTERM)
            w.kill_at = time.monotonic() + timeout
        self.server = new
        self.respawn.clear()
        self.quick.clear()
        used = {_handover.sock_key(s) for svc in new.services for s in svc._socks}
        for key in list(self.socks):
            if key not in used:
                self.socks.pop(key).close()   # an address the new configuration dropped
        pids = self._gen_pids(p.gen)
        self._note_when_stopped(
            [w.pid for w in old],
            f"sluiceway: reloaded: {len(pids)} new worker{'s' if len(pids) != 1 else ''} "
            f"({', '.join(map(str, pids))}) serve{'' if len(pids) != 1 else 's'}; "
            f"{len(old)} old one{'s' if len(old) != 1 else ''} no longer accept{'' if len(old) != 1 else 's'} "
            f"and drain{'' if len(old) != 1 else 's'}")
        if self.reload_again:
            self.reload_again = False
            self._reload()
        elif self.quit_after_reload:
            self.quit_after_reload = False
            self._handover()

    def _gen_pids(self, gen: int) -> List[int]:
        return sorted(w.pid for w in self.workers.values() if w.gen == gen)

    def _reload_failed(self, why: str) -> None:
        p, self.pending = self.pending, None
        _observe._master_families()["reloads"].labels("failed").inc()
        timeout = p.server.configuration.graceful_shutdown_timeout_seconds
        for w in self.workers.values():
            if w.gen == p.gen:
                # One that accepts may hold connections: it drains them.
                _kill(w.pid, signal.SIGTERM if w.ready else signal.SIGKILL)
                w.kill_at = time.monotonic() + timeout
        for s in p.added:
            self.socks.pop(_handover.sock_key(s), None)
            s.close()
        p.server._abandon()
        log.error("sluiceway: reload failed, the old workers keep serving: %s", why)
        self.reload_again = False
        if self.quit_after_reload:
            self.quit_after_reload = False
            self._handover()

    # -- upgrade (SIGQUIT, SIGUSR2) -----------------------------------------------

    def _handover(self, start_successor: bool = False) -> None:
        if self.stopping or self.sender is not None:
            log.warning("sluiceway: %s ignored: the server is %s",
                        "SIGUSR2" if start_successor else "SIGQUIT",
                        "stopping" if self.stopping else "already handing its sockets over")
            return
        if not self.started:
            self.deferred.add(signal.SIGUSR2 if start_successor else signal.SIGQUIT)
            return
        if self.pending is not None:
            self.quit_after_reload = True
            return
        conf = self.server.configuration
        path = conf.upgrade_sock
        if start_successor:
            self._start_successor()
        names = ", ".join(_startup.fmt_key(k) for k in self.socks)
        log.info("sluiceway: %s: handing the listening sockets (%s) to the new process on "
                 "upgrade_sock %s", "SIGUSR2" if start_successor else "SIGQUIT", names, path)
        self.sender = _handover.Sender(path, list(self.socks.values()), conf.upgrade_wait_seconds)
        self._step_handover()

    def _start_successor(self) -> None:
        argv = [sys.executable] + list(getattr(sys, "orig_argv", sys.argv))[1:]
        if "--upgrade" not in argv:
            argv.append("--upgrade")
        pid = _fork()
        if pid == 0:
            try:
                self._in_child(self.server)
                for s in self.socks.values():
                    s.close()
                os.execv(sys.executable, argv)
            finally:
                os._exit(127)
        self.successors.append(pid)
        log.info("sluiceway: SIGUSR2: started pid %d: %s", pid, " ".join(argv))

    def _step_handover(self) -> None:
        state = self.sender.step()
        if state == "done":
            new_pid = self.sender.new_pid
            self.sender = None
            log.info("sluiceway: upgrade: pid %d serves the listening sockets now; stopping "
                     "gracefully", new_pid)
            self._stop("term")
            self._note_when_stopped(list(self.workers), f"sluiceway: upgrade: pid {self.pid} no "
                                    f"longer accepts (pid {new_pid} does) and drains")
        elif state == "failed":
            why = self.sender.error
            self.sender = None
            log.error("sluiceway: upgrade failed, this process keeps serving: %s", why)

    # -- logs (SIGUSR1) --------------------------------------------------------

    def _reopen_logs(self) -> None:
        conf = self.server.configuration
        try:
            _startup.reopen_logs(conf)
        except Exception as exc:
            log.error("sluiceway: reopening the logs failed: %s", exc)
            return
        give_logs_to(conf)
        for w in self.workers.values():
            _kill(w.pid, signal.SIGUSR1)
        log.info("sluiceway: SIGUSR1: log files reopened")


def _fork() -> int:
    """fork() with the master's signals blocked across it: a signal that
    comes then must not run the master's handler in the child."""
    signal.pthread_sigmask(signal.SIG_BLOCK, _MASTER_SIGNALS)
    pid = os.fork()
    if pid != 0:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _MASTER_SIGNALS)
    return pid


def _noop(signum, frame) -> None:
    """The signal's number reaches the loop through the wake-up pipe."""


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _worker_process(server, ready_w: int, master_pid: int) -> int:
    # What the worker imports, before it may lose the right to read it.
    import ctypes  # noqa: F401
    import uvloop  # noqa: F401

    from . import _limits_redis  # noqa: F401
    from .server import _worker_main

    drop_privileges(server.configuration)
    die_with_parent(master_pid)   # after setuid, which clears it
    _observe.worker_setup()
    return _worker_main(server, ready_w)
