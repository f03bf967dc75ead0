"""`python -m sluiceway.selfcheck`: prove the compiled parser works here.

Parses a pipelined request stream whole and byte by byte, shows what it
found, checks that a request-smuggling shape is refused, and prints a quick
throughput figure. Exits non-zero on any mismatch.
"""

import sys
import time

from sluiceway import __version__
from sluiceway._compiled import load

DEMO = (b"GET /search?q=sluiceway HTTP/1.1\r\nHost: example.test\r\nX-API-Key: k-1\r\n\r\n"
        b"POST /upload HTTP/1.1\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\nChecksum: 42\r\n\r\n")
SMUGGLE = (b"POST / HTTP/1.1\r\nHost: example.test\r\nContent-Length: 4\r\n"
           b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")


def _events(http, data, step):
    p = http.RequestParser()
    out = []
    for i in range(0, len(data), step):
        p.feed(data[i:i + step])
        for ev in p.events():
            if isinstance(ev, memoryview):  # body pieces: join them
                if out and isinstance(out[-1], bytes):
                    out[-1] += bytes(ev)
                else:
                    out.append(bytes(ev))
            else:
                out.append(repr(ev))
    return out


def main() -> int:
    http = load("_http")
    from sluiceway.errors import ParseError

    print(f"sluiceway {__version__}: compiled parser at {http.__file__}")
    whole = _events(http, DEMO, len(DEMO))
    if _events(http, DEMO, 1) != whole:
        print("FAIL: byte-at-a-time parsing differs from whole-buffer parsing")
        return 1
    for line in whole:
        print("  ", line)
    p = http.RequestParser()
    p.feed(SMUGGLE)
    try:
        p.next_event()
        print("FAIL: Content-Length with Transfer-Encoding was accepted")
        return 1
    except ParseError as exc:
        print(f"   refused smuggling shape: {exc.status} {exc}")
    p = http.RequestParser()
    req = DEMO.split(b"POST")[0]
    n = 200_000
    t = time.perf_counter()
    for _ in range(n):
        p.feed(req)
        p.next_event().headers.get("x-api-key")
        p.next_event()
    dt = time.perf_counter() - t
    print(f"   parsed {n / dt:,.0f} requests/s (head + one header lookup) on one core")
    print("selfcheck OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
