"""Least-connections load balancing: each request goes to the backend with
the fewest requests in flight (per unit of weight), so a slow backend gets
fewer of them. SELECTION=p2c picks the less loaded of two random backends
instead (power of two choices).

Run:
    UPSTREAMS=127.0.0.1:9001,127.0.0.1:9002,127.0.0.1:9003 LISTEN=0.0.0.0:8080 \\
        python examples/least_conn_lb.py
Try:
    curl -s http://127.0.0.1:8080/
"""

import os

from sluiceway import (Error, HttpPeer, LeastConnections, LoadBalancer, PowerOfTwoChoices,
                       ProxyHttp, Server, TcpHealthCheck, background_service, http_proxy_service)


class LB(ProxyHttp):
    def __init__(self, lb):
        self.lb = lb
        self.peers = {}                      # one HttpPeer per backend: pooled connections

    def new_ctx(self):
        return {"tried": []}

    def upstream_peer(self, session, ctx):
        tried = ctx["tried"]                 # a retry skips what failed
        backend = self.lb.select_with(b"", 16, lambda b, usable: usable and b not in tried)
        if backend is None:
            raise Error("no healthy upstream", status=502, source="upstream")
        tried.append(backend)
        peer = self.peers.get(backend)
        if peer is None:
            # load=: the proxy counts this backend's requests in flight there
            peer = self.peers[backend] = HttpPeer(backend.addr, load=self.lb.load(backend))
        return peer

    def fail_to_connect(self, session, peer, ctx, error):
        error.retryable = True               # nothing was sent: try another backend
        return error


def main():
    server = Server.from_args()
    upstreams = os.environ.get("UPSTREAMS", "127.0.0.1:9001,127.0.0.1:9002").split(",")
    selection = PowerOfTwoChoices if os.environ.get("SELECTION") == "p2c" else LeastConnections
    lb = LoadBalancer.from_iter(upstreams, selection,
                                health_check=TcpHealthCheck(timeout=1.0),
                                health_check_frequency=1.0)
    server.add_service(background_service("health check", lb))
    svc = http_proxy_service(server.configuration, LB(lb))
    svc.add_tcp(os.environ.get("LISTEN", "0.0.0.0:8080"))
    server.add_service(svc)
    server.run_forever()


if __name__ == "__main__":
    main()
