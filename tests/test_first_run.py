"""A first run that explains itself: start-up lines, --version, bind errors,
-d failures, -t checks, log destinations, listen for Python-API programs,
from_args with a program's own arguments, hooks returning the wrong type."""

import logging
import os
import signal
import socket
import sys
import time

import httpx
import pytest

from proxy_harness import Harness, OriginThread, free_port, spawn, stop_proc, wait_port
from sluiceway import HttpPeer, ProxyHttp, Server, ServerConf, http_proxy_service

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

APP = """
import os
from sluiceway import HttpPeer, ProxyHttp

class App(ProxyHttp):
    def upstream_peer(self, session, ctx):
        return HttpPeer(("127.0.0.1", int(os.environ.get("ORIGIN_PORT", "9"))))
"""

PROGRAM = """
import argparse, os
from sluiceway import HttpPeer, ProxyHttp, Server, http_proxy_service

class App(ProxyHttp):
    def upstream_peer(self, session, ctx):
        return HttpPeer(("127.0.0.1", int(os.environ["ORIGIN_PORT"])))

ap = argparse.ArgumentParser()
ap.add_argument("--greeting", default="hi")
server = Server.from_args(parser=ap)
print("greeting:", server.args.greeting, flush=True)
svc = http_proxy_service(server.configuration, App())
svc.add_tcp("127.0.0.1:1")          # replaced by listen from the YAML or -l
server.add_service(svc)
server.run_forever()
"""


@pytest.fixture()
def appdir(tmp_path):
    (tmp_path / "myapp.py").write_text(APP)
    (tmp_path / "prog.py").write_text(PROGRAM)
    return tmp_path


@pytest.fixture(scope="module")
def origin():
    with OriginThread(1) as o:
        yield o


def run_cli(args, appdir, timeout=30, **env):
    p = spawn(["-m", "sluiceway", *args], {"PYTHONPATH": str(appdir), **env}, cwd=str(appdir))
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out.decode(), err.decode()


def held_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return s, s.getsockname()[1]


# --------------------------------------------------------------- --version --

def test_version_names_sluiceway_llhttp_and_python(appdir):
    code, out, _ = run_cli(["--version"], appdir)
    import sluiceway

    assert code == 0
    assert f"sluiceway {sluiceway.__version__}" in out and "llhttp 9.3.0" in out
    assert f"{sys.version_info[0]}.{sys.version_info[1]}" in out and "GIL" in out


# ---------------------------------------------------------------------- -t --

@pytest.mark.parametrize("text, expect", [
    ("threads: 1\nthreads: 2\n", "c.yaml:2: key 'threads' is given twice (first on line 1)"),
    ('listen: ["nonsense"]\n', "c.yaml:1: listen address 'nonsense' must be 'host:port'"),
    ("error_log: /nonexistent-dir/x/err.log\n", "the folder /nonexistent-dir/x does not exist"),
    ("access_log: true\naccess_log_file: /nonexistent-dir/a.log\n", "access_log_file"),
    ("daemon: true\npid_file: /nonexistent-dir/sw.pid\n", "pid_file /nonexistent-dir/sw.pid"),
    ('listen: ["192.0.2.77:8080"]\n', "no network interface of this machine has that address"),
])
def test_check_refuses_what_a_start_would_refuse(appdir, text, expect):
    (appdir / "c.yaml").write_text(text)
    code, out, err = run_cli(["run", "myapp:App", "-c", "c.yaml", "-t"], appdir)
    assert code == 2 and expect in err, err
    assert "is valid" not in out


@pytest.mark.parametrize("spec, expect", [
    ("nosuch:App", "cannot import module 'nosuch'"),
    ("myapp:Nope", "module 'myapp' has no attribute 'Nope' (it has: App)"),
    ("myapp", "APP must be 'module:Name'"),
    ("os:path", "not a ProxyHttp subclass"),
])
def test_check_imports_the_app_and_finds_its_class(appdir, spec, expect):
    code, out, err = run_cli(["run", spec, "-t"], appdir)
    assert code == 2 and expect in err, err


def test_check_accepts_a_good_setup_and_notes_a_port_in_use(appdir):
    s, port = held_port()
    try:
        (appdir / "c.yaml").write_text(f'listen: ["127.0.0.1:{port}"]\nerror_log: {appdir}/err.log\n')
        code, out, err = run_cli(["run", "myapp:App", "-c", "c.yaml", "-t"], appdir)
    finally:
        s.close()
    assert code == 0, err
    assert "is valid" in out and f"127.0.0.1:{port}" in out and "in use right now" in out


def test_bare_port_for_listen_says_what_to_write(appdir):
    code, out, err = run_cli(["run", "myapp:App", "-l", "8085"], appdir)
    assert code == 2 and "Traceback" not in err
    assert "'127.0.0.1:8085'" in err and "'0.0.0.0:8085'" in err


def test_start_prints_addresses_configuration_workers_and_logs(appdir, origin):
    port = free_port()
    (appdir / "c.yaml").write_text("threads: 1\n")
    p = spawn(["-m", "sluiceway", "run", "myapp:App", "-c", "c.yaml", "-l", f"127.0.0.1:{port}"],
              {"PYTHONPATH": str(appdir), "ORIGIN_PORT": str(origin.ports[0])}, cwd=str(appdir))
    try:
        wait_port(port, p)
        assert httpx.get(f"http://127.0.0.1:{port}/").content == b"hello"
    finally:
        assert stop_proc(p) == 0
    err = p.stderr.read().decode()
    assert f"listening on http://127.0.0.1:{port}" in err
    assert f"configuration: {appdir}/c.yaml" in err
    assert "workers: 1 process" in err and f"pid {p.pid}" in err
    assert "pid file: (none" in err and "error log: standard error" in err


def test_port_in_use_names_the_address_and_the_flag(appdir):
    s, port = held_port()
    try:
        code, out, err = run_cli(["run", "myapp:App", "-l", f"127.0.0.1:{port}"], appdir)
    finally:
        s.close()
    assert code == 1 and "Traceback" not in err
    assert f"cannot listen on 127.0.0.1:{port}: the address is already in use" in err and "-l" in err


def test_daemon_on_a_taken_port_fails_loudly_and_leaves_no_pid_file(appdir):
    s, port = held_port()
    pid_file = appdir / "sw.pid"
    (appdir / "c.yaml").write_text(f"pid_file: {pid_file}\nerror_log: {appdir}/err.log\n")
    try:
        code, out, err = run_cli(["run", "myapp:App", "-d", "-c", "c.yaml", "-l", f"127.0.0.1:{port}"],
                                 appdir)
    finally:
        s.close()
    assert code == 1 and f"cannot listen on 127.0.0.1:{port}" in err
    assert not pid_file.exists()


def test_daemon_reports_where_it_listens_and_cleans_up(appdir, origin):
    port = free_port()
    pid_file = appdir / "sw.pid"
    (appdir / "c.yaml").write_text(f"pid_file: {pid_file}\n")
    code, out, err = run_cli(["run", "myapp:App", "-d", "-c", "c.yaml", "-l", f"127.0.0.1:{port}"],
                             appdir, ORIGIN_PORT=str(origin.ports[0]))
    assert code == 0, err
    assert f"listening on http://127.0.0.1:{port}" in err and f"pid file: {pid_file}" in err
    assert "without error_log" in err          # the warning: its log goes nowhere
    pid = int(pid_file.read_text())
    try:
        assert httpx.get(f"http://127.0.0.1:{port}/").content == b"hello"
    finally:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_file.exists()


def test_demo_on_a_taken_port_says_what_to_do(appdir):
    s, port = held_port()
    try:
        code, out, err = run_cli(["demo", "-p", str(port)], appdir)
    finally:
        s.close()
    assert code == 1 and "Traceback" not in err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "-p 0" in err


# ------------------------------------------------------------------- logs --

def test_access_and_error_logs_go_to_separate_files_with_real_durations(appdir, origin):
    port = free_port()
    err_log, acc_log = appdir / "err.log", appdir / "access.log"
    (appdir / "c.yaml").write_text(f"error_log: {err_log}\naccess_log: true\naccess_log_file: {acc_log}\n")
    dead = free_port()
    p = spawn(["-m", "sluiceway", "run", "myapp:App", "-c", "c.yaml", "-l", f"127.0.0.1:{port}"],
              {"PYTHONPATH": str(appdir), "ORIGIN_PORT": str(dead)}, cwd=str(appdir))
    try:
        wait_port(port, p)
        assert httpx.get(f"http://127.0.0.1:{port}/x").status_code == 502
    finally:
        assert stop_proc(p) == 0
    access = acc_log.read_text()
    errors = err_log.read_text()
    assert '"GET /x HTTP/1.1" 502' in access and "failed" not in access
    assert "GET /x" in errors and '"GET /x HTTP/1.1"' not in errors
    ms = float(access.split('" 502 ')[1].split()[1].rstrip("ms"))
    assert ms > 0.0     # answered by the proxy itself: its real duration, not 0.000ms


def test_a_proxy_written_answer_logs_its_real_duration(caplog):
    class Answer(ProxyHttp):
        def request_filter(self, session, ctx):
            session.respond(204)
            return True

        def upstream_peer(self, session, ctx):
            raise AssertionError("not reached")

    with caplog.at_level(logging.INFO, logger="sluiceway.access"):
        with Harness(Answer(), access_log=True) as h:
            assert httpx.get(h.url + "/a").status_code == 204
    line = next(r.getMessage() for r in caplog.records if r.name == "sluiceway.access")
    assert " 0.000ms" not in line and line.split()[6].endswith("ms")


@pytest.mark.parametrize("value, shown", [(None, "None"), ("127.0.0.1:9", "'127.0.0.1:9'"),
                                          (("127.0.0.1", 9), "('127.0.0.1', 9)")])
def test_upstream_peer_returning_the_wrong_type_is_logged_with_the_hook_and_value(caplog, value, shown):
    class Wrong(ProxyHttp):
        def upstream_peer(self, session, ctx):
            return value

    with caplog.at_level(logging.ERROR, logger="sluiceway.error"):
        with Harness(Wrong()) as h:
            assert httpx.get(h.url + "/p").status_code == 500
    msgs = [r.getMessage() for r in caplog.records if r.name == "sluiceway.error"]
    assert any(f"Wrong.upstream_peer returned {shown}" in m and "must return an HttpPeer" in m
               and "GET /p" in m for m in msgs), msgs


def test_fail_to_proxy_returning_the_wrong_type_is_logged(caplog):
    class Odd(ProxyHttp):
        def upstream_peer(self, session, ctx):
            return HttpPeer(("127.0.0.1", free_port()))

        def fail_to_proxy(self, session, error, ctx):
            return "502"

    with caplog.at_level(logging.ERROR, logger="sluiceway.error"):
        with Harness(Odd()) as h:
            assert httpx.get(h.url + "/").status_code == 502
    assert any("Odd.fail_to_proxy returned '502'" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------ Python-API programs --

def test_program_honours_listen_from_yaml_and_adds_its_own_arguments(appdir, origin):
    port = free_port()
    (appdir / "c.yaml").write_text(f'listen: ["127.0.0.1:{port}"]\n')
    p = spawn(["prog.py", "-c", "c.yaml", "--greeting", "hello"],
              {"PYTHONPATH": str(appdir), "ORIGIN_PORT": str(origin.ports[0])}, cwd=str(appdir))
    try:
        wait_port(port, p)
        assert httpx.get(f"http://127.0.0.1:{port}/").content == b"hello"
    finally:
        assert stop_proc(p) == 0
    assert b"greeting: hello" in p.stdout.read()
    assert f"listening on http://127.0.0.1:{port}".encode() in p.stderr.read()


def test_program_check_flag_checks_its_services(appdir):
    p = spawn(["prog.py", "-t", "-l", "127.0.0.1:0"], {"PYTHONPATH": str(appdir), "ORIGIN_PORT": "9"},
              cwd=str(appdir))
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0 and b"is valid; would listen on 127.0.0.1:0" in out, err


def test_listen_with_two_proxy_services_is_a_clear_error():
    class A(ProxyHttp):
        def upstream_peer(self, session, ctx):
            return HttpPeer(("127.0.0.1", 9))

    server = Server(ServerConf(listen=["127.0.0.1:0"]))
    for _ in range(2):
        svc = http_proxy_service(server.configuration, A())
        svc.add_tcp("127.0.0.1:0")
        server.add_service(svc)
    with pytest.raises(SystemExit) as info:
        server.run_forever()
    assert info.value.code == 2


# ----------------------------------------------------------- free-threaded --

def test_free_threaded_python_is_refused_with_a_clear_message():
    from sluiceway._compiled import check_interpreter

    check_interpreter(lambda name: None)     # a regular build passes
    with pytest.raises(ImportError, match=r"free-threaded CPython \(3.13t\).*python3.13, not python3.13t"):
        check_interpreter(lambda name: 1 if name == "Py_GIL_DISABLED" else None, version="3.13")


# ----------------------------------------------- generated configuration docs --

@pytest.mark.parametrize("hook", ["response_body_filter", "request_body_filter", "fail_to_connect"])
def test_other_hooks_returning_the_wrong_type_are_logged(caplog, hook):
    class Odd(ProxyHttp):
        def __init__(self, port):
            self.port = port

        def upstream_peer(self, session, ctx):
            return HttpPeer(("127.0.0.1", self.port))

    if hook == "response_body_filter":
        Odd.response_body_filter = lambda self, session, body, end, ctx: 42
    elif hook == "request_body_filter":
        Odd.request_body_filter = lambda self, session, body, end, ctx: 42
    else:
        Odd.fail_to_connect = lambda self, session, peer, ctx, error: None
    with caplog.at_level(logging.ERROR, logger="sluiceway.error"):
        with Harness(Odd(None if hook != "fail_to_connect" else free_port())) as h:
            try:
                status = httpx.post(h.url + "/echo", content=b"body").status_code
            except httpx.HTTPError:
                status = None     # the response had started: the connection is closed
    assert hook != "fail_to_connect" or status == 502
    assert any(f"Odd.{hook} returned " in r.getMessage() for r in caplog.records), \
        [r.getMessage() for r in caplog.records]


def test_configuration_doc_program_runs_as_written(tmp_path):
    import re

    with open(os.path.join(ROOT, "docs", "configuration.md")) as f:
        (block,) = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    (tmp_path / "prog_doc.py").write_text(block)
    p = spawn(["prog_doc.py", "--region", "us", "-t", "-l", "127.0.0.1:0"], cwd=str(tmp_path))
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert b"region: us" in out and b"is valid; would listen on 127.0.0.1:0" in out
