"""Round-robin load balancing with TCP health checks every second: Pingora's
load_balancer example, in Python.

Run:
    UPSTREAMS=127.0.0.1:9001,127.0.0.1:9002,127.0.0.1:9003 LISTEN=0.0.0.0:8080 \\
        python examples/round_robin_lb.py
Try:
    for i in 1 2 3 4 5 6; do curl -s http://127.0.0.1:8080/; done
"""

import os

from sluiceway import (Error, HttpPeer, LoadBalancer, ProxyHttp, RoundRobin, Server,
                       TcpHealthCheck, background_service, http_proxy_service)


class LB(ProxyHttp):
    def __init__(self, lb):
        self.lb = lb
        self.peers = {}                      # one HttpPeer per backend: pooled connections

    def upstream_peer(self, session, ctx):
        backend = self.lb.select(b"", 256)   # round robin ignores the key
        if backend is None:
            raise Error("no healthy upstream", status=502, source="upstream")
        peer = self.peers.get(backend)
        if peer is None:
            peer = self.peers[backend] = HttpPeer(backend.addr)
        return peer

    def upstream_request_filter(self, session, upstream_request, ctx):
        upstream_request.insert_header("x-forwarded-by", "sluiceway")


def main():
    server = Server.from_args()
    upstreams = os.environ.get("UPSTREAMS", "127.0.0.1:9001,127.0.0.1:9002").split(",")
    lb = LoadBalancer.from_iter(upstreams, RoundRobin,
                                health_check=TcpHealthCheck(timeout=1.0),
                                health_check_frequency=1.0)
    server.add_service(background_service("health check", lb))
    svc = http_proxy_service(server.configuration, LB(lb))
    svc.add_tcp(os.environ.get("LISTEN", "0.0.0.0:8080"))
    server.add_service(svc)
    server.run_forever()


if __name__ == "__main__":
    main()
