"""Sample HTTP/1.1 messages shared by the tests, the benchmarks and the self-check."""

BROWSER_REQUEST = (
    b"GET /search/results?q=sluiceway&page=2 HTTP/1.1\r\n"
    b"Host: www.example.com\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
    b"Accept-Language: en-US,en;q=0.5\r\n"
    b"Accept-Encoding: gzip, deflate, br\r\n"
    b"Referer: https://www.example.com/\r\n"
    b"Cookie: session=4f2a9c1e; theme=dark\r\n"
    b"Connection: keep-alive\r\n"
    b"Upgrade-Insecure-Requests: 1\r\n"
    b"Sec-Fetch-Dest: document\r\n"
    b"Sec-Fetch-Mode: navigate\r\n"
    b"X-API-Key: k-123\r\n"
    b"\r\n"
)
"""A 520-byte browser GET with 12 header fields, the last one an API key."""

MINIMAL_REQUEST = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"

JSON_RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Server: origin\r\n"
    b"Date: Fri, 27 Nov 2026 21:00:00 GMT\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: 2\r\n"
    b"Cache-Control: no-store\r\n"
    b"X-Request-Id: 5b1c2d3e\r\n"
    b"Vary: Accept-Encoding\r\n"
    b"Connection: keep-alive\r\n"
    b"\r\n{}"
)
"""A 200 response with 8 header fields and a 2-byte body."""
