#!/usr/bin/env python3
"""Limits through real proxies under wrk: the full-length runs behind the
figures in docs/limits.md and docs/performance.md.

Everything runs on 127.0.0.1 and is started here (the harness origin in this
process, redis-server in a temporary folder, the proxies with
``sluiceway run``) and stopped by PID.  The app, the wrk script (20 API keys
in turn) and the tally come from ``tests/limits_load.py``.

    python bench/limits_proxy_load.py workers [--threads 4] [--limit 100] [--duration 5]
        One server with 4 workers, a limit per key per minute made at import,
        once with scope="process" and once with scope="server": what each key
        got through.

    python bench/limits_proxy_load.py share [--instances 2] [--threads 2]
            [--limit 1000] [--window 60] [--duration 65]
        Instances sharing one Redis (RedisRateLimiter), wrk on each for
        --duration seconds starting 2.5 s before a wall-clock window: what
        each key got through per window, all instances together.

    python bench/limits_proxy_load.py latency [--rate 5000] [--rounds 5] [--duration 10]
        Two single-worker proxies in front of the same origin, one with a
        per-process RateLimiter and one with a RedisRateLimiter (limits never
        reached, so every request is proxied), loaded in turn (process, redis,
        process, ...) at a fixed mean rate: wrk with 100 connections, each
        waiting a random 0.5x..1.5x of a mean delay between requests (100/rate
        seconds less the mean answer time seen in a warm-up).
        Latency percentiles per round and the p99 the Redis backing adds.
        The origin is nginx (/small, 5 bytes; --origin python for the
        harness origin); --pin puts the proxies on CPU 0 and the rest on CPU 1;
        --sync-interval sets the Redis-backed proxy's sync_interval_seconds.

    python bench/limits_proxy_load.py paced [--rate 5000] [--rounds 6] [--duration 10]
            [--connections 50] [--pin] [--redis-cpu N] [--redis-idle] [--sync-interval S]
            [--sync-events N] [--access-log] [--base PATH]
        The p99 the Redis backing adds, at a fixed rate: single-worker
        proxies with the same app, one with a shared-memory RateLimiter
        (scope="server") and one with a RedisRateLimiter (limits never
        reached), loaded in turn by ``bench/paced_client.py`` (open loop:
        request i is due at start + i / rate, whatever the answers before
        it did; one latency per request) at --rate over --connections
        keep-alive connections, the order alternating each round.  Per
        round: p50, p99, p99.9 (service time: request written to answer
        read) and the proxy's CPU per request; at the end the medians and
        the per-round difference redis - local.  --base PATH adds a third
        proxy running another checkout's package (e.g. /work/base/corepy, built):
        the same RedisRateLimiter before a change.  nginx is the origin
        (/small) when installed, else the harness origin.  With --pin at
        5,000/s the client's CPU (with the origin, and Redis unless
        --redis-cpu 0 moves it) is saturated: Redis's own CPU there delays
        the client's reading of answers, which reads as latency the proxy
        added; --redis-cpu 0 puts Redis beside the proxies instead (where
        it may delay them, the harder case for the proxy).

Run from the repository root after ``make build`` (PYTHONPATH=corepy).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))

from limits_load import Instance, finish_wrk, run_wrk, start_wrk, write_wrk_script  # noqa: E402
from proxy_harness import OriginThread  # noqa: E402
from redis_harness import RedisServer  # noqa: E402


def cpu_seconds(pid, which=(11, 12)):
    """utime + stime of a process (or only utime: which=(11,)), seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(fields[i]) for i in which) / os.sysconf("SC_CLK_TCK")


def cmd_workers(ns, folder):
    script = write_wrk_script(folder)
    with OriginThread(1) as origin:
        for scope in ("process", "server"):
            inst = Instance(os.path.join(folder, scope), origin.ports[0], scope, ns.limit, 60.0,
                            threads=ns.threads).start()
            try:
                tally = run_wrk(inst.url + "/", script, ns.duration, 200, threads=2, keys=20)
            finally:
                inst.stop()
            admitted = sorted(tally.by("key", status=200).values())
            print(f"scope={scope:8s} threads={ns.threads} limit={ns.limit}/min: admitted per key "
                  f"{admitted[0]}..{admitted[-1]} over 20 keys, {tally.rps:,.0f} requests/s, "
                  f"answers {dict(sorted(tally.statuses().items()))}", flush=True)


def cmd_share(ns, folder):
    script = write_wrk_script(folder)
    redis = RedisServer().start()
    insts = []
    try:
        with OriginThread(1) as origin:
            conf = {"url": redis.url, "key_prefix": "'bench:'"}
            insts = [Instance(os.path.join(folder, f"i{i}"), origin.ports[0], "redis", ns.limit,
                              ns.window, threads=ns.threads, redis=conf).start()
                     for i in range(ns.instances)]
            wait = (ns.window - 2.5 - time.time() % ns.window) % ns.window
            print(f"waiting {wait:.1f} s to start 2.5 s before a window", flush=True)
            time.sleep(wait)
            procs = [start_wrk(i.url + "/", script, ns.duration, 50, threads=1, keys=20)
                     for i in insts]
            tallies = [finish_wrk(p, timeout=ns.duration + 60) for p in procs]
            alive = all(i.alive() for i in insts)
    finally:
        for i in insts:
            i.stop()
        redis.close()
    tally = tallies[0]
    for t in tallies[1:]:
        tally = tally.merged(t)
    admitted = tally.by("window", "key", status=200)
    print(f"{ns.instances} instances x {ns.threads} workers, limit {ns.limit} per key per "
          f"{ns.window:g} s window, {ns.duration} s of wrk (50 connections each), "
          f"{tally.rps:,.0f} requests/s in all, answers {dict(sorted(tally.statuses().items()))}, "
          f"socket errors {tally.socket_errors}, all alive: {alive}")
    down = tally.by("down").get(("1",), 0)
    print(f"answers decided while Redis was seen down: {down}")
    for w in sorted({w for w, _ in admitted}):
        got = sorted(n for (ww, _), n in admitted.items() if ww == w)
        print(f"window {w}: admitted per key {got[0]}..{got[-1]} "
              f"({got[-1] / ns.limit:.3f} x the limit at most), "
              f"seen {sum(n for (ww, _), n in tally.by('window', 'key').items() if ww == w):,}")


def cmd_latency(ns, folder):
    if ns.pin:
        os.sched_setaffinity(0, {1})          # the origin, wrk and Redis
    script = write_wrk_script(folder)
    redis = RedisServer().start()
    mean_delay = 100 * 1000.0 / ns.rate       # ms, for 100 connections
    cpu = 0 if ns.pin else None
    insts = {}
    rows = {"process": [], "redis": []}
    nginx = None
    try:
        with OriginThread(1) as origin:
            port = origin.ports[0]
            if ns.origin == "nginx":                 # cheaper than the Python origin
                from nginx_compare import ORIGIN_HTTP, free_port, start_nginx

                port = free_port()
                os.makedirs(os.path.join(folder, "www"), exist_ok=True)
                nginx = start_nginx(folder, "origin", ORIGIN_HTTP.format(port=port, dir=folder),
                                    1 if ns.pin else "0,1")
                time.sleep(0.5)
            conf = {"url": redis.url, "key_prefix": "'lat:'",
                    "sync_interval_seconds": ns.sync_interval}
            insts["process"] = Instance(os.path.join(folder, "p"), port, "process",
                                        10**9, 60.0, threads=1, cpu=cpu).start()
            insts["redis"] = Instance(os.path.join(folder, "r"), port, "redis",
                                      10**9, 60.0, threads=1, redis=conf, cpu=cpu).start()
            for name, inst in insts.items():        # warm up
                t = run_wrk(inst.url + "/small", script, 3, 100, threads=1,
                            mean_delay_ms=mean_delay, cpu=1 if ns.pin else None, tally=False)
                if name == "process":
                    # A connection sends its next request a delay after the
                    # answer: take the answer time seen here off the delay.
                    mean_delay = max(1.0, 100 * 1000.0 / ns.rate - t.lat["mean"] / 1000)
            print(f"mean delay between a connection's requests: {mean_delay:.2f} ms", flush=True)
            for rnd in range(ns.rounds):
                for name in ("process", "redis") if rnd % 2 == 0 else ("redis", "process"):
                    pids = (insts[name].workers()[0], redis.proc.pid)   # threads: 1: its one worker
                    before = [cpu_seconds(p) for p in pids]
                    user0 = cpu_seconds(pids[0], (11,))
                    t = run_wrk(insts[name].url + "/small", script, ns.duration, 100, threads=1,
                                mean_delay_ms=mean_delay, cpu=1 if ns.pin else None, tally=False)
                    used = [(cpu_seconds(p) - b) / t.summary["requests"] * 1e6
                            for p, b in zip(pids, before)]
                    user = (cpu_seconds(pids[0], (11,)) - user0) / t.summary["requests"] * 1e6
                    lat = dict(t.lat, proxy_us=used[0], redis_us=used[1])
                    rows[name].append(lat)
                    print(f"round {rnd} {name:8s} {t.rps:7,.0f} req/s  p50 {lat['p50'] / 1000:.3f}"
                          f"  p90 {lat['p90'] / 1000:.3f}  p99 {lat['p99'] / 1000:.3f}"
                          f"  p99.9 {lat['p999'] / 1000:.3f}  max {lat['max'] / 1000:.1f} ms"
                          f"  CPU us/req: proxy {used[0]:.1f} ({user:.1f} user)"
                          f" redis-server {used[1]:.1f}"
                          f"  errors {t.socket_errors + t.summary['status']}", flush=True)
            down = insts["redis"].error_log().count("failed (")
    finally:
        for inst in insts.values():
            inst.stop()
        if nginx is not None:
            nginx.stop()
        redis.close()
    diffs = [(r["p99"] - p["p99"]) / 1000 for p, r in zip(rows["process"], rows["redis"])]
    for name in rows:
        p99 = [r["p99"] / 1000 for r in rows[name]]
        p50 = [r["p50"] / 1000 for r in rows[name]]
        cpu = [r["proxy_us"] for r in rows[name]]
        print(f"{name:8s} p50 {min(p50):.3f}..{max(p50):.3f} ms (median {statistics.median(p50):.3f})"
              f"  p99 {min(p99):.3f}..{max(p99):.3f} ms (median {statistics.median(p99):.3f})"
              f"  proxy CPU {min(cpu):.1f}..{max(cpu):.1f} us/req")
    print(f"p99 added by Redis, per round: {', '.join(f'{d:+.3f}' for d in diffs)} ms "
          f"(median {statistics.median(diffs):+.3f})")
    print(f"Redis failures logged by the redis-backed proxy: {down}")


def _proxy_times(path):
    """Percentiles (ms) of the ``duration`` of the JSON access-log records
    in ``path`` (the proxy's own time per request: its first byte read to
    its last byte written), the file emptied after; the warm-up's records
    are in it too (a few percent of them)."""
    time.sleep(1.0)                         # the writer flushes every 0.5 s
    with open(path, "rb") as f:
        durs = sorted(json.loads(line)["duration"] for line in f if line.strip())
    os.truncate(path, 0)
    if not durs:
        return {"n": 0, "50": float("nan"), "99": float("nan"), "99.9": float("nan")}
    pick = lambda p: durs[min(len(durs) - 1, int(p / 100.0 * len(durs)))] * 1e3  # noqa: E731
    return {"n": len(durs), "50": pick(50), "99": pick(99), "99.9": pick(99.9)}


def paced(url, ns, cpu=None):
    """One run of bench/paced_client.py; its JSON."""
    cmd = [sys.executable, os.path.join(REPO, "bench", "paced_client.py"), url,
           "--rate", str(ns.rate), "--duration", str(ns.duration), "--warmup", str(ns.warmup),
           "--connections", str(ns.connections), "--keys", "20", "--json"]
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu)] + cmd
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=ns.duration + ns.warmup + 60)
    if out.returncode != 0:
        raise RuntimeError(f"paced_client failed: {out.stderr}")
    return json.loads(out.stdout)


def cmd_paced(ns, folder):
    if ns.pin:
        os.sched_setaffinity(0, {1})          # the origin, the client and Redis
    redis = RedisServer().start()
    if ns.redis_cpu is not None:
        # every thread of it (its background I/O threads too)
        subprocess.run(["taskset", "-a", "-p", "-c", str(ns.redis_cpu), str(redis.proc.pid)],
                       check=True, capture_output=True)
    if ns.redis_idle:
        # SCHED_IDLE: Redis runs only when its CPU has nothing else to do,
        # as if it were on a machine of its own (a request never waits on
        # Redis; only the syncs, which run beside the requests, do)
        subprocess.run(["chrt", "-i", "-a", "-p", "0", str(redis.proc.pid)],
                       check=True, capture_output=True)
    proxy_cpu, other_cpu = (0, 1) if ns.pin else (None, None)
    insts = {}
    rows = {}
    nginx = None
    try:
        with OriginThread(1) as origin:
            port, path = origin.ports[0], "/"
            if shutil.which("nginx") and not ns.python_origin:
                from nginx_compare import ORIGIN_HTTP, free_port, start_nginx

                port, path = free_port(), "/small"
                os.makedirs(os.path.join(folder, "www"), exist_ok=True)
                nginx = start_nginx(folder, "origin", ORIGIN_HTTP.format(port=port, dir=folder),
                                    1 if ns.pin else "0,1")
                time.sleep(0.5)
            conf = {"url": redis.url, "key_prefix": "'paced:'",
                    "sync_interval_seconds": ns.sync_interval,
                    "sync_events": ns.sync_events}
            alog = (lambda name: os.path.join(folder, f"{name}-access.log")) \
                if ns.access_log else (lambda name: None)
            insts["local"] = Instance(os.path.join(folder, "local"), port, "server", 10**9, 60.0,
                                      threads=1, cpu=proxy_cpu, access_log=alog("local"))
            insts["redis"] = Instance(os.path.join(folder, "redis"), port, "redis", 10**9, 60.0,
                                      threads=1, redis=conf, cpu=proxy_cpu,
                                      access_log=alog("redis"))
            if ns.base:
                insts["redis-base"] = Instance(os.path.join(folder, "base"), port, "redis", 10**9,
                                               60.0, threads=1, redis=conf, cpu=proxy_cpu,
                                               sluiceway_path=os.path.abspath(ns.base),
                                               access_log=alog("redis-base"))
            for inst in insts.values():
                inst.start()
            rows = {name: [] for name in insts}
            names = list(insts)
            print(f"{ns.rate:g} requests/s over {ns.connections} connections, {ns.duration:g} s "
                  f"counted per round after {ns.warmup:g} s; origin "
                  f"{'nginx' if nginx else 'harness'}; pinned: {bool(ns.pin)}; load average "
                  f"{os.getloadavg()[0]:.2f}", flush=True)
            for rnd in range(ns.rounds):
                order = names[rnd % len(names):] + names[:rnd % len(names)]
                for name in order:
                    pids = (insts[name].workers()[0], redis.proc.pid)
                    before = [cpu_seconds(p) for p in pids]
                    r = paced(insts[name].url + path, ns, other_cpu)
                    n = r["requests"] + ns.rate * ns.warmup
                    r["proxy_us"], r["redis_us"] = [(cpu_seconds(p) - b) / n * 1e6
                                                    for p, b in zip(pids, before)]
                    if ns.access_log:
                        r["proxy_ms"] = _proxy_times(alog(name))
                    rows[name].append(r)
                    s = r["service_ms"]
                    print(f"round {rnd} {name:10s} {r['rate']:7,.0f}/s  p50 {s['50']:.3f}  "
                          f"p99 {s['99']:.3f}  p99.9 {s['99.9']:.3f} ms  (due-to-done p99 "
                          f"{r['scheduled_ms']['99']:.3f})  CPU us/req: proxy {r['proxy_us']:.1f} "
                          f"redis-server {r['redis_us']:.1f}  errors {r['errors']}  unanswered "
                          f"{r['unanswered']}  "
                          f"statuses {r['statuses']}", flush=True)
                    if ns.access_log:
                        pm = r["proxy_ms"]
                        print(f"        {name:10s} in the proxy (access log's duration, "
                              f"{pm['n']} requests): p50 {pm['50']:.3f}  p99 {pm['99']:.3f}  "
                              f"p99.9 {pm['99.9']:.3f} ms", flush=True)
            down = {name: insts[name].error_log().count("failed (") for name in insts
                    if name != "local"}
    finally:
        for inst in insts.values():
            inst.stop()
        if nginx is not None:
            nginx.stop()
        redis.close()
    med = statistics.median
    print(f"\nmedians over {ns.rounds} rounds (service time, ms; load average now "
          f"{os.getloadavg()[0]:.2f}):")
    for name, rs in rows.items():
        print(f"  {name:10s} p50 {med(r['service_ms']['50'] for r in rs):.3f}  "
              f"p99 {med(r['service_ms']['99'] for r in rs):.3f}  "
              f"p99.9 {med(r['service_ms']['99.9'] for r in rs):.3f}  "
              f"proxy CPU {med(r['proxy_us'] for r in rs):.1f} us/req")
    for name in rows:
        if name == "local":
            continue
        for p in ("50", "99", "99.9"):
            d = [r["service_ms"][p] - l["service_ms"][p] for r, l in zip(rows[name], rows["local"])]
            print(f"  {name} - local, p{p} per round: {', '.join(f'{x:+.3f}' for x in d)} ms "
                  f"(median {med(d):+.3f})")
        if ns.access_log:
            d = [r["proxy_ms"]["99"] - l["proxy_ms"]["99"] for r, l in zip(rows[name], rows["local"])]
            print(f"  {name} - local, p99 in the proxy per round: "
                  f"{', '.join(f'{x:+.3f}' for x in d)} ms (median {med(d):+.3f})")
        d = [r["proxy_us"] - l["proxy_us"] for r, l in zip(rows[name], rows["local"])]
        print(f"  {name} - local, proxy CPU per request: {', '.join(f'{x:+.1f}' for x in d)} us "
              f"(median {med(d):+.1f})")
    print(f"Redis failures logged: {down}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("workers")
    w.add_argument("--threads", type=int, default=4)
    w.add_argument("--limit", type=int, default=100)
    w.add_argument("--duration", type=int, default=5)
    s = sub.add_parser("share")
    s.add_argument("--instances", type=int, default=2)
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--limit", type=int, default=1000)
    s.add_argument("--window", type=float, default=60.0)
    s.add_argument("--duration", type=int, default=65)
    lat = sub.add_parser("latency")
    lat.add_argument("--rate", type=float, default=5000)
    lat.add_argument("--rounds", type=int, default=5)
    lat.add_argument("--duration", type=int, default=10)
    lat.add_argument("--pin", action="store_true")
    lat.add_argument("--origin", choices=("nginx", "python"), default="nginx")
    lat.add_argument("--sync-interval", type=float, default=0.005,
                     help="the Redis-backed proxy's sync_interval_seconds")
    pc = sub.add_parser("paced")
    pc.add_argument("--rate", type=float, default=5000)
    pc.add_argument("--rounds", type=int, default=6)
    pc.add_argument("--duration", type=float, default=10)
    pc.add_argument("--warmup", type=float, default=2)
    pc.add_argument("--connections", type=int, default=50)
    pc.add_argument("--pin", action="store_true",
                    help="proxies on CPU 0; origin, client and Redis on CPU 1")
    pc.add_argument("--base", metavar="PATH",
                    help="also run the Redis-backed proxy from this checkout's package folder")
    pc.add_argument("--python-origin", action="store_true", help="the harness origin, not nginx")
    pc.add_argument("--sync-interval", type=float, default=0.005,
                    help="the Redis-backed proxy's sync_interval_seconds")
    pc.add_argument("--sync-events", type=int, default=64,
                    help="the Redis-backed proxy's sync_events (with a --sync-interval of "
                         "hours and a huge --sync-events, only the checks remain)")
    pc.add_argument("--access-log", action="store_true",
                    help="JSON access logs on both proxies: their own time per request "
                    "(the records' duration) beside the client's")
    pc.add_argument("--redis-idle", action="store_true",
                    help="run Redis under SCHED_IDLE: its CPU use does not delay the proxy, "
                    "the client or the origin (Redis on a machine of its own)")
    pc.add_argument("--redis-cpu", type=int, metavar="N",
                    help="with --pin: Redis on CPU N instead of beside the client (0: beside "
                    "the proxies, off the client's saturated CPU)")
    ns = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="sluiceway-bench-") as folder:
        {"workers": cmd_workers, "share": cmd_share, "latency": cmd_latency,
         "paced": cmd_paced}[ns.cmd](ns, folder)


if __name__ == "__main__":
    main()
