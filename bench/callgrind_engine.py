#!/usr/bin/env python3
"""Instructions per proxied request inside the engine, counted by callgrind.

Runs sluiceway (1 worker, the hooks of bench/nginx_compare.py) under
``valgrind --tool=callgrind``, collecting only inside the engine's event
handler (``_IoLoop._on_ready``, which holds all per-request work: reading,
parsing, hooks, pooling, writing), in front of an nginx origin; sends a
fixed number of keep-alive requests from a few connections; and prints the
instructions counted divided by the requests. Instruction counts do not
depend on what else the machine is doing, so two builds compare exactly.

Usage:
    python bench/callgrind_engine.py [--requests 20000] [--body small|16k]
        [--tls | --tls-listen [--reconnect 1.2|1.3] | --lb ALGORITHM [--count-load]]
        [--compare NAME=DIR ...]
        [--conf "key: value" ...]

``--lb RoundRobin`` (or another algorithm of sluiceway.lb) makes
``upstream_peer`` select with a LoadBalancer over one backend (the origin) and return one cached HttpPeer per backend;
``--count-load`` lends each peer the backend's load (``HttpPeer(load=)``),
which a checkout from before that existed cannot do.

``--compare before=/path/to/checkout`` counts that checkout's build (built
in place) the same way. ``--conf`` adds a line to the configuration of
every tree counted (e.g. ``--conf "metrics: false"``).

``--tls``: the origin speaks TLS (nginx, a certificate from a CA made for
the run) and the proxy's peer is ``HttpPeer(..., tls=True, ca_file=...)``
(bench/tls_upstream.py's app). Then the whole process is counted, not only
``_on_ready``: a build whose TLS upstreams ran on asyncio transports did that
work outside it, so only the whole process compares across such builds.

``--tls-listen --reconnect 1.2`` (or 1.3): every request on a new
connection that resumes the session of the one before it, the whole
process counted (accepting and closing happen outside ``_on_ready``): what a
resumed TLS connection costs.
``--tls-listen``: the proxy listens for HTTPS (``tls_listen``, a
certificate from a CA made for the run) and the requests come over TLS on
keep-alive connections (each connection's handshake is counted too: 4 of
them in a run). Counted in ``_on_ready``, where the TLS layer runs. A build
without TLS listeners cannot be counted this way (``--compare`` trees must
have them).
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nginx_compare as nc  # noqa: E402
import tls_upstream as tu  # noqa: E402


def _drive(port, path, n, conns=4, tls=None, reconnect=False):
    req = b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    per = n // conns
    if reconnect:
        return _drive_reconnect(port, path, n, conns, tls)

    def one():
        s = socket.create_connection(("127.0.0.1", port))
        if tls is not None:
            s = tls.wrap_socket(s, server_hostname="localhost")
        buf = b""
        for _ in range(per):
            s.sendall(req)
            while True:
                i = buf.find(b"\r\n\r\n")
                if i >= 0:
                    m = re.search(rb"content-length: *(\d+)", buf[:i].lower())
                    need = i + 4 + int(m.group(1))
                    if len(buf) >= need:
                        buf = buf[need:]
                        break
                buf += s.recv(65536)
        s.close()
    ts = [threading.Thread(target=one) for _ in range(conns)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return per * conns


def _drive_reconnect(port, path, n, conns, tls):
    """n requests, each on a new TLS connection that resumes the session of
    the one before it (``Connection: close``; the proxy closes)."""
    req = b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    per = n // conns
    resumed = [0]

    def one():
        sess = None
        for _ in range(per):
            with socket.create_connection(("127.0.0.1", port)) as raw:
                with tls.wrap_socket(raw, server_hostname="localhost", session=sess) as s:
                    s.sendall(req)
                    while s.recv(65536):
                        pass
                    resumed[0] += s.session_reused
                    sess = s.session
    ts = [threading.Thread(target=one) for _ in range(conns)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if resumed[0] < per * conns * 0.9:
        raise SystemExit(f"callgrind_engine: only {resumed[0]} of {per * conns} connections "
                         "resumed their session")
    return per * conns


LB_APP = '''
import os
from sluiceway.lb import LoadBalancer, {algo}
from sluiceway.proxy import HttpPeer, ProxyHttp

PORT = int(os.environ["BENCH_ORIGIN_PORT"])


class BenchApp(ProxyHttp):
    def __init__(self):
        self.lb = LoadBalancer.from_iter([f"127.0.0.1:{{PORT}}"], {algo})
        self.peers = {{}}

    def request_filter(self, session, ctx):
        session.req_header.get("x-api-key")   # read one header
        return False

    def upstream_peer(self, session, ctx):
        backend = self.lb.select(b"", 16)
        peer = self.peers.get(backend)
        if peer is None:
            peer = self.peers[backend] = HttpPeer(backend.addr{load})
        return peer
'''


def count(tree, tmp, o_port, path, n, whole=False, tls_listen=False, reconnect=None):
    port = nc.free_port()
    conf, listen, client = os.path.join(tmp, "sw.yaml"), ["-l", f"127.0.0.1:{port}"], None
    if tls_listen:
        import ssl

        conf = os.path.join(tmp, "sw-tls.yaml")
        with open(os.path.join(tmp, "sw.yaml")) as f, open(conf, "w") as g:
            g.write(f.read() + f"tls_listen:\n  - listen: 127.0.0.1:{port}\n"
                    f"    cert: {tmp}/srv.pem\n    key: {tmp}/srv.key\n")
        listen = []
        client = ssl.create_default_context(cafile=os.path.join(tmp, "ca.pem"))
        if reconnect == "1.2":
            client.maximum_version = ssl.TLSVersion.TLSv1_2
    out = os.path.join(tmp, f"cg.{os.path.basename(tree.rstrip('/'))}.{path.strip('/')}.out")
    env = dict(os.environ, BENCH_ORIGIN_PORT=str(o_port), BENCH_CA=os.path.join(tmp, "ca.pem"),
               PYTHONPATH=os.path.join(tree, "corepy") + os.pathsep + tmp)
    collect = [] if whole else ["--toggle-collect=*_IoLoop_*_on_ready*"]
    p = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p",
                          *collect, "--dump-instr=no",
                          sys.executable, "-m", "sluiceway.cli", "run", "bench_app:BenchApp",
                          "-c", conf, *listen],
                         env=env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        nc.wait_port(port, timeout=600)          # valgrind starts slowly on a busy machine
        warm = _drive(port, path, 400, tls=client, reconnect=bool(reconnect))   # warm up (pool, free lists)
        worker = nc.sluiceway_pid(p.pid)     # the master's worker serves
        # Count from here: zero the counters, then the measured requests.
        subprocess.run(["callgrind_control", "-z", str(worker)], capture_output=True, timeout=60)
        done = _drive(port, path, n, tls=client, reconnect=bool(reconnect))
        # The count is of one worker: if it died (and the master started
        # another), its dump holds part of the requests, and a number made
        # from it would look plausible and mean nothing.
        if nc.sluiceway_pid(p.pid) != worker or not os.path.exists(f"/proc/{worker}"):
            raise SystemExit(f"callgrind_engine: the worker {worker} of {tree} died while it was "
                             "counted; no figure (see the proxy's stderr)")
        subprocess.run(["callgrind_control", "-d", str(worker)], capture_output=True, timeout=60)
    finally:
        p.send_signal(signal.SIGINT)
        p.wait(120)
    # The dump callgrind_control -d asked for (OUT.PID.N), when there is
    # one: a tree from before the master process, whose exit dump (OUT.PID)
    # then holds the shutdown only. A worker forked under valgrind does not
    # answer callgrind_control (neither -z nor -d reach it): its only dump is
    # the one it writes as it exits, counting the warm-up too.
    dumps = sorted(glob.glob(f"{out}.{worker}.*"), key=os.path.getmtime)
    if not dumps:
        dumps = [f"{out}.{worker}"]
        done += warm
    total = 0
    with open(dumps[-1]) as f:
        for line in f:
            if line.startswith("summary:") or line.startswith("totals:"):
                total = int(line.split()[1])
                break
    return total / done


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--body", choices=["small", "16k"], default="small")
    ap.add_argument("--tls", action="store_true", help="a TLS origin; count the whole process")
    ap.add_argument("--tls-listen", action="store_true",
                    help="the proxy listens for HTTPS; requests come over TLS")
    ap.add_argument("--reconnect", choices=["1.2", "1.3"],
                    help="with --tls-listen: every request on a new connection that resumes "
                         "the last one's session over that TLS version; counts the whole process")
    ap.add_argument("--compare", action="append", default=[], metavar="NAME=DIR")
    ap.add_argument("--conf", action="append", default=[], metavar="LINE",
                    help="a YAML line added to the configuration (e.g. 'metrics: false')")
    ap.add_argument("--lb", metavar="ALGORITHM", help="select with a LoadBalancer "
                    "(e.g. RoundRobin, LeastConnections)")
    ap.add_argument("--count-load", action="store_true",
                    help="with --lb: lend each HttpPeer its backend's load")
    ap.add_argument("--keep", metavar="DIR", help="copy the callgrind outputs to DIR "
                    "(for callgrind_annotate)")
    ns = ap.parse_args(argv)
    if sum(map(bool, (ns.tls, ns.lb, ns.tls_listen))) > 1:
        ap.error("--tls, --tls-listen and --lb do not combine")
    if ns.reconnect and not ns.tls_listen:
        ap.error("--reconnect goes with --tls-listen")
    tmp = tempfile.mkdtemp(prefix="sw-cg-")
    os.chmod(tmp, 0o755)
    os.makedirs(os.path.join(tmp, "www"))
    with open(os.path.join(tmp, "www", "16k"), "wb") as f:
        f.write(b"b" * 16384)
    with open(os.path.join(tmp, "bench_app.py"), "w") as f:
        if ns.tls:
            f.write(tu.APP)
        elif ns.lb:
            f.write(LB_APP.format(algo=ns.lb, load=", load=self.lb.load(backend)"
                                  if ns.count_load else ""))
        else:
            f.write(nc.SLUICEWAY_APP)
    with open(os.path.join(tmp, "sw.yaml"), "w") as f:
        f.write("version: 1\nthreads: 1\nupstream_keepalive_pool_size: 64\n" +
                "".join(line + "\n" for line in ns.conf))
    o_port = nc.free_port()
    if ns.tls_listen:
        tu.make_certs(tmp)
    if ns.tls:
        tu.make_certs(tmp)
        for name in ("srv.key", "srv.pem", "ca.pem"):
            os.chmod(os.path.join(tmp, name), 0o644)
        origin = nc.start_nginx(tmp, "origin", tu.ORIGIN_TLS.format(port=o_port, dir=tmp), 1)
    else:
        origin = nc.start_nginx(tmp, "origin", nc.ORIGIN_HTTP.format(port=o_port, dir=tmp), 1)
    try:
        nc.wait_port(o_port)
        trees = [("this", nc.REPO)] + [tuple(s.split("=", 1)) for s in ns.compare]
        for name, tree in trees:
            per = count(os.path.abspath(tree), tmp, o_port, "/" + ns.body, ns.requests,
                        ns.tls or bool(ns.reconnect), ns.tls_listen, ns.reconnect)
            where = ("in the whole process (TLS upstream)" if ns.tls else
                     f"in the whole process (a resumed TLS {ns.reconnect} connection each)"
                     if ns.reconnect else
                     "in _on_ready (HTTPS client)" if ns.tls_listen else "in _on_ready")
            print(f"{name:10} {ns.body:6} {per:10.0f} instructions per request {where}",
                  flush=True)
            if ns.keep:
                os.makedirs(ns.keep, exist_ok=True)
                for f in glob.glob(os.path.join(tmp, "cg.*")):
                    shutil.copy(f, os.path.join(ns.keep, name + "." + os.path.basename(f)))
    finally:
        origin.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
