"""Floods: repeated log lines are rate-limited to a few a second plus one
summary line with a count; after a slowloris run the worker gives the
memory back."""

import logging
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from proxy_harness import Harness, OriginThread, SimpleApp, free_port, wait_port


def _lines(caplog, text):
    return [r for r in caplog.records if text in r.getMessage()]


def test_refused_connections_log_a_few_lines_and_a_count(caplog):
    with OriginThread(1) as o:
        with Harness(SimpleApp(o.ports[0]), max_connections=1) as h:
            keep = socket.create_connection(("127.0.0.1", h.port))
            keep.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            keep.recv(65536)
            with caplog.at_level(logging.WARNING, logger="sluiceway.error"):
                t0 = time.monotonic()
                for _ in range(300):
                    s = socket.create_connection(("127.0.0.1", h.port))
                    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                    assert s.recv(65536).startswith(b"HTTP/1.1 503")
                    s.close()
                took = time.monotonic() - t0
                time.sleep(2.5)  # the summary comes with the timer (a tick a second)
            keep.close()
    refused = _lines(caplog, "connection refused")
    summaries = [r for r in refused if "more lines like this" in r.getMessage()]
    assert len(refused) <= 5 * (took + 2) + 3
    assert summaries and "(max_connections)" in summaries[0].getMessage()
    # every refusal is accounted for: written or counted
    counted = sum(int(r.getMessage().split()[1]) for r in summaries)
    assert counted + len(refused) - len(summaries) == 300


def test_head_timeouts_log_a_few_lines_and_a_count(caplog):
    with OriginThread(1) as o:
        with Harness(SimpleApp(o.ports[0]), downstream_header_timeout_seconds=0.3) as h:
            with caplog.at_level(logging.INFO, logger="sluiceway.error"):
                socks = []
                for _ in range(200):
                    s = socket.create_connection(("127.0.0.1", h.port))
                    s.sendall(b"GET / HTTP/1.1\r\nHost:")
                    socks.append(s)
                time.sleep(2.5)
                for s in socks:
                    assert s.recv(65536).startswith(b"HTTP/1.1 408")
                    s.close()
    lines = _lines(caplog, "head_timeout")
    assert 1 <= len(lines) <= 12
    assert any("more lines like this" in r.getMessage() for r in lines)


APP = """
import os
from sluiceway.proxy import HttpPeer, ProxyHttp

class App(ProxyHttp):
    def upstream_peer(self, session, ctx):
        return HttpPeer(("127.0.0.1", int(os.environ["ORIGIN_PORT"])))
"""


def _rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024


@pytest.mark.slow
def test_memory_returns_after_a_slowloris_run(tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    n = min(7000, hard // 2 - 200)
    if n < 2000:
        pytest.skip(f"open-files limit {hard} too low for the run")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    (tmp_path / "testapp.py").write_text(APP)
    conf = tmp_path / "conf.yaml"
    conf.write_text("version: 1\ndownstream_header_timeout_seconds: 3\n")
    from conftest import subprocess_env
    with OriginThread(1) as o:
        port = free_port()
        env = subprocess_env(ORIGIN_PORT=str(o.ports[0]))
        env["PYTHONPATH"] = f"{tmp_path}:{env['PYTHONPATH']}"
        p = subprocess.Popen([sys.executable, "-m", "sluiceway.cli", "run", "testapp:App",
                              "-c", str(conf), "-l", f"127.0.0.1:{port}"], env=env,
                             stderr=subprocess.PIPE)
        try:
            wait_port(port, p)
            for _ in range(200):
                urllib.request.urlopen(f"http://127.0.0.1:{port}/").read()
            # the master forks the one worker that serves: measure that one
            with open(f"/proc/{p.pid}/task/{p.pid}/children") as f:
                worker, = map(int, f.read().split())
            base = _rss_mb(worker)
            socks = []
            for _ in range(n):
                s = socket.create_connection(("127.0.0.1", port))
                s.sendall(b"GET /" + b"a" * 200 + b" HTTP/1.1\r\nHost: x\r\nX-Junk: " + b"j" * 300)
                socks.append(s)
            time.sleep(1)
            during = _rss_mb(worker)
            time.sleep(4)  # the head timeout closes them all
            for s in socks:
                s.close()
            time.sleep(2.5)
            after = _rss_mb(worker)
        finally:
            p.send_signal(signal.SIGTERM)
            p.wait(15)
        log = p.stderr.read().decode()
    print(f"RSS: {base:.1f} MB before, {during:.1f} MB with {n} slow clients, {after:.1f} MB after")
    assert during - base > 10
    # most of what the slow connections used is given back
    assert after - base < (during - base) / 2
    assert log.count("\n") < 40
