#!/usr/bin/env python3
"""Benchmark sluiceway's TLS listeners against nginx terminating TLS.

What runs (all on 127.0.0.1, every process started here and stopped here):
  * origin: nginx, 1 worker, plain HTTP, /small (5 bytes) and /16k (16 KiB),
    the same for both proxies (bench/nginx_compare.py's origin);
  * nginx as the TLS-terminating proxy: 1 worker, access log off, keep-alive
    upstream (``keepalive 64``), two TLS listeners: one with an ECDSA P-256
    certificate, one with an RSA 2048 certificate;
  * sluiceway: 1 worker, the hooks of bench/nginx_compare.py (read one
    header, return an HttpPeer), access log off, the same two listeners
    (``svc.add_tls(addr, cert, key)``) with the same certificate files.
The proxies are pinned to CPU 0, the clients and the origin to CPU 1. Rounds
are interleaved (nginx, sluiceway, nginx, ...) so both see the same machine.

TLS settings, the same on both sides, given explicitly to both:
TLS 1.2 and 1.3; the TLS 1.2 cipher list ``CIPHERS`` (Mozilla's
"intermediate", sluiceway's default) with the server's preference (Python's
server contexts set ``OP_CIPHER_SERVER_PREFERENCE``; nginx
``ssl_prefer_server_ciphers on``); TLS 1.3's suites and the key-exchange
groups OpenSSL's defaults on both (``ssl_ecdh_curve auto``); session
tickets on (OpenSSL's own ticket keys on both) and OpenSSL's built-in
session cache (Python's default; nginx ``ssl_session_cache builtin``). Both
link the same libssl (``nginx -V``; ``ldd`` of Python's ``_ssl``). Before
measuring, ``openssl s_client -brief`` connects to every listener with each
protocol and the negotiated protocol, cipher, group and signature are
printed for both proxies; a difference is reported as a warning.

Rows (all in requests or handshakes per proxy CPU-second: the proxy's
utime+stime from /proc/PID/stat over the run):
  * ``ka /small``, ``ka /16k``: keep-alive HTTPS, wrk (1 thread, 50
    connections) over https to the ECDSA listener. wrk negotiates TLS 1.3,
    TLS_AES_256_GCM_SHA384 over X25519 (seen in nginx's $ssl_protocol,
    $ssl_cipher and $ssl_curve), as the TLS 1.3 probe does.
  * ``full ecdsa 1.3`` ... ``full rsa 1.2``: full handshakes, one GET
    /small each (HTTP/1.0: the proxy answers and closes), ``openssl s_time
    -new`` (several processes at once). s_time -new starts every connection
    with a fresh SSL object and no session, so every handshake is a full
    one whatever the server offers. wrk with ``Connection: close`` is not
    used for this: it reconnects with the same SSL object (``SSL_clear``),
    which keeps the last session, so it resumes whenever the server allows
    it (seen: 94 of 96 ``Connection: close`` requests to nginx resumed
    over TLS 1.3, 846 of 848 over TLS 1.2),
    and turning resumption off on the server cannot be done alike on both
    (Python exposes no switch for OpenSSL's session-ID cache).
  * ``resumed 1.3``, ``resumed 1.2``: resumed handshakes, ``openssl s_time
    -reuse`` (the session of its first connection offered on every later
    one, tickets on both servers), one GET /small each. s_time prints one
    character per connection (``r``: resumed); the share resumed is
    reported beside the rate.
  * ``plain close``: for reference, what a new connection per request
    costs without TLS: wrk over plain HTTP with ``Connection: close`` (a
    third listener on both proxies). What the handshake rows lose beyond
    this row's ratio is TLS's; the rest is the proxy's per-connection work.
  * idle memory: N TLS 1.3 connections to the ECDSA listener, one
    keep-alive request each, then left idle; the RSS growth of the proxy's
    worker divided by N.

Usage:
    python bench/tls_compare.py [--duration 10] [--rounds 3]
        [--connections 50] [--procs 4] [--idle 2000] [--skip-idle] [--warmup 2]
        [--rows ka,full,resumed | ROW NAMES] [--compare NAME=DIR ...]
        [--nginx-only] [--perf DIR]

``--compare before=/path/to/other/checkout`` runs a second sluiceway from
that checkout's build in the same rounds. ``--nginx-only`` measures nginx
alone (to check the harness on a tree without TLS listeners). ``--perf DIR``
samples each proxy with ``perf record`` during the last round (the CPU
seconds then include perf's own interruptions: ratios from such a round are
rough).

Needs: nginx, wrk, openssl, taskset, a built checkout.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import resource
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nginx_compare as nc  # noqa: E402

# The proxy under test: nginx_compare's app, with TLS listeners given by
# BENCH_TLS ("addr=cert=key;..."). Run as a script so that it can add them.
LAUNCHER = nc.SLUICEWAY_APP + '''
from sluiceway.server import Server, http_proxy_service


def main():
    server = Server.from_args()
    svc = http_proxy_service(server.configuration, BenchApp())
    for spec in os.environ["BENCH_TLS"].split(";"):
        addr, cert, key = spec.split("=")
        svc.add_tls(addr, cert, key, ciphers=os.environ["BENCH_CIPHERS"])
    svc.add_tcp(os.environ["BENCH_PLAIN"])
    server.add_service(svc)
    server.run_forever()


if __name__ == "__main__":
    main()
'''

PROXY_TLS = """
    upstream origin {{
        server 127.0.0.1:{origin};
        keepalive 64;
    }}
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_ciphers {ciphers};
    ssl_prefer_server_ciphers on;
    ssl_ecdh_curve auto;
    ssl_session_tickets on;
    ssl_session_cache builtin;
{servers}
    server {{
        listen 127.0.0.1:{plain} backlog=4096;
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering on;
        }}
    }}
"""

PROXY_TLS_SERVER = """
    server {{
        listen 127.0.0.1:{port} ssl backlog=4096;
        ssl_certificate {dir}/{cert}.pem;
        ssl_certificate_key {dir}/{cert}.key;
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering on;
        }}
    }}
"""

CERTS = ("ecdsa", "rsa")
KA_ROWS = [("ka /small", "/small"), ("ka /16k", "/16k")]
PLAIN_ROWS = ["plain close"]
FULL_ROWS = [(f"full {c} {v}", c, v) for c in CERTS for v in ("1.3", "1.2")]
RESUMED_ROWS = [(f"resumed {v}", "ecdsa", v) for v in ("1.3", "1.2")]


# TLS 1.2 suites for both proxies: Mozilla's "intermediate" list.
CIPHERS = ("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
           "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
           "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
           "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305")


def make_certs(d: str) -> None:
    """Self-signed certificates for localhost and 127.0.0.1: ecdsa.pem/key
    (P-256) and rsa.pem/key (2048 bits). Made for the run, never kept."""
    for name, key in (("ecdsa", ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]),
                      ("rsa", ["-newkey", "rsa:2048"])):
        subprocess.run(["openssl", "req", "-x509", *key, "-nodes", "-sha256", "-days", "2",
                        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                       cwd=d, check=True, capture_output=True)
        for ext in ("pem", "key"):
            os.chmod(os.path.join(d, f"{name}.{ext}"), 0o644)   # nginx's worker reads them


def probe(port: int, version: str) -> str:
    """What a default OpenSSL client negotiates with the listener on
    ``port`` when it allows only TLS ``version``: protocol, cipher, group."""
    flag = {"1.3": "-tls1_3", "1.2": "-tls1_2"}[version]
    try:
        p = subprocess.run(["openssl", "s_client", "-brief", flag, "-connect", f"127.0.0.1:{port}"],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        return "no answer"
    out = p.stdout + p.stderr
    got = []
    for label in ("Protocol version", "Ciphersuite", "Server Temp Key", "Signature type"):
        m = re.search(rf"^{label}: (.*)$", out, re.M)
        got.append(m.group(1).strip() if m else "?")
    return " / ".join(got)


def run_wrk_tls(port, path, duration, conns, scheme="https", close=False):
    """nginx_compare.run_wrk over https (or, ``close``: plain HTTP, a new
    connection per request)."""
    cmd = ["taskset", "-c", "1", "wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--latency",
           *(["-H", "Connection: close"] if close else []), f"{scheme}://127.0.0.1:{port}{path}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30).stdout
    m = re.search(r"(\d+) requests in", out)
    if not m:
        raise RuntimeError(f"wrk said: {out[-500:]}")
    total = int(m.group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock_err = re.search(r"Socket errors: (.*)", out)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    v, unit = (float(p99.group(1)), p99.group(2)) if p99 else (float("nan"), "ms")
    return {"count": total, "p99": v / 1000.0 if unit == "us" else v * 1000.0 if unit == "s" else v,
            "errors": (int(errors.group(1)) if errors else 0),
            "note": sock_err.group(1) if sock_err else ""}


def run_s_time(port, mode, version, duration, procs):
    """``procs`` s_time processes at once (``mode`` "new" or "reuse"),
    each fetching /small on every connection. Returns the connections
    made and, for "reuse", the share that was resumed."""
    flag = {"1.3": "-tls1_3", "1.2": "-tls1_2"}[version]
    cmd = ["taskset", "-c", "1", "openssl", "s_time", "-connect", f"127.0.0.1:{port}", f"-{mode}",
           flag, "-time", str(duration), "-www", "/small"]
    ps = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
          for _ in range(procs)]
    total, reused, marks, errors = 0, 0, 0, 0
    for p in ps:
        try:
            out, _ = p.communicate(timeout=duration + 30)
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
        # "N connections in T real seconds" (the last such line is the timed
        # part: with -reuse, after the one full connection it starts from)
        found = re.findall(r"(\d+) connections in [\d.]+ real seconds", out)
        if not found:
            errors += 1
            continue
        total += int(found[-1])
        if mode == "reuse":
            body = out.split("Now timing with session id reuse.")[-1]
            seq = "".join(re.findall(r"^[r*.]+$", body, re.M))
            reused += seq.count("r")
            marks += len(seq)
        if "ERROR" in out or "error" in out.lower().split("connections")[0]:
            errors += 1
    return {"count": total, "p99": float("nan"), "errors": errors,
            "note": f"resumed {reused}/{marks}" if mode == "reuse" else ""}


def measure(fn, pid, perf_out=None):
    """Run ``fn`` (a load) and count ``pid``'s CPU seconds meanwhile; with
    ``perf_out``, ``perf record`` samples ``pid`` (call graphs) into it."""
    rec = None
    if perf_out:
        # DWARF call graphs: libpython, libssl and libcrypto have no frame pointers
        rec = subprocess.Popen(["perf", "record", "-q", "-F", "499", "--call-graph", "dwarf,32768",
                                "-p", str(pid), "-o", perf_out],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)
    c0 = nc.cpu_seconds(pid)
    try:
        r = fn()
    finally:
        if rec is not None:
            rec.send_signal(signal.SIGINT)
            rec.wait(60)
    r["cpu"] = nc.cpu_seconds(pid) - c0
    r["rate"] = r["count"] / r["cpu"] if r["cpu"] > 0 else float("nan")
    return r


def idle_rss_tls(port, pid, n):
    """RSS growth of ``pid`` per TLS keep-alive connection left idle after
    one request (TLS 1.3, the client does not check the certificate)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    req = b"GET /small HTTP/1.1\r\nHost: x\r\n\r\n"
    socks = []
    base = nc.rss_bytes(pid)
    try:
        for _ in range(n):
            s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10))
            s.sendall(req)
            nc._read_response(s)
            socks.append(s)
        time.sleep(1.0)
        return (nc.rss_bytes(pid) - base) / n
    finally:
        for s in socks:
            s.close()


def corepy(tree: str) -> str:
    """The package folder of checkout ``tree`` when it is built in place
    (``make build``); "" for this repository when it is not, so that the
    sluiceway this Python imports (an installed wheel, as in CI) runs."""
    path = os.path.join(tree, "corepy")
    if glob.glob(os.path.join(path, "sluiceway", "_engine*.so")):
        return path
    if os.path.abspath(tree) == os.path.abspath(nc.REPO):
        return ""
    raise SystemExit(f"{tree} is not built in place: run `make build` there")


def _env_path(tree: str, *more: str) -> dict:
    parts = [p for p in (corepy(tree), *more) if p]
    env = dict(os.environ)
    if parts:
        env["PYTHONPATH"] = os.pathsep.join(parts)
    return env


def sluiceway_has_tls(tree: str) -> bool:
    """Whether the checkout ``tree`` has TLS listeners (``add_tls``)."""
    code = "import sluiceway.server as s; print(hasattr(s.ProxyService, 'add_tls'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=_env_path(tree))
    return out.stdout.strip() == "True"


def select_rows(spec):
    names = [r[0] for r in KA_ROWS + FULL_ROWS + RESUMED_ROWS] + PLAIN_ROWS
    if not spec:
        return names
    want = []
    for part in spec.split(","):
        part = part.strip()
        hits = [n for n in names if n == part or n.split()[0] == part]
        if not hits:
            raise SystemExit(f"--rows: no row {part!r}; rows are: {', '.join(names)} "
                             "(or ka, full, resumed, plain)")
        want += [h for h in hits if h not in want]
    return want


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=int, default=10, help="seconds per measurement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=50, help="wrk's connections")
    ap.add_argument("--procs", type=int, default=4, help="s_time processes at once")
    ap.add_argument("--idle", type=int, default=2000, help="idle TLS connections")
    ap.add_argument("--skip-idle", action="store_true")
    ap.add_argument("--warmup", type=int, default=2, help="seconds of load per proxy before measuring")
    ap.add_argument("--rows", help="comma-separated rows or kinds (ka, full, resumed)")
    ap.add_argument("--compare", action="append", default=[], metavar="NAME=DIR",
                    help="also run the sluiceway built in checkout DIR, reported as NAME")
    ap.add_argument("--nginx-only", action="store_true", help="measure nginx alone")
    ap.add_argument("--perf", metavar="DIR", help="in the last round, sample every proxy with "
                    "perf record into DIR/<proxy>.<row>.data (for perf report --sort dso,sym)")
    ns = ap.parse_args(argv)
    rows = select_rows(ns.rows)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 2 * ns.idle + 1000)), hard))

    trees = [] if ns.nginx_only else [("sluiceway", nc.REPO)]
    for spec in ns.compare:
        name, _, where = spec.partition("=")
        if not name or not where or name in ("nginx", "sluiceway"):
            ap.error(f"--compare wants NAME=DIR with a new NAME, got {spec!r}")
        trees.append((name, os.path.abspath(where)))
    for name, tree in trees:
        if not sluiceway_has_tls(tree):
            raise SystemExit(f"{name} ({tree}) has no TLS listeners (ProxyService.add_tls); "
                             "use --nginx-only to check the harness")

    tmp = nc.bench_dir("sw-tls-cmp-", {"launch.py": LAUNCHER, "sw.yaml": nc.SW_YAML},
                       {"16k": b"b" * 16384})
    make_certs(tmp)

    o_port = nc.free_port()
    procs = []
    result = {"rows": rows, "runs": {}, "ratios": {}, "idle": {}, "probe": {}}
    try:
        procs.append(nc.start_nginx(tmp, "origin", nc.ORIGIN_HTTP.format(port=o_port, dir=tmp), 1))
        ports = {"nginx": {c: nc.free_port() for c in CERTS + ("plain",)}}
        servers = "".join(PROXY_TLS_SERVER.format(port=ports["nginx"][c], dir=tmp, cert=c)
                          for c in CERTS)
        nproxy = nc.start_nginx(tmp, "proxy", PROXY_TLS.format(
            origin=o_port, ciphers=CIPHERS, servers=servers, plain=ports["nginx"]["plain"]), 0)
        procs.append(nproxy)
        launched = {}
        for name, tree in trees:
            ports[name] = {c: nc.free_port() for c in CERTS + ("plain",)}
            env = dict(_env_path(tree, tmp), BENCH_ORIGIN_PORT=str(o_port), BENCH_CIPHERS=CIPHERS,
                       BENCH_PLAIN=f"127.0.0.1:{ports[name]['plain']}",
                       BENCH_TLS=";".join(f"127.0.0.1:{ports[name][c]}={tmp}/{c}.pem={tmp}/{c}.key"
                                          for c in CERTS))
            launched[name] = nc.Proc(name, [sys.executable, os.path.join(tmp, "launch.py"),
                                            "-c", os.path.join(tmp, "sw.yaml")], 0, env=env, cwd=tmp)
            procs.append(launched[name])
        nc.wait_port(o_port)
        for name in ports:
            for port in ports[name].values():
                nc.wait_port(port, timeout=30)
        pids = {"nginx": nc.worker_pid(nproxy.p.pid)}
        for name, pr in launched.items():
            pids[name] = nc.sluiceway_pid(pr.p.pid)
        targets = list(ports)

        # The same TLS on both sides: what a default client negotiates.
        for c in CERTS:
            for v in ("1.3", "1.2"):
                seen = {name: probe(ports[name][c], v) for name in targets}
                result["probe"][(c, v)] = seen
                for name in targets:
                    print(f"negotiated {c:5} TLS {v} {name:10}: {seen[name]}", flush=True)
                if len(set(seen.values())) > 1:
                    print(f"WARNING: {c} TLS {v}: the proxies negotiate differently", flush=True)

        def job(row, name):
            if row == "plain close":
                return lambda: run_wrk_tls(ports[name]["plain"], "/small", ns.duration,
                                           ns.connections, "http", close=True)
            if row.startswith("ka "):
                path = dict(KA_ROWS)[row]
                return lambda: run_wrk_tls(ports[name]["ecdsa"], path, ns.duration, ns.connections)
            kind, cert, version = next(r for r in FULL_ROWS + RESUMED_ROWS if r[0] == row)
            mode = "new" if kind.startswith("full") else "reuse"
            return lambda: run_s_time(ports[name][cert], mode, version, ns.duration, ns.procs)

        # warm up: pools, allocators, the session cache
        for name in targets if ns.warmup > 0 else ():
            run_wrk_tls(ports[name]["ecdsa"], "/small", ns.warmup, ns.connections)
            run_s_time(ports[name]["ecdsa"], "new", "1.3", ns.warmup, 1)

        runs = result["runs"]
        ratios = result["ratios"]
        for rnd in range(ns.rounds):
            for row in rows:
                got = {}
                for name in targets:
                    perf_out = None
                    if ns.perf and rnd == ns.rounds - 1:
                        os.makedirs(ns.perf, exist_ok=True)
                        tag = row.replace(" ", "_").replace("/", "")
                        perf_out = os.path.join(ns.perf, f"{name}.{tag}.data")
                    r = got[name] = measure(job(row, name), pids[name], perf_out)
                    runs.setdefault((row, name), []).append(r)
                    print(f"round {rnd + 1} {row:15} {name:10} n={r['count']:7d} cpu={r['cpu']:5.2f}s "
                          f"per-cpu-s={r['rate']:8.0f} p99={r['p99']:6.2f}ms errors={r['errors']} "
                          f"{r['note']}", flush=True)
                for name in targets:
                    if name != "nginx":
                        ratios.setdefault((row, name), []).append(got[name]["rate"] / got["nginx"]["rate"])

        if ns.rounds:
            print()
            print(f"{'row':15} {'proxy':10} {'per cpu-s':>10} {'us cpu each':>11} {'vs nginx':>9}  per round")
            for row in rows:
                for name in targets:
                    med = statistics.median(r["rate"] for r in runs[(row, name)])
                    if name == "nginx":
                        print(f"{row:15} {name:10} {med:10.0f} {1e6 / med:11.1f}")
                    else:
                        rs = ratios[(row, name)]
                        print(f"{row:15} {name:10} {med:10.0f} {1e6 / med:11.1f} "
                              f"{statistics.median(rs):8.2f}x  " + ", ".join(f"{x:.2f}" for x in rs))

        if not ns.skip_idle and ns.idle > 0:
            print()
            for name in targets:
                per = result["idle"][name] = idle_rss_tls(ports[name]["ecdsa"], pids[name], ns.idle)
                print(f"idle TLS keep-alive RSS {name:10}: {per:7.0f} bytes per connection "
                      f"({ns.idle} connections)", flush=True)
    finally:
        nc.stop_all(procs, tmp)
    return result


if __name__ == "__main__":
    main()
