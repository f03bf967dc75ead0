"""Load balancing inside the proxy: draining a backend by hand loses no request."""

import threading
import time

import httpx

from proxy_harness import Harness, OriginThread
from sluiceway import Error, HttpPeer, LoadBalancer, ProxyHttp, RoundRobin


class Balanced(ProxyHttp):
    def __init__(self, lb):
        self.lb = lb
        self.peers = {}

    def upstream_peer(self, session, ctx):
        backend = self.lb.select(b"", 16)
        if backend is None:
            raise Error("no usable upstream", status=502, source="upstream")
        peer = self.peers.get(backend)
        if peer is None:
            peer = self.peers[backend] = HttpPeer(backend.addr)
        return peer


def test_drained_backend_gets_no_new_requests_and_none_fail():
    with OriginThread(3) as origins:
        lb = LoadBalancer.from_iter([f"127.0.0.1:{p}" for p in origins.ports], RoundRobin)
        drained = lb.backends()[0]
        assert drained.port == origins.ports[0]
        with Harness(app=Balanced(lb)) as h:
            statuses, stop = [], threading.Event()

            def client():
                with httpx.Client(base_url=h.url, timeout=5) as c:
                    while not stop.is_set() and len(statuses) < 3000:
                        statuses.append(c.get("/slow?d=0.005").status_code)

            workers = [threading.Thread(target=client) for _ in range(4)]
            for w in workers:
                w.start()
            time.sleep(0.3)
            h.run(lb.set_enable, drained, False)
            time.sleep(0.1)  # requests already sent to it finish normally
            at_drain = origins.origins[0].requests
            time.sleep(0.4)
            after_drain = origins.origins[0].requests
            h.run(lb.set_enable, drained, True)
            time.sleep(0.3)
            stop.set()
            for w in workers:
                w.join(10)
        assert statuses and all(s == 200 for s in statuses), set(statuses)
        assert after_drain == at_drain                      # drained: nothing new
        assert origins.origins[0].requests > after_drain    # enabled again: traffic returns
        assert origins.origins[1].requests > 0 and origins.origins[2].requests > 0


def test_background_service_validation_and_state_is_readable():
    import pytest

    from sluiceway import Server, background_service

    server = Server()
    with pytest.raises(TypeError, match="start\\(loop\\)"):
        background_service("nope", object())
    with pytest.raises(TypeError, match="add_service takes"):
        server.add_service(object())
    lb = LoadBalancer.from_iter(["127.0.0.1:1"], RoundRobin)
    svc = background_service("health check", lb)
    server.add_service(svc)
    assert server.background == [svc] and server.services == []
    (state,) = lb.states()
    assert state.healthy and state.enabled and state.last_check is None
