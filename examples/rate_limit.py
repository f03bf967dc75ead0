"""Per-API-key rate limit: N requests per minute for each key, checked in
request_filter. Over the limit the client gets 429 with Retry-After and the
X-RateLimit-Limit / X-RateLimit-Remaining headers; every answer carries them.

Run:
    RATE_LIMIT=60 UPSTREAM=127.0.0.1:9001 LISTEN=0.0.0.0:8080 python examples/rate_limit.py
Try:
    curl -i -H 'x-api-key: alice' http://127.0.0.1:8080/
"""

import os

from sluiceway import HttpPeer, ProxyHttp, RateLimiter, Server, http_proxy_service


class RateLimited(ProxyHttp):
    def __init__(self, limit_per_minute, upstream):
        self.limiter = RateLimiter(limit=limit_per_minute, interval=60)
        self.peer = upstream

    def new_ctx(self):
        return {}

    def request_filter(self, session, ctx):
        key = session.req_header.get("x-api-key")
        if key is None:
            session.respond(401, {"content-type": "text/plain"}, "x-api-key required\n")
            return True
        decision = self.limiter.check(key)
        ctx["limit"] = decision
        if not decision.allowed:
            headers = dict(decision.headers())        # includes Retry-After when refused
            headers["content-type"] = "text/plain"
            session.respond(429, headers, "rate limit exceeded\n")
            return True
        return False

    def upstream_peer(self, session, ctx):
        return self.peer

    def response_filter(self, session, upstream_response, ctx):
        for name, value in ctx["limit"].headers():
            upstream_response.insert_header(name, value)


def main():
    server = Server.from_args()
    app = RateLimited(int(os.environ.get("RATE_LIMIT", "60")),
                      HttpPeer(os.environ.get("UPSTREAM", "127.0.0.1:9001")))
    svc = http_proxy_service(server.configuration, app)
    svc.add_tcp(os.environ.get("LISTEN", "0.0.0.0:8080"))
    server.add_service(svc)
    server.run_forever()


if __name__ == "__main__":
    main()
