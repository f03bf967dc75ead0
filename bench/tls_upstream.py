#!/usr/bin/env python3
"""Requests per proxy CPU-second through a TLS upstream.

What runs (all on 127.0.0.1): an nginx origin (1 worker, pinned to CPU 1)
serving /small (5 bytes) and /16k over TLS with a certificate from a CA
made for the run; sluiceway (1 worker, pinned to CPU 0) whose only hook
returns ``HttpPeer(origin, tls=True, ca_file=<the CA>)``, so every request
goes upstream on a pooled TLS connection; optionally the same proxy from
other checkouts (``--compare NAME=DIR``) and nginx as a proxy
(``proxy_ssl`` with keepalive) for reference. wrk (1 thread, pinned to
CPU 1) drives plain HTTP to each proxy in turn, rounds interleaved, so
every proxy sees the same machine state.

Reported per body and proxy: requests/s, p99, the proxy's CPU seconds
(utime+stime from /proc/PID/stat) and requests per proxy CPU-second
(median of the rounds), and each checkout's ratio to the first.

Usage:
    python bench/tls_upstream.py [--duration 10] [--rounds 3]
        [--connections 50] [--compare NAME=DIR ...] [--no-nginx]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nginx_compare as nc  # noqa: E402

APP = '''
import os
from sluiceway.proxy import HttpPeer, ProxyHttp

ORIGIN = ("127.0.0.1", int(os.environ["BENCH_ORIGIN_PORT"]))
CA = os.environ["BENCH_CA"]


class BenchApp(ProxyHttp):
    def upstream_peer(self, session, ctx):
        return HttpPeer(ORIGIN, tls=True, sni="localhost", ca_file=CA)
'''

# nginx_compare's origin and proxy, with TLS between them
ORIGIN_TLS = nc.ORIGIN_HTTP.replace(
    "listen 127.0.0.1:{port} backlog=4096;",
    "listen 127.0.0.1:{port} ssl backlog=4096;\n"
    "        ssl_certificate {dir}/srv.pem;\n"
    "        ssl_certificate_key {dir}/srv.key;\n"
    "        ssl_protocols TLSv1.2 TLSv1.3;")

PROXY_TLS = nc.PROXY_HTTP.replace("proxy_pass http://", "proxy_pass https://").replace(
    "proxy_buffering on;",
    "proxy_ssl_trusted_certificate {dir}/ca.pem;\n"
    "            proxy_ssl_verify on;\n"
    "            proxy_ssl_name localhost;\n"
    "            proxy_ssl_session_reuse on;")


def make_certs(d):
    def run(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=sluiceway bench CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "srv.key", "-out", "srv.csr",
        "-subj", "/CN=localhost")
    with open(os.path.join(d, "ext.cnf"), "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "srv.pem", "-days", "2", "-extfile", "ext.cnf")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--compare", action="append", default=[], metavar="NAME=DIR")
    ap.add_argument("--no-nginx", action="store_true", help="leave out nginx as a proxy")
    ns = ap.parse_args(argv)

    tmp = nc.bench_dir("sw-tls-bench-", {"bench_app.py": APP, "sw.yaml": nc.SW_YAML},
                       {"16k": b"b" * 16384})
    make_certs(tmp)
    for name in ("srv.key", "srv.pem", "ca.pem"):
        os.chmod(os.path.join(tmp, name), 0o644)   # nginx workers read them

    o_port = nc.free_port()
    procs = []
    try:
        procs.append(nc.start_nginx(tmp, "origin", ORIGIN_TLS.format(port=o_port, dir=tmp), 1))
        targets = {}
        if not ns.no_nginx:
            n_port = nc.free_port()
            pr = nc.start_nginx(tmp, "proxy", PROXY_TLS.format(port=n_port, origin=o_port, dir=tmp), 0)
            procs.append(pr)
            targets["nginx"] = (n_port, pr, True)
        trees = [("this", nc.REPO)] + [tuple(s.split("=", 1)) for s in ns.compare]
        for name, tree in trees:
            port = nc.free_port()
            env = dict(os.environ, BENCH_ORIGIN_PORT=str(o_port), BENCH_CA=os.path.join(tmp, "ca.pem"),
                       PYTHONPATH=os.path.join(os.path.abspath(tree), "corepy") + os.pathsep + tmp)
            pr = nc.start_sluiceway(name, tmp, port, env)
            procs.append(pr)
            targets[name] = (port, pr, False)
        nc.wait_port(o_port)
        pids = {}
        for name, (port, pr, is_nginx) in targets.items():
            nc.wait_port(port, timeout=30)
            pids[name] = nc.worker_pid(pr.p.pid) if is_nginx else nc.sluiceway_pid(pr.p.pid)
        for name, (port, _, _) in targets.items():
            nc.run_wrk(port, "/small", 2, ns.connections)   # warm up: pools, TLS sessions
        results = {}
        for rnd in range(ns.rounds):
            for path in ("/small", "/16k"):
                for name, (port, _, _) in targets.items():
                    r = nc.measure(port, path, ns.duration, ns.connections, pids[name])
                    results.setdefault((path, name), []).append(r)
                    print(f"round {rnd + 1} {path:6} {name:9} rps={r['rps']:8.0f} p99={r['p99']:6.2f}ms "
                          f"cpu={r['cpu']:5.2f}s req/cpu-s={r['rpcpu']:7.0f} errors={r['errors']} "
                          f"{r['socket_errors']}", flush=True)
        print()
        first = trees[0][0]
        print(f"{'body':6} {'proxy':9} {'rps':>8} {'p99 ms':>7} {'cpu s':>6} {'req/cpu-s':>10} {'vs ' + first:>9}")
        for path in ("/small", "/16k"):
            for name in targets:
                rs = results[(path, name)]
                med = lambda k: statistics.median(r[k] for r in rs)  # noqa: E731
                ratio = statistics.median(a["rpcpu"] / b["rpcpu"] for a, b in
                                          zip(rs, results[(path, first)]))
                print(f"{path:6} {name:9} {med('rps'):8.0f} {med('p99'):7.2f} {med('cpu'):6.2f} "
                      f"{med('rpcpu'):10.0f} {ratio:9.2f}")
    finally:
        nc.stop_all(procs, tmp)


if __name__ == "__main__":
    main()
