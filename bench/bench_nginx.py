"""sluiceway against nginx as a reverse proxy, under pytest-benchmark.

Run (from the repository root, with sluiceway built or installed):

    pytest bench/bench_nginx.py --benchmark-only                      # 3 rounds of 10 s
    pytest bench/bench_nginx.py --benchmark-only --benchmark-autosave  # keep the run
    pytest bench/bench_nginx.py --benchmark-only --benchmark-compare   # against the last saved

Same set-up as ``bench/nginx_compare.py`` (its pieces are reused): an nginx
origin serving /small (5 bytes) and /16k; nginx (1 worker, upstream
keep-alive 64, access log off) and sluiceway (1 worker, a request_filter
that reads one header, an upstream_peer that returns an HttpPeer, access log
off) as proxies in front of it; the proxy under test pinned to CPU 0, wrk
(1 thread, 50 connections) and the origin to CPU 1.

What pytest-benchmark times: one round is one wrk run, and the "time" of a
round is the proxy's CPU time (utime + stime from /proc) divided by the
requests wrk completed, so Min/Mean/Median are proxy CPU-seconds per
request and OPS is requests per proxy CPU-second, which is what
``--benchmark-compare`` compares between builds. Each benchmark's
``extra_info`` holds requests/s, p50 and p99 (ms), requests per proxy
CPU-second and, for sluiceway, its ratios to the nginx benchmark of the same
session. A table of those ratios is printed at the end.

Options: --bench-duration S (default 10), --bench-rounds N (default 3),
--bench-connections C (default 50), --bench-idle N (idle keep-alive
connections for the memory benchmark, default 5000). The proxies start once
per session; nginx runs before sluiceway for each body.
"""

from __future__ import annotations

import os
import resource
import shutil
import statistics

import pytest

import nginx_compare as nc

PROXIES = ("nginx", "sluiceway")
BODIES = {"small": "/small", "16k": "/16k"}


@pytest.fixture(scope="session")
def proxies(request):
    """nginx origin, nginx proxy and sluiceway proxy; {name: (port, pid)}."""
    for tool in (nc.NGINX, "wrk", "taskset"):
        if not (os.path.exists(tool) or shutil.which(tool)):
            pytest.skip(f"needs {tool} (bash ci/install-deps.sh installs nginx and wrk)")
    import sluiceway

    idle = request.config.getoption("--bench-idle")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * idle + 1000)), hard))
    tmp = nc.bench_dir("sw-bench-", {"bench_app.py": nc.SLUICEWAY_APP, "sw.yaml": nc.SW_YAML},
                       {"16k": b"b" * 16384})
    o_port, n_port, s_port = nc.free_port(), nc.free_port(), nc.free_port()
    procs = []
    try:
        procs.append(nc.start_nginx(tmp, "origin", nc.ORIGIN_HTTP.format(port=o_port, dir=tmp), 1))
        nproxy = nc.start_nginx(tmp, "proxy", nc.PROXY_HTTP.format(port=n_port, origin=o_port), 0)
        procs.append(nproxy)
        # the sluiceway this pytest imported: the build being measured
        path = os.path.dirname(os.path.dirname(os.path.abspath(sluiceway.__file__)))
        env = dict(os.environ, BENCH_ORIGIN_PORT=str(o_port), PYTHONPATH=path + os.pathsep + tmp)
        sw = nc.start_sluiceway("sluiceway", tmp, s_port, env, module="sluiceway")
        procs.append(sw)
        for p in (o_port, n_port, s_port):
            nc.wait_port(p)
        targets = {"nginx": (n_port, nc.worker_pid(nproxy.p.pid)), "sluiceway": (s_port, sw.p.pid)}
        conns = request.config.getoption("--bench-connections")
        for port, _ in targets.values():      # warm up
            nc.run_wrk(port, "/small", 2, conns)
        yield targets
    finally:
        nc.stop_all(procs, tmp)


class _CpuPerRequest:
    """A clock for pytest-benchmark that advances by the proxy CPU-seconds
    per request of each wrk run (so a round's "duration" is that figure)."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.mark.parametrize("body", list(BODIES))
@pytest.mark.parametrize("proxy", PROXIES)
def test_proxy_throughput(benchmark, proxies, request, proxy, body):
    port, pid = proxies[proxy]
    duration = request.config.getoption("--bench-duration")
    rounds = request.config.getoption("--bench-rounds")
    conns = request.config.getoption("--bench-connections")
    clock = _CpuPerRequest()
    benchmark._timer = clock          # pytest-benchmark times rounds with this clock
    benchmark.group = f"proxy {body} body"
    runs = []

    def one_round():
        r = nc.measure(port, BODIES[body], duration, conns, pid)
        assert r["errors"] == 0 and not r["socket_errors"], r
        runs.append(r)
        clock.now += r["cpu"] / max(r["total"], 1)

    benchmark.pedantic(one_round, rounds=rounds, iterations=1)
    med = {k: statistics.median(r[k] for r in runs) for k in ("rps", "p50", "p99", "rpcpu", "cpu")}
    info = {"requests_per_s": round(med["rps"]), "p50_ms": med["p50"], "p99_ms": med["p99"],
            "requests_per_proxy_cpu_s": round(med["rpcpu"]), "proxy_cpu_us_per_request": 1e6 / med["rpcpu"],
            "rounds": [{k: r[k] for k in ("rps", "p50", "p99", "rpcpu")} for r in runs],
            "duration_s": duration, "connections": conns, "body": BODIES[body]}
    results = request.config._sw_bench_results
    results[(proxy, body)] = info
    base = results.get(("nginx", body))
    if proxy != "nginx" and base:
        info["ratio_to_nginx"] = {
            "requests_per_proxy_cpu_s": info["requests_per_proxy_cpu_s"] / base["requests_per_proxy_cpu_s"],
            "p99": info["p99_ms"] / base["p99_ms"],
            "requests_per_s": info["requests_per_s"] / base["requests_per_s"]}
    benchmark.extra_info.update(info)


@pytest.mark.parametrize("proxy", PROXIES)
def test_idle_keepalive_memory(benchmark, proxies, request, proxy):
    """RSS growth of the proxy process per idle keep-alive connection (one
    request each, then idle), the same procedure for both proxies
    (nginx_compare.idle_rss). The timed part is opening the connections."""
    port, pid = proxies[proxy]
    n = request.config.getoption("--bench-idle")
    got = {}
    benchmark.group = "idle keep-alive connections"
    benchmark.pedantic(lambda: got.setdefault("b", nc.idle_rss(port, pid, n)), rounds=1, iterations=1)
    info = {"idle_connections": n, "rss_bytes_per_idle_connection": round(got["b"])}
    results = request.config._sw_bench_results
    results[(proxy, "idle")] = info
    base = results.get(("nginx", "idle"))
    if proxy != "nginx" and base and base["rss_bytes_per_idle_connection"] > 0:
        info["ratio_to_nginx"] = info["rss_bytes_per_idle_connection"] / base["rss_bytes_per_idle_connection"]
    benchmark.extra_info.update(info)
