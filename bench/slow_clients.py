#!/usr/bin/env python3
"""Legitimate traffic beside slow clients: sluiceway against nginx.

What runs (all on 127.0.0.1; the same layout as bench/nginx_compare.py):
  * origin: nginx, 1 worker (CPU 1); nginx as a reverse proxy, 1 worker
    (CPU 0); sluiceway, 1 worker, hooks active (CPU 0);
  * legitimate load: wrk -t1 -c50 (CPU 1) on /small, 10 s rounds;
  * slow clients (a separate process, CPU 1): N connections sending a
    request head a byte every few seconds and M connections sending a body
    (to /sink, where the origin reads the whole body before answering) a
    byte every few seconds; a slow client that is closed reconnects, so the
    pressure stays the same through a round.

For each proxy: the quiet figures, then the same with the slow clients, in
interleaved rounds; reported: requests/s, p99 and requests per proxy
CPU-second, and the loaded/quiet ratios. Slow clients are counted by how
their connections ended (408 answered, closed without an answer).

Usage:
    python bench/slow_clients.py [--heads 5000] [--bodies 2000] [--gap 3]
        [--duration 10] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nginx_compare as nc  # noqa: E402

SLOW = r'''
import asyncio, random, sys, time
port, heads, bodies, gap, seconds = (int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]),
                                     float(sys.argv[4]), float(sys.argv[5]))
stats = {"connected": 0, "408": 0, "closed": 0, "refused": 0}
HEAD = b"GET /small HTTP/1.1\r\nHost: x\r\nUser-Agent: slow\r\n\r\n"
BODY_HEAD = b"POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"

async def one(kind, stop):
    await asyncio.sleep(random.random() * gap)
    while time.monotonic() < stop:
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            stats["refused"] += 1
            await asyncio.sleep(1)
            continue
        stats["connected"] += 1
        data = HEAD if kind == "head" else BODY_HEAD
        i = 0 if kind == "head" else len(BODY_HEAD)
        if kind == "body":
            w.write(BODY_HEAD)
        try:
            while time.monotonic() < stop:
                w.write(data[i:i + 1] if kind == "head" else b"x")
                i += 1
                if kind == "head" and i >= len(data):
                    i = 0   # (never completes: start another head's bytes)
                try:
                    got = await asyncio.wait_for(r.read(100), gap)
                except asyncio.TimeoutError:
                    continue
                stats["408" if b" 408 " in got[:20] else "closed"] += 1
                break
        except OSError:
            stats["closed"] += 1
        w.close()

async def main():
    stop = time.monotonic() + seconds
    await asyncio.gather(*[one("head", stop) for _ in range(heads)],
                         *[one("body", stop) for _ in range(bodies)])
    print(stats, flush=True)

try:
    import uvloop
    uvloop.install()
except ImportError:
    pass
asyncio.run(main())
'''


# The origin of nginx_compare, plus /sink: nginx reads a request body whole
# before answering (it proxies to itself), so a dripping body stays open.
ORIGIN = nc.ORIGIN_HTTP.rstrip().rstrip("}") + """
        location = /sink {{ proxy_pass http://127.0.0.1:{port}/small; }}
    }}
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--heads", type=int, default=5000)
    ap.add_argument("--bodies", type=int, default=2000)
    ap.add_argument("--gap", type=float, default=3.0)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--sluiceway-only", action="store_true")
    ns = ap.parse_args(argv)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    tmp = nc.bench_dir("sw-slow-", {"bench_app.py": nc.SLUICEWAY_APP, "slow.py": SLOW,
                                    "sw.yaml": nc.SW_YAML})
    o_port, n_port, s_port = nc.free_port(), nc.free_port(), nc.free_port()
    procs = []
    try:
        procs.append(nc.start_nginx(tmp, "origin", ORIGIN.format(port=o_port, dir=tmp), 1))
        targets = {}
        if not ns.sluiceway_only:
            nproxy = nc.start_nginx(tmp, "proxy", nc.PROXY_HTTP.format(port=n_port, origin=o_port), 0)
            procs.append(nproxy)
        env = dict(os.environ, BENCH_ORIGIN_PORT=str(o_port),
                   PYTHONPATH=os.path.join(nc.REPO, "corepy") + os.pathsep + tmp)
        sw = nc.start_sluiceway("sluiceway", tmp, s_port, env)
        procs.append(sw)
        for p in (o_port, s_port) + (() if ns.sluiceway_only else (n_port,)):
            nc.wait_port(p)
        if not ns.sluiceway_only:
            targets["nginx"] = (n_port, nc.worker_pid(nproxy.p.pid))
        targets["sluiceway"] = (s_port, nc.sluiceway_pid(sw.p.pid))
        for name, (port, pid) in targets.items():
            nc.run_wrk(port, "/small", 2, ns.connections)
        res = {(n, k): [] for n in targets for k in ("quiet", "slow")}
        for rnd in range(ns.rounds):
            for name, (port, pid) in targets.items():
                for kind in ("quiet", "slow"):
                    gen = None
                    if kind == "slow":
                        gen = subprocess.Popen(
                            ["taskset", "-c", "1", sys.executable, os.path.join(tmp, "slow.py"),
                             str(port), str(ns.heads), str(ns.bodies), str(ns.gap),
                             str(ns.duration + 2 * ns.gap + 2)],
                            stdout=subprocess.PIPE, text=True,
                            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE,
                                                                  (hard, hard)))
                        time.sleep(2 * ns.gap)   # every slow client connected and dripping
                    r = nc.measure(port, "/small", ns.duration, ns.connections, pid)
                    r["rss"] = nc.rss_bytes(pid) / 1e6
                    if gen is not None:
                        out, _ = gen.communicate(timeout=60)
                        r["slow"] = out.strip()
                    res[(name, kind)].append(r)
                    print(f"round {rnd + 1} {name:9} {kind:5} rps={r['rps']:8.0f} p99={r['p99']:6.2f}ms "
                          f"req/cpu-s={r['rpcpu']:7.0f} rss={r['rss']:.0f}MB errors={r['errors']} "
                          f"{r['socket_errors']} {r.get('slow', '')}", flush=True)
        print()
        for name in targets:
            q, s = res[(name, "quiet")], res[(name, "slow")]
            med = lambda rs, k: statistics.median(x[k] for x in rs)
            print(f"{name:9}: rps {med(q, 'rps'):8.0f} -> {med(s, 'rps'):8.0f} "
                  f"(x{med(s, 'rps') / med(q, 'rps'):.2f}), p99 {med(q, 'p99'):.2f} -> "
                  f"{med(s, 'p99'):.2f} ms (x{med(s, 'p99') / med(q, 'p99'):.2f}), req/cpu-s "
                  f"{med(q, 'rpcpu'):.0f} -> {med(s, 'rpcpu'):.0f}")
    finally:
        nc.stop_all(procs, tmp)


if __name__ == "__main__":
    main()
