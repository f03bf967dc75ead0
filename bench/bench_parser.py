"""Parser throughput: sluiceway vs httptools (llhttp, Python callbacks) vs h11.

Same inputs, same run. Each round parses one message and reads what a proxy
hook typically reads: method, path and one header (for the response: status
and one header). Run:

    pytest bench/bench_parser.py --benchmark-only --benchmark-columns=mean,ops
    python bench/bench_parser.py        # prints the ratio table for docs/performance.md
"""

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


def table(seconds=0.5, rounds=5):
    """Interleaved rounds; best-of per library. Returns rows for the docs."""
    import timeit

    rows = []
    for case in ("browser", "minimal", "response"):
        best = {}
        runners = {lib: make_runner(lib, case) for lib in ("sluiceway", "httptools", "h11")}
        for _ in range(rounds):
            for lib, run in runners.items():
                n = 20000 if lib != "h11" else 2000
                t = min(timeit.repeat(run, number=n, repeat=3)) / n
                best[lib] = min(best.get(lib, 1e9), t)
        rows.append((case, best))
    return rows


if __name__ == "__main__":
    rows = table()
    print("| message | sluiceway | httptools | h11 | sluiceway / httptools | sluiceway / h11 |")
    print("|---|---|---|---|---|---|")
    for case, best in rows:
        s, h, e = best["sluiceway"], best["httptools"], best["h11"]
        print(f"| {case} | {1 / s:,.0f}/s ({s * 1e9:,.0f} ns) | {1 / h:,.0f}/s ({h * 1e9:,.0f} ns) "
              f"| {1 / e:,.0f}/s ({e * 1e9:,.0f} ns) | {h / s:.2f}x | {e / s:.1f}x |")
