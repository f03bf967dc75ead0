"""Zero-downtime operations under real load: nginx origins, a `sluiceway
run` proxy whose generations are replaced (upgrades, rollbacks, reloads,
killed workers), and wrk or curl as the clients.

Used by ``tests/test_ops_load.py`` (slow tests). Everything listens on 127.0.0.1 on free ports and is stopped
by its PID.

The proxy's app (``opsapp.App``, written into the proxy's folder; run by
``sluiceway run``, or with ``program=True`` as a program that also runs the
balancer's health checks) answers
every response with ``x-version`` (the app's version, changed by rewriting
the file before an upgrade or a reload) and ``x-pid`` (the worker). It sends
``/ws`` to a WebSocket origin when one is given (``WS_PORT``), and every
other request to its origins (``ORIGINS``, comma-separated ports) through a
LoadBalancer (round robin, TCP health checks every ``HC_INTERVAL`` seconds,
three failures in a row to turn unhealthy, passive checks with
``MAX_FAILS``/``FAIL_TIMEOUT``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

from proxy_harness import free_port, spawn, wait_port

APP = '''
import os

from sluiceway import Error, LoadBalancer, RoundRobin, TcpHealthCheck, background_service
from sluiceway.proxy import HttpPeer, ProxyHttp

VERSION = "{version}"
ORIGINS = [f"127.0.0.1:{{p}}" for p in os.environ["ORIGINS"].split(",")]
WS = HttpPeer(("127.0.0.1", int(os.environ.get("WS_PORT", "9"))))
LB = LoadBalancer.from_iter(
    ORIGINS, RoundRobin,
    health_check=TcpHealthCheck(timeout=0.5, consecutive_failure=3),
    health_check_frequency=float(os.environ.get("HC_INTERVAL", "1")),
    max_fails=int(os.environ.get("MAX_FAILS", "1")),
    fail_timeout=float(os.environ.get("FAIL_TIMEOUT", "10")))
PID = str(os.getpid())


class App(ProxyHttp):
    def upstream_peer(self, session, ctx):
        if session.req_header.path == "/ws":
            return WS
        peer = LB.select_peer(None, avoid=session.tried_peers)
        if peer is None:
            raise Error("no usable origin", status=502, source="upstream")
        return peer

    def response_filter(self, session, upstream_response, ctx):
        upstream_response.headers["x-version"] = VERSION
        upstream_response.headers["x-pid"] = str(os.getpid())
'''

# The same app as a program of its own, so that the balancer's health checks
# run (a background service in each worker); `sluiceway run` has none.
PROGRAM = '''
from sluiceway import Server, background_service, http_proxy_service

from opsapp import LB, App

server = Server.from_args()
server.add_service(background_service("origins", LB))
server.add_service(http_proxy_service(server.configuration, App()))
server.run_forever()
'''

NGINX = """
worker_processes 1;
daemon off;
master_process off;
pid {dir}/{name}.pid;
error_log {dir}/{name}.err warn;
worker_rlimit_nofile 20000;
events {{ worker_connections 16384; }}
http {{
    log_format t '$msec';
    access_log {access};
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    client_body_temp_path {dir}/cb_{name};
    proxy_temp_path {dir}/pt_{name};
    fastcgi_temp_path {dir}/ft_{name};
    uwsgi_temp_path {dir}/ut_{name};
    scgi_temp_path {dir}/st_{name};
    server {{
        listen 127.0.0.1:{port} backlog=4096 reuseport;
        location / {{ default_type text/plain; return 200 "hello"; }}
        location = /big {{ alias {dir}/big.bin; default_type application/octet-stream; }}
    }}
}}
"""


class Nginx:
    """One nginx origin as a single process (``master_process off``), so
    that SIGKILL kills all of it. ``/`` answers 200 "hello"; ``/big`` is
    ``big_file`` when given. With ``log=True`` each request's time goes to
    ``<name>.access`` (one ``$msec`` per line)."""

    def __init__(self, folder, name, port=None, log=False):
        self.folder = str(folder)
        self.name = name
        self.port = port or free_port()
        self.access = os.path.join(self.folder, f"{name}.access")
        self.conf = os.path.join(self.folder, f"{name}.conf")
        with open(self.conf, "w") as f:
            f.write(NGINX.format(dir=self.folder, name=name, port=self.port,
                                 access=f"{self.access} t" if log else "off"))
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(["nginx", "-c", self.conf, "-p", self.folder],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_port(self.port, self.proc)
        return self

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def hits_after(self, t):
        """Requests logged at or after wall-clock time ``t`` (with log=True)."""
        try:
            with open(self.access) as f:
                return [float(x) for x in f.read().split() if float(x) >= t]
        except OSError:
            return []


class Proxy:
    """``sluiceway run opsapp:App`` in ``folder`` (with its own conf, error
    log and upgrade socket). ``master`` is the running master's Popen;
    ``upgrade()``/``reload()`` replace its generation as an operator would.
    """

    def __init__(self, folder, origins, *, threads=2, grace=5, ws_port=None, port=None,
                 conf_extra="", env=None, program=False):
        self.folder = str(folder)
        os.makedirs(self.folder, exist_ok=True)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = os.path.join(self.folder, "error.log")
        self.conf = os.path.join(self.folder, "conf.yaml")
        with open(self.conf, "w") as f:
            f.write(f"version: 1\nthreads: {threads}\ngrace_period_seconds: {grace}\n"
                    f"graceful_shutdown_timeout_seconds: {grace + 10}\n"
                    f"upstream_keepalive_pool_size: 1024\nerror_log: {self.log}\n"
                    f"upgrade_sock: {self.folder}/upgrade.sock\nupgrade_wait_seconds: 30\n"
                    + conf_extra)
        self.env = {"ORIGINS": ",".join(str(p) for p in origins), "PYTHONPATH": self.folder,
                    **({"WS_PORT": str(ws_port)} if ws_port else {}), **(env or {})}
        self.program = program   # run the app as a program with health checks (PROGRAM)
        self.version = None
        self.master = None
        self.retired = []    # masters replaced by an upgrade

    def write_app(self, version):
        self.version = version
        with open(os.path.join(self.folder, "opsapp.py"), "w") as f:
            f.write(APP.format(version=version))

    def _spawn(self, upgrade=False):
        if self.program:
            with open(os.path.join(self.folder, "run.py"), "w") as f:
                f.write(PROGRAM)
            args = [os.path.join(self.folder, "run.py")]
        else:
            args = ["-m", "sluiceway.cli", "run", "opsapp:App"]
        args += ["-c", self.conf, "-l", f"127.0.0.1:{self.port}"] + (["--upgrade"] if upgrade else [])
        return spawn(args, self.env, cwd=self.folder)

    def start(self, version="v1"):
        self.write_app(version)
        self.master = self._spawn()
        wait_port(self.port, self.master)
        self.wait_log(f"master pid {self.master.pid}")
        self.wait_workers(self.master.pid)
        return self

    def log_text(self):
        try:
            with open(self.log) as f:
                return f.read()
        except OSError:
            return ""

    def wait_log(self, text, timeout=60.0, count=1):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log_text().count(text) >= count:
                return
            time.sleep(0.02)
        raise RuntimeError(f"not logged within {timeout}s: {text!r}\n{self.log_text()[-3000:]}")

    def workers(self, pid=None):
        pid = pid or self.master.pid
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                return [int(p) for p in f.read().split()]
        except OSError:
            return []

    def wait_workers(self, pid, n=None, timeout=30.0):
        n = n or int(re.search(r"threads: (\d+)", open(self.conf).read()).group(1))
        deadline = time.monotonic() + timeout
        while len(self.workers(pid)) < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{n} workers of {pid} did not start")
            time.sleep(0.02)

    def upgrade(self, version):
        """What docs/operations.md's upgrade script does: SIGQUIT to the
        running master, a new one with --upgrade; wait until the new one
        serves and the old one no longer accepts. Returns seconds from
        SIGQUIT to then."""
        old = self.master
        self.write_app(version)
        t0 = time.monotonic()
        old.send_signal(signal.SIGQUIT)
        new = self._spawn(upgrade=True)
        self.wait_log(f"took the listening sockets over from pid {old.pid}")
        self.wait_log(f"upgrade: pid {old.pid} no longer accepts")
        took = time.monotonic() - t0
        self.master = new
        self.retired.append(old)
        return took

    def reload(self, version):
        """Rewrite the app, SIGHUP; wait until the new generation serves.
        Returns seconds from SIGHUP to serving."""
        n = self.log_text().count("sluiceway: reloaded:")
        self.write_app(version)
        t0 = time.monotonic()
        self.master.send_signal(signal.SIGHUP)
        self.wait_log("sluiceway: reloaded:", count=n + 1)
        return time.monotonic() - t0

    def stop(self):
        """SIGTERM to every master we started; SIGKILL (by PID) to any
        process of ours still running after that."""
        procs = self.retired + ([self.master] if self.master else [])
        pids = set()
        for p in procs:
            pids.update(self.workers(p.pid))
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def open_connections(pid, port):
    """Established TCP connections to ``port`` held by process ``pid``."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    except OSError:
        return 0
    n = 0
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            if parts[3] == "01" and int(parts[1].split(":")[1], 16) == port and parts[9] in inodes:
                n += 1
    return n


class Wrk:
    """wrk running in the background; ``result()`` waits and parses,
    ``stop()`` ends it early (SIGINT: wrk then reports what it did)."""

    def __init__(self, url, seconds, connections, threads=2, timeout="10s"):
        self.cmd = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s",
                    "--timeout", timeout, url]
        self.connections = connections
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.t0 = time.monotonic()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        return self.result()

    def result(self, timeout=300):
        out, err = self.proc.communicate(timeout=timeout)
        if self.proc.returncode != 0:
            raise RuntimeError(f"wrk exited with {self.proc.returncode}: {err}\n{out}")
        return parse_wrk(out)


def parse_wrk(out):
    r = {"requests": int(re.search(r"(\d+) requests in", out).group(1)),
         "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
         "connect": 0, "read": 0, "write": 0, "timeout": 0, "non2xx": 0, "text": out}
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        r["connect"], r["read"], r["write"], r["timeout"] = map(int, m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        r["non2xx"] = int(m.group(1))
    m = re.search(r"Latency\s+([\d.]+\w+)\s+([\d.]+\w+)\s+([\d.]+\w+)", out)
    r["latency_avg"], r["latency_max"] = (m.group(1), m.group(3)) if m else ("?", "?")
    r["errors"] = r["connect"] + r["read"] + r["write"] + r["timeout"] + r["non2xx"]
    return r


def fresh_versions(url, n=20):
    """x-version of ``n`` requests, each on a new connection (curl)."""
    out = []
    for _ in range(n):
        p = subprocess.run(["curl", "-s", "-o", "/dev/null", "-D", "-", "--max-time", "10", url + "/"],
                           capture_output=True, text=True, timeout=20)
        m = re.search(r"(?im)^x-version: (\S+)", p.stdout)
        out.append(m.group(1) if m else None)
    return out
