"""Server, configuration and CLI: YAML validation, -t, -d, workers sharing
the master's listening sockets, SIGTERM (graceful) and SIGINT, the demo
command. The master's other duties: test_ops_process.py."""

import os
import signal
import socket
import threading
import time

import httpx
import pytest

from proxy_harness import OriginThread, free_port, spawn, stop_proc, wait_port

APP = """
import os
from sluiceway.proxy import HttpPeer, ProxyHttp

class App(ProxyHttp):
    def upstream_peer(self, session, ctx):
        return HttpPeer(("127.0.0.1", int(os.environ["ORIGIN_PORT"])))

    def upstream_request_filter(self, session, req, ctx):
        req.insert_header("x-worker", str(os.getpid()))
"""


@pytest.fixture()
def appdir(tmp_path):
    (tmp_path / "testapp.py").write_text(APP)
    return tmp_path


@pytest.fixture(scope="module")
def origin():
    with OriginThread(1) as o:
        yield o


def test_cli_check_config(tmp_path, appdir):
    good = tmp_path / "good.yaml"
    good.write_text("version: 1\nthreads: 1\nupstream_keepalive_pool_size: 16\n")
    env = {"PYTHONPATH": str(appdir)}   # -t imports the app too
    p = spawn(["-m", "sluiceway.cli", "run", "testapp:App", "-c", str(good), "-t"], env)
    out, err = p.communicate(timeout=20)
    assert p.returncode == 0 and b"is valid" in out, err
    bad = tmp_path / "bad.yaml"
    bad.write_text("threads: 0\n")
    p = spawn(["-m", "sluiceway.cli", "run", "testapp:App", "-c", str(bad), "-t"], env)
    out, err = p.communicate(timeout=20)
    assert p.returncode == 2 and b"bad.yaml:1: threads must be at least 1" in err


def _start(appdir, origin, conf_text="", extra=()):
    port = free_port()
    conf = appdir / "conf.yaml"
    conf.write_text(conf_text or "version: 1\n")
    env = {"ORIGIN_PORT": str(origin.ports[0]), "PYTHONPATH": str(appdir)}
    p = spawn(["-m", "sluiceway.cli", "run", "testapp:App", "-c", str(conf),
               "-l", f"127.0.0.1:{port}", *extra], env)
    p.env_pythonpath = str(appdir)
    wait_port(port, p)
    return p, f"http://127.0.0.1:{port}"


def test_cli_run_and_sigterm_graceful(appdir, origin):
    p, url = _start(appdir, origin, "version: 1\ngrace_period_seconds: 5\n")
    try:
        assert httpx.get(url + "/").content == b"hello"
        # An in-flight slow request finishes after SIGTERM.
        result = {}

        def slow():
            result["r"] = httpx.get(url + "/slow?d=1", timeout=10)
        t = threading.Thread(target=slow)
        t.start()
        time.sleep(0.3)
        p.send_signal(signal.SIGTERM)
        t.join(10)
        assert result["r"].status_code == 200 and result["r"].content == b"slow"
        assert p.wait(10) == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/")
    finally:
        stop_proc(p, signal.SIGKILL)


def test_sigint_fast_exit(appdir, origin):
    p, url = _start(appdir, origin)
    t0 = time.monotonic()
    stop_proc(p, signal.SIGINT)
    assert time.monotonic() - t0 < 3


def test_two_workers_share_the_port(appdir, origin, tmp_path):
    uds = str(tmp_path / "sw.sock")
    p, url = _start(appdir, origin, "version: 1\nthreads: 2\n", extra=("-l", "unix:" + uds))
    try:
        with httpx.Client(transport=httpx.HTTPTransport(uds=uds)) as c:
            for _ in range(5):
                assert c.get("http://proxy/").content == b"hello"
        # both workers accept from the master's socket
        pids = set()
        deadline = time.monotonic() + 10
        while len(pids) < 2 and time.monotonic() < deadline:
            with httpx.Client() as c:  # new connection each time
                got = c.get(url + "/headers").json()
            pids.update(v for n, v in got["headers"] if n == "x-worker")
        assert len(pids) == 2
    finally:
        assert stop_proc(p) == 0


def test_daemon_writes_and_removes_pid_file(appdir, origin, tmp_path):
    pid_file = tmp_path / "sw.pid"
    port = free_port()
    conf = appdir / "conf.yaml"
    conf.write_text(f"version: 1\npid_file: {pid_file}\n")
    env = {"ORIGIN_PORT": str(origin.ports[0]), "PYTHONPATH": str(appdir)}
    p = spawn(["-m", "sluiceway.cli", "run", "testapp:App", "-c", str(conf), "-d",
               "-l", f"127.0.0.1:{port}"], env)
    assert p.wait(10) == 0  # the foreground process returns at once
    wait_port(port)
    deadline = time.monotonic() + 5
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = int(pid_file.read_text())
    assert httpx.get(f"http://127.0.0.1:{port}/").content == b"hello"
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_file.exists()


def test_demo_command_prints_url_and_serves():
    port = free_port()
    p = spawn(["-m", "sluiceway.cli", "demo", "-p", str(port)])
    try:
        line = p.stdout.readline().decode()
        assert f"http://127.0.0.1:{port}/" in line
        wait_port(port, p)
        r = httpx.get(f"http://127.0.0.1:{port}/")
        assert r.status_code == 200 and r.headers["x-proxied-by"] == "sluiceway"
        assert b"demo origin" in r.content
        assert httpx.get(f"http://127.0.0.1:{port}/api/time").status_code == 401
        assert b"time" in httpx.get(f"http://127.0.0.1:{port}/api/time",
                                    headers={"x-api-key": "demo"}).content
    finally:
        assert stop_proc(p, signal.SIGINT) == 0


def test_error_log_file_names_upstream_and_cause(appdir, tmp_path):
    log = tmp_path / "err.log"
    dead = free_port()
    port = free_port()
    conf = appdir / "conf.yaml"
    conf.write_text(f"version: 1\nerror_log: {log}\n")
    p = spawn(["-m", "sluiceway.cli", "run", "testapp:App", "-c", str(conf),
               "-l", f"127.0.0.1:{port}"], {"ORIGIN_PORT": str(dead), "PYTHONPATH": str(appdir)})
    try:
        wait_port(port, p)
        assert httpx.get(f"http://127.0.0.1:{port}/x").status_code == 502
    finally:
        assert stop_proc(p) == 0
    text = log.read_text()
    assert f"127.0.0.1:{dead}" in text and "failed" in text and "GET /x" in text


def test_graceful_stop_closes_idle_keepalive_connections_at_once(origin):
    import asyncio
    from proxy_harness import Harness, SimpleApp
    app = SimpleApp(origin.ports[0])
    with Harness(app, grace_period_seconds=5) as h:
        s = socket.create_connection(("127.0.0.1", h.port), timeout=5)
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        buf = b""
        while not buf.endswith(b"hello"):
            buf += s.recv(65536)
        t0 = time.monotonic()
        fut = asyncio.run_coroutine_threadsafe(h.svc.stop(), h.loop)
        assert s.recv(65536) == b""      # closed without waiting for the grace period
        assert time.monotonic() - t0 < 1
        fut.result(10)
        s.close()
