"""Zero-downtime operations measured under load (slow): upgrades and
rollbacks, reloads, a worker killed with -9, an origin killed with -9, and an
upgrade while a large download and a WebSocket are open. wrk and curl are the
clients, nginx the origins; each test prints one line of figures (seen with
-s), which docs/operations.md quotes.

SLUICEWAY_OPS_ROUNDS sets how many upgrades (each followed by a rollback)
and how many reloads: 2 and 3 by default (CI: about two minutes in all); 10
for the full runs docs/operations.md reports."""

import os
import re
import signal
import socket
import subprocess
import threading
import time

import pytest

from ops_load import Nginx, Proxy, Wrk, fresh_versions, open_connections
from proxy_harness import OriginThread
from raw_peers import read_head

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not all(os.path.exists(p) for p in ("/usr/bin/wrk", "/usr/sbin/nginx",
                                                           "/usr/bin/curl")),
                       reason="needs wrk, nginx and curl"),
]

CONNECTIONS = 1000   # wrk's connections (the VM's 2 cores and 20,000 descriptors allow it)
ROUNDS = int(os.environ.get("SLUICEWAY_OPS_ROUNDS", "0"))
UPGRADES = ROUNDS or 2
RELOADS = ROUNDS or 3


def _figures(name, **kw):
    print(f"\n{name}: " + ", ".join(f"{k}={v}" for k, v in kw.items()), flush=True)


def _errors(r):
    return {k: r[k] for k in ("connect", "read", "write", "timeout", "non2xx")}


def test_upgrades_and_rollbacks_under_load(tmp_path):
    """UPGRADES upgrades (v1 -> v2), each followed by a rollback (v2 -> v1),
    while wrk keeps 1,000 connections busy: no socket error, no non-2xx
    answer, every new connection after a handover served by the new
    process, every old master gone within its grace period."""
    origin = Nginx(tmp_path, "o1").start()
    proxy = Proxy(tmp_path / "proxy", [origin.port], grace=5).start("v1")
    took = []
    try:
        wrk = Wrk(proxy.url + "/", 60 + 20 * UPGRADES, CONNECTIONS)
        time.sleep(3)
        for version in ["v2", "v1"] * UPGRADES:     # an upgrade, then a rollback
            took.append(proxy.upgrade(version))
            assert set(fresh_versions(proxy.url, 10)) == {version}
            time.sleep(2)
        r = wrk.stop()
        codes = [m.wait(30) for m in proxy.retired]
    finally:
        proxy.stop()
        origin.stop()
    _figures("upgrades under load", connections=CONNECTIONS, requests=r["requests"],
             rps=round(r["rps"]), handover_s=[round(t, 2) for t in took],
             latency_avg=r["latency_avg"], latency_max=r["latency_max"], **_errors(r))
    assert r["errors"] == 0, r["text"]
    assert codes == [0] * (2 * UPGRADES)


def test_reloads_under_load(tmp_path):
    """RELOADS SIGHUPs while wrk keeps 1,000 connections busy: no error, and
    after each reload every new connection gets the new app's header."""
    origin = Nginx(tmp_path, "o1").start()
    proxy = Proxy(tmp_path / "proxy", [origin.port], grace=5).start("v1")
    took = []
    try:
        master = proxy.master.pid
        wrk = Wrk(proxy.url + "/", 60 + 10 * RELOADS, CONNECTIONS)
        time.sleep(3)
        for i in range(2, 2 + RELOADS):
            took.append(proxy.reload(f"v{i}"))
            assert fresh_versions(proxy.url, 20) == [f"v{i}"] * 20
            time.sleep(2)
        r = wrk.stop()
        assert proxy.master.pid == master and proxy.master.poll() is None
        proxy.wait_workers(master, 2)
    finally:
        proxy.stop()
        origin.stop()
    _figures("reloads under load", connections=CONNECTIONS, requests=r["requests"],
             rps=round(r["rps"]), reload_s=[round(t, 2) for t in took],
             latency_avg=r["latency_avg"], latency_max=r["latency_max"], **_errors(r))
    assert r["errors"] == 0, r["text"]


def test_a_worker_killed_under_load_is_replaced_within_a_second(tmp_path):
    """kill -9 of one of two workers under load: the master has another one
    accepting in under a second; only requests on the killed worker's open
    connections may fail (at most one per connection)."""
    origin = Nginx(tmp_path, "o1").start()
    proxy = Proxy(tmp_path / "proxy", [origin.port], grace=5).start("v1")
    try:
        wrk = Wrk(proxy.url + "/", 8, CONNECTIONS)
        time.sleep(3)
        victim, other = proxy.workers()
        held = open_connections(victim, proxy.port)
        t0 = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        proxy.wait_log(f"accepts (in place of {victim})", timeout=10)
        replaced = time.monotonic() - t0
        r = wrk.result()
        assert other in proxy.workers()
    finally:
        proxy.stop()
        origin.stop()
    _figures("worker killed under load", connections=CONNECTIONS, requests=r["requests"],
             its_connections=held, replaced_s=round(replaced, 3), failed=r["errors"],
             **_errors(r))
    assert replaced < 1.0
    assert r["errors"] <= held, r["text"]
    assert r["non2xx"] == 0


def test_an_origin_killed_under_load_costs_no_request_and_rejoins(tmp_path):
    """One of three nginx origins killed with SIGKILL under a GET load (the
    proxy retries on another origin; passive health leaves the dead one out;
    active TCP checks every second, three failures to turn unhealthy):
    no client error. Started again, it gets requests within a health-check
    interval."""
    origins = [Nginx(tmp_path, f"o{i}", log=(i == 2)).start() for i in (1, 2, 3)]
    proxy = Proxy(tmp_path / "proxy", [o.port for o in origins], grace=5, program=True,
                  env={"HC_INTERVAL": "1", "MAX_FAILS": "1", "FAIL_TIMEOUT": "10"}).start("v1")
    victim = origins[1]
    try:
        wrk = Wrk(proxy.url + "/", 14, CONNECTIONS)
        time.sleep(3)
        victim.kill()
        proxy.wait_log(f"backend 127.0.0.1:{victim.port} is unhealthy", timeout=10, count=2)
        time.sleep(1.0)
        restarted = time.time()
        victim.start()
        deadline = time.monotonic() + 10
        while not victim.hits_after(restarted) and time.monotonic() < deadline:
            time.sleep(0.02)
        hits = victim.hits_after(restarted)
        rejoined = (min(hits) - restarted) if hits else None
        r = wrk.result()
    finally:
        proxy.stop()
        for o in origins:
            o.stop()
    retried = proxy.log_text().count("left out of selection")
    _figures("origin killed under load", connections=CONNECTIONS, requests=r["requests"],
             rejoined_s=None if rejoined is None else round(rejoined, 2),
             passive_exclusions=retried, **_errors(r))
    assert r["errors"] == 0, r["text"]
    assert rejoined is not None and rejoined < 1.5


def _ws_handshake(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
              b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    head, rest = read_head(s)
    assert head.startswith(b"HTTP/1.1 101"), head
    pid = int(re.search(rb"(?i)x-pid: (\d+)", head).group(1))
    return s, pid, rest


def _echo(s, msg):
    s.sendall(msg)
    got = b""
    while len(got) < len(msg):
        chunk = s.recv(65536)
        assert chunk, "the WebSocket was closed"
        got += chunk
    return got


def test_an_upgrade_leaves_a_long_download_and_a_websocket_on_the_old_process(tmp_path):
    """A 1 GiB download (curl, rate-limited to last about 8 s) and a
    WebSocket open through the proxy; an upgrade: new connections go to the
    new process, both long ones finish on the old one, which then exits."""
    size = 1 << 30
    with open(tmp_path / "big.bin", "wb") as f:
        f.truncate(size)                              # sparse: reads as zeros
    origin = Nginx(tmp_path, "o1").start()
    with OriginThread(1) as ws_origin:
        proxy = Proxy(tmp_path / "proxy", [origin.port], grace=30,
                      ws_port=ws_origin.ports[0]).start("v1")
        try:
            old_workers = set(proxy.workers())
            headers = tmp_path / "dl.headers"
            dl = subprocess.Popen(["curl", "-s", "-o", "/dev/null", "-D", str(headers),
                                   "--limit-rate", "128M", "-w", "%{size_download} %{http_code}",
                                   proxy.url + "/big"],
                                  stdout=subprocess.PIPE, text=True)
            ws, ws_pid, _ = _ws_handshake(proxy.port)
            assert ws_pid in old_workers
            assert _echo(ws, b"before") == b"before"
            time.sleep(1.5)
            old = proxy.master
            took = proxy.upgrade("v2")
            assert set(fresh_versions(proxy.url, 10)) == {"v2"}
            # both still on the old workers, which still run
            for i in range(6):
                assert _echo(ws, b"during %d" % i) == b"during %d" % i
                time.sleep(0.5)
            assert old.poll() is None and ws_pid in old_workers
            ws.close()
            out, _ = dl.communicate(timeout=60)
            got, status = out.split()
            dl_pid = int(re.search(r"(?i)x-pid: (\d+)", headers.read_text()).group(1))
            t_done = time.monotonic()
            code = old.wait(30)
            old_exit = time.monotonic() - t_done
        finally:
            proxy.stop()
            origin.stop()
    _figures("upgrade with a download and a WebSocket open", download_bytes=got,
             handover_s=round(took, 2), old_master_exited_s_after_download=round(old_exit, 2))
    assert (int(got), status) == (size, "200")
    assert dl_pid in old_workers
    assert code == 0 and old_exit < 5
