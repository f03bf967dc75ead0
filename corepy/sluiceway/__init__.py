"""sluiceway: a programmable HTTP reverse-proxy framework.

Phase hooks are written in Python; parsing, the event loop, pooling,
load-balancing selection and limits are compiled. Importing this package
imports the compiled modules and fails loudly, with a hint, when they are
missing: there is no silent pure-Python fallback for the engine.
"""

from ._compiled import check_interpreter as _check_interpreter
from ._compiled import load as _load

_check_interpreter()
from .errors import Error, ParseError

__version__ = "0.1.0.dev0"

_http = _load("_http")
RequestParser = _http.RequestParser
ResponseParser = _http.ResponseParser
Headers = _http.Headers
RequestHead = _http.RequestHead
ResponseHead = _http.ResponseHead
EndOfMessage = _http.EndOfMessage
NEED_DATA = _http.NEED_DATA
END_OF_MESSAGE = _http.END_OF_MESSAGE
UPGRADED = _http.UPGRADED
CONNECTION_CLOSED = _http.CONNECTION_CLOSED

from .lb import (DNS, Backend, BackendLoad, BackendState, Consistent, File, FNVHash,
                 HealthCheck, HttpHealthCheck, LeastConnections, LoadBalancer,
                 PowerOfTwoChoices, Random, RoundRobin, SelectionAlgorithm, ServiceDiscovery,
                 Static, TcpHealthCheck)

from .limits import (Attempt, BreakerState, CircuitBreaker, CircuitOpen, ConcurrencyLimiter,
                     ConcurrencyLimitExceeded, Estimator, Inflight, InflightGuard, LoadShedError,
                     Permit, Rate, RateDecision, RateLimiter, Transition, proportional)

from .config import ConfigError, ServerConf, load_config
from ._base.tls import ClientCert, TlsInfo
from .proxy import (HeaderMap, HttpPeer, ProxyHttp, RequestHeader, ResponseHeader, Session,
                    pool_stats)
from .server import (BackgroundService, ProxyService, Server, background_service,
                     http_proxy_service)

__all__ = [
    "Error", "ParseError", "RequestParser", "ResponseParser", "Headers", "RequestHead",
    "ResponseHead", "EndOfMessage", "NEED_DATA", "END_OF_MESSAGE", "UPGRADED", "CONNECTION_CLOSED",
    # the proxy
    "ProxyHttp", "HttpPeer", "Session", "RequestHeader", "ResponseHeader", "HeaderMap", "pool_stats",
    "ServerConf", "ConfigError", "load_config",
    "Server", "ProxyService", "BackgroundService", "http_proxy_service", "background_service",
    "TlsInfo", "ClientCert",
    # load balancing
    "LoadBalancer", "Backend", "BackendState", "RoundRobin", "Random", "FNVHash", "Consistent",
    "LeastConnections", "PowerOfTwoChoices", "BackendLoad",
    "SelectionAlgorithm", "Static", "DNS", "File", "ServiceDiscovery", "HealthCheck",
    "TcpHealthCheck", "HttpHealthCheck",
    # limits and load shedding
    "Estimator", "Rate", "Inflight", "InflightGuard", "proportional", "RateLimiter", "RateDecision",
    "ConcurrencyLimiter", "Permit", "CircuitBreaker", "Attempt", "BreakerState", "Transition",
    "LoadShedError", "ConcurrencyLimitExceeded", "CircuitOpen",
]
