"""Leak checks: the compiled limits free what they allocate (run in a subprocess)."""

import os
import subprocess
import sys
import textwrap

from conftest import subprocess_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent(r'''
    import asyncio, gc, resource, tracemalloc
    from sluiceway import limits

    def rss_mb():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20

    # C memory: 20,000 sketches of 4 x 8192 counters (256 KiB each, 5 GiB in
    # all) made and dropped; if __dealloc__ did not free them RSS would explode.
    before = rss_mb()
    for _ in range(5000):
        limits.Estimator(4, 8192).incr("k")
        limits.Rate(1.0, slots=8192).observe("k")
        limits.Inflight().incr("k")
        limits.RateLimiter(5, slots=8192).check("k")
    gc.collect()
    c_growth = rss_mb() - before

    # Python objects: per-request operations leave nothing behind.
    rate, est, inflight = limits.Rate(1.0), limits.Estimator(), limits.Inflight()
    limiter, caps = limits.RateLimiter(10**9), limits.ConcurrencyLimiter(10)
    breaker = limits.CircuitBreaker()

    def batch(n):
        for i in range(n):
            key = "tenant-%d" % (i % 100)
            rate.observe(key); rate.rate_with(key, limits.proportional); est.incr(key)
            with inflight.incr(key)[0]:
                pass
            inflight.incr(key)                      # released by garbage collection
            limiter.check(key).headers()
            caps.try_acquire(key).release()
            caps.try_acquire(key)                   # released by garbage collection
            with breaker.admit(key):
                pass
            breaker.admit(key)                      # never reported: nothing kept

    async def waiting(n):
        for _ in range(n):
            held = caps.try_acquire("busy")
            for _ in range(9):
                caps.try_acquire("busy")
            w = asyncio.ensure_future(caps.acquire("busy", timeout=1.0))
            await asyncio.sleep(0)
            held.release()
            (await w).release()

    tracemalloc.start()
    batch(20000); asyncio.run(waiting(200)); gc.collect()
    base = tracemalloc.get_traced_memory()[0]
    batch(20000); asyncio.run(waiting(200)); gc.collect()
    py_growth = tracemalloc.get_traced_memory()[0] - base
    print(round(c_growth, 1), py_growth, inflight.get("tenant-1"), caps.inflight("busy"))
''')


def test_no_leaks():
    env = subprocess_env()
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=240, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    c_growth, py_growth, inflight_left, caps_left = proc.stdout.split()
    assert float(c_growth) < 64, f"RSS grew {c_growth} MiB"
    assert int(py_growth) < 4096, f"Python heap grew {py_growth} bytes"
    assert (inflight_left, caps_left) == ("0", "0")
