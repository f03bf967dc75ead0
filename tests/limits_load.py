"""Limits under real load: sluiceway instances started with ``sluiceway run``
(in front of the harness origin), loaded by wrk, every answer tallied by key.

Used by ``tests/test_limits_load.py`` (slow tests) and
``bench/limits_proxy_load.py`` (the full-length runs and the latency comparison).

The app (``limitsapp.App``, written into the instance's folder) checks one
limiter made at import of its module, as users do; which one comes from the
environment:

    LIMIT_KIND      process | server (RateLimiter with that scope) | redis
                    (RedisRateLimiter named "load", on the YAML's redis:)
    LIMIT           requests per key per window
    LIMIT_INTERVAL  the window, seconds

Every answer carries ``x-tag: <key> <window> <redis down: 0|1>`` (the window
is ``time.time() // interval``, the grid RedisRateLimiter counts on); over
the limit the answer is 429.  ``GET /_count`` with ``x-api-key`` answers the
key's count in the current window without counting (``peek``).

The wrk script sends ``x-api-key: <prefix><i>`` cycling over N keys (each wrk
thread starting at its own offset), optionally waits a random 0.5x..1.5x of
a mean delay between a connection's requests (pacing for a fixed mean rate),
and prints one ``TALLY <count> <status> <x-tag>`` line per distinct answer
(unless told not to tally),
then ``LAT``/``SUMMARY`` lines that ``run_wrk`` parses.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter

from proxy_harness import free_port, spawn, wait_port

APP = r'''
import os
import time

from sluiceway.limits import RateLimiter, RedisRateLimiter
from sluiceway.proxy import HttpPeer, ProxyHttp

KIND = os.environ["LIMIT_KIND"]
LIMIT = int(os.environ["LIMIT"])
INTERVAL = float(os.environ["LIMIT_INTERVAL"])
if KIND == "redis":
    LIMITER = RedisRateLimiter(LIMIT, INTERVAL, name="load")   # the YAML's redis:
else:
    LIMITER = RateLimiter(LIMIT, INTERVAL, scope=KIND)
ORIGIN = ("127.0.0.1", int(os.environ["ORIGIN_PORT"]))


def down():
    return "1" if KIND == "redis" and LIMITER.backend.down else "0"


class App(ProxyHttp):
    def new_ctx(self):
        return {}

    def request_filter(self, session, ctx):
        key = session.req_header.get("x-api-key")
        if session.req_header.path == "/_count":
            session.respond(200, {"x-down": down()}, str(LIMITER.peek(key, 0).count))
            return True
        decision = LIMITER.check(key)
        ctx["tag"] = tag = f"{key} {int(time.time() // INTERVAL)} {down()}"
        if not decision.allowed:
            session.respond(429, {"x-tag": tag}, "")
            return True
        return False

    def upstream_peer(self, session, ctx):
        return HttpPeer(ORIGIN)

    def response_filter(self, session, upstream_response, ctx):
        upstream_response.insert_header("x-tag", ctx["tag"])
'''

WRK_SCRIPT = r'''
-- args: keys, mean delay in ms (0: none), key prefix, tally (1) or not (0)
local threads = {}

function setup(thread)
  thread:set("offset", #threads * 7)
  table.insert(threads, thread)
end

function init(args)
  local nkeys = tonumber(args[1]) or 20
  local mean = tonumber(args[2]) or 0
  local prefix = args[3] or "k"
  reqs = {}
  for i = 1, nkeys do
    reqs[i] = wrk.format("GET", wrk.path, {["x-api-key"] = prefix .. (i - 1)})
  end
  n = offset
  tally = {}
  if args[4] ~= "0" then       -- reading every answer's headers costs wrk time
    response = function(status, headers, body)
      local k = status .. " " .. (headers["x-tag"] or headers["X-Tag"] or "-")
      tally[k] = (tally[k] or 0) + 1
    end
  end
  if mean > 0 then
    math.randomseed(os.time() + offset)
    delay = function() return mean * (0.5 + math.random()) end
  end
end

function request()
  n = n + 1
  return reqs[n % #reqs + 1]
end

function done(summary, latency, requests)
  for _, t in ipairs(threads) do
    for k, c in pairs(t:get("tally")) do
      io.write(string.format("TALLY %d %s\n", c, k))
    end
  end
  io.write(string.format("LAT %d %d %d %d %d %.1f\n", latency:percentile(50),
    latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean))
  local e = summary.errors
  io.write(string.format("SUMMARY %d %d %d %d %d %d %d\n", summary.requests,
    summary.duration, e.connect, e.read, e.write, e.status, e.timeout))
end
'''


class Tally:
    """What wrk saw: ``count[(status, key, window, down)]`` and the summary."""

    def __init__(self, out: str):
        self.count = Counter()
        self.lat = None
        self.summary = None
        for line in out.splitlines():
            if line.startswith("TALLY "):
                _, n, status, tag = line.split(" ", 3)
                parts = tag.split(" ")
                key, window, down = (parts + ["-", "-", "-"])[:3] if tag != "-" else ("-", "-", "-")
                self.count[(int(status), key, window, down)] += int(n)
            elif line.startswith("LAT "):
                p50, p90, p99, p999, mx, mean = line.split()[1:]
                self.lat = dict(p50=int(p50), p90=int(p90), p99=int(p99), p999=int(p999),
                                max=int(mx), mean=float(mean))          # microseconds
            elif line.startswith("SUMMARY "):
                v = [int(x) for x in line.split()[1:]]
                self.summary = dict(requests=v[0], duration_us=v[1], connect=v[2], read=v[3],
                                    write=v[4], status=v[5], timeout=v[6])
        if self.summary is None:
            raise RuntimeError(f"wrk printed no summary:\n{out}")

    @property
    def rps(self):
        return self.summary["requests"] / (self.summary["duration_us"] / 1e6)

    @property
    def socket_errors(self):
        s = self.summary
        return s["connect"] + s["read"] + s["write"] + s["timeout"]

    def by(self, *fields, status=None, where=None):
        """Sum counts grouped by fields among status, key, window, down."""
        idx = {"status": 0, "key": 1, "window": 2, "down": 3}
        out = Counter()
        for k, n in self.count.items():
            if status is not None and k[0] != status:
                continue
            if where is not None and not where(*k):
                continue
            out[tuple(k[idx[f]] for f in fields)] += n
        return out

    def statuses(self):
        return {k[0]: n for k, n in self.by("status").items()}

    def merged(self, other):
        t = Tally.__new__(Tally)
        t.count = self.count + other.count
        t.lat = None
        t.summary = {k: self.summary[k] + other.summary[k] for k in self.summary}
        t.summary["duration_us"] = max(self.summary["duration_us"], other.summary["duration_us"])
        return t


def write_wrk_script(folder) -> str:
    path = os.path.join(str(folder), "keys.lua")
    with open(path, "w") as f:
        f.write(WRK_SCRIPT)
    return path


def start_wrk(url, script, duration, connections, threads=2, keys=20, mean_delay_ms=0,
              prefix="k", cpu=None, tally=True):
    """Start wrk (returns the Popen; ``finish_wrk`` reads it).  ``tally=False``
    counts nothing by status or key (wrk then reads no headers)."""
    cmd = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration}s",
           "--timeout", "5s", "-s", script, url, "--", str(keys), str(mean_delay_ms), prefix,
           "1" if tally else "0"]
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu)] + cmd
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_wrk(proc, timeout=120) -> Tally:
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited with {proc.returncode}: {err}\n{out}")
    return Tally(out)


def run_wrk(*args, **kw) -> Tally:
    return finish_wrk(start_wrk(*args, **kw))


class Instance:
    """One ``sluiceway run limitsapp:App`` (a server: master + workers) in
    ``folder``, listening on a free port of 127.0.0.1.  Started in its own
    process group so that its workers can be found and stopped with it."""

    def __init__(self, folder, origin_port, kind, limit, interval, threads=1, redis=None,
                 cpu=None, sluiceway_path=None, access_log=None):
        os.makedirs(folder, exist_ok=True)
        self.folder = str(folder)
        with open(os.path.join(self.folder, "limitsapp.py"), "w") as f:
            f.write(APP)
        conf = [f"version: 1", f"threads: {threads}", "grace_period_seconds: 1",
                "graceful_shutdown_timeout_seconds: 5",
                f"error_log: {os.path.join(self.folder, 'error.log')}"]
        if access_log:
            # (benches: the proxy's own time per request, beside the client's)
            conf += ["access_log: true", "access_log_format: json",
                     f"access_log_file: {access_log}", "access_log_flush_seconds: 0.5"]
        if redis:
            conf.append("redis:")
            conf += [f"  {k}: {v}" for k, v in redis.items()]
        self.conf = os.path.join(self.folder, "conf.yaml")
        with open(self.conf, "w") as f:
            f.write("\n".join(conf) + "\n")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.threads = threads
        self.env = {"ORIGIN_PORT": str(origin_port), "LIMIT_KIND": kind, "LIMIT": str(limit),
                    "LIMIT_INTERVAL": str(interval), "PYTHONPATH": self.folder}
        self.cpu = cpu
        self.sluiceway_path = sluiceway_path   # another checkout's corepy (benches)
        self.proc = None

    def start(self):
        args = ["-m", "sluiceway.cli", "run", "limitsapp:App", "-c", self.conf,
                "-l", f"127.0.0.1:{self.port}"]
        if self.cpu is not None or self.sluiceway_path is not None:
            # taskset execs the interpreter: the PID stays the master's.
            import sys
            from conftest import subprocess_env
            env = subprocess_env(**self.env)
            if self.sluiceway_path is not None:
                env["PYTHONPATH"] = os.pathsep.join([self.sluiceway_path, self.folder])
            pin = ["taskset", "-c", str(self.cpu)] if self.cpu is not None else []
            with self._out() as out:
                self.proc = subprocess.Popen(pin + [sys.executable] + args, env=env,
                                             cwd=self.folder, stdout=out,
                                             stderr=subprocess.STDOUT, start_new_session=True)
        else:
            # Its output goes to a file, read only when it fails: a pipe
            # nobody reads would stall the server once it filled.
            with self._out() as out:
                self.proc = spawn(args, self.env, start_new_session=True, stdout=out,
                                  stderr=subprocess.STDOUT)
        try:
            wait_port(self.port, self.proc)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}; its output: {self.output()[-2000:]}") from None
        # The master binds, then forks its workers: wait for all of them.
        deadline = time.monotonic() + 10
        while len(self.workers()) < self.threads:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.threads} workers did not start")
            time.sleep(0.05)
        time.sleep(0.2)
        return self

    def _out(self):
        """The file the server's standard output and error go to."""
        return open(os.path.join(self.folder, "output.log"), "ab")

    def output(self):
        """What the server wrote to its standard output and error."""
        try:
            with open(os.path.join(self.folder, "output.log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def workers(self):
        """PIDs of the master's children (its workers)."""
        try:
            with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
                return [int(p) for p in f.read().split()]
        except OSError:
            return []

    def alive(self):
        """True while the master and all its workers run."""
        return self.proc.poll() is None and len(self.workers()) == self.threads

    def count(self, key):
        """The instance's count for key in the current window (peek, uncounted)."""
        import httpx

        r = httpx.get(self.url + "/_count", headers={"x-api-key": key}, timeout=5)
        r.raise_for_status()
        return int(r.text)

    def error_log(self):
        try:
            with open(os.path.join(self.folder, "error.log")) as f:
                return f.read()
        except OSError:
            return ""

    def stop(self):
        """SIGTERM (graceful); SIGKILL to the process group if it hangs.
        Returns the master's exit status."""
        if self.proc is None:
            return None
        pgid = self.proc.pid
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(15)
        except subprocess.TimeoutExpired:
            code = None
        try:
            os.killpg(pgid, signal.SIGKILL)   # workers left behind, if any
        except (ProcessLookupError, PermissionError):
            pass
        if code is None:
            self.proc.wait(5)
        self.proc = None
        return code


def shm_files():
    """Names of this project's files in /dev/shm (nothing here should add any)."""
    folder = os.environ.get("SLUICEWAY_SHM_DIR", "/dev/shm")
    try:
        return {n for n in os.listdir(folder) if n.startswith("sluiceway")}
    except OSError:
        return set()


def wait_window_start(interval, margin=0.3, min_left=None):
    """Sleep until ``margin`` seconds into a wall-clock window of ``interval``
    (the grid RedisRateLimiter counts on), unless at least ``min_left``
    seconds of the current one remain; returns the window index."""
    now = time.time()
    into = now % interval
    if min_left is not None and interval - into >= min_left and into >= margin:
        return int(now // interval)
    wait = (interval - into + margin) if into > margin else margin - into
    time.sleep(wait)
    return int(time.time() // interval)
