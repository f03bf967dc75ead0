#!/usr/bin/env python3
"""CPU per MiB compressed: sluiceway's gzip against nginx's gzip module at the
same level, as reverse proxies in front of the same nginx origin.

Layout as bench/nginx_compare.py: origin nginx (CPU 1) serving an HTML file
(1 MiB of varied text, or --size); nginx proxy with `gzip on;
gzip_comp_level L; gzip_types text/html; gzip_proxied any;` and sluiceway
with `compression: true`, `compression_algorithms: [gzip]` and
`compression_gzip_level: L` (both on CPU 0); wrk (CPU 1) sends
`Accept-Encoding: gzip`, 8 connections, interleaved rounds. Reported per
proxy: requests/s, the proxy's CPU seconds per MiB of uncompressed body
it compressed, and sluiceway's ratio to nginx (below 1: cheaper).

Usage:
    python bench/compression_compare.py [--level 6] [--size 1048576]
        [--duration 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nginx_compare as nc  # noqa: E402

# nginx_compare's proxy with gzip on (and proxy_buffering left at its default)
PROXY_GZIP = nc.PROXY_HTTP.replace("            proxy_buffering on;\n", "").replace(
    "backlog=4096;\n",
    "backlog=4096;\n"
    "        gzip on;\n"
    "        gzip_comp_level {level};\n"
    "        gzip_types text/html;\n"
    "        gzip_proxied any;\n"
    "        gzip_min_length 256;\n")

ORIGIN = """
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {dir}/www;
        location = /page.html {{ default_type text/html; }}
    }}
"""


def _html(size: int) -> bytes:
    rnd = random.Random(7)
    words = [bytes(rnd.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rnd.randint(2, 9)))
             for _ in range(4000)]
    out = bytearray(b"<!doctype html><html><body>\n")
    while len(out) < size:
        out += b"<p class=\"c%d\">" % rnd.randint(0, 40) + b" ".join(
            rnd.choice(words) for _ in range(rnd.randint(5, 30))) + b"</p>\n"
    return bytes(out[:size])


def run_wrk(port, duration, conns):
    script = os.path.join(tempfile.gettempdir(), "sw-gzip-wrk.lua")
    with open(script, "w") as f:
        f.write('wrk.headers["Accept-Encoding"] = "gzip"\n')
    cmd = ["taskset", "-c", "1", "wrk", "-t1", f"-c{conns}", f"-d{duration}s", "-s", script,
           f"http://127.0.0.1:{port}/page.html"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30).stdout
    import re
    return int(re.search(r"(\d+) requests in", out).group(1)), \
        float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--level", type=int, default=6)
    ap.add_argument("--size", type=int, default=1 << 20)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=8)
    ns = ap.parse_args(argv)
    tmp = nc.bench_dir("sw-gzip-", {
        "bench_app.py": nc.SLUICEWAY_APP,
        "sw.yaml": f"version: 1\nthreads: 1\ncompression: true\ncompression_algorithms: [gzip]\n"
                   f"compression_gzip_level: {ns.level}\n"}, {"page.html": _html(ns.size)})
    o_port, n_port, s_port = nc.free_port(), nc.free_port(), nc.free_port()
    procs = []
    try:
        procs.append(nc.start_nginx(tmp, "origin", ORIGIN.format(port=o_port, dir=tmp), 1))
        nproxy = nc.start_nginx(tmp, "proxy", PROXY_GZIP.format(port=n_port, origin=o_port,
                                                                level=ns.level), 0)
        procs.append(nproxy)
        env = dict(os.environ, BENCH_ORIGIN_PORT=str(o_port),
                   PYTHONPATH=os.path.join(nc.REPO, "corepy") + os.pathsep + tmp)
        sw = nc.start_sluiceway("sluiceway", tmp, s_port, env)
        procs.append(sw)
        for p in (o_port, n_port, s_port):
            nc.wait_port(p)
        targets = {"nginx": (n_port, nc.worker_pid(nproxy.p.pid)), "sluiceway": (s_port, sw.p.pid)}
        for port, _ in targets.values():
            run_wrk(port, 2, ns.connections)
        mib = ns.size / (1 << 20)
        per = {name: [] for name in targets}
        ratios = []
        for rnd in range(ns.rounds):
            got = {}
            for name, (port, pid) in targets.items():
                c0 = nc.cpu_seconds(pid)
                n, rps = run_wrk(port, ns.duration, ns.connections)
                cpu = nc.cpu_seconds(pid) - c0
                got[name] = cpu / (n * mib)
                per[name].append(got[name])
                print(f"round {rnd + 1} {name:9} rps={rps:7.1f} cpu={cpu:5.2f}s "
                      f"cpu/MiB={got[name] * 1000:6.2f} ms", flush=True)
            ratios.append(got["sluiceway"] / got["nginx"])
        print()
        for name in targets:
            print(f"{name:9}: {statistics.median(per[name]) * 1000:6.2f} ms of proxy CPU per MiB "
                  f"compressed (gzip level {ns.level})")
        print(f"sluiceway / nginx: x{statistics.median(ratios):.2f} (rounds: "
              + ", ".join(f"{r:.2f}" for r in ratios) + ")")
    finally:
        nc.stop_all(procs, tmp)


if __name__ == "__main__":
    main()
