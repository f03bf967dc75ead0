"""Mutual TLS to the upstream: the proxy checks the origin's certificate
against a private CA and presents its own client certificate, which the
origin requires; TLS sessions are resumed on new connections.

Run:
    UPSTREAM=origin.internal:8443 CA_FILE=ca.pem CLIENT_CERT=proxy.pem \\
        CLIENT_KEY=proxy.key LISTEN=0.0.0.0:8080 python examples/mtls_upstream.py
    (UPSTREAM_SNI: the name the origin's certificate holds, if not its host)
Try:
    curl -i http://127.0.0.1:8080/
"""

import os

from sluiceway.proxy import HttpPeer, ProxyHttp
from sluiceway.server import Server, http_proxy_service


class MutualTls(ProxyHttp):
    def __init__(self, peer):
        self.peer = peer

    def upstream_peer(self, session, ctx):
        return self.peer

    def response_filter(self, session, upstream_response, ctx):
        tls = session.upstream_tls    # how this request's upstream connection was made
        upstream_response.headers["x-upstream-tls"] = (
            f"{tls['version']} alpn={tls['alpn']} resumed={tls['resumed']}")


def main():
    host, _, port = os.environ["UPSTREAM"].rpartition(":")
    # Built once: a missing file, or a key that does not match the
    # certificate, stops the program here with a message that says which.
    peer = HttpPeer((host, int(port)), tls=True,
                    sni=os.environ.get("UPSTREAM_SNI") or host,
                    ca_file=os.environ["CA_FILE"],            # the origin's CA
                    client_cert=os.environ["CLIENT_CERT"],    # who the proxy is
                    client_key=os.environ["CLIENT_KEY"],
                    alpn=["http/1.1"])
    server = Server.from_args()
    svc = http_proxy_service(server.configuration, MutualTls(peer))
    svc.add_tcp(os.environ.get("LISTEN", "0.0.0.0:8080"))
    server.add_service(svc)
    server.run_forever()


if __name__ == "__main__":
    main()
