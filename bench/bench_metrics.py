"""Per-update cost of user metrics from Python, beside a plain dict increment.

Run:  PYTHONPATH=corepy python -m pytest bench/bench_metrics.py -s \
          --benchmark-columns=min,median,rounds
or    PYTHONPATH=corepy python bench/bench_metrics.py   (interleaved rounds,
      ratios to the dict increment; no pytest-benchmark needed)

Each case times a loop of CALLS updates written inline (no wrapper call), so
the loop's own cost is in every case; ``dict_increment`` (``d[k] += 1``) is
the side-by-side baseline, the cheapest bookkeeping a Python program can do.
The machine this runs on is usually shared and noisy: quote the ratio to the
baseline of the same run, and the absolute ns as measured. The goal: an
update costs at most 150 ns.

Outside a server the metrics go to the process's own store (the same code
and shared-memory cells a worker writes).
"""

from __future__ import annotations

import itertools
import time

import pytest

from sluiceway.metrics import Counter, Gauge, Histogram

CALLS = 2000

_C = Counter("bench_requests_total", "bench")
_CL = Counter("bench_tenant_requests_total", "bench", ["tenant"])
_G = Gauge("bench_inflight", "bench")
_GL = Gauge("bench_tenant_inflight", "bench", ["tenant"])
_H = Histogram("bench_upload_bytes", "bench")
_HL = Histogram("bench_tenant_upload_bytes", "bench", ["tenant"])


def _cases():
    """name -> a function doing CALLS updates in one loop."""
    repeat = itertools.repeat
    d = {"acme": 0}
    c, cl, child = _C, _CL, _CL.labels("acme")
    g, gchild = _G, _GL.labels("acme")
    h, hl, hchild = _H, _HL, _HL.labels("acme")

    def dict_increment():
        for _ in repeat(None, CALLS):
            d["acme"] += 1

    def counter_inc():
        for _ in repeat(None, CALLS):
            c.inc()

    def counter_labels_inc():
        for _ in repeat(None, CALLS):
            cl.labels("acme").inc()

    def counter_child_inc():
        for _ in repeat(None, CALLS):
            child.inc()

    def gauge_set():
        for _ in repeat(None, CALLS):
            g.set(3.0)

    def gauge_child_set():
        for _ in repeat(None, CALLS):
            gchild.set(3.0)

    def histogram_observe():
        for _ in repeat(None, CALLS):
            h.observe(0.02)

    def histogram_labels_observe():
        for _ in repeat(None, CALLS):
            hl.labels("acme").observe(0.02)

    def histogram_child_observe():
        for _ in repeat(None, CALLS):
            hchild.observe(0.02)

    return {f.__name__: f for f in (dict_increment, counter_inc, counter_labels_inc,
                                    counter_child_inc, gauge_set, gauge_child_set,
                                    histogram_observe, histogram_labels_observe,
                                    histogram_child_observe)}


CASES = _cases()


@pytest.mark.parametrize("name", list(CASES))
def test_metric_update(benchmark, name):
    benchmark.extra_info["calls_per_round"] = CALLS
    benchmark(CASES[name])
    if benchmark.stats is None:  # --benchmark-disable: ran once as a smoke test
        return
    stats = benchmark.stats.stats
    ns, median = stats.min / CALLS * 1e9, stats.median / CALLS * 1e9
    benchmark.extra_info["ns_per_update_min"] = round(ns, 1)
    benchmark.extra_info["ns_per_update_median"] = round(median, 1)
    print(f"\n{name}: {ns:.1f} ns/update (min), {median:.1f} ns (median)")


def main(rounds: int = 30) -> None:
    """Interleaved rounds of every case; the best round of each, in ns per
    update and as a ratio to the dict increment."""
    best = {name: float("inf") for name in CASES}
    for _ in range(rounds):
        for name, fn in CASES.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    base = best["dict_increment"]
    for name, t in best.items():
        print(f"{name:26} {t / CALLS * 1e9:7.1f} ns/update  {t / base:5.2f}x dict")


if __name__ == "__main__":
    main()
