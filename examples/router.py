"""The router from the README: API-key check, tenant routing, HSTS.

Run:
    ROUTER_UPSTREAM_A=127.0.0.1:9001 ROUTER_UPSTREAM_B=127.0.0.1:9002 \\
        LISTEN=0.0.0.0:8080 python examples/router.py [-c conf.yaml] [-t] [-d]
Try:
    curl -i -H 'x-api-key: k' -H 'x-tenant-id: a' http://127.0.0.1:8080/
"""

import os

from sluiceway.proxy import HttpPeer, ProxyHttp
from sluiceway.server import Server, http_proxy_service

UPSTREAM_A = os.environ.get("ROUTER_UPSTREAM_A", "127.0.0.1:9001")
UPSTREAM_B = os.environ.get("ROUTER_UPSTREAM_B", "127.0.0.1:9002")


class Router(ProxyHttp):
    def new_ctx(self):
        return {}

    def request_filter(self, session, ctx):          # sync or async def, both allowed
        if session.req_header.get("x-api-key") is None:
            session.respond_error(401)
            return True                               # handled: do not proxy
        return False

    def upstream_peer(self, session, ctx):
        tenant = session.req_header.get("x-tenant-id", "default")
        return HttpPeer(UPSTREAM_A if tenant == "a" else UPSTREAM_B)

    def response_filter(self, session, upstream_response, ctx):
        upstream_response.headers["strict-transport-security"] = "max-age=31536000"
        upstream_response.headers.pop("x-debug", None)


def main():
    server = Server.from_args()      # -c conf.yaml, -t, -d
    svc = http_proxy_service(server.configuration, Router())
    svc.add_tcp(os.environ.get("LISTEN", "0.0.0.0:8080"))
    server.add_service(svc)
    server.run_forever()


if __name__ == "__main__":
    main()
