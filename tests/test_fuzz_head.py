"""The request-head fuzzer (tests/fuzz/head_fuzz.py, docs/fuzzing.md), bounded.

* The parser alone: hypothesis draws fuzzer cases; RequestParser must never
  give a head that h11 rejects (or that breaks a rule of ours h11 does not
  check), and what it gives must equal what h11 reads. Regressions found by
  the fuzzer are pinned with ``@example``.
* The real proxy: a fixed-seed run of a few thousand cases through a proxy
  in a child process, with recording origins; no finding is allowed (see the
  module docstring of head_fuzz for every check).
"""

import os
import random
import sys

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "fuzz"))

import head_fuzz  # noqa: E402
from sluiceway._http import NEED_DATA, UPGRADED, EndOfMessage, RequestHead, RequestParser  # noqa: E402
from sluiceway.errors import ParseError  # noqa: E402

CASES = st.integers(0, 2**32 - 1).map(lambda s: head_fuzz.make_case(random.Random(s), s % 1000).data)


def ours(data, step):
    """RequestParser's heads (with body and completeness), fed `step` bytes at a time."""
    p = RequestParser()
    out, cur = [], None
    try:
        for i in range(0, len(data), step):
            p.feed(data[i:i + step])
            while (ev := p.next_event()) is not NEED_DATA:
                if isinstance(ev, RequestHead):
                    cur = [ev, b"", False]
                    out.append(cur)
                elif isinstance(ev, memoryview):
                    cur[1] += bytes(ev)
                elif isinstance(ev, EndOfMessage):
                    cur[2] = True
                elif ev is UPGRADED:
                    return out
    except ParseError:
        pass
    return out


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=CASES, step=st.sampled_from([1, 7, 100000]))
# Found by the fuzzer (each was forwarded upstream before the parser refused it):
@example(data=b"GET /a HTTP/1.1\r\nHost: a.example\r\nHost: evil.example\r\n\r\n", step=1)
@example(data=b"GET /a HTTP/1.1\r\nUser-Agent: x\r\n\r\n", step=1)
@example(data=b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:  \r\n\r\n5\r\nhello\r\n0\r\n\r\n", step=1)
@example(data=b"GET /a HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", step=7)
@example(data=b"DELETE /a HTTP/1.1\r\nHost: []\r\n\r\n", step=1)
@example(data=b"GET /a HTTP/1.0\r\nHost: a\tb\r\n\r\n", step=100000)
@example(data=b"PUT https://[::1/ HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", step=1)
@example(data=b"GET http://u:p@a.example?x=1 HTTP/1.1\r\nHost: a.example\r\n\r\n", step=1)
@example(data=b"CONNECT http://u:p@a.e.example?x=1 HTTP/1.1\r\nHost: a.e.example\r\n\r\n", step=1)
@example(data=b"GET http://127.0.0.1/a HTTP/1.0\r\nConnection: keep-alive\r\nHost: a\r\n"
              b"Connection: close, close\r\n\r\nDELETE /b HTTP/1.0\r\nHost: a\r\n\r\n", step=1)
# The fuzzer's own regression: Upgrade without "Connection: upgrade" is no
# upgrade, and a request may follow.
@example(data=b"GET /a HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n",
         step=1)
def test_parser_gives_no_head_h11_or_our_rules_reject(data, step):
    v = head_fuzz.h11_verdict(data)
    got = ours(data, step)
    for i, (head, body, complete) in enumerate(got):
        assert i < len(v.reqs), f"head {i} accepted; h11: {v.error or 'no such request'}: {data!r}"
        assert v.strict[i] is None, f"head {i} breaks {v.strict[i]}: {data!r}"
        want = v.reqs[i]
        assert head.method.encode() == want.method and head.raw_target == want.target
        assert head.version.encode() == want.version
        # (h11 lower-cases Transfer-Encoding values; we hand them out as sent)
        assert [(n.lower(), val.lower() if n.lower() == b"transfer-encoding" else val)
                for n, val in head.headers.raw_items()] == want.headers
        if complete and want.complete and want.method != b"CONNECT":  # a CONNECT has no content
            assert body == want.body


def test_proxy_fuzz_bounded(capsys):
    fz = head_fuzz.Fuzz(cases=4000, seed=20261206, lanes=64, log_level="INFO").run()
    report = fz.report()
    with capsys.disabled():
        print("\n" + report)
    assert fz.done == 4000, report
    assert fz.forwarded > 1000 and fz.statuses[400] > 500, report  # both paths were exercised
    assert not fz.findings, report
