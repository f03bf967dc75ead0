"""The proxy application the request-head fuzzer runs (``sluiceway run
fuzz_app:FuzzApp``): each fuzzing lane connects from its own loopback
address (127.0.0.X) and is sent to its own recording origin, so that what an
origin receives belongs to that lane's current case.

Environment:
    SW_FUZZ_ORIGINS   JSON object {"127.0.0.X": origin_port, ...}
    SW_FUZZ_LOG_LEVEL optional level for ``sluiceway.error`` (e.g. WARNING,
                      to keep a long run's log small)
"""

import json
import logging
import os

from sluiceway.proxy import HttpPeer, ProxyHttp

if os.environ.get("SW_FUZZ_LOG_LEVEL"):
    logging.getLogger("sluiceway.error").setLevel(os.environ["SW_FUZZ_LOG_LEVEL"])


class FuzzApp(ProxyHttp):
    """Routes by the client's address; overrides nothing else, so request
    heads take the engine's fast path (forwarded as received when they can)."""

    def __init__(self):
        self.peers = {ip: HttpPeer(("127.0.0.1", port))
                      for ip, port in json.loads(os.environ["SW_FUZZ_ORIGINS"]).items()}

    def upstream_peer(self, session, ctx):
        return self.peers[session.client_addr[0]]
