#!/usr/bin/env python3
"""Instructions per TLS connection to a TLS listener, counted by callgrind.

Runs sluiceway (1 worker, bench/tls_compare.py's app and listener settings,
an ECDSA P-256 certificate made for the run) under ``valgrind
--tool=callgrind``, collecting only inside the engine's event handler
(``_IoLoop._on_ready``: accepting, the TLS layer, OpenSSL's handshake, the
request and its proxying, closing), in front of a plain nginx origin.
``openssl s_time`` (``-new``: full handshakes; ``-reuse``: resumed ones)
makes connections for a while, each with one ``GET /small``; the count
inside the handler is divided by the connections made. Instruction counts
do not depend on what else the machine does, so they settle what a busy
machine's CPU times cannot; kernel time (system calls) is not in them.

Prints the instructions per connection and the share of the functions
that tell OpenSSL's work from the layer's Python work around it
(``SSL_do_handshake``, ``_Conn.t_start_tls``, ``PySSL_SetError``, ...);
``--keep DIR`` keeps the callgrind output for ``callgrind_annotate
--inclusive=yes``.

``--nginx`` counts nginx terminating TLS the same way (tls_compare's
configuration, ``master_process off`` so that callgrind_control reaches
the one process, counters zeroed after a warm-up): its whole process,
event loop included, where sluiceway's count leaves out the loop around
its event handler; so the ratio slightly favours sluiceway.

Usage:
    python bench/callgrind_tls_handshake.py [--mode new|reuse] [--tls 1.2|1.3]
        [--seconds 20] [--keep DIR] [--nginx]
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nginx_compare as nc  # noqa: E402
import tls_compare as tc  # noqa: E402

SHOWN = ("SSL_do_handshake", "SSL_new", "SSL_free", "SSL_shutdown", "SSL_read_ex", "SSL_write_ex",
         "_Conn_t_start_tls", "_ssl__SSLContext__wrap_bio", "PySSL_SetError", "_Tls_close_notify",
         "_Tls_closed", "_Upstream_on_data")


def _total(path: str) -> int:
    with open(path) as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    return 0


def count_nginx(tmp, o_port, mode, tls, seconds):
    """Instructions per connection in nginx terminating TLS (whole process)."""
    port, plain = nc.free_port(), nc.free_port()
    servers = tc.PROXY_TLS_SERVER.format(port=port, dir=tmp, cert="ecdsa")
    body = tc.PROXY_TLS.format(origin=o_port, ciphers=tc.CIPHERS, servers=servers, plain=plain)
    conf = nc.NGINX_COMMON.format(dir=tmp, name="proxy", body=body)
    with open(os.path.join(tmp, "proxy.conf"), "w") as f:
        f.write(conf.replace("master_process on;", "master_process off;"))
    out = os.path.join(tmp, "ngx.out")
    p = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                          "--dump-instr=no", nc.NGINX, "-p", tmp, "-c",
                          os.path.join(tmp, "proxy.conf")],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        nc.wait_port(port, timeout=300)
        tc.run_s_time(port, "new", "1.3", 2, 1)   # warm up
        subprocess.run(["callgrind_control", "-z", str(p.pid)], capture_output=True, timeout=60)
        r = tc.run_s_time(port, mode, tls, seconds, 1)
        subprocess.run(["callgrind_control", "-d", str(p.pid)], capture_output=True, timeout=60)
    finally:
        p.send_signal(signal.SIGQUIT)   # nginx: graceful stop
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    dumps = sorted(glob.glob(out + ".*"), key=os.path.getmtime)
    return _total(dumps[0]) / r["count"], r


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=["new", "reuse"], default="reuse")
    ap.add_argument("--tls", choices=["1.2", "1.3"], default="1.2")
    ap.add_argument("--seconds", type=int, default=20, help="how long s_time connects")
    ap.add_argument("--keep", metavar="DIR", help="copy the callgrind output to DIR")
    ap.add_argument("--nginx", action="store_true", help="count nginx terminating TLS too")
    ns = ap.parse_args(argv)

    tmp = tempfile.mkdtemp(prefix="sw-cg-tls-")
    os.chmod(tmp, 0o755)
    os.makedirs(os.path.join(tmp, "www"))
    with open(os.path.join(tmp, "launch.py"), "w") as f:
        f.write(tc.LAUNCHER)
    with open(os.path.join(tmp, "sw.yaml"), "w") as f:
        f.write("version: 1\nthreads: 1\nupstream_keepalive_pool_size: 64\n")
    tc.make_certs(tmp)
    o_port, port, plain = nc.free_port(), nc.free_port(), nc.free_port()
    origin = nc.start_nginx(tmp, "origin", nc.ORIGIN_HTTP.format(port=o_port, dir=tmp), 1)
    out = os.path.join(tmp, "cg.out")
    env = dict(os.environ, BENCH_ORIGIN_PORT=str(o_port), BENCH_CIPHERS=tc.CIPHERS,
               BENCH_TLS=f"127.0.0.1:{port}={tmp}/ecdsa.pem={tmp}/ecdsa.key",
               BENCH_PLAIN=f"127.0.0.1:{plain}",
               PYTHONPATH=os.path.join(nc.REPO, "corepy") + os.pathsep + tmp)
    p = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p",
                          "--toggle-collect=*_IoLoop_*_on_ready*", "--dump-instr=no",
                          sys.executable, os.path.join(tmp, "launch.py"),
                          "-c", os.path.join(tmp, "sw.yaml")],
                         env=env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        nc.wait_port(o_port)
        nc.wait_port(port, timeout=600)      # valgrind starts slowly on a busy machine
        worker = nc.sluiceway_pid(p.pid)
        r = tc.run_s_time(port, ns.mode, ns.tls, ns.seconds, 1)
        ngx = count_nginx(tmp, o_port, ns.mode, ns.tls, ns.seconds) if ns.nginx else None
    finally:
        p.send_signal(signal.SIGINT)
        p.wait(300)
        origin.stop()
    try:
        # the worker's dump, written as it exits (a forked worker does not
        # answer callgrind_control); collection was on only in _on_ready
        dump = f"{out}.{worker}"
        if ns.keep:
            os.makedirs(ns.keep, exist_ok=True)
            shutil.copy(dump, os.path.join(ns.keep, f"cg.{ns.mode}.{ns.tls}.{worker}"))
        total = _total(dump)
        n = r["count"]
        kind = "full" if ns.mode == "new" else "resumed"
        print(f"{kind} TLS {ns.tls} handshakes: {n} connections ({r['note'] or 'all new'}), "
              f"{total / n:,.0f} instructions per connection in _on_ready")
        ann = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", dump],
                             capture_output=True, text=True).stdout
        for name in SHOWN:
            for line in ann.splitlines():
                head, _, fn = line.rpartition(":")
                fn = fn.split(" [")[0].strip()
                if fn.split(".")[0].endswith(name) and "(" in head:
                    ir = int(head.split("(")[0].strip().replace(",", ""))
                    print(f"  {name:28} {ir / n:12,.0f} per connection  {100 * ir / total:5.1f}%")
                    break
        if ngx is not None:
            per, rn = ngx
            print(f"nginx: {per:,.0f} instructions per connection, whole process ({rn['count']} "
                  f"connections, {rn['note'] or 'all new'}); nginx / sluiceway {per / (total / n):.2f}")
    finally:
        for f in glob.glob(out + ".*"):
            os.unlink(f)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
