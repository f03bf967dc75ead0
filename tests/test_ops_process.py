"""The master process: workers replaced when they die, never outliving the
master; SIGHUP reloads the configuration and the app (or keeps the old
workers on a mistake); SIGQUIT hands the listening sockets to a process
started with --upgrade; SIGUSR1 reopens the logs; a plain start refuses to
run beside a running server; user/group. Load versions of these are in
test_ops_load.py (slow)."""

import os
import re
import signal
import socket
import time

import httpx
import pytest

from proxy_harness import free_port, spawn, stop_proc, wait_port

APP = """
import asyncio
import os
from sluiceway.proxy import HttpPeer, ProxyHttp

VERSION = "{version}"

class App(ProxyHttp):
    async def request_filter(self, session, ctx):
        if session.req_header.path == "/crash":
            os._exit(3)
        if session.req_header.path == "/slow":
            await asyncio.sleep(1.5)
        session.respond(200, {{"x-version": VERSION, "x-pid": str(os.getpid())}}, "hi\\n")
        return True

    def upstream_peer(self, session, ctx):
        return HttpPeer(("127.0.0.1", 9))
"""


class Proxy:
    """A `sluiceway run` in a folder of its own, with its app and config."""

    def __init__(self, folder, conf="", version="v1", port=None, extra=(), write=True, prelude=""):
        self.folder = folder
        self.prelude = prelude   # source run first when the app module is imported
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.conf = folder / "conf.yaml"
        self.log = folder / "error.log"
        if write:
            self.write_app(version)
            self.write_conf(conf)
        self.proc = spawn(["-m", "sluiceway.cli", "run", "opsapp:App", "-c", str(self.conf),
                           "-l", f"127.0.0.1:{self.port}", *extra],
                          {"PYTHONPATH": str(folder)}, cwd=str(folder))

    def write_app(self, version):
        (self.folder / "opsapp.py").write_text(self.prelude + APP.format(version=version))

    def write_conf(self, extra="", threads=2):
        self.conf.write_text(f"version: 1\nthreads: {threads}\ngrace_period_seconds: 2\n"
                             f"error_log: {self.log}\nupgrade_sock: {self.folder / 'up.sock'}\n"
                             f"upgrade_wait_seconds: 3\n" + extra)

    def start(self):
        wait_port(self.port, self.proc)
        wait_for(lambda: len(self.workers()) == 2 and "listening on" in self.log_text())
        return self

    def workers(self, pid=None):
        try:
            with open(f"/proc/{pid or self.proc.pid}/task/{pid or self.proc.pid}/children") as f:
                return [int(p) for p in f.read().split()]
        except OSError:
            return []

    def log_text(self):
        return self.log.read_text() if self.log.exists() else ""

    def get(self, path="/"):
        with httpx.Client() as c:   # a new connection each time
            return c.get(self.url + path, timeout=5)

    def versions(self, n=8):
        return {self.get().headers["x-version"] for _ in range(n)}

    def stop(self):
        return stop_proc(self.proc)


def wait_for(cond, timeout=10.0, step=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {cond}")


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_killed_worker_is_replaced_within_a_second_and_logged(tmp_path):
    p = Proxy(tmp_path).start()
    try:
        w1, w2 = p.workers()
        t0 = time.monotonic()
        os.kill(w1, signal.SIGKILL)
        seen = []

        def replaced():
            seen[:] = p.workers()      # one read: the set tested is the set used
            return len(seen) == 2 and w1 not in seen

        wait_for(replaced, 1.0)
        new = (set(seen) - {w2}).pop()
        wait_for(lambda: f"worker {new} accepts (in place of {w1})" in p.log_text(), 2.0)
        assert time.monotonic() - t0 < 1.5
        assert f"worker {w1} was killed by SIGKILL (kill -9, or the kernel's out-of-memory " \
               f"killer: see dmesg); starting another" in p.log_text()
        assert alive(w2)
        assert {p.get().headers["x-pid"] for _ in range(20)} <= {str(new), str(w2)}
    finally:
        assert p.stop() == 0


def test_workers_that_keep_dying_are_restarted_with_growing_delays(tmp_path):
    p = Proxy(tmp_path).start()
    try:
        for _ in range(3):
            with pytest.raises(httpx.HTTPError):
                p.get("/crash")
            wait_for(lambda: len(p.workers()) == 2, 5)
            time.sleep(0.1)
        text = p.log_text()
        assert "exited with status 3; starting another" in text
        assert "its workers keep dying, the next one starts in 0.5s" in text
        assert p.get().status_code == 200
    finally:
        assert p.stop() == 0


def test_during_a_graceful_stop_new_connections_are_refused_not_left_waiting(tmp_path):
    """SIGTERM with a request in flight: that request is answered, and a new
    connection is refused at once (no listening socket is left open with
    nobody accepting), so a client or balancer tries elsewhere at once."""
    p = Proxy(tmp_path).start()
    try:
        s = socket.create_connection(("127.0.0.1", p.port), timeout=5)
        s.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.3)
        p.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        t0 = time.monotonic()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", p.port), timeout=3).close()
        assert time.monotonic() - t0 < 0.5
        assert p.proc.poll() is None            # still draining the slow request
        head = s.recv(65536)
        assert head.startswith(b"HTTP/1.1 200") and b"connection: close" in head.lower()
        s.close()
    finally:
        assert p.stop() == 0


def test_workers_exit_when_the_master_is_killed(tmp_path):
    p = Proxy(tmp_path).start()
    workers = p.workers()
    os.kill(p.proc.pid, signal.SIGKILL)
    p.proc.wait(5)
    wait_for(lambda: not any(alive(w) for w in workers), 5)
    # and the port is free for a new start
    q = Proxy(tmp_path, port=p.port, write=False).start()
    assert q.get().status_code == 200
    assert q.stop() == 0


def test_sighup_reloads_the_app_and_configuration(tmp_path):
    p = Proxy(tmp_path).start()
    try:
        old = set(p.workers())
        assert p.versions() == {"v1"}
        p.write_app("v2")
        p.write_conf(threads=3)
        p.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "sluiceway: reloaded: 3 new workers" in p.log_text())
        assert p.versions() == {"v2"}          # every new connection: the new code
        wait_for(lambda: not any(alive(w) for w in old), 5)   # the old ones drained
        assert len(p.workers()) == 3
    finally:
        assert p.stop() == 0


def _catches(pid, sig):
    """Whether process ``pid`` has a handler for ``sig`` (/proc's SigCgt)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            mask = int(re.search(r"SigCgt:\s*([0-9a-f]+)", f.read()).group(1), 16)
    except OSError:
        return False
    return bool(mask >> (sig - 1) & 1)


def test_sighup_while_starting_is_done_once_the_workers_accept(tmp_path):
    """A SIGHUP that comes before the first workers accept (a reload right
    after a start) neither kills the master nor is lost: it is done as soon
    as the server serves."""
    p = Proxy(tmp_path)
    try:
        wait_for(lambda: _catches(p.proc.pid, signal.SIGHUP), 10, 0.001)
        p.write_app("v2")
        p.proc.send_signal(signal.SIGHUP)
        p.start()
        wait_for(lambda: "sluiceway: reloaded" in p.log_text())
        assert p.versions() == {"v2"}
        assert p.proc.poll() is None
    finally:
        assert p.stop() == 0


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGUSR1], ids=["SIGHUP", "SIGUSR1"])
def test_a_signal_while_the_app_imports_neither_kills_the_start_nor_is_lost(tmp_path, sig):
    """Before the master installs its handlers (the configuration read, the
    app module imported), a SIGHUP or SIGUSR1 is remembered, not fatal: the
    server starts and then does it (a reload; a log reopen)."""
    started = tmp_path / "importing"
    p = Proxy(tmp_path, prelude=f"import pathlib, time\npathlib.Path({str(started)!r}).touch()\n"
                                "time.sleep(1.0)\n")
    try:
        wait_for(started.exists, 10, 0.005)
        p.proc.send_signal(sig)
        p.start()
        said = "sluiceway: reloaded" if sig == signal.SIGHUP else "log files reopened"
        wait_for(lambda: said in p.log_text())
        assert p.get().status_code == 200
        assert p.proc.poll() is None
    finally:
        assert p.stop() == 0


@pytest.mark.parametrize("mistake", ["syntax", "import", "yaml", "key"])
def test_a_bad_reload_keeps_the_old_workers_serving(tmp_path, mistake):
    p = Proxy(tmp_path).start()
    try:
        old = set(p.workers())
        if mistake == "syntax":
            (tmp_path / "opsapp.py").write_text(APP.format(version="v2") + "\ndef broken(:\n")
            expect = "SyntaxError: invalid syntax (opsapp.py, line"
        elif mistake == "import":
            (tmp_path / "opsapp.py").write_text("import no_such_module_here\n" +
                                                APP.format(version="v2"))
            expect = "cannot import module 'opsapp': No module named 'no_such_module_here'"
        elif mistake == "yaml":
            p.write_conf("threads: [1\n")
            expect = f"{p.conf}:"
        else:
            p.write_conf("max_retry: 2\n")
            expect = f"{p.conf}:7: unknown key 'max_retry' (did you mean max_retries?)"
        p.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload failed, the old workers keep serving" in p.log_text())
        assert expect in p.log_text()
        assert set(p.workers()) == old and p.versions() == {"v1"}
        # fixed: the next SIGHUP applies it (the modules of the failed import are gone)
        p.write_app("v3")
        p.write_conf()
        p.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "sluiceway: reloaded" in p.log_text())
        assert p.versions() == {"v3"}
    finally:
        assert p.stop() == 0


def test_upgrade_hands_the_sockets_over_and_the_old_process_drains(tmp_path):
    uds = tmp_path / "p.sock"
    old = Proxy(tmp_path, extra=("-l", f"unix:{uds}")).start()
    try:
        old_workers = old.workers()
        old.write_app("v2")
        new = Proxy(tmp_path, port=old.port, write=False, extra=("-l", f"unix:{uds}", "--upgrade"))
        time.sleep(0.3)
        old.proc.send_signal(signal.SIGQUIT)
        assert old.proc.wait(10) == 0
        wait_for(lambda: len(new.workers()) == 2)
        assert not any(alive(w) for w in old_workers)
        assert new.versions() == {"v2"}
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(uds))) as c:
            assert c.get("http://proxy/").headers["x-version"] == "v2"
        text = old.log_text()
        assert f"upgrade: pid {new.proc.pid} serves the listening sockets now" in text
        assert f"took the listening sockets over from pid {old.proc.pid}" in text
    finally:
        stop_proc(old.proc)
        assert new.stop() == 0


def test_upgrade_without_a_running_server_fails_and_binds_nothing(tmp_path):
    p = Proxy(tmp_path, extra=("--upgrade",))
    out, err = p.proc.communicate(timeout=20)
    assert p.proc.returncode == 1
    assert b"upgrade failed: no running sluiceway handed over its listening sockets on " \
           b"upgrade_sock" in err
    assert b"within 3s (upgrade_wait_seconds)" in err
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", p.port), timeout=1).close()


def test_sigquit_without_a_new_process_keeps_serving(tmp_path):
    p = Proxy(tmp_path).start()
    try:
        workers = set(p.workers())
        p.proc.send_signal(signal.SIGQUIT)
        wait_for(lambda: "upgrade failed, this process keeps serving" in p.log_text(), 8)
        assert "No such file or directory; nothing waits there" in p.log_text()
        assert set(p.workers()) == workers and p.get().status_code == 200
    finally:
        assert p.stop() == 0


def test_a_plain_start_refuses_to_run_beside_a_running_server(tmp_path):
    p = Proxy(tmp_path).start()
    try:
        second = tmp_path / "second"
        second.mkdir()
        q = Proxy(second, port=p.port)
        _, err = q.proc.communicate(timeout=20)
        assert q.proc.returncode == 1
        assert b"the address is already in use" in err and b"start this with --upgrade" in err
        assert p.get().status_code == 200
    finally:
        assert p.stop() == 0


def test_a_plain_start_refuses_when_the_pid_file_names_a_running_server(tmp_path):
    pid_file = tmp_path / "sw.pid"
    conf = f"pid_file: {pid_file}\n"
    p = Proxy(tmp_path, conf, extra=("-d",))
    assert p.proc.wait(20) == 0                     # the daemon listens
    wait_for(lambda: pid_file.exists())
    master = int(pid_file.read_text())
    try:
        other = tmp_path / "other"
        other.mkdir()
        q = Proxy(other, conf)                      # another port, the same pid file
        _, err = q.proc.communicate(timeout=20)
        assert q.proc.returncode == 1
        assert f"a sluiceway already runs (pid {master}, from pid_file {pid_file})".encode() in err
        # an upgrade as a daemon: the pid file names the new master once it serves
        p.write_app("v2")
        up = Proxy(tmp_path, conf, port=p.port, write=False, extra=("-d", "--upgrade"))
        time.sleep(0.3)
        os.kill(master, signal.SIGQUIT)
        assert up.proc.wait(20) == 0
        wait_for(lambda: not alive(master))
        new_master = int(pid_file.read_text())
        assert new_master != master and alive(new_master)
        assert p.versions() == {"v2"}
    finally:
        pid = int(pid_file.read_text()) if pid_file.exists() else master
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not pid_file.exists())


@pytest.mark.parametrize("sig, said", [(signal.SIGUSR1, "log files reopened"),
                                       (signal.SIGHUP, "sluiceway: reloaded")])
def test_sigusr1_and_sighup_reopen_the_log_files(tmp_path, sig, said):
    acc = tmp_path / "access.log"
    p = Proxy(tmp_path, f"access_log: true\naccess_log_file: {acc}\n").start()
    try:
        p.get("/before")
        wait_for(lambda: acc.exists() and "/before" in acc.read_text())
        os.rename(acc, tmp_path / "access.log.1")      # what logrotate does
        os.rename(p.log, tmp_path / "error.log.1")
        p.proc.send_signal(sig)
        wait_for(lambda: p.log.exists() and said in p.log_text())
        time.sleep(0.2)
        for _ in range(4):
            p.get("/after")
        wait_for(lambda: acc.exists() and acc.read_text().count("/after") == 4)
        assert "/after" not in (tmp_path / "access.log.1").read_text()
    finally:
        assert p.stop() == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_workers_run_as_user_and_group(tmp_path):
    os.chmod(tmp_path, 0o755)
    p = Proxy(tmp_path, "user: nobody\ngroup: nogroup\n").start()
    try:
        import grp
        import pwd
        uid, gid = pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid
        for w in p.workers():
            with open(f"/proc/{w}/status") as f:
                st = dict(line.split(":", 1) for line in f)
            assert st["Uid"].split()[:2] == [str(uid)] * 2
            assert st["Gid"].split()[:2] == [str(gid)] * 2
        assert os.stat(p.log).st_uid == uid    # so that a worker can reopen it
        assert p.get().status_code == 200
        p.write_app("v2")
        p.proc.send_signal(signal.SIGHUP)       # the master (root) reloads
        wait_for(lambda: "sluiceway: reloaded" in p.log_text())
        assert p.versions() == {"v2"}
    finally:
        assert p.stop() == 0
