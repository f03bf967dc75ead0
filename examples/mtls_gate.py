"""Mutual TLS: clients must present a certificate signed by CLIENT_CA; only
the names in ALLOWED (the certificate's CN) may reach the upstream, which
learns who called (x-client-cn, x-client-fingerprint). The access log says
which certificate made each request (with access_log: true).

Run:
    CERT=server.pem KEY=server.key CLIENT_CA=clients-ca.pem ALLOWED=alice,bob \\
        UPSTREAM=127.0.0.1:9001 LISTEN=0.0.0.0:8443 python examples/mtls_gate.py
Try:
    curl --cacert ca.pem --cert alice.pem --key alice.key https://localhost:8443/
"""

import logging
import os

from sluiceway.proxy import HttpPeer, ProxyHttp
from sluiceway.server import Server, http_proxy_service

log = logging.getLogger("sluiceway.access")


class MtlsGate(ProxyHttp):
    def __init__(self, allowed, upstream):
        self.allowed = allowed
        self.peer = upstream

    def new_ctx(self):
        return {"cn": None}

    def request_filter(self, session, ctx):
        cert = session.client_cert     # verified by the handshake (client_auth: required)
        cn = cert.subject.partition("CN=")[2].split(",")[0] if cert else None
        if cn not in self.allowed:
            session.respond(403, {"content-type": "text/plain"}, f"{cn} may not call this\n")
            return True
        ctx["cn"] = cn
        return False

    def upstream_peer(self, session, ctx):
        return self.peer

    def upstream_request_filter(self, session, upstream_request, ctx):
        upstream_request.insert_header("x-client-cn", ctx["cn"])
        upstream_request.insert_header("x-client-fingerprint", session.client_cert.fingerprint_sha256)

    def logging(self, session, error, ctx):
        cert, tls = session.client_cert, session.tls
        if log.isEnabledFor(logging.INFO):
            log.info("%s %s %d cn=%s serial=%s %s", session.req_header.method,
                     session.req_header.path, session.status, ctx["cn"],
                     cert.serial if cert else "-", tls.version if tls else "plain")


def main():
    server = Server.from_args()
    allowed = set(os.environ.get("ALLOWED", "").split(","))
    app = MtlsGate(allowed, HttpPeer(os.environ.get("UPSTREAM", "127.0.0.1:9001")))
    svc = http_proxy_service(server.configuration, app)
    svc.add_tls(os.environ.get("LISTEN", "0.0.0.0:8443"), os.environ["CERT"], os.environ["KEY"],
                client_auth="required", client_ca=os.environ["CLIENT_CA"])
    server.add_service(svc)
    server.run_forever()


if __name__ == "__main__":
    main()
