"""Observability of a running server: /metrics on the admin listener sums
every worker (and keeps an ended worker's counts), a real Prometheus scrapes
it, promtool accepts it; /healthz, /readyz, /status; the JSON and combined
access logs match the requests sent and are reopened on SIGUSR1; request ids
are kept, made, sent upstream and returned. A `sluiceway run` with 2
workers in front of an origin, all on 127.0.0.1."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy_harness import OriginThread, free_port, spawn, stop_proc, wait_port

APP = """
import os
from sluiceway.proxy import HttpPeer, ProxyHttp
from sluiceway.metrics import Counter

TENANT = Counter("app_tenant_requests_total", "Requests by tenant", ["tenant"])

class App(ProxyHttp):
    def new_ctx(self):
        return {}

    def request_filter(self, session, ctx):
        if session.req_header.path == "/crash":
            os._exit(3)
        ctx["tenant"] = session.req_header.headers.get("x-tenant", "none")
        TENANT.labels(ctx["tenant"]).inc()
        return False

    def upstream_peer(self, session, ctx):
        return HttpPeer(("127.0.0.1", int(os.environ["ORIGIN_PORT"])))
"""


def wait_for(cond, timeout=10.0, step=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {cond}")


class Server:
    def __init__(self, folder, origin_port, extra=""):
        self.folder = folder
        self.port = free_port()
        self.admin = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_url = f"http://127.0.0.1:{self.admin}"
        self.log = folder / "error.log"
        self.alog = folder / "access.log"
        (folder / "obsapp.py").write_text(APP)
        conf = folder / "conf.yaml"
        conf.write_text(f"version: 1\nthreads: 2\ngrace_period_seconds: 2\nerror_log: {self.log}\n"
                        f"upgrade_sock: {folder / 'up.sock'}\n"
                        f"admin_listen: 127.0.0.1:{self.admin}\naccess_log: true\n"
                        f"access_log_file: {self.alog}\naccess_log_flush_seconds: 0.1\n" + extra)
        self.proc = spawn(["-m", "sluiceway.cli", "run", "obsapp:App", "-c", str(conf),
                           "-l", f"127.0.0.1:{self.port}"],
                          {"PYTHONPATH": str(folder), "ORIGIN_PORT": str(origin_port)},
                          cwd=str(folder))
        wait_port(self.port, self.proc)
        wait_port(self.admin, self.proc)
        wait_for(lambda: httpx.get(self.admin_url + "/readyz").status_code == 200)

    def workers(self):
        with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
            return [int(p) for p in f.read().split()]

    def get(self, path="/", **kw):
        with httpx.Client() as c:   # a new connection each time: both workers serve
            return c.get(self.url + path, timeout=5, **kw)

    def metrics(self):
        text = httpx.get(self.admin_url + "/metrics", timeout=5).text
        out = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def stop(self):
        return stop_proc(self.proc)


def value(m, name, **labels):
    return m.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def origin():
    with OriginThread() as ot:
        yield ot


def test_metrics_sum_both_workers_and_keep_an_ended_workers_counts(tmp_path, origin):
    s = Server(tmp_path, origin.ports[0], "access_log_format: json\n")
    try:
        for i in range(30):
            s.get("/" if i % 3 else "/status/404", headers={"x-tenant": "t%d" % (i % 2)})
        m = s.metrics()
        assert value(m, "sluiceway_requests_total", service="proxy", code="2xx") == 20
        assert value(m, "sluiceway_requests_total", service="proxy", code="4xx") == 10
        # and the start-up's probe of the port
        assert value(m, "sluiceway_client_connections_accepted_total", service="proxy") == 31
        assert value(m, "sluiceway_request_duration_seconds_count", service="proxy") == 30
        assert value(m, "sluiceway_request_duration_seconds_bucket", service="proxy",
                     le="+Inf") == 30
        assert value(m, "sluiceway_upstream_first_byte_seconds_count", service="proxy") == 30
        # "hello" x 20 and "s" x 10
        assert value(m, "sluiceway_response_body_bytes_total", service="proxy") == 110
        assert value(m, "app_tenant_requests_total", tenant="t0") == 15
        assert value(m, "app_tenant_requests_total", tenant="t1") == 15
        assert value(m, "sluiceway_workers") == 2
        # Both workers served (each keeps its own slab; the scrape sums them).
        figures = httpx.get(s.admin_url + "/status").json()["workers"]
        assert len(figures) == 2 and all(w["requests"] > 0 for w in figures)
        before = value(m, "sluiceway_requests_total", service="proxy", code="2xx")
        # A worker ends: its counts stay in the totals, which never go back.
        old = set(s.workers())
        with pytest.raises(httpx.HTTPError):
            s.get("/crash")
        wait_for(lambda: len(s.workers()) == 2 and set(s.workers()) != old)
        wait_for(lambda: httpx.get(s.admin_url + "/readyz").status_code == 200)
        m2 = s.metrics()
        assert value(m2, "sluiceway_requests_total", service="proxy", code="2xx") == before
        assert value(m2, "app_tenant_requests_total", tenant="t0") == 15
        assert value(m2, "sluiceway_worker_restarts_total") == 1
        s.get("/")
        m3 = s.metrics()
        assert value(m3, "sluiceway_requests_total", service="proxy", code="2xx") == before + 1
    finally:
        assert s.stop() == 0


def test_upstream_errors_are_counted_by_kind(tmp_path, origin):
    s = Server(tmp_path, origin.ports[0])
    try:
        assert s.get("/garbage").status_code == 502
        assert s.get("/drop").status_code == 502
        m = s.metrics()
        assert value(m, "sluiceway_requests_total", service="proxy", code="5xx") == 2
        kinds = {dict(k[1])["kind"]: v for k, v in m.items()
                 if k[0] == "sluiceway_errors_total" and v}
        assert sum(kinds.values()) == 2 and kinds.get("invalid_response") == 1, kinds
    finally:
        assert s.stop() == 0


def test_admin_listener_paths_openmetrics_and_promtool(tmp_path, origin):
    s = Server(tmp_path, origin.ports[0])
    try:
        s.get("/")
        assert httpx.get(s.admin_url + "/healthz").text == "ok\n"
        r = httpx.get(s.admin_url + "/readyz")
        assert (r.status_code, r.text) == (200, "ready\n")
        st = httpx.get(s.admin_url + "/status").json()
        assert st["ready"] and st["state"] == "ready" and st["generation"] == 0
        assert sorted(w["pid"] for w in st["workers"]) == sorted(s.workers())
        assert st["services"]["proxy"]["requests"]["2xx"] == 1
        assert httpx.get(s.admin_url + "/nothing").status_code == 404
        assert httpx.post(s.admin_url + "/metrics").status_code == 405
        # The admin paths are not on the proxy's port: that goes upstream.
        assert s.get("/metrics").text == "hello"
        plain = httpx.get(s.admin_url + "/metrics")
        assert plain.headers["content-type"].startswith("text/plain")
        om = httpx.get(s.admin_url + "/metrics",
                       headers={"accept": "application/openmetrics-text; version=1.0.0"})
        assert om.headers["content-type"].startswith("application/openmetrics-text")
        assert om.text.endswith("# EOF\n")
        check = subprocess.run(["promtool", "check", "metrics"], input=plain.text,
                               capture_output=True, text=True, timeout=30)
        assert check.returncode == 0 and check.stdout + check.stderr == "", check
    finally:
        assert s.stop() == 0


def test_a_real_prometheus_scrapes_the_totals_of_two_workers_under_load(tmp_path, origin):
    s = Server(tmp_path, origin.ports[0])
    prom = None
    try:
        pport = free_port()
        (tmp_path / "prom.yml").write_text(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: sluiceway\n"
            f"    static_configs:\n      - targets: ['127.0.0.1:{s.admin}']\n")
        prom = subprocess.Popen(
            ["/usr/bin/prometheus", f"--config.file={tmp_path / 'prom.yml'}",
             f"--web.listen-address=127.0.0.1:{pport}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(pport, prom, timeout=30)
        conns = 8
        out = subprocess.run(["wrk", "-t2", f"-c{conns}", "-d2s", s.url + "/"],
                             capture_output=True, text=True, timeout=30).stdout
        sent = int(re.search(r"(\d+) requests in", out).group(1))
        assert sent > 100, out
        time.sleep(0.5)   # the last responses wrk did not wait for are done
        ours = value(s.metrics(), "sluiceway_requests_total", service="proxy", code="2xx")
        # wrk counts the responses it read; a connection it closed at the end
        # may have had one more under way, which the proxy finished.
        assert sent <= ours <= sent + conns, (sent, ours)

        def query():
            # the same series as `ours` (a request wrk cut off at its end
            # counts under another status class)
            q = urllib.parse.quote('sum(sluiceway_requests_total{job="sluiceway",'
                                   'service="proxy",code="2xx"})')
            try:
                r = httpx.get(f"http://127.0.0.1:{pport}/api/v1/query?query={q}", timeout=5)
                res = r.json()["data"]["result"]
            except (httpx.HTTPError, KeyError, ValueError):
                return None
            return float(res[0]["value"][1]) if res else None
        seen, now = [None], [ours]

        def agree():   # /metrics read again each time: a late request counts on both
            seen.append(query())
            now.append(value(s.metrics(), "sluiceway_requests_total", service="proxy",
                             code="2xx"))
            return seen[-1] == now[-1]
        try:
            wait_for(agree, timeout=40, step=0.5)
        except AssertionError:
            raise AssertionError(f"prometheus saw {seen[-3:]}, /metrics says {now[-3:]}") from None
    finally:
        if prom is not None:
            stop_proc(prom)
        assert s.stop() == 0


def records(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_json_access_log_matches_the_requests_and_reopens_on_sigusr1(tmp_path, origin):
    s = Server(tmp_path, origin.ports[0], "access_log_format: json\nrequest_id: true\n"
               "access_log_ctx_fields: [tenant]\n")
    try:
        sent = []
        for i in range(20):
            path = ["/", "/status/404", "/big?size=1000", "/echo"][i % 4]
            if path == "/echo":
                r = httpx.post(s.url + path, content=b"x" * 7, headers={"x-tenant": "acme"})
            else:
                r = s.get(path, headers={"x-tenant": "acme"})
            sent.append((path, r.status_code, len(r.content), r.headers["x-request-id"]))
        # A failed request's record (made by the general path, not the fast one).
        bad = s.get("/garbage")
        assert bad.status_code == 502
        wait_for(lambda: s.alog.exists() and len(records(s.alog)) == 21, 5)
        recs = records(s.alog)
        by_id = {r["request_id"]: r for r in recs}
        assert len(by_id) == 21   # ids unique across both workers
        r = by_id[bad.headers["x-request-id"]]
        assert (r["status"], r["upstream_status"], r["path"]) == (502, None, "/garbage")
        assert "sent an invalid response" in r["error"] and r["tenant"] == "none"
        assert list(r) == list(recs[0])   # the same keys in the same order
        for path, status, size, rid in sent:
            r = by_id[rid]
            assert (r["path"], r["status"], r["response_bytes"]) == (path, status, size)
            assert r["request_bytes"] == (7 if path == "/echo" else 0)
            assert r["method"] == ("POST" if path == "/echo" else "GET")
            assert r["upstream"].endswith(f":{origin.ports[0]}") or str(origin.ports[0]) in \
                r["upstream"]
            assert r["upstream_status"] == status and r["tenant"] == "acme"
            assert r["protocol"] == "HTTP/1.1" and r["client"].startswith("127.0.0.1:")
            assert r["duration"] >= 0 and r["error"] is None and r["retries"] == 0
        # logrotate moves the file away; SIGUSR1 to the master: a new file.
        os.rename(s.alog, tmp_path / "access.log.1")
        os.kill(s.proc.pid, signal.SIGUSR1)
        wait_for(lambda: s.alog.exists(), 5)
        for _ in range(4):
            s.get("/")
        wait_for(lambda: len(records(s.alog)) == 4, 5)
        assert len(records(tmp_path / "access.log.1")) == 21
    finally:
        assert s.stop() == 0


def test_combined_access_log_and_sampling_keep_failures(tmp_path, origin):
    s = Server(tmp_path, origin.ports[0], "access_log_format: combined\naccess_log_sample: 0\n")
    try:
        for _ in range(5):
            s.get("/", headers={"user-agent": "ua/1", "referer": "http://r/"})
        assert s.get("/status/503").status_code == 503
        assert s.get("/garbage").status_code == 502
        s.stop()
        lines = s.alog.read_text().splitlines()
        # Sampling 0 keeps only the failed and 5xx requests.
        assert len(lines) == 2, lines
        pat = re.compile(r'^127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000\] '
                         r'"GET (\S+) HTTP/1\.1" (\d{3}) (\d+) "-" "python-httpx/[\d.]+"$')
        # (two workers: each writes its own lines, in no set order between them)
        got = sorted(pat.match(line).groups() for line in lines)
        assert got == [("/garbage", "502", got[0][2]), ("/status/503", "503", "1")]
    finally:
        s.stop()


def test_request_ids_kept_made_sent_upstream_and_returned(tmp_path, origin):
    s = Server(tmp_path, origin.ports[0], "access_log_format: json\nrequest_id: true\n")
    try:
        r = s.get("/headers", headers={"x-request-id": "abc-123"})
        assert r.headers["x-request-id"] == "abc-123"
        up = dict((n.lower(), v) for n, v in r.json()["headers"])
        assert up["x-request-id"] == "abc-123"
        for bad in ("has space", "x" * 201, ""):
            r = s.get("/headers", headers={"x-request-id": bad})
            new = r.headers["x-request-id"]
            assert new != bad and re.fullmatch(r"[0-9a-f]{32}", new)
            ups = [v for n, v in r.json()["headers"] if n.lower() == "x-request-id"]
            assert ups == [new]
        ids = {s.get("/").headers["x-request-id"] for _ in range(10)}
        assert len(ids) == 10
    finally:
        assert s.stop() == 0


def test_made_request_ids_go_upstream_once_and_stay_unique_across_a_reload(tmp_path, origin):
    """A request without an id: the one made here is added to the head the
    proxy otherwise forwards as received (once, before its end), returned,
    and logged; a reload starts workers whose ids share nothing with the old
    ones. Every access-log line parses and matches its request (the
    escaping of odd bytes is tested against json.dumps in
    test_csrc_cffi.py: the parser refuses them in a request line)."""
    s = Server(tmp_path, origin.ports[0], "access_log_format: json\nrequest_id: true\n")
    try:
        seen = {}
        for gen in (0, 1):
            for i in range(12):
                r = s.get(f"/headers?n={gen}-{i}")
                rid = r.headers["x-request-id"]
                assert re.fullmatch(r"[0-9a-f]{32}", rid)
                up = [v for n, v in r.json()["headers"] if n.lower() == "x-request-id"]
                assert up == [rid]
                assert rid not in seen
                seen[rid] = f"/headers?n={gen}-{i}"
            if gen == 0:
                before = set(s.workers())
                os.kill(s.proc.pid, signal.SIGHUP)
                wait_for(lambda: len(s.workers()) == 2 and not before & set(s.workers()), 20)
        wait_for(lambda: s.alog.exists() and len(records(s.alog)) == len(seen), 10)
        recs = records(s.alog)
        assert {r["request_id"]: r["path"] for r in recs} == seen
        assert all(r["status"] == 200 and r["method"] == "GET" for r in recs)
    finally:
        assert s.stop() == 0


def test_admin_listener_on_a_unix_socket(tmp_path, origin):
    path = tmp_path / "admin.sock"
    port = free_port()
    (tmp_path / "obsapp.py").write_text(APP)
    (tmp_path / "conf.yaml").write_text(
        f"version: 1\nthreads: 1\nerror_log: {tmp_path / 'error.log'}\n"
        f"upgrade_sock: {tmp_path / 'up.sock'}\nadmin_listen: unix:{path}\n")
    proc = spawn(["-m", "sluiceway.cli", "run", "obsapp:App", "-c", str(tmp_path / "conf.yaml"),
                  "-l", f"127.0.0.1:{port}"],
                 {"PYTHONPATH": str(tmp_path), "ORIGIN_PORT": str(origin.ports[0])},
                 cwd=str(tmp_path))
    try:
        wait_port(port, proc)
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(path))) as c:
            wait_for(lambda: c.get("http://admin/readyz").status_code == 200)
            httpx.get(f"http://127.0.0.1:{port}/")
            text = c.get("http://admin/metrics").text
        assert 'sluiceway_requests_total{code="2xx",service="proxy"} 1.0' in text
    finally:
        assert stop_proc(proc) == 0


def test_the_docs_example_runs_and_prints_what_it_says():
    from conftest import subprocess_env

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "docs", "observability.md")) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    example = next(b for b in blocks if "server.terminate()" in b)
    proc = subprocess.run([sys.executable, "-c", example], env=subprocess_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    ids = [line.split()[-1] for line in out if line.startswith("request id:")]
    assert len(set(ids)) == 3 and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert 'sluiceway_requests_total{code="2xx",service="proxy"} 3.0' in out
    assert 'demo_tenant_requests_total{tenant="acme"} 2.0' in out
    assert 'demo_tenant_requests_total{tenant="globex"} 1.0' in out
    access = sorted(line.split()[1:] for line in out if line.startswith("access:"))
    assert access == sorted([["200", "/", "acme", ids[0]], ["200", "/", "acme", ids[1]],
                             ["200", "/", "globex", ids[2]]])
    assert "workers: 2 state: ready" in out


class OtlpReceiver:
    """An OTLP/HTTP trace receiver on 127.0.0.1: keeps the spans posted."""

    def __init__(self):
        import http.server
        import threading

        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest)

        spans = self.spans = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                req = ExportTraceServiceRequest()
                req.ParseFromString(body)
                for rs in req.resource_spans:
                    res = {a.key: a.value.string_value for a in rs.resource.attributes}
                    for ss in rs.scope_spans:
                        for sp in ss.spans:
                            spans.append((res, sp))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_otel_spans_are_exported_and_the_trace_goes_upstream(tmp_path, origin):
    pytest.importorskip("opentelemetry.sdk")
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http")
    rx = OtlpReceiver()
    s = None
    try:
        s = Server(tmp_path, origin.ports[0],
                   f"otel: true\notel_endpoint: http://127.0.0.1:{rx.port}/v1/traces\n"
                   "otel_service_name: edge\nrequest_id: true\n")
        trace, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
        r = s.get("/headers", headers={"traceparent": f"00-{trace}-{parent}-01",
                                       "tracestate": "vendor=1"})
        up = dict((n.lower(), v) for n, v in r.json()["headers"])
        ver, up_trace, up_span, flags = up["traceparent"].split("-")
        assert (ver, up_trace, flags) == ("00", trace, "01") and up_span != parent
        assert up["tracestate"] == "vendor=1"
        r2 = s.get("/status/503")
        assert r2.status_code == 503
        assert s.stop() == 0   # a worker's stop exports what is left
        s = None
        by_path = {}
        for res, sp in rx.spans:
            attrs = {a.key: a.value for a in sp.attributes}
            by_path[attrs["url.path"].string_value] = (res, sp, attrs)
        res, sp, attrs = by_path["/headers"]
        assert res["service.name"] == "edge" and sp.name == "GET"
        assert sp.trace_id.hex() == trace and sp.parent_span_id.hex() == parent
        assert sp.span_id.hex() == up_span
        assert attrs["http.response.status_code"].int_value == 200
        assert attrs["http.request.method"].string_value == "GET"
        assert attrs["sluiceway.request_id"].string_value == r.headers["x-request-id"]
        _, sp2, attrs2 = by_path["/status/503"]
        assert attrs2["http.response.status_code"].int_value == 503
        assert sp2.status.code == 2   # STATUS_CODE_ERROR
        assert not sp2.parent_span_id   # a trace that starts here
    finally:
        if s is not None:
            s.stop()
        rx.close()
