#!/usr/bin/env python3
"""Benchmark sluiceway against nginx as a reverse proxy.

What runs (all on 127.0.0.1):
  * origin: nginx, 1 worker, serving /small (5 bytes) and /16k (16 KiB);
  * peer proxy: nginx, 1 worker, HTTP/1.1 upstream with `keepalive 64`,
    access log off;
  * sluiceway: 1 worker, hooks active (request_filter reads one header,
    upstream_peer returns an HttpPeer), access log off.
The proxy under test is pinned to CPU 0 (taskset), wrk and the origin to
CPU 1. wrk: 1 thread, 50 connections, 10 s per run, rounds interleaved
(nginx, sluiceway, nginx, ...) so both see the same machine state.

Reported per body size and proxy: requests/s, p50, p99 (wrk --latency), the
proxy's CPU seconds during the run (utime+stime from /proc/PID/stat),
requests per proxy CPU-second, and sluiceway's ratio to nginx from the same
round. Then RSS per idle keep-alive connection with 5,000 idle connections.

Usage:
    python bench/nginx_compare.py [--duration 10] [--rounds 3]
        [--connections 50] [--idle 5000] [--skip-idle] [--access-log]
        [--compare NAME=DIR ...] [--variant NAME="key: value; ..." ...]

``--access-log`` turns the access logs on, both sides alike: nginx writes a
JSON line per request (``log_format ... escape=json`` with the fields of
sluiceway's record, ``$request_id``, ``access_log FILE buffer=64k
flush=1s``) and sends ``$request_id`` upstream and back as X-Request-ID;
sluiceway (and every ``--compare`` tree) runs with ``request_id: true`` and
the JSON access log to a file (``access_log_buffer_bytes: 65536``,
``access_log_flush_seconds: 1``). The log files are emptied after every
run so the disk does not fill.

``--compare before=/path/to/other/checkout`` runs a second sluiceway, built
in place in that checkout (its ``corepy`` is put first on PYTHONPATH), in
the same interleaved rounds: a before/after comparison from one run. It is
pinned like the first and reported with its ratio to nginx.

``--variant off="metrics: false"`` runs this checkout's sluiceway once more
with those YAML keys added to the base configuration (not the
``--access-log`` keys), reported as NAME with its ratio to nginx and to
``sluiceway`` from the same rounds: the same build with options on and off,
side by side. ``{log}`` in the keys becomes a log file of its own, emptied
after every run like the others. For example, the cost of metrics and the
JSON access log against both off::

    python bench/nginx_compare.py --skip-idle --variant off="metrics: false" \
        --variant jsonlog="access_log: true; access_log_format: json; \
    access_log_file: {log}; access_log_buffer_bytes: 65536; access_log_flush_seconds: 1"

Needs: nginx (/usr/sbin/nginx), wrk, taskset, a built checkout (run from the
repository root after `make build`).

The same measurement runs under pytest-benchmark (saved runs, comparisons
between builds): `pytest bench/bench_nginx.py --benchmark-only`; see
bench/bench_nginx.py.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
CLK = os.sysconf("SC_CLK_TCK")

SLUICEWAY_APP = '''
import os
from sluiceway.proxy import HttpPeer, ProxyHttp

ORIGIN = ("127.0.0.1", int(os.environ["BENCH_ORIGIN_PORT"]))


class BenchApp(ProxyHttp):
    def request_filter(self, session, ctx):
        session.req_header.get("x-api-key")   # read one header
        return False

    def upstream_peer(self, session, ctx):
        return HttpPeer(ORIGIN)
'''


def free_port() -> int:
    """A port no one else is handed for a while (sluiceway.testing.free_port:
    left in TIME_WAIT, so a plain bind-then-close race cannot take it)."""
    try:
        from sluiceway.testing import free_port as _free_port
    except ImportError:
        sys.path.insert(0, os.path.join(REPO, "corepy"))
        from sluiceway.testing import free_port as _free_port
    return _free_port()


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK   # utime, stime


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def children(pid: int) -> list:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except OSError:
                pass
    return out


NGINX_COMMON = """
worker_processes 1;
daemon off;
master_process on;
pid {dir}/{name}.pid;
error_log {dir}/{name}.err warn;
worker_rlimit_nofile 20000;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    client_body_temp_path {dir}/cb_{name};
    proxy_temp_path {dir}/pt_{name};
    fastcgi_temp_path {dir}/ft_{name};
    uwsgi_temp_path {dir}/ut_{name};
    scgi_temp_path {dir}/st_{name};
{body}
}}
"""

ORIGIN_HTTP = """
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {dir}/www;
        location = /small {{ default_type text/plain; return 200 "hello"; }}
        location = /16k {{ default_type application/octet-stream; }}
    }}
"""

PROXY_HTTP = """
    upstream origin {{
        server 127.0.0.1:{origin};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering on;
        }}
    }}
"""

# --access-log: nginx's record with the fields of sluiceway's JSON record
# (docs/observability.md), escaped as JSON, buffered as sluiceway's is.
NGINX_ALOG_FORMAT = """
    log_format swjson escape=json '{"time":"$time_iso8601","request_id":"$request_id",'
        '"client":"$remote_addr:$remote_port","method":"$request_method",'
        '"path":"$request_uri","protocol":"$server_protocol","status":$status,'
        '"request_bytes":$request_length,"response_bytes":$body_bytes_sent,'
        '"upstream":"$upstream_addr","upstream_status":"$upstream_status",'
        '"duration":$request_time,"upstream_connect":"$upstream_connect_time",'
        '"upstream_first_byte":"$upstream_header_time","upstream_reused":null,'
        '"retries":0,"error":null}';
"""
NGINX_ALOG = "        access_log {log} swjson buffer=64k flush=1s;\n"
NGINX_RID = ("            proxy_set_header X-Request-ID $request_id;\n"
             "            add_header X-Request-ID $request_id always;\n")


def proxy_http(port, origin, access_log=None):
    """PROXY_HTTP for these ports; with ``access_log`` (a path), nginx's
    JSON access log there and X-Request-ID both ways."""
    conf = PROXY_HTTP.format(port=port, origin=origin)
    if access_log:
        conf = conf.replace("    server {", NGINX_ALOG_FORMAT + "    server {", 1)
        conf = conf.replace("        location / {",
                            NGINX_ALOG.format(log=access_log) + "        location / {", 1)
        conf = conf.replace("            proxy_buffering on;\n",
                            "            proxy_buffering on;\n" + NGINX_RID, 1)
    return conf
SLUICEWAY_ALOG = ("request_id: true\naccess_log: true\naccess_log_format: json\n"
                  "access_log_file: {log}\naccess_log_buffer_bytes: 65536\n"
                  "access_log_flush_seconds: 1\n")


class Proc:
    def __init__(self, name, args, cpu, env=None, cwd=None):
        self.name = name
        self.p = subprocess.Popen(["taskset", "-c", str(cpu)] + args, env=env, cwd=cwd,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


# sw.yaml of every proxy run here: one worker, a pool as nginx's keepalive 64
SW_YAML = ("version: 1\nthreads: 1\nupstream_keepalive_pool_size: 64\n"
           "downstream_keepalive_timeout_seconds: 120\n")


def bench_dir(prefix, files=(), www=()):
    """A new temp folder for one run, readable by nginx's workers (they run
    as an unprivileged user), with ``files`` ({name: text}) in it and
    ``www`` ({name: bytes}) in its www/ folder (the origin's root)."""
    tmp = tempfile.mkdtemp(prefix=prefix)
    os.chmod(tmp, 0o755)
    os.makedirs(os.path.join(tmp, "www"))
    for name, data in dict(www).items():
        with open(os.path.join(tmp, "www", name), "wb") as f:
            f.write(data)
    for name, text in dict(files).items():
        with open(os.path.join(tmp, name), "w") as f:
            f.write(text)
    return tmp


def start_sluiceway(name, tmp, port, env, yaml="sw.yaml", module="sluiceway.cli"):
    """``sluiceway run bench_app:BenchApp`` (tmp/bench_app.py) with the
    configuration ``yaml`` in ``tmp``, listening on ``port``, pinned to
    CPU 0; ``env`` says which sluiceway (PYTHONPATH)."""
    return Proc(name, [sys.executable, "-m", module, "run", "bench_app:BenchApp",
                       "-c", os.path.join(tmp, yaml), "-l", f"127.0.0.1:{port}"],
                0, env=env, cwd=tmp)


def stop_all(procs, tmp):
    """Stop the processes started here (the last first) and remove ``tmp``."""
    for p in reversed(procs):
        p.stop()
    shutil.rmtree(tmp, ignore_errors=True)


def start_nginx(tmp, name, body, cpu):
    conf = os.path.join(tmp, f"{name}.conf")
    with open(conf, "w") as f:
        f.write(NGINX_COMMON.format(dir=tmp, name=name, body=body))
    pr = Proc(name, [NGINX, "-p", tmp, "-c", conf], cpu)
    return pr


def worker_pid(master_pid: int, timeout=5.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # taskset execs nginx in place, so the master is our child
        kids = children(master_pid)
        if kids:
            return kids[0]
        time.sleep(0.05)
    raise RuntimeError("nginx worker not found")


def sluiceway_pid(pid: int, timeout=5.0) -> int:
    """The process that serves in a sluiceway started as ``pid``: its one
    worker (a master forks it), or ``pid`` itself for a tree from before
    the master process."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = children(pid)
        if kids:
            return kids[0]
        time.sleep(0.05)
    return pid


def run_wrk(port, path, duration, conns):
    cmd = ["taskset", "-c", "1", "wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--latency",
           f"http://127.0.0.1:{port}{path}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock_err = re.search(r"Socket errors: (.*)", out)

    def lat(label):
        m = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        v, unit = float(m.group(1)), m.group(2)
        return v / 1000.0 if unit == "us" else v * 1000.0 if unit == "s" else v
    return {"rps": rps, "total": total, "p50": lat("50"), "p99": lat("99"),
            "errors": int(errors.group(1)) if errors else 0,
            "socket_errors": sock_err.group(1) if sock_err else ""}


def measure(port, path, duration, conns, pid):
    c0 = cpu_seconds(pid)
    r = run_wrk(port, path, duration, conns)
    r["cpu"] = cpu_seconds(pid) - c0
    r["rpcpu"] = r["total"] / r["cpu"] if r["cpu"] > 0 else float("nan")
    return r


def idle_rss(port, pid, n):
    """RSS growth of `pid` per keep-alive connection left idle after one request."""
    socks = []
    base = rss_bytes(pid)
    req = b"GET /small HTTP/1.1\r\nHost: x\r\n\r\n"
    try:
        for i in range(n):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(req)
            socks.append(s)
            if len(socks) % 200 == 0:
                for t in socks[-200:]:
                    _read_response(t)
        for t in socks[len(socks) - len(socks) % 200:]:
            _read_response(t)
        time.sleep(1.0)
        return (rss_bytes(pid) - base) / n
    finally:
        for s in socks:
            s.close()


def _read_response(s):
    buf = b""
    while b"\r\n\r\n" not in buf or not buf.endswith(b"hello"):
        chunk = s.recv(4096)
        if not chunk:
            raise RuntimeError("connection closed while reading a response")
        buf += chunk


def _empty(paths):
    """Truncate the access logs (their writers append: they go on at 0)."""
    for path in paths:
        try:
            os.truncate(path, 0)
        except OSError:
            pass


def _table(results, ratios, targets):
    print(f"{'body':6} {'proxy':9} {'rps':>9} {'p50 ms':>7} {'p99 ms':>7} {'cpu s':>6} "
          f"{'req/cpu-s':>10} {'us cpu/req':>10}")
    for path in ("/small", "/16k"):
        for name in targets:
            rs = results[(path, name)]
            med = lambda k: statistics.median(r[k] for r in rs)
            print(f"{path:6} {name:9} {med('rps'):9.0f} {med('p50'):7.2f} {med('p99'):7.2f} "
                  f"{med('cpu'):6.2f} {med('rpcpu'):10.0f} {1e6 / med('rpcpu'):10.1f}")
        for name in targets:
            if name == "nginx":
                continue
            print(f"{path:6} {'ratio':9} rps x{statistics.median(ratios[(path, name, 'rps')]):.2f}  "
                  f"req/cpu-s x{statistics.median(ratios[(path, name, 'rpcpu')]):.2f}  "
                  f"p99 x{statistics.median(ratios[(path, name, 'p99')]):.2f}  ({name} / nginx, "
                  f"median of per-round ratios; per round: "
                  + ", ".join(f"{r:.2f}" for r in ratios[(path, name, 'rpcpu')]) + ")")
            if (path, name, "vs_sw") in ratios:
                vs = ratios[(path, name, "vs_sw")]
                print(f"{path:6} {'ratio':9} req/cpu-s x{statistics.median(vs):.2f}  ({name} / "
                      "sluiceway, median of per-round ratios; per round: "
                      + ", ".join(f"{r:.2f}" for r in vs) + ")")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--idle", type=int, default=5000)
    ap.add_argument("--skip-idle", action="store_true")
    ap.add_argument("--idle-only", action="store_true", help="only the idle-connection RSS part")
    ap.add_argument("--compare", action="append", default=[], metavar="NAME=DIR",
                    help="also run the sluiceway built in checkout DIR, reported as NAME")
    ap.add_argument("--access-log", action="store_true",
                    help="access logs on: nginx's buffered JSON log with $request_id, "
                    "sluiceway's JSON log with request_id: true")
    ap.add_argument("--variant", action="append", default=[], metavar='NAME="k: v; ..."',
                    help="also run this checkout with these YAML keys added (';' between "
                    "keys, {log} a log file of its own), reported as NAME")
    ns = ap.parse_args(argv)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 4 * ns.idle + 1000))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if os.cpu_count() < 2:
        print("note: fewer than 2 CPUs; pinning is approximate", file=sys.stderr)

    tmp = bench_dir("sw-bench-", {"bench_app.py": SLUICEWAY_APP}, {"16k": b"b" * 16384})
    with open(os.path.join(tmp, "sw.yaml"), "w") as f:
        f.write(SW_YAML)
        if ns.access_log:
            f.write(SLUICEWAY_ALOG.format(log=os.path.join(tmp, "sw-access.log")))
    logs = [os.path.join(tmp, "nginx-access.log"), os.path.join(tmp, "sw-access.log")] \
        if ns.access_log else []
    variants = {}
    for spec in ns.variant:
        name, _, keys = spec.partition("=")
        if not name or not keys or name in ("nginx", "sluiceway"):
            ap.error(f"--variant wants NAME=\"key: value; ...\" with a new NAME, got {spec!r}")
        vlog = os.path.join(tmp, f"{name}-access.log")
        ypath = os.path.join(tmp, f"{name}.yaml")
        with open(ypath, "w") as f:
            f.write(SW_YAML + "".join(k.strip().replace("{log}", vlog) + "\n"
                                        for k in keys.split(";") if k.strip()))
        variants[name] = ypath
        logs.append(vlog)

    o_port, n_port, s_port = free_port(), free_port(), free_port()
    procs = []
    try:
        origin = start_nginx(tmp, "origin", ORIGIN_HTTP.format(port=o_port, dir=tmp), 1)
        procs.append(origin)
        nproxy = start_nginx(tmp, "proxy",
                             proxy_http(n_port, o_port, logs[0] if ns.access_log else None), 0)
        procs.append(nproxy)
        env = dict(os.environ, BENCH_ORIGIN_PORT=str(o_port),
                   PYTHONPATH=os.path.join(REPO, "corepy") + os.pathsep + tmp)
        sw = start_sluiceway("sluiceway", tmp, s_port, env)
        procs.append(sw)
        extra = {}
        for spec in ns.compare:
            name, _, where = spec.partition("=")
            if not name or not where or name in ("nginx", "sluiceway"):
                ap.error(f"--compare wants NAME=DIR with a new NAME, got {spec!r}")
            port = free_port()
            env_c = dict(env, PYTHONPATH=os.path.join(os.path.abspath(where), "corepy") + os.pathsep + tmp)
            pr = start_sluiceway(name, tmp, port, env_c)
            procs.append(pr)
            extra[name] = (port, pr)
        for name, ypath in variants.items():
            if name in extra:
                ap.error(f"--variant {name} has the name of a --compare")
            port = free_port()
            pr = start_sluiceway(name, tmp, port, env, yaml=ypath)
            procs.append(pr)
            extra[name] = (port, pr)
        for p in (o_port, n_port, s_port) + tuple(port for port, _ in extra.values()):
            wait_port(p)
        n_pid = worker_pid(nproxy.p.pid)
        s_pid = sluiceway_pid(sw.p.pid)
        targets = {"nginx": (n_port, n_pid), "sluiceway": (s_port, s_pid)}
        for name, (port, pr) in extra.items():
            targets[name] = (port, sluiceway_pid(pr.p.pid))

        if ns.idle_only:
            ns.rounds = 0
        # warm up
        for name, (port, pid) in targets.items():
            run_wrk(port, "/small", 2, ns.connections)
        if logs:
            time.sleep(1.5)   # a flush of each log happened: show it works
            for path in logs:
                if not os.path.exists(path):
                    continue
                with open(path, "rb") as f:
                    first = f.readline()
                print(f"access log {os.path.basename(path)}: {first[:160]!r}...", flush=True)
            _empty(logs)

        results = {(path, name): [] for path in ("/small", "/16k") for name in targets}
        others = [n for n in targets if n != "nginx"]
        ratios = {(path, name, k): [] for path in ("/small", "/16k") for name in others
                  for k in ("rps", "rpcpu", "p99")}
        for path in ("/small", "/16k"):
            for name in variants:
                ratios[(path, name, "vs_sw")] = []
        for rnd in range(ns.rounds):
            for path in ("/small", "/16k"):
                got = {}
                for name, (port, pid) in targets.items():
                    got[name] = measure(port, path, ns.duration, ns.connections, pid)
                    _empty(logs)
                    results[(path, name)].append(got[name])
                    r = got[name]
                    print(f"round {rnd + 1} {path:6} {name:9} rps={r['rps']:9.0f} p50={r['p50']:6.2f}ms "
                          f"p99={r['p99']:6.2f}ms cpu={r['cpu']:5.2f}s req/cpu-s={r['rpcpu']:8.0f} "
                          f"errors={r['errors']} {r['socket_errors']}", flush=True)
                for name in others:
                    for k in ("rps", "rpcpu", "p99"):
                        ratios[(path, name, k)].append(got[name][k] / got["nginx"][k])
                for name in variants:
                    ratios[(path, name, "vs_sw")].append(got[name]["rpcpu"] / got["sluiceway"]["rpcpu"])

        if ns.rounds == 0:
            results = {}
        print()
        if results:
            _table(results, ratios, targets)

        if not ns.skip_idle:
            print()
            for name, (port, pid) in targets.items():
                per = idle_rss(port, pid, ns.idle)
                print(f"idle keep-alive RSS {name:9}: {per:7.0f} bytes per connection "
                      f"({ns.idle} connections)", flush=True)
    finally:
        stop_all(procs, tmp)


if __name__ == "__main__":
    main()
