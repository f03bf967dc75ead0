"""Round-robin load balancing with TCP health checks every second (three
failures in a row make a backend unhealthy) and passive health checks (a
backend that fails 3 requests within 10 s is left out for 10 s): Pingora's
load_balancer example, in Python. A request whose backend fails before
answering goes to another one (GET, HEAD, PUT, DELETE; see max_retries).

Run:
    UPSTREAMS=127.0.0.1:9001,127.0.0.1:9002,127.0.0.1:9003 LISTEN=0.0.0.0:8080 \\
        python examples/round_robin_lb.py
Try:
    for i in 1 2 3 4 5 6; do curl -s http://127.0.0.1:8080/; done
"""

import os

from sluiceway import (Error, LoadBalancer, ProxyHttp, RoundRobin, Server,
                       TcpHealthCheck, background_service, http_proxy_service)


class LB(ProxyHttp):
    def __init__(self, lb):
        self.lb = lb

    def upstream_peer(self, session, ctx):
        # One HttpPeer per backend (pooled connections); it tells the
        # balancer how each request went. A retry avoids the backends that
        # failed this request.
        peer = self.lb.select_peer(None, avoid=session.tried_peers)  # round robin: no key
        if peer is None:
            raise Error("no healthy upstream", status=502, source="upstream")
        return peer

    def upstream_request_filter(self, session, upstream_request, ctx):
        upstream_request.insert_header("x-forwarded-by", "sluiceway")


def main():
    server = Server.from_args()
    upstreams = os.environ.get("UPSTREAMS", "127.0.0.1:9001,127.0.0.1:9002").split(",")
    lb = LoadBalancer.from_iter(upstreams, RoundRobin,
                                health_check=TcpHealthCheck(timeout=1.0, consecutive_failure=3),
                                health_check_frequency=1.0, max_fails=3, fail_timeout=10)
    server.add_service(background_service("health check", lb))
    svc = http_proxy_service(server.configuration, LB(lb))
    svc.add_tcp(os.environ.get("LISTEN", "0.0.0.0:8080"))
    server.add_service(svc)
    server.run_forever()


if __name__ == "__main__":
    main()
