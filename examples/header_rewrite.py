"""Response header rewriting: add security headers, drop headers that leak
internals, tag each request with an id both ways.

Run:
    UPSTREAM=127.0.0.1:9001 LISTEN=0.0.0.0:8080 python examples/header_rewrite.py
Try:
    curl -i http://127.0.0.1:8080/
"""

import itertools
import os

from sluiceway.proxy import HttpPeer, ProxyHttp
from sluiceway.server import Server, http_proxy_service

SECURITY_HEADERS = {
    "strict-transport-security": "max-age=31536000; includeSubDomains",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}
LEAKY = ("server", "x-powered-by", "x-debug", "x-aspnet-version")


class HeaderRewrite(ProxyHttp):
    def __init__(self, upstream):
        self.peer = upstream
        self.ids = itertools.count(1)

    def new_ctx(self):
        return {"id": f"req-{os.getpid()}-{next(self.ids)}"}

    def upstream_peer(self, session, ctx):
        return self.peer

    def upstream_request_filter(self, session, upstream_request, ctx):
        upstream_request.insert_header("x-request-id", ctx["id"])

    def response_filter(self, session, upstream_response, ctx):
        for name in LEAKY:
            upstream_response.headers.pop(name, None)
        for name, value in SECURITY_HEADERS.items():
            upstream_response.headers[name] = value
        upstream_response.headers["x-request-id"] = ctx["id"]


def main():
    server = Server.from_args()
    app = HeaderRewrite(HttpPeer(os.environ.get("UPSTREAM", "127.0.0.1:9001")))
    svc = http_proxy_service(server.configuration, app)
    svc.add_tcp(os.environ.get("LISTEN", "0.0.0.0:8080"))
    server.add_service(svc)
    server.run_forever()


if __name__ == "__main__":
    main()
