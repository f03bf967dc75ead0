"""TLS listeners under the master (`sluiceway run` with tls_listen in the
YAML configuration, two workers): session tickets resume on either worker
(the contexts are made before the workers fork); a reload (SIGHUP, or
watch_certs seeing the files change) serves new certificates to new
handshakes while open connections go on; a bad new file keeps the old
certificate and says why; reloads under wrk over HTTPS drop nothing."""

import os
import re
import shutil
import signal
import socket
import ssl
import time

import pytest

from ops_load import Wrk
from proxy_harness import free_port, spawn, stop_proc, wait_port
from tls_certs import HAVE_OPENSSL, issue, make_certs, serial_of

pytestmark = pytest.mark.skipif(not HAVE_OPENSSL or not shutil.which("wrk"),
                                reason="needs openssl and wrk")

APP = """
import os
from sluiceway.proxy import HttpPeer, ProxyHttp

class App(ProxyHttp):
    async def request_filter(self, session, ctx):
        t = session.tls
        session.respond(200, {"x-pid": str(os.getpid()),
                              "x-resumed": str(t.resumed if t else None)}, "hi\\n")
        return True

    def upstream_peer(self, session, ctx):
        return HttpPeer(("127.0.0.1", 9))
"""


class TlsProxy:
    """A `sluiceway run` with one TLS address (its certificate in
    ``folder``/live.pem, live.key) and two workers."""

    def __init__(self, folder, certs, **tls):
        self.folder = folder
        self.certs = certs
        self.port = free_port()
        self.log = folder / "error.log"
        shutil.copy(certs / "srv.pem", folder / "live.pem")
        shutil.copy(certs / "srv.key", folder / "live.key")
        (folder / "tlsapp.py").write_text(APP)
        opts = "".join(f"    {k}: {v}\n" for k, v in tls.items())
        (folder / "conf.yaml").write_text(
            f"version: 1\nthreads: 2\ngrace_period_seconds: 3\nerror_log: {self.log}\n"
            f"upgrade_sock: {folder / 'up.sock'}\n"
            f"tls_listen:\n  - listen: 127.0.0.1:{self.port}\n    cert: {folder / 'live.pem'}\n"
            f"    key: {folder / 'live.key'}\n" + opts)
        self.proc = spawn(["-m", "sluiceway.cli", "run", "tlsapp:App", "-c",
                           str(folder / "conf.yaml")], {"PYTHONPATH": str(folder)}, cwd=str(folder))
        self.ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))

    def start(self):
        wait_port(self.port, self.proc)
        wait(lambda: "listening on" in self.log_text() and len(self.workers()) == 2)
        return self

    def workers(self):
        try:
            with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
                return [int(p) for p in f.read().split()]
        except OSError:
            return []

    def log_text(self):
        return self.log.read_text() if self.log.exists() else ""

    def connect(self, session=None):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        return self.ctx.wrap_socket(s, server_hostname="localhost", session=session)

    def get(self, t):
        t.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        head = b""
        while b"hi\n" not in head:
            b = t.recv(4096)
            if not b:
                break
            head += b
        assert head.startswith(b"HTTP/1.1 200"), head
        return {k.lower(): v for k, v in re.findall(r"(?m)^([\w-]+): (.*?)\r$", head.decode())}

    def serial(self):
        with self.connect() as t:
            der = t.getpeercert(True)
        return ssl.DER_cert_to_PEM_cert(der)

    def put_cert(self, name):
        """Replace the live files (new inodes, as a deploy would)."""
        for ext in ("pem", "key"):
            tmp = self.folder / f"next.{ext}"
            shutil.copy(self.certs / f"{name}.{ext}", tmp)
            os.replace(tmp, self.folder / f"live.{ext}")

    def stop(self):
        return stop_proc(self.proc)


def wait(cond, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {cond}")


def pem(certs, name):
    return ssl.DER_cert_to_PEM_cert(ssl.PEM_cert_to_DER_cert((certs / f"{name}.pem").read_text()))


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = make_certs(tmp_path_factory.mktemp("certs"))
    issue(d, "srv2", "localhost")
    issue(d, "srv3", "localhost", ec=True)
    return d


def test_session_tickets_resume_on_either_worker(tmp_path, certs):
    p = TlsProxy(tmp_path, certs).start()
    try:
        # Both workers accept from one socket, so which one takes a given
        # connection is the kernel's race: on a loaded machine one worker
        # can win dozens in a row. Connect until both have answered (each
        # connection resuming the ticket the previous one got), bounded.
        sess, pids, resumed = None, set(), []
        deadline = time.monotonic() + 30
        while len(resumed) < 40 or (len(pids) < 2 and len(resumed) < 2000
                                    and time.monotonic() < deadline):
            with p.connect(sess) as t:
                h = p.get(t)
                pids.add(h["x-pid"])
                resumed.append(t.session_reused)
                assert h["x-resumed"] == str(t.session_reused)
                sess = t.session
        assert len(pids) == 2, (pids, len(resumed))   # both workers answered
        assert resumed == [False] + [True] * (len(resumed) - 1), resumed
    finally:
        assert p.stop() == 0


def test_sighup_serves_the_new_certificate_and_open_connections_go_on(tmp_path, certs):
    p = TlsProxy(tmp_path, certs).start()
    try:
        assert p.serial() == pem(certs, "srv")
        old = p.connect()
        p.get(old)
        p.put_cert("srv2")
        os.kill(p.proc.pid, signal.SIGHUP)
        wait(lambda: "reloaded" in p.log_text())
        assert p.serial() == pem(certs, "srv2")
        p.get(old)          # the connection made before the reload is still answered
        old.close()
        # A bad new pair (a key that is not the certificate's): the old
        # certificate stays, and the log says why.
        shutil.copy(certs / "srv3.pem", tmp_path / "live.pem")
        os.kill(p.proc.pid, signal.SIGHUP)
        wait(lambda: "reload failed" in p.log_text())
        assert "the key does not match the certificate" in p.log_text()
        assert p.serial() == pem(certs, "srv2")
    finally:
        assert p.stop() == 0


def test_watch_certs_reloads_when_the_files_change(tmp_path, certs):
    p = TlsProxy(tmp_path, certs, watch_certs="true").start()
    try:
        assert p.serial() == pem(certs, "srv")
        p.put_cert("srv3")
        wait(lambda: p.log_text().count("reloaded") == 1)
        assert "certificate files of a TLS listener changed" in p.log_text()
        assert p.serial() == pem(certs, "srv3")
        # A broken file: logged, not retried every second, the old one kept.
        (tmp_path / "live.key").write_text("not a key\n")
        wait(lambda: "reload failed" in p.log_text())
        time.sleep(2.5)
        assert p.log_text().count("reload failed") == 1
        assert p.serial() == pem(certs, "srv3")
        # Fixed: served.
        p.put_cert("srv2")
        wait(lambda: p.log_text().count("reloaded") == 2)
        assert p.serial() == pem(certs, "srv2")
    finally:
        assert p.stop() == 0


def reloads_under_wrk(tmp_path, certs, n):
    p = TlsProxy(tmp_path, certs).start()
    wrk = None
    try:
        wrk = Wrk(f"https://127.0.0.1:{p.port}/", 8 + 4 * n, 20, threads=1)
        time.sleep(1.0)
        for i in range(n):
            p.put_cert(("srv2", "srv")[i % 2])
            os.kill(p.proc.pid, signal.SIGHUP)
            wait(lambda: p.log_text().count("reloaded") == i + 1, 30)
            assert p.serial() == pem(certs, ("srv2", "srv")[i % 2])
        time.sleep(0.5)
        # (Stopping wrk cuts the handshakes it has under way: not counted.)
        log = p.log_text()
        r, wrk = wrk.stop(), None
    finally:
        if wrk is not None:
            wrk.stop()
        code = p.stop()
    assert code == 0
    assert r["requests"] > 100 and r["errors"] == 0, r["text"]
    assert "TLS client" not in log             # no handshake failed


def test_reloads_under_wrk_over_https(tmp_path, certs):
    reloads_under_wrk(tmp_path, certs, 3)


@pytest.mark.slow
def test_20_reloads_under_wrk_over_https(tmp_path, certs):
    reloads_under_wrk(tmp_path, certs, 20)
