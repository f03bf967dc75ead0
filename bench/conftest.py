"""Benchmarks: `pytest bench/ --benchmark-only` (every bench_*.py file here,
the nginx comparison included) or one file; never in the default test run
(pytest's testpaths is tests/). See docs/performance.md for what each
reproduces."""

import pytest


def pytest_addoption(parser):
    g = parser.getgroup("sluiceway benchmarks")
    g.addoption("--bench-duration", type=int, default=10, help="seconds per wrk run (nginx comparison)")
    g.addoption("--bench-rounds", type=int, default=3, help="wrk runs per proxy and body")
    g.addoption("--bench-connections", type=int, default=50, help="wrk connections")
    g.addoption("--bench-idle", type=int, default=5000, help="idle keep-alive connections measured")


def pytest_configure(config):
    config._sw_bench_results = {}


def pytest_collect_file(file_path, parent):
    # bench_*.py are the benchmark modules (pytest's default pattern is test_*.py).
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") \
            and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def pytest_terminal_summary(terminalreporter, config):
    res = getattr(config, "_sw_bench_results", {})
    if not res:
        return
    tr = terminalreporter
    tr.section("sluiceway / nginx (same session)")
    tr.write_line(f"{'body':8} {'proxy':10} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'req/CPU-s':>10} "
                  f"{'ratio req/CPU-s':>16} {'ratio p99':>10}")
    for body in ("small", "16k"):
        for proxy in ("nginx", "sluiceway"):
            r = res.get((proxy, body))
            if not r:
                continue
            ratio = r.get("ratio_to_nginx", {})
            tr.write_line(f"{body:8} {proxy:10} {r['requests_per_s']:9d} {r['p50_ms']:7.2f} {r['p99_ms']:7.2f} "
                          f"{r['requests_per_proxy_cpu_s']:10d} "
                          f"{('x%.2f' % ratio['requests_per_proxy_cpu_s']) if ratio else '':>16} "
                          f"{('x%.2f' % ratio['p99']) if ratio else '':>10}")
    for proxy in ("nginx", "sluiceway"):
        r = res.get((proxy, "idle"))
        if r:
            extra = f"  (x{r['ratio_to_nginx']:.2f} nginx)" if "ratio_to_nginx" in r else ""
            tr.write_line(f"idle keep-alive  {proxy:10} {r['rss_bytes_per_idle_connection']:6d} B per connection "
                          f"({r['idle_connections']} connections){extra}")
