"""Health checks and the background service, against real upstreams on 127.0.0.1.

Every upstream here is an asyncio server started and stopped by the test on
its own uvloop loop; nothing outlives a test.
"""

import asyncio
import logging
import os
import shutil
import ssl
import subprocess
import time

import pytest
import uvloop
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sluiceway.lb import (Backend, HealthCheck, HttpHealthCheck, LoadBalancer, RoundRobin,
                          Static, TcpHealthCheck)


def run(coro, timeout=30):
    return uvloop.run(asyncio.wait_for(coro, timeout))


class Upstream:
    """A tiny HTTP/1.1 server on 127.0.0.1 (or a Unix socket) that can stop and
    start again on the same address.

    Answers every request with ``status`` and its own address as the body;
    records Host headers and counts connections.
    """

    def __init__(self, status=200, port=0, path=None, chunked=False, silent=False):
        self.status, self.port, self.path = status, port, path
        self.chunked, self.silent = chunked, silent
        self.hosts, self.connections, self.requests = [], 0, 0
        self.server, self.writers = None, set()

    @property
    def addr(self):
        return f"unix:{self.path}" if self.path else f"127.0.0.1:{self.port}"

    async def start(self):
        if self.path:
            self.server = await asyncio.start_unix_server(self._serve, self.path)
        else:
            self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
            self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self):
        self.server.close()
        for w in list(self.writers):
            w.close()
        await self.server.wait_closed()
        if self.path and os.path.exists(self.path):
            os.unlink(self.path)

    async def _serve(self, reader, writer):
        self.connections += 1
        self.writers.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                self.requests += 1
                lines = head.decode("latin-1").split("\r\n")
                hdrs = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
                self.hosts.append(hdrs.get("host"))
                if self.silent:
                    await asyncio.sleep(3600)
                body = self.addr.encode()
                if self.chunked:
                    payload = (b"Transfer-Encoding: chunked\r\n\r\n"
                               + b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (body[:3], body[3:]))
                               + b"0\r\nX-Trailer: 1\r\n\r\n")
                else:
                    payload = b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                if lines[0].startswith("HEAD "):
                    payload = b"Content-Length: %d\r\n\r\n" % len(body)
                writer.write(b"HTTP/1.1 %d X\r\n" % self.status + payload)
                await writer.drain()
                if hdrs.get("connection", "").lower() == "close":
                    return
        finally:
            self.writers.discard(writer)
            writer.close()


# ------------------------------------------------------------ thresholds

def test_tcp_check_thresholds_callback_and_recovery():
    changes, victim = [], []

    async def scenario():
        a, b = await Upstream().start(), await Upstream().start()
        hc = TcpHealthCheck(consecutive_success=2, consecutive_failure=2, timeout=1)
        lb = LoadBalancer.from_iter([a.addr, b.addr], RoundRobin, health_check=hc,
                                    on_health_change=lambda be, ok: changes.append((be.addr, ok)))
        await lb.check_health()
        assert all(s.healthy and s.last_check is not None for s in lb.states())
        victim.append(b.addr)
        await b.stop()
        await lb.check_health()
        st = lb.state(b.addr)
        assert st.healthy and st.consecutive == 1 and "refused" in st.last_error.lower()
        await lb.check_health()
        assert not lb.state(b.addr).healthy
        assert {lb.select().addr for _ in range(10)} == {a.addr}
        await b.start()                       # same port again
        await lb.check_health()
        assert not lb.state(b.addr).healthy   # one success is below the threshold
        await lb.check_health()
        assert lb.state(b.addr).healthy
        assert {lb.select().addr for _ in range(10)} == {a.addr, b.addr}
        await a.stop()
        await b.stop()

    run(scenario())
    assert changes == [(victim[0], False), (victim[0], True)]


def test_backends_start_healthy_and_a_failing_callback_is_logged(caplog):
    async def scenario():
        lb = LoadBalancer.from_iter(["127.0.0.1:9"], health_check=TcpHealthCheck(timeout=1),
                                    on_health_change=lambda b, ok: 1 / 0)
        assert lb.select() is not None          # before any check
        await lb.check_health()                 # port 9 (discard) is closed here
        assert lb.select() is None

    with caplog.at_level(logging.ERROR, logger="sluiceway.error"):
        run(scenario())
    assert "on_health_change callback failed for 127.0.0.1:9" in caplog.text
    assert "ZeroDivisionError" in caplog.text


def test_unix_socket_backend_is_checked(tmp_path):
    async def scenario():
        up = await Upstream(path=str(tmp_path / "up.sock")).start()
        lb = LoadBalancer.from_iter([up.addr], health_check=HttpHealthCheck("svc.local"))
        await lb.check_health()
        assert lb.state(up.addr).healthy and up.hosts == ["svc.local"]
        await up.stop()
        await lb.check_health()
        assert not lb.state(up.addr).healthy

    run(scenario())


# ------------------------------------------------------------ HTTP checks

def test_http_check_status_validator_host_and_port_override():
    async def scenario():
        ok, sick, other = await Upstream().start(), await Upstream(503).start(), \
            await Upstream(chunked=True).start()
        seen = []

        def validator(status, headers, body):
            seen.append((status, body))
            return body.startswith(b"127.0.0.1:")

        hc = HttpHealthCheck("api.example", path="/healthz", validator=validator)
        lb = LoadBalancer.from_iter([ok.addr, sick.addr], health_check=hc)
        await lb.check_health()
        assert lb.state(ok.addr).healthy
        assert not lb.state(sick.addr).healthy
        assert lb.state(sick.addr).last_error == "HealthCheckError: HTTP status 503, expected 200"
        assert ok.hosts == ["api.example"] and seen == [(200, ok.addr.encode())]

        # expected_status as a set, and a chunked body reaching the validator.
        hc2 = HttpHealthCheck("h", expected_status={200, 503}, validator=lambda s, h, b: False)
        lb2 = LoadBalancer.from_iter([other.addr, sick.addr], health_check=hc2)
        await lb2.check_health()
        assert lb2.state(sick.addr).last_error.endswith("validator returned False")
        assert not lb2.state(other.addr).healthy

        seen.clear()
        hc3 = HttpHealthCheck("h", validator=validator)
        lb3 = LoadBalancer.from_iter([other.addr], health_check=hc3)
        await lb3.check_health()
        assert lb3.state(other.addr).healthy and seen == [(200, other.addr.encode())]

        # port_override: the backend's own port is dead, the check port is alive.
        hc4 = HttpHealthCheck("h", port_override=ok.port)
        lb4 = LoadBalancer.from_iter(["127.0.0.1:9"], health_check=hc4)
        await lb4.check_health()
        assert lb4.state("127.0.0.1:9").healthy
        for u in (ok, sick, other):
            await u.stop()

    run(scenario())


@pytest.mark.parametrize("reuse", [False, True])
def test_http_check_connection_reuse(reuse):
    async def scenario():
        up = await Upstream().start()
        hc = HttpHealthCheck("h", reuse_connection=reuse, method="HEAD")
        lb = LoadBalancer.from_iter([up.addr], health_check=hc)
        for _ in range(3):
            await lb.check_health()
            assert lb.state(up.addr).healthy
        assert up.requests == 3
        assert up.connections == (1 if reuse else 3)
        # The server drops the kept connection: the next check reconnects.
        await up.stop()
        await up.start()
        await lb.check_health()
        await lb.check_health()
        assert lb.state(up.addr).healthy
        await hc.close()
        await up.stop()

    run(scenario())


def test_a_check_that_hangs_times_out():
    async def scenario():
        up = await Upstream(silent=True).start()
        lb = LoadBalancer.from_iter([up.addr], health_check=HttpHealthCheck("h", timeout=0.2))
        await lb.check_health()
        assert not lb.state(up.addr).healthy
        assert lb.state(up.addr).last_error == "health check timed out after 0.2s"
        await up.stop()

    run(scenario())


def test_http_check_rejects_bad_arguments():
    with pytest.raises(ValueError, match="path must start with '/'"):
        HttpHealthCheck("h", path="healthz")
    with pytest.raises(ValueError, match="host must be a non-empty str without spaces"):
        HttpHealthCheck("a b")
    with pytest.raises(ValueError, match="expected_status must hold HTTP status codes"):
        HttpHealthCheck("h", expected_status=[700])
    with pytest.raises(ValueError, match="consecutive_failure must be an int >= 1, not 0"):
        TcpHealthCheck(consecutive_failure=0)
    with pytest.raises(ValueError, match="health check timeout must be a positive number"):
        TcpHealthCheck(timeout=-1)
    with pytest.raises(TypeError, match="tls must be None, True or an ssl.SSLContext"):
        TcpHealthCheck(tls="yes")


# ------------------------------------------------------------ TLS

@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")
def test_tcp_check_with_tls_handshake(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=upstream.test", "-addext", "subjectAltName=DNS:upstream.test",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    trusting = ssl.create_default_context(cafile=str(cert))
    untrusting = ssl.create_default_context()

    async def scenario():
        async def https(reader, writer):
            try:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
                await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
                pass   # TCP checks connect, handshake and hang up
            writer.close()
        srv = await asyncio.start_server(https, "127.0.0.1", 0, ssl=server_ctx)
        addr = "127.0.0.1:%d" % srv.sockets[0].getsockname()[1]
        good = LoadBalancer.from_iter([addr], health_check=TcpHealthCheck(
            tls=trusting, server_hostname="upstream.test"))
        bad = LoadBalancer.from_iter([addr], health_check=TcpHealthCheck(
            tls=untrusting, server_hostname="upstream.test"))
        plain = LoadBalancer.from_iter([Backend(addr, metadata={"sni": "wrong.test"})],
                                       health_check=TcpHealthCheck(tls=trusting))
        http = LoadBalancer.from_iter([addr], health_check=HttpHealthCheck(
            "upstream.test", tls=trusting, expected_status=204))
        await good.check_health()
        await bad.check_health()
        await plain.check_health()
        await http.check_health()
        assert http.state(addr).healthy, http.state(addr).last_error
        assert good.state(addr).healthy
        assert not bad.state(addr).healthy and "CERTIFICATE_VERIFY_FAILED" in bad.state(addr).last_error
        assert not plain.state(addr).healthy          # SNI from metadata: name mismatch
        srv.close()
        await srv.wait_closed()

    run(scenario())


# ------------------------------------------------------------ parallel

class Probe(HealthCheck):
    """Counts how many checks run at the same time."""

    def __init__(self):
        super().__init__(timeout=5)
        self.now = self.peak = 0

    async def check(self, backend):
        self.now += 1
        self.peak = max(self.peak, self.now)
        await asyncio.sleep(0.05)
        self.now -= 1


@pytest.mark.parametrize("parallel, peak", [(False, 1), (True, 6)])
def test_parallel_health_check(parallel, peak):
    probe = Probe()
    lb = LoadBalancer.from_iter([f"10.0.0.{i}:80" for i in range(1, 7)], health_check=probe,
                                parallel_health_check=parallel)
    run(lb.check_health())
    assert probe.peak == peak


# ------------------------------------------------------------ service & traffic

def test_traffic_leaves_a_dead_backend_in_time_and_returns_after_recovery(record_property):
    """With checks every F seconds and consecutive_failure=K, no request goes
    to a dead backend later than F*K + F after it died; it gets traffic again
    within F*consecutive_success + F of coming back."""
    F, K, S = 0.2, 2, 2
    slack = 0.15   # scheduling on a busy 2-core machine

    async def request(backend):
        r, w = await asyncio.wait_for(asyncio.open_connection(backend.host, backend.port), 1)
        try:
            w.write(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            data = await asyncio.wait_for(r.read(), 1)
            return data.split(b"\r\n\r\n", 1)[1].decode()
        finally:
            w.close()

    async def traffic(lb, until, log):
        loop = asyncio.get_running_loop()
        while loop.time() < until:
            b = lb.select()
            try:
                body = await request(b)
                log.append((loop.time(), b.addr, body == b.addr))
            except OSError:
                log.append((loop.time(), b.addr, False))
            await asyncio.sleep(0.005)

    async def scenario():
        loop = asyncio.get_running_loop()
        ups = [await Upstream().start() for _ in range(3)]
        victim = ups[1]
        hc = TcpHealthCheck(consecutive_failure=K, consecutive_success=S, timeout=0.5)
        lb = LoadBalancer(Static([u.addr for u in ups]), RoundRobin, health_check=hc,
                          health_check_frequency=F)
        lb.start(loop)
        log = []
        t0 = loop.time()
        t_traffic = asyncio.ensure_future(traffic(lb, t0 + 3.0, log))
        await asyncio.sleep(0.5)
        died = loop.time()
        await victim.stop()
        await asyncio.sleep(1.0)
        revived = loop.time()
        await victim.start()
        await t_traffic
        await lb.stop()
        for u in ups:
            await u.stop()
        return log, died, revived, victim.addr

    log, died, revived, victim = run(scenario())
    to_victim = [(t, ok) for t, addr, ok in log if addr == victim]
    assert any(ok for t, ok in to_victim if t < died), "the victim never served before it died"
    failed = [t for t, ok in to_victim if not ok]
    assert failed, "no request hit the dead backend; the test proves nothing"
    assert all(died <= t <= revived for t in failed)
    last_failure = max(failed)
    assert last_failure - died <= F * K + F + slack, f"dead backend used for {last_failure - died:.3f}s"
    back = min(t for t, ok in to_victim if ok and t > revived)
    assert back - revived <= F * S + F + slack, f"recovered backend idle for {back - revived:.3f}s"
    assert all(ok for t, addr, ok in log if addr != victim)
    record_property("dead_backend_used_for_s", round(last_failure - died, 3))
    record_property("recovered_backend_idle_for_s", round(back - revived, 3))


def test_service_start_stop_on_uvloop_and_state_is_readable():
    async def scenario():
        up = await Upstream().start()
        lb = LoadBalancer(Static([up.addr, "127.0.0.1:9"]), health_check=TcpHealthCheck(timeout=1),
                          health_check_frequency=0.05)
        assert lb.backends() == ()
        task = lb.start(asyncio.get_running_loop())
        with pytest.raises(RuntimeError, match="already running"):
            lb.start()
        for _ in range(200):
            if lb.states() and all(s.last_check for s in lb.states()):
                break
            await asyncio.sleep(0.01)
        states = {s.backend.addr: s for s in lb.states()}
        assert states[up.addr].healthy and states[up.addr].last_error is None
        assert not states["127.0.0.1:9"].healthy
        assert time.time() - states["127.0.0.1:9"].last_check < 5
        await lb.stop()
        assert task.done() and not task.cancelled()
        checked = lb.state(up.addr).last_check
        await asyncio.sleep(0.15)
        assert lb.state(up.addr).last_check == checked      # stopped means stopped
        lb.start()                                           # and it can start again
        await asyncio.sleep(0.1)
        await lb.stop()
        await up.stop()

    run(scenario())


# ------------------------------------------------------------ thresholds as a spec

class Scripted(HealthCheck):
    """A check whose results the test feeds through _observe directly."""

    async def check(self, backend):
        raise AssertionError("not used")


@settings(max_examples=200, deadline=None)
@given(results=st.lists(st.booleans(), max_size=60), cs=st.integers(1, 4), cf=st.integers(1, 4))
@example(results=[False, True, False, False], cs=1, cf=2)   # a pass resets the failure count
def test_health_flips_exactly_after_threshold_runs(results, cs, cf):
    flips = []
    lb = LoadBalancer.from_iter(["10.0.0.1:80"], health_check=Scripted(
        consecutive_success=cs, consecutive_failure=cf), on_health_change=lambda b, ok: flips.append(ok))
    b = lb.backends()[0]
    healthy, run = True, 0
    expected = []
    for i, ok in enumerate(results):
        lb._observe(b, ok, None if ok else f"failure {i}")
        # Spec: the state becomes `ok` once the last threshold(ok) results,
        # all seen while in the other state, were all `ok`.
        run = run + 1 if ok != healthy else 0
        if run and run >= (cs if ok else cf):
            healthy, run = ok, 0
            expected.append(ok)
        assert lb.state(b).healthy is healthy
        assert (lb.select() is not None) is healthy
    assert flips == expected
    assert all(a != b for a, b in zip(flips, flips[1:]))   # flips alternate
    st_ = lb.state(b)
    if False in results:
        last_fail = max(i for i, ok in enumerate(results) if not ok)
        assert st_.last_error == f"failure {last_fail}"


def test_start_on_a_loop_that_is_not_running_yet():
    """How the Server will use it: start(loop) before the worker's loop runs."""
    cat = Static(["10.0.0.1:80"])
    lb = LoadBalancer(cat, update_frequency=0.02)
    loop = uvloop.new_event_loop()
    try:
        task = lb.start(loop)
        assert lb.backends() == ()
        cat.set(["10.0.0.2:80"])
        loop.run_until_complete(asyncio.sleep(0.1))
        assert [b.addr for b in lb.backends()] == ["10.0.0.2:80"]
        loop.run_until_complete(asyncio.wait_for(lb.stop(), 5))
        assert task.done()
    finally:
        loop.close()


@pytest.mark.parametrize("raw, healthy, error", [
    (b"HTTP/1.0 200 OK\r\n\r\nclose-delimited", True, None),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc", True, None),
    (b"SSH-2.0-OpenSSH\r\n\r\n", False, "not an HTTP/1.x response: 'SSH-2.0-OpenSSH'"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", False, "unsupported transfer-encoding"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n", False, "over the 1048576 limit"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", False, "closed inside the response body"),
    (b"HTTP/1.1 200 OK\r\nX: 1", False, "connection closed before a complete response head"),
    (b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n", False, "malformed response header line"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", False, "malformed chunked"),
])
def test_http_check_reads_responses_strictly(raw, healthy, error):
    bodies = []

    async def scenario():
        async def handle(reader, writer):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(raw)
            await writer.drain()
            writer.close()
        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        addr = "127.0.0.1:%d" % srv.sockets[0].getsockname()[1]
        hc = HttpHealthCheck("h", validator=lambda s, h, b: bodies.append(b))
        lb = LoadBalancer.from_iter([addr], health_check=hc)
        await lb.check_health()
        srv.close()
        await srv.wait_closed()
        return lb.state(addr)

    st = run(scenario())
    assert st.healthy is healthy, st.last_error
    if error:
        assert error in st.last_error
    else:
        assert bodies and bodies[0] in (b"close-delimited", b"abc")
