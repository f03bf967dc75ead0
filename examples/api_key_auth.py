"""API-key authentication: requests need a known key in x-api-key (or
`Authorization: Bearer <key>`); the key is checked in constant time and
removed before the request goes upstream, which learns the client's name.

Run:
    API_KEYS='s3cret=alice,t0ken=bob' UPSTREAM=127.0.0.1:9001 \\
        LISTEN=0.0.0.0:8080 python examples/api_key_auth.py
Try:
    curl -i -H 'x-api-key: s3cret' http://127.0.0.1:8080/
"""

import hmac
import os

from sluiceway.proxy import HttpPeer, ProxyHttp
from sluiceway.server import Server, http_proxy_service


class ApiKeyAuth(ProxyHttp):
    def __init__(self, keys, upstream):
        self.keys = keys            # key -> client name
        self.peer = upstream

    def new_ctx(self):
        return {"client": None}

    def _lookup(self, presented):
        found = None
        for key, name in self.keys.items():     # compare with every key: no timing leak
            if hmac.compare_digest(key.encode(), presented.encode()):
                found = name
        return found

    def request_filter(self, session, ctx):
        key = session.req_header.get("x-api-key")
        if key is None:
            auth = session.req_header.get("authorization", "")
            if auth.lower().startswith("bearer "):
                key = auth[7:].strip()
        client = self._lookup(key) if key else None
        if client is None:
            session.respond(401, {"www-authenticate": 'Bearer realm="api"',
                                  "content-type": "text/plain"}, "invalid or missing API key\n")
            return True
        ctx["client"] = client
        return False

    def upstream_peer(self, session, ctx):
        return self.peer

    def upstream_request_filter(self, session, upstream_request, ctx):
        upstream_request.remove_header("x-api-key")
        upstream_request.remove_header("authorization")
        upstream_request.insert_header("x-client", ctx["client"])


def main():
    server = Server.from_args()
    keys = dict(p.split("=", 1) for p in os.environ.get("API_KEYS", "demo=demo").split(",") if "=" in p)
    app = ApiKeyAuth(keys, HttpPeer(os.environ.get("UPSTREAM", "127.0.0.1:9001")))
    svc = http_proxy_service(server.configuration, app)
    svc.add_tcp(os.environ.get("LISTEN", "0.0.0.0:8080"))
    server.add_service(svc)
    server.run_forever()


if __name__ == "__main__":
    main()
