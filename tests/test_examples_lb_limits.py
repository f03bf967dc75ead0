"""The load-balancing and limits examples, each run as its own program
against real origins on 127.0.0.1."""

import asyncio
import time

import httpx
import pytest

from proxy_harness import OriginThread, free_port, run_example, stop_proc


@pytest.fixture(scope="module")
def origins():
    with OriginThread(3) as o:
        yield o


def test_round_robin_spreads_evenly(origins):
    proc, url = run_example("round_robin_lb.py", {"UPSTREAMS": ",".join(f"127.0.0.1:{p}" for p in origins.ports)})
    try:
        before = [o.requests for o in origins.origins]
        with httpx.Client(base_url=url, timeout=5) as c:
            for _ in range(30):
                r = c.get("/headers")
                assert r.status_code == 200
                assert ["x-forwarded-by", "sluiceway"] in r.json()["headers"]
        assert [o.requests - b for o, b in zip(origins.origins, before)] == [10, 10, 10]
    finally:
        assert stop_proc(proc) == 0


def test_round_robin_health_check_skips_a_dead_upstream(origins):
    dead = free_port()  # nothing listens there
    upstreams = [f"127.0.0.1:{p}" for p in origins.ports] + [f"127.0.0.1:{dead}"]
    proc, url = run_example("round_robin_lb.py", {"UPSTREAMS": ",".join(upstreams)})
    try:
        # Backends start healthy; the first health round (at start-up, then
        # every second) marks the dead one down.
        deadline = time.monotonic() + 5
        with httpx.Client(base_url=url, timeout=5) as c:
            while not all(c.get("/").status_code == 200 for _ in range(8)):
                assert time.monotonic() < deadline, "the dead upstream was never skipped"
                time.sleep(0.2)
            before = [o.requests for o in origins.origins]
            assert all(c.get("/").status_code == 200 for _ in range(40))
        assert all(o.requests > b for o, b in zip(origins.origins, before))
    finally:
        assert stop_proc(proc) == 0


@pytest.mark.parametrize("selection", ["least_conn", "p2c"])
def test_least_conn_keeps_requests_off_a_slow_upstream(selection):
    dead = free_port()
    with OriginThread(3) as o:
        o.origins[0].route("/work", delay=0.2, body="slow")
        for fast in o.origins[1:]:
            fast.route("/work", delay=0.005, body="fast")
        upstreams = [f"127.0.0.1:{p}" for p in o.ports] + [f"127.0.0.1:{dead}"]
        proc, url = run_example("least_conn_lb.py", {"UPSTREAMS": ",".join(upstreams),
                                                     "SELECTION": selection})
        try:
            async def load():
                async with httpx.AsyncClient(base_url=url, timeout=10) as c:
                    async def worker():
                        return [(await c.get("/work")) for _ in range(20)]
                    return [r for rs in await asyncio.gather(*(worker() for _ in range(6)))
                            for r in rs]
            rs = asyncio.run(load())
            # the dead upstream refuses: the request is retried elsewhere
            assert all(r.status_code == 200 for r in rs)
            slow = sum(r.text == "slow" for r in rs)
            # Round robin would send a third (40). least_conn sends a few;
            # p2c compares two upstreams drawn at random, so the slow one
            # gets more and a spread of them: 6-14 of 120 in 16 runs, and
            # 15 once in CI. Under a sixth is still half of round robin's.
            assert slow < len(rs) / 6, (slow, len(rs))
        finally:
            assert stop_proc(proc) == 0


def test_rate_limit_answers_429_with_headers(origins):
    proc, url = run_example("rate_limit.py", {"RATE_LIMIT": "5", "UPSTREAM": f"127.0.0.1:{origins.ports[0]}"})
    try:
        with httpx.Client(base_url=url, timeout=5) as c:
            assert c.get("/").status_code == 401
            for i in range(5):
                r = c.get("/", headers={"x-api-key": "alice"})
                assert r.status_code == 200 and r.text == "hello"
                assert r.headers["x-ratelimit-limit"] == "5"
                assert r.headers["x-ratelimit-remaining"] == str(4 - i)
            before = origins.origins[0].requests
            r = c.get("/", headers={"x-api-key": "alice"})
            assert r.status_code == 429
            assert r.headers["x-ratelimit-remaining"] == "0"
            assert 1 <= int(r.headers["retry-after"]) <= 60
            assert origins.origins[0].requests == before  # refused before reaching the upstream
            assert c.get("/", headers={"x-api-key": "bob"}).status_code == 200
    finally:
        assert stop_proc(proc) == 0


def test_concurrency_cap_sheds_with_503(origins):
    proc, url = run_example("load_shedding.py", {"UPSTREAM": f"127.0.0.1:{origins.ports[1]}",
                                           "MAX_INFLIGHT": "2", "CAP_WAIT": "0"})

    async def burst():
        async with httpx.AsyncClient(base_url=url, timeout=10) as c:
            t0 = time.monotonic()
            rs = await asyncio.gather(*(c.get("/slow?d=1") for _ in range(5)))
            return [r.status_code for r in rs], time.monotonic() - t0

    try:
        statuses, _ = asyncio.run(burst())
        assert sorted(statuses) == [200, 200, 503, 503, 503]
        # Permits come back: the next burst within the cap all succeeds.
        with httpx.Client(base_url=url, timeout=5) as c:
            assert [c.get("/").status_code for _ in range(3)] == [200, 200, 200]
    finally:
        assert stop_proc(proc) == 0


def test_circuit_breaker_opens_and_recovers(origins):
    o = origins.origins[2]
    proc, url = run_example("load_shedding.py", {"UPSTREAM": f"127.0.0.1:{origins.ports[2]}",
                                           "BREAKER_FAILURES": "3", "BREAKER_COOLDOWN": "1"})
    try:
        with httpx.Client(base_url=url, timeout=5) as c:
            assert [c.get("/status/500").status_code for _ in range(3)] == [500, 500, 500]
            before = o.requests
            r = c.get("/")
            assert r.status_code == 503          # open: the upstream is not asked
            assert o.requests == before
            time.sleep(1.2)                      # cool-down over: one probe goes through
            assert c.get("/").status_code == 200
            assert c.get("/").status_code == 200  # closed again
            assert o.requests == before + 2
    finally:
        assert stop_proc(proc) == 0
