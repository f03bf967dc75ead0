"""Parser throughput: sluiceway vs httptools (llhttp, Python callbacks) vs h11.

Same inputs, same run. Each round parses one message and reads what a proxy
hook typically reads: method, path and one header (for the response: status
and one header). Run:

    pytest bench/bench_parser.py --benchmark-only --benchmark-columns=mean,ops
    python bench/bench_parser.py        # prints the ratio table for docs/performance.md
    python bench/bench_parser.py --compare before=/path/to/other/checkout [--rounds 10]

``--compare NAME=DIR`` measures sluiceway only, this tree against the one
built in place in DIR (its ``corepy`` first on PYTHONPATH), in interleaved
rounds (each round runs every tree once, in a fresh child process, the order
alternating from round to round); the best
time per tree and message is reported with the ratio: a before/after
comparison from one run.
"""

import json
import os
import subprocess
import sys

import h11
import httptools
import pytest

from sluiceway._http import RequestParser, ResponseParser

from sluiceway.testing import BROWSER_REQUEST as BROWSER
from sluiceway.testing import JSON_RESPONSE as RESPONSE
from sluiceway.testing import MINIMAL_REQUEST as MINIMAL

assert len(BROWSER) > 480 and BROWSER.count(b"\r\n") == 14


# -- sluiceway: one parser per connection, reused across messages ----------

def sw_request(parser, data, name):
    parser.feed(data)
    head = parser.next_event()
    r = (head.method, head.path, head.headers.get(name))
    parser.next_event()  # END_OF_MESSAGE
    return r


def sw_response(parser, data):
    parser.feed(data)
    head = parser.next_event()
    r = (head.status, head.headers.get("content-type"))
    parser.next_event()  # body
    parser.next_event()  # END_OF_MESSAGE
    return r


# -- httptools: a callback per header, as its users write it --------------

class _HtReq:
    __slots__ = ("url", "headers", "done", "parser")

    def __init__(self):
        self.headers = {}
        self.parser = httptools.HttpRequestParser(self)

    def on_message_begin(self):
        self.headers = {}

    def on_url(self, url):
        self.url = url

    def on_header(self, name, value):
        self.headers[name.lower()] = value

    def on_message_complete(self):
        self.done = True


class _HtResp(_HtReq):
    __slots__ = ()

    def __init__(self):
        self.headers = {}
        self.parser = httptools.HttpResponseParser(self)

    def on_body(self, body):
        pass


def ht_request(st, data, name):
    st.parser.feed_data(data)
    url = httptools.parse_url(st.url)
    return st.parser.get_method(), url.path, st.headers.get(name)


def ht_response(st, data):
    st.parser.feed_data(data)
    return st.parser.get_status_code(), st.headers.get(b"content-type")


# -- h11: a fresh Connection per message (it is one-message-at-a-time) ------

def h11_request(data, name):
    c = h11.Connection(h11.SERVER)
    c.receive_data(data)
    ev = c.next_event()
    return ev.method, ev.target.split(b"?", 1)[0], dict(ev.headers).get(name)


def h11_response(data):
    c = h11.Connection(h11.CLIENT)
    c.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    c.send(h11.EndOfMessage())
    c.receive_data(data)
    ev = c.next_event()
    return ev.status_code, dict(ev.headers).get(b"content-type")


CASES = {
    "browser": (BROWSER, "x-api-key", b"x-api-key"),
    "minimal": (MINIMAL, "host", b"host"),
}


def make_runner(lib, case):
    if case == "response":
        if lib == "sluiceway":
            p = ResponseParser()
            return lambda: sw_response(p, RESPONSE)
        if lib == "httptools":
            st = _HtResp()
            return lambda: ht_response(st, RESPONSE)
        return lambda: h11_response(RESPONSE)
    data, name, bname = CASES[case]
    if lib == "sluiceway":
        p = RequestParser()
        return lambda: sw_request(p, data, name)
    if lib == "httptools":
        st = _HtReq()
        return lambda: ht_request(st, data, bname)
    return lambda: h11_request(data, bname)


@pytest.mark.parametrize("lib", ["sluiceway", "httptools", "h11"])
@pytest.mark.parametrize("case", ["browser", "minimal", "response"])
def test_parse(benchmark, lib, case):
    run = make_runner(lib, case)
    result = run()
    assert result[0] in ("GET", b"GET", 200)
    benchmark.group = case
    benchmark(run)


def table(seconds=0.5, rounds=5, libs=("sluiceway", "httptools", "h11")):
    """Interleaved rounds; best-of per library. Returns rows for the docs."""
    import timeit

    rows = []
    for case in ("browser", "minimal", "response"):
        best = {}
        runners = {lib: make_runner(lib, case) for lib in libs}
        for _ in range(rounds):
            for lib, run in runners.items():
                n = 20000 if lib != "h11" else 2000
                t = min(timeit.repeat(run, number=n, repeat=3)) / n
                best[lib] = min(best.get(lib, 1e9), t)
        rows.append((case, best))
    return rows


def compare(specs, rounds):
    """This tree against each NAME=DIR, in interleaved rounds (see above)."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    trees = [("this", os.path.join(here, "corepy"))]
    for spec in specs:
        name, _, where = spec.partition("=")
        if not name or not where or name == "this":
            sys.exit(f"--compare wants NAME=DIR with a new NAME, got {spec!r}")
        trees.append((name, os.path.join(os.path.abspath(where), "corepy")))
    best = {name: {} for name, _ in trees}
    for r in range(rounds):
        for name, path in (trees if r % 2 == 0 else trees[::-1]):  # alternate who goes first
            env = dict(os.environ, PYTHONPATH=path + os.pathsep + os.environ.get("PYTHONPATH", ""))
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker"], env=env,
                                 capture_output=True, text=True, check=True).stdout
            for case, t in json.loads(out).items():
                best[name][case] = min(best[name].get(case, 1e9), t)
    others = [name for name, _ in trees[1:]]
    print("| message | this | " + " | ".join(others) + " | " + " | ".join(f"{o} / this" for o in others) + " |")
    print("|---" * (2 + 2 * len(others)) + "|")
    for case in best["this"]:
        t = best["this"][case]
        cells = [f"{best[o][case] * 1e9:,.0f} ns" for o in others]
        ratios = [f"{best[o][case] / t:.3f}" for o in others]
        print(f"| {case} | {t * 1e9:,.0f} ns | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")


if __name__ == "__main__":
    if "--worker" in sys.argv:
        print(json.dumps({case: best["sluiceway"] for case, best in table(rounds=1, libs=("sluiceway",))}))
        sys.exit(0)
    if "--compare" in sys.argv:
        import argparse

        ap = argparse.ArgumentParser()
        ap.add_argument("--compare", action="append", required=True, metavar="NAME=DIR")
        ap.add_argument("--rounds", type=int, default=10)
        ns = ap.parse_args()
        compare(ns.compare, ns.rounds)
        sys.exit(0)
    rows = table()
    print("| message | sluiceway | httptools | h11 | sluiceway / httptools | sluiceway / h11 |")
    print("|---|---|---|---|---|---|")
    for case, best in rows:
        s, h, e = best["sluiceway"], best["httptools"], best["h11"]
        print(f"| {case} | {1 / s:,.0f}/s ({s * 1e9:,.0f} ns) | {1 / h:,.0f}/s ({h * 1e9:,.0f} ns) "
              f"| {1 / e:,.0f}/s ({e * 1e9:,.0f} ns) | {h / s:.2f}x | {e / s:.1f}x |")
