"""Protect slow or failing upstreams: a concurrency cap and a circuit breaker
per upstream, both in upstream_peer.

- At most MAX_INFLIGHT requests in flight per upstream; over the cap the
  client gets 503 at once (or after waiting up to CAP_WAIT seconds).
- After BREAKER_FAILURES consecutive failures (connect errors, timeouts or 5xx
  answers) the breaker opens: requests get 503 without touching the upstream;
  after BREAKER_COOLDOWN seconds one probe goes through, and a success closes
  the breaker again.

Run:
    UPSTREAM=127.0.0.1:9001 LISTEN=0.0.0.0:8080 python examples/load_shedding.py
"""

import logging
import os

from sluiceway import (CircuitBreaker, ConcurrencyLimiter, HttpPeer, ProxyHttp, Server,
                       http_proxy_service)


class Shedding(ProxyHttp):
    def __init__(self, upstream, max_inflight, wait, failures, cooldown):
        self.key = upstream                               # "host:port": the limits' key
        self.peer = HttpPeer(upstream)
        self.cap = ConcurrencyLimiter(max_inflight, wait=wait)
        self.breaker = CircuitBreaker(failures=failures, cooldown=cooldown)

    def new_ctx(self):
        return {"permit": None, "attempt": None}

    async def upstream_peer(self, session, ctx):
        key = self.key
        ctx["attempt"] = self.breaker.admit(key)          # raises CircuitOpen (503) when open
        if self.cap.wait:
            ctx["permit"] = await self.cap.acquire(key)   # waits up to `wait`, then 503
        else:
            ctx["permit"] = self.cap.try_acquire(key)     # 503 at once over the cap
        return self.peer

    def logging(self, session, error, ctx):
        if ctx["permit"] is not None:
            ctx["permit"].release()
        attempt = ctx["attempt"]
        if attempt is not None:
            if error is not None or session.status >= 500:
                attempt.failure()
            else:
                attempt.success()


def main():
    logging.basicConfig(level=logging.INFO)
    server = Server.from_args()
    env = os.environ.get
    app = Shedding(env("UPSTREAM", "127.0.0.1:9001"),
                   max_inflight=int(env("MAX_INFLIGHT", "100")), wait=float(env("CAP_WAIT", "0")),
                   failures=int(env("BREAKER_FAILURES", "5")), cooldown=float(env("BREAKER_COOLDOWN", "30")))
    svc = http_proxy_service(server.configuration, app)
    svc.add_tcp(env("LISTEN", "0.0.0.0:8080"))
    server.add_service(svc)
    server.run_forever()


if __name__ == "__main__":
    main()
