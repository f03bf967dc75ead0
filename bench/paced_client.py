#!/usr/bin/env python3
"""An open-loop HTTP/1.1 load at a fixed rate, with every request's latency.

    python bench/paced_client.py URL --rate 5000 --duration 10 --connections 50
        [--keys 20] [--warmup 2] [--json]

Request i is due at ``start + i / rate`` whatever happened to the ones
before it (wrk's delay between a connection's requests is closed-loop: a
slow answer delays the next request, and the latency it would have seen is
never counted).  Requests go round-robin over keep-alive connections, one
outstanding per connection; a request due while its connection still waits
for an answer is sent when that answer arrives.  Two latencies per request:

* ``service``: from writing the request to reading the end of the answer;
* ``scheduled``: from when it was due to the end of the answer (counts the
  time it waited for its connection and for this client's timer, so it
  includes the client's own lateness: compare it only between runs of this
  client on the same machine).

Prints the percentiles (milliseconds), the rate answered, the requests
lost with a connection (errors) and those still unanswered 5 s after the
last was due (the server fell behind the rate); with
``--json`` one JSON object instead.  Requests in the warm-up are not
counted.  Each request carries ``x-api-key: k<i mod keys>``.  Needs
nothing but the standard library (uvloop when installed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from urllib.parse import urlsplit


class Conn(asyncio.Protocol):
    """One keep-alive connection: sends queued requests one at a time and
    finds each answer's end (Content-Length or chunked)."""

    def __init__(self, run):
        self.run = run
        self.transport = None
        self.buf = b""
        self.queue = []            # (due, request bytes) waiting for this connection
        self.busy = None           # (due, sent) of the request in flight
        self.lost = False

    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, exc):
        self.lost = True
        if self.busy is not None or self.queue:
            self.run.errors += 1 + len(self.queue)
            self.queue.clear()
            self.busy = None

    def submit(self, due, req):
        if self.lost:
            self.run.errors += 1
            return
        self.queue.append((due, req))
        if self.busy is None:
            self._send_next()

    def _send_next(self):
        due, req = self.queue.pop(0)
        self.busy = (due, time.perf_counter())
        self.transport.write(req)

    def data_received(self, data):
        self.buf += data
        while self.busy is not None:
            end = self._answer_end()
            if end is None:
                return
            status = self.buf[9:12]
            self.buf = self.buf[end:]
            done = time.perf_counter()
            due, sent = self.busy
            self.busy = None
            self.run.answered(due, sent, done, status)
            if self.queue:
                self._send_next()

    def _answer_end(self):
        buf = self.buf
        head_end = buf.find(b"\r\n\r\n")
        if head_end < 0:
            return None
        head = buf[:head_end].lower()
        body = head_end + 4
        i = head.find(b"\r\ncontent-length:")
        if i >= 0:
            j = head.find(b"\r\n", i + 2)
            n = int(head[i + 17:j if j >= 0 else len(head)])
            return body + n if len(buf) >= body + n else None
        if b"\r\ntransfer-encoding: chunked" in head:
            k = buf.find(b"\r\n0\r\n\r\n", body - 2)
            return k + 7 if k >= 0 else None
        return body                                  # no body (204, 304)


class Run:
    def __init__(self, ns):
        self.ns = ns
        self.warm_until = 0.0
        self.service = []
        self.scheduled = []
        self.statuses = {}
        self.errors = 0            # requests lost with their connection
        self.unanswered = 0        # still waiting 5 s after the last was due

    def answered(self, due, sent, done, status):
        if due < self.warm_until:
            return
        self.service.append(done - sent)
        self.scheduled.append(done - due)
        self.statuses[status] = self.statuses.get(status, 0) + 1


async def main(ns):
    loop = asyncio.get_running_loop()
    url = urlsplit(ns.url)
    host, port = url.hostname, url.port or 80
    path = url.path or "/"
    reqs = [(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nx-api-key: k{i}\r\n\r\n").encode()
            for i in range(ns.keys)]
    run = Run(ns)
    conns = []
    for _ in range(ns.connections):
        _, proto = await loop.create_connection(lambda: Conn(run), host, port)
        conns.append(proto)
    start = time.perf_counter() + 0.05
    run.warm_until = start + ns.warmup
    total = int(ns.rate * (ns.warmup + ns.duration))
    interval = 1.0 / ns.rate
    i = 0
    late_max = 0.0
    while i < total:
        now = time.perf_counter()
        # Send everything due by now; then sleep until the next one is due.
        while i < total and start + i * interval <= now:
            due = start + i * interval
            late_max = max(late_max, now - due) if due >= run.warm_until else late_max
            conns[i % len(conns)].submit(due, reqs[i % len(reqs)])
            i += 1
        if i < total:
            # At least a millisecond: the loop's timers count whole
            # milliseconds, so a shorter sleep returns at once and the
            # client spins, taking its whole CPU (and the origin's, when
            # they share one) and delaying its own reading of answers.
            # Requests due meanwhile go out together at the next wake-up
            # (their lateness counts in the scheduled latency, not in the
            # service time).
            await asyncio.sleep(max(0.001, start + i * interval - time.perf_counter()))
    end_due = start + total * interval
    deadline = time.perf_counter() + 5
    while any(c.busy is not None or c.queue for c in conns) and time.perf_counter() < deadline:
        await asyncio.sleep(0.01)
    # Still unanswered 5 s after the last was due: the server fell behind.
    for c in conns:
        run.unanswered += (c.busy is not None) + len(c.queue)
        c.busy, c.queue = None, []
    for c in conns:
        if c.transport is not None:
            c.transport.close()
    elapsed = end_due - run.warm_until
    return run, elapsed, late_max


def percentiles(values, ps=(50, 90, 99, 99.9)):
    v = sorted(values)
    if not v:
        return {p: None for p in ps}
    return {p: v[min(len(v) - 1, int(round(p / 100.0 * len(v) + 0.5)) - 1)] for p in ps}


def cli(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("url")
    ap.add_argument("--rate", type=float, default=5000.0, help="requests per second (5000)")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds counted (10)")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds sent but not counted (2)")
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--keys", type=int, default=20)
    ap.add_argument("--json", action="store_true")
    ns = ap.parse_args(argv)
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    run, elapsed, late_max = asyncio.run(main(ns))
    n = len(run.service)
    out = {
        "requests": n, "rate": n / elapsed if elapsed > 0 else 0.0, "errors": run.errors,
        "unanswered": run.unanswered,
        "statuses": {k.decode(): v for k, v in sorted(run.statuses.items())},
        "service_ms": {str(p): (x * 1e3 if x is not None else None)
                       for p, x in percentiles(run.service).items()},
        "scheduled_ms": {str(p): (x * 1e3 if x is not None else None)
                         for p, x in percentiles(run.scheduled).items()},
        "service_max_ms": max(run.service) * 1e3 if run.service else None,
        "client_late_max_ms": late_max * 1e3,
    }
    if ns.json:
        print(json.dumps(out))
    else:
        s, d = out["service_ms"], out["scheduled_ms"]
        print(f"{n} requests at {out['rate']:,.0f}/s, errors {run.errors}, unanswered "
              f"{run.unanswered}, statuses {out['statuses']}")
        print("service   " + "  ".join(f"p{p} {s[p]:.3f}" for p in s) + " ms")
        print("scheduled " + "  ".join(f"p{p} {d[p]:.3f}" for p in d) + " ms")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
