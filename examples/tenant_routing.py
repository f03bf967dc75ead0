"""Header-based tenant routing: each tenant (x-tenant-id) has its own pool of
upstreams, picked round-robin; unknown tenants get 404, a missing header 400.

Run:
    TENANTS='acme=127.0.0.1:9001,127.0.0.1:9002;globex=127.0.0.1:9003' \\
        LISTEN=0.0.0.0:8080 python examples/tenant_routing.py
Try:
    curl -i -H 'x-tenant-id: acme' http://127.0.0.1:8080/
"""

import itertools
import os

from sluiceway.errors import Error
from sluiceway.proxy import HttpPeer, ProxyHttp
from sluiceway.server import Server, http_proxy_service


def parse_tenants(spec):
    """'t1=h:p,h:p;t2=h:p' -> {'t1': [HttpPeer, ...], ...}"""
    table = {}
    for part in filter(None, spec.split(";")):
        name, _, addrs = part.partition("=")
        peers = [HttpPeer(a.strip()) for a in addrs.split(",") if a.strip()]
        if not name or not peers:
            raise SystemExit(f"TENANTS entry {part!r} must look like name=host:port[,host:port]")
        table[name.strip()] = peers
    return table


class TenantRouter(ProxyHttp):
    def __init__(self, tenants):
        self.cycles = {name: itertools.cycle(peers) for name, peers in tenants.items()}

    def new_ctx(self):
        return {"tenant": None}

    def request_filter(self, session, ctx):
        tenant = session.req_header.get("x-tenant-id")
        if tenant is None:
            session.respond(400, {"content-type": "text/plain"}, "missing x-tenant-id header\n")
            return True
        if tenant not in self.cycles:
            session.respond(404, {"content-type": "text/plain"}, f"unknown tenant {tenant!r}\n")
            return True
        ctx["tenant"] = tenant
        return False

    def upstream_peer(self, session, ctx):
        return next(self.cycles[ctx["tenant"]])

    def upstream_request_filter(self, session, upstream_request, ctx):
        upstream_request.insert_header("x-routed-tenant", ctx["tenant"])

    def fail_to_connect(self, session, peer, ctx, error):
        # Another upstream of the same tenant may be up: try it.
        error.retryable = True
        return error


def main():
    server = Server.from_args()
    tenants = parse_tenants(os.environ.get("TENANTS", "default=127.0.0.1:9001"))
    if not tenants:
        raise Error("no tenants configured (set TENANTS)")
    svc = http_proxy_service(server.configuration, TenantRouter(tenants))
    svc.add_tcp(os.environ.get("LISTEN", "0.0.0.0:8080"))
    server.add_service(svc)
    server.run_forever()


if __name__ == "__main__":
    main()
