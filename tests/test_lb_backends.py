"""Backends, the LoadBalancer's state, and discovery (Static, File, DNS, custom)."""

import asyncio
import json
import logging
import os
import socket

import pytest
import uvloop

from sluiceway.lb import (DNS, Backend, Consistent, File, LoadBalancer, RoundRobin,
                          ServiceDiscovery, Static)


def run(coro, timeout=20):
    """Run ``coro`` on a fresh uvloop loop, bounded in time."""
    return uvloop.run(asyncio.wait_for(coro, timeout))


# ------------------------------------------------------------------ Backend

@pytest.mark.parametrize("addr, canon, family, sockaddr", [
    ("10.0.0.1:80", "10.0.0.1:80", socket.AF_INET, ("10.0.0.1", 80)),
    ("[2001:db8:0:0::1]:443", "[2001:db8::1]:443", socket.AF_INET6, ("2001:db8::1", 443)),
    ("[::1]:8080", "[::1]:8080", socket.AF_INET6, ("::1", 8080)),
    ("unix:/run/app.sock", "unix:/run/app.sock", socket.AF_UNIX, "/run/app.sock"),
    ("/run/app.sock", "unix:/run/app.sock", socket.AF_UNIX, "/run/app.sock"),
])
def test_backend_addresses_are_canonical(addr, canon, family, sockaddr):
    b = Backend(addr, weight=3, metadata={"zone": "a"})
    assert (b.addr, b.family, b.sockaddr, b.weight) == (canon, family, sockaddr, 3)
    assert b.metadata == {"zone": "a"}
    assert b == Backend(canon, 3) and hash(b) == hash(Backend(canon, 3))
    assert b != Backend(canon, 2)


@pytest.mark.parametrize("addr, message", [
    ("10.0.0.1", "expected 'host:port'"),
    ("10.0.0.1:", "port '' is not a number"),
    ("10.0.0.1:99999", "port 99999 is out of range"),
    ("10.0.0.1:0", "port 0 is out of range"),
    ("10.0.0.256:80", "'10.0.0.256' is not an IPv4 address"),
    ("example.com:80", "resolve host names with the DNS discovery"),
    ("::1:80", r"put an IPv6 address in brackets, e.g. '\[::1\]:80'"),
    ("[::1]80", r"write IPv6 as '\[addr\]:port'"),
    ("[::g]:80", "'::g' is not an IPv6 address"),
    ("unix:", "the Unix socket path is empty"),
    ("unix:/" + "x" * 200, "longer than 107 bytes"),
    ("unix:/a\0b", "contains NUL"),
    (":80", "expected 'host:port'"),
])
def test_bad_addresses_name_the_value(addr, message):
    with pytest.raises(ValueError, match=message) as info:
        Backend(addr)
    assert repr(addr)[:20] in str(info.value)


@pytest.mark.parametrize("weight, exc, message", [
    (0, ValueError, "weight 0 is out of range; use 1..65535"),
    (65536, ValueError, "weight 65536 is out of range"),
    (-1, ValueError, "weight -1"),
    (1.5, TypeError, "weight must be an int, not 1.5"),
    (True, TypeError, "weight must be an int, not True"),
    ("2", TypeError, "weight must be an int, not '2'"),
])
def test_bad_weights_name_the_value(weight, exc, message):
    with pytest.raises(exc, match=message):
        Backend("10.0.0.1:80", weight)


def test_backend_is_immutable_and_rejects_non_str():
    b = Backend("10.0.0.1:80", metadata={"k": 1})
    with pytest.raises(AttributeError):
        b.weight = 2
    with pytest.raises(TypeError):
        b.metadata["k"] = 2
    with pytest.raises(TypeError, match="must be a str"):
        Backend(("10.0.0.1", 80))
    with pytest.raises(TypeError, match="metadata must be a mapping"):
        Backend("10.0.0.1:80", metadata=5)
    with pytest.raises(ValueError, match="unknown keys \\['wieght'\\]"):
        Backend.coerce({"addr": "10.0.0.1:80", "wieght": 2})


# -------------------------------------------------------------- LoadBalancer

def test_from_iter_selects_at_once_and_exposes_state():
    lb = LoadBalancer.from_iter(["10.0.0.1:80", Backend("10.0.0.2:80", 2),
                                 {"addr": "[::1]:81", "weight": 1, "metadata": {"z": 1}}])
    assert [b.addr for b in lb.backends()] == ["10.0.0.1:80", "10.0.0.2:80", "[::1]:81"]
    picks = [lb.select().addr for _ in range(8)]
    assert sorted(set(picks)) == ["10.0.0.1:80", "10.0.0.2:80", "[::1]:81"]
    assert picks.count("10.0.0.2:80") == 4      # weight 2 of 4
    st = lb.state("10.0.0.1:80")
    assert (st.healthy, st.enabled, st.usable, st.last_error, st.last_check) == \
        (True, True, True, None, None)
    with pytest.raises(KeyError, match="not a backend of this load balancer"):
        lb.state("10.9.9.9:80")


def test_set_enable_drains_and_restores():
    lb = LoadBalancer.from_iter([f"10.0.0.{i}:80" for i in range(1, 4)], Consistent)
    keys = [f"k{i}" for i in range(300)]
    before = {k: lb.select(k) for k in keys}
    lb.set_enable("10.0.0.2:80", False)
    assert not lb.state("10.0.0.2:80").usable
    during = {k: lb.select(k) for k in keys}
    assert all(b.addr != "10.0.0.2:80" for b in during.values())
    # Only the drained backend's keys moved.
    assert all(during[k] is before[k] for k in keys if before[k].addr != "10.0.0.2:80")
    lb.set_enable(Backend("10.0.0.2:80"), True)
    assert {k: lb.select(k) for k in keys} == before
    disabled = LoadBalancer.from_iter(["10.0.0.1:80"])
    disabled.set_enable("10.0.0.1:80", False)
    assert disabled.select("x") is None


def test_update_rebuilds_only_on_change_and_keeps_staying_backends():
    static = Static(["10.0.0.1:80", "10.0.0.2:80"])
    lb = LoadBalancer(static, RoundRobin)
    assert run(lb.update()) is True
    algo, (b1, b2) = lb._selection
    lb.set_enable(b2, False)
    assert run(lb.update()) is False
    assert lb._selection[0] is algo            # unchanged set: selector not rebuilt

    static.set(["10.0.0.2:80", "10.0.0.3:80", "10.0.0.1:80"])
    assert run(lb.update()) is True
    kept = {b.addr: b for b in lb.backends()}
    assert kept["10.0.0.1:80"] is b1 and kept["10.0.0.2:80"] is b2   # same objects
    assert not lb.state("10.0.0.2:80").enabled                       # state survived
    assert {lb.select().addr for _ in range(6)} == {"10.0.0.1:80", "10.0.0.3:80"}

    static.set(["10.0.0.3:80"])
    run(lb.update())
    with pytest.raises(KeyError):
        lb.state("10.0.0.1:80")


def test_a_running_selection_keeps_its_snapshot_when_the_set_changes():
    lb = LoadBalancer.from_iter([f"10.0.0.{i}:80" for i in range(1, 5)], Consistent)
    offered = []

    def accept(backend, usable):
        offered.append(backend)
        if len(offered) == 1:   # the set changes under the running selection
            lb._apply([Backend("10.0.1.1:80")])
        return len(offered) == 3

    chosen = lb.select_with("key", 4, accept)
    assert chosen is offered[2] and chosen.addr.startswith("10.0.0.")
    assert [b.addr for b in lb.backends()] == ["10.0.1.1:80"]


def test_duplicate_addresses_keep_the_first(caplog):
    with caplog.at_level(logging.WARNING, logger="sluiceway.error"):
        lb = LoadBalancer.from_iter(["10.0.0.1:80", Backend("10.0.0.1:80", 5)])
    assert [(b.addr, b.weight) for b in lb.backends()] == [("10.0.0.1:80", 1)]
    assert "listed 10.0.0.1:80 twice" in caplog.text


def test_constructor_rejects_bad_arguments():
    with pytest.raises(TypeError, match="discovery must be a ServiceDiscovery"):
        LoadBalancer(["10.0.0.1:80"])
    with pytest.raises(TypeError, match="selection must be an algorithm class"):
        LoadBalancer(Static(), selection="rr")
    with pytest.raises(ValueError, match="update_frequency must be a positive number"):
        LoadBalancer(Static(), update_frequency=0)
    with pytest.raises(TypeError, match="health_check must be a HealthCheck"):
        LoadBalancer(Static(), health_check=object())


# ------------------------------------------------------------------ File

def test_file_discovery_reloads_on_change_and_keeps_old_set_when_invalid(tmp_path, caplog):
    path = tmp_path / "backends.yaml"
    path.write_text("- 10.0.0.1:80\n- {addr: '10.0.0.2:80', weight: 3, metadata: {zone: b}}\n")
    lb = LoadBalancer(File(path), RoundRobin)

    async def scenario():
        assert await lb.update() is True
        assert [(b.addr, b.weight) for b in lb.backends()] == [("10.0.0.1:80", 1), ("10.0.0.2:80", 3)]
        assert lb.backends()[1].metadata == {"zone": "b"}
        assert await lb.update() is False              # unchanged file: nothing to do
        path.write_text("- 10.0.0.1:80\n- 10.0.0.9:80\n")
        os.utime(path, ns=(1, 10**18))
        assert await lb.update() is True
        assert [b.addr for b in lb.backends()] == ["10.0.0.1:80", "10.0.0.9:80"]
        for n, (bad, why) in enumerate([("- 10.0.0.1:80\n- [unclosed\n", "is not valid YAML"),
                         ("backends: 1\n", "must hold a list of backends, not dict"),
                         ("- 10.0.0.1:80\n- nohost:80\n", "'nohost' is not an IPv4 address"),
                         ("- {addr: '10.0.0.3:80', weight: 0}\n", "weight 0 is out of range")]):
            caplog.clear()
            path.write_text(bad)
            os.utime(path, ns=(2, 10**18 + n + 1))   # a new mtime even if the size repeats
            assert await lb.update() is False
            assert why in caplog.text, caplog.text
            assert [b.addr for b in lb.backends()] == ["10.0.0.1:80", "10.0.0.9:80"]
        path.unlink()
        caplog.clear()
        assert await lb.update() is False
        assert "cannot read backend file" in caplog.text

    with caplog.at_level(logging.ERROR, logger="sluiceway.error"):
        run(scenario())


def test_file_discovery_reads_json(tmp_path):
    path = tmp_path / "b.json"
    path.write_text(json.dumps(["unix:/tmp/a.sock", {"addr": "[::1]:9", "weight": 2}]))
    lb = LoadBalancer(File(path), Consistent)
    run(lb.update())
    assert [b.addr for b in lb.backends()] == ["unix:/tmp/a.sock", "[::1]:9"]
    path.write_text("[1, 2")
    os.utime(path, ns=(5, 10**18))
    assert run(lb.update()) is False
    assert len(lb.backends()) == 2


# ------------------------------------------------------------------ DNS

def test_dns_discovery_resolves_and_keeps_last_good_set(caplog):
    dns = DNS("localhost", 8080, family=socket.AF_INET, interval=5, timeout=2)
    lb = LoadBalancer(dns, RoundRobin)
    assert lb.update_frequency == 5
    assert run(lb.update()) is True
    assert "127.0.0.1:8080" in [b.addr for b in lb.backends()]
    dns.name = "no-such-host.invalid"
    with caplog.at_level(logging.ERROR, logger="sluiceway.error"):
        assert run(lb.update()) is False
    assert "resolving 'no-such-host.invalid'" in caplog.text
    assert "127.0.0.1:8080" in [b.addr for b in lb.backends()]


def test_dns_rejects_bad_arguments():
    with pytest.raises(ValueError, match="DNS port must be an int in 1..65535, not 0"):
        DNS("localhost", 0)
    with pytest.raises(ValueError, match="DNS name must be a non-empty str"):
        DNS("", 80)


# ------------------------------------------------------- custom discovery

class Catalog(ServiceDiscovery):
    """Stands in for Consul or Kubernetes endpoints: a list that may fail."""

    def __init__(self):
        self.result = []

    async def discover(self):
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


def test_custom_discovery_and_background_updates(caplog):
    cat = Catalog()
    cat.result = [{"addr": "10.1.0.1:80"}, "10.1.0.2:80"]
    lb = LoadBalancer(cat, Consistent, update_frequency=0.05)

    async def scenario():
        lb.start()
        for _ in range(100):
            if len(lb.backends()) == 2:
                break
            await asyncio.sleep(0.01)
        assert [b.addr for b in lb.backends()] == ["10.1.0.1:80", "10.1.0.2:80"]
        cat.result = ConnectionError("catalog unreachable")
        await asyncio.sleep(0.15)
        assert len(lb.backends()) == 2
        cat.result = ["10.1.0.3:80"]
        for _ in range(100):
            if [b.addr for b in lb.backends()] == ["10.1.0.3:80"]:
                break
            await asyncio.sleep(0.01)
        await lb.stop()
        assert [b.addr for b in lb.backends()] == ["10.1.0.3:80"]

    with caplog.at_level(logging.ERROR, logger="sluiceway.error"):
        run(scenario())
    assert "discovery Catalog failed, keeping 2 backends: catalog unreachable" in caplog.text


def test_a_selection_that_fails_to_build_keeps_the_old_set(caplog):
    def picky(backends):
        if len(backends) > 2:
            raise ValueError("picky refuses more than 2 backends")
        return RoundRobin(backends)

    static = Static(["10.0.0.1:80", "10.0.0.2:80"])
    lb = LoadBalancer(static, picky)
    assert run(lb.update()) is True
    lb.set_enable("10.0.0.1:80", False)
    static.set(["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"])
    with caplog.at_level(logging.ERROR, logger="sluiceway.error"):
        assert run(lb.update()) is False
    assert "picky refuses more than 2 backends" in caplog.text
    assert [b.addr for b in lb.backends()] == ["10.0.0.1:80", "10.0.0.2:80"]
    assert [s.enabled for s in lb.states()] == [False, True]
    assert {lb.select().addr for _ in range(4)} == {"10.0.0.2:80"}


def test_limits_agree_between_modules_and_backends_pickle():
    import pickle

    from sluiceway import _lb, _lb_py, lb
    assert lb.MAX_WEIGHT == _lb.MAX_WEIGHT == _lb_py.MAX_WEIGHT == 65535
    assert _lb.MAX_SLOTS == _lb_py.MAX_SLOTS and _lb.KETAMA_POINTS == _lb_py.KETAMA_POINTS == 160
    b = Backend("[::1]:80", 2, {"zone": "a"})
    c = pickle.loads(pickle.dumps(b))
    assert c == b and c.metadata == {"zone": "a"} and type(c).__module__ == "sluiceway.lb"


def test_large_sets_are_built_off_the_loop():
    """update() builds a big ring in the executor; the loop keeps running."""
    from sluiceway import lb as lbmod
    n = lbmod.OFF_LOOP_BUILD * 4
    static = Static([f"10.{i // 256 % 256}.{i % 256}.1:80" for i in range(n)])
    lb = LoadBalancer(static, Consistent)
    ticks = []

    async def scenario():
        async def ticker():
            while True:
                ticks.append(asyncio.get_running_loop().time())
                await asyncio.sleep(0)
        t = asyncio.ensure_future(ticker())
        await asyncio.sleep(0)
        before = len(ticks)
        assert await lb.update() is True
        t.cancel()
        return len(ticks) - before

    assert run(scenario()) > 1      # the loop ran while the ring was built
    assert len(lb.backends()) == n and lb.select("k") in lb.backends()
    # Unchanged set: nothing is rebuilt.
    algo = lb._selection[0]
    assert run(lb.update()) is False and lb._selection[0] is algo
