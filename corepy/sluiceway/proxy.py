"""The proxy API: subclass :class:`ProxyHttp` and override its phase hooks.

This follows Cloudflare Pingora's ``ProxyHttp`` trait, so its documentation
maps one to one, in Python's idiom. Only :meth:`ProxyHttp.upstream_peer` is
required. Hooks may be plain functions or ``async def`` coroutines; a
coroutine that finishes without suspending is run inline, only one that
really awaits goes through the event loop; either way ``asyncio.current_task()``
(so ``asyncio.timeout``, ``TaskGroup``) works from the hook's first line.
Hooks a subclass does not override are found once at start-up and never
called.

A request goes through the phases in this order (see docs/proxy.md)::

    new_ctx
    early_request_filter
    request_filter            -- True: a response was written; skip to logging
    upstream_peer             -- required; asked again after a retryable failure
      (connect; on failure: fail_to_connect, then retry or fail_to_proxy)
    connected_to_upstream
    upstream_request_filter
    request_body_filter       -- per request body chunk
    upstream_response_filter
    response_filter
    upstream_response_body_filter -- per response body chunk, as received
    response_body_filter      -- per response body chunk, on its way out
    logging                   -- always last, with the error if any
    (errors after connecting: error_while_proxy, then fail_to_proxy;
     an error line asks suppress_error_log and request_summary)
"""

from __future__ import annotations

from typing import Any, Optional

from . import _compiled
from .errors import Error

_engine = _compiled.load("_engine")

HttpPeer = _engine.HttpPeer
Session = _engine.Session
RequestHeader = _engine.RequestHeader
ResponseHeader = _engine.ResponseHeader
HeaderMap = _engine.HeaderMap
pool_stats = _engine.pool_stats

__all__ = ["ProxyHttp", "HttpPeer", "Session", "RequestHeader", "ResponseHeader",
           "HeaderMap", "pool_stats"]

Body = Optional[bytes]


class ProxyHttp:
    """Base class of a proxy application. Override the hooks you need.

    Every hook gets the :class:`Session` (the request being proxied) and
    ``ctx`` (what :meth:`new_ctx` returned for this request). Raising
    :class:`sluiceway.errors.Error` from a hook ends the request with
    ``error.status``; any other exception answers 500 and is logged on
    ``sluiceway.error``.
    """

    def new_ctx(self) -> Any:
        """Runs first for every request. Returns the per-request context
        passed to every other hook as ``ctx``.

        Default: None.
        """
        return None

    def early_request_filter(self, session: Session, ctx: Any) -> None:
        """Runs right after the request head is parsed, before
        ``request_filter`` (Pingora runs its modules here). The return value
        is ignored.

        Default: nothing.
        """
        return None

    def request_filter(self, session: Session, ctx: Any) -> bool:
        """Runs once the request head is parsed. Validate, rate-limit, or
        answer the request yourself with ``session.respond(...)`` /
        ``session.respond_error(status)``.

        Returns:
            True when a response was already written: the request is not
            proxied and only ``logging`` runs next. False to go on.

        Default: False.
        """
        return False

    def request_body_filter(self, session: Session, body: bytes, end_of_stream: bool,
                            ctx: Any) -> Body:
        """Runs for every chunk of the request body on its way upstream, and
        once more with ``b""`` and ``end_of_stream=True`` at its end.

        Returns:
            None to forward ``body`` unchanged, or the bytes to send instead
            (``b""`` drops the chunk). When this hook is overridden the body
            is sent upstream chunked (its length may change). A chunked
            request's trailer fields are not body: they follow the last chunk
            unchanged (``session.request_trailers`` shows them from the
            ``end_of_stream`` call on).

        Default: forwards every chunk unchanged.
        """
        return None

    def upstream_peer(self, session: Session, ctx: Any) -> HttpPeer:
        """Required. Runs after ``request_filter``; again after a retryable
        failure (a failed connect, or a connection that broke before any
        response byte; up to ``max_retries`` times), when
        ``session.tried_peers`` lists the peers that failed so that another
        can be chosen (``LoadBalancer.select_peer(key,
        avoid=session.tried_peers)`` does).

        Returns:
            The :class:`HttpPeer` to send this request to.
        """
        raise NotImplementedError(
            f"{type(self).__name__}.upstream_peer(session, ctx) must return an HttpPeer")

    def connected_to_upstream(self, session: Session, reused: bool, peer: HttpPeer,
                              ctx: Any) -> None:
        """Runs once a connection to ``peer`` is ready, before the request
        head is sent. ``reused`` is True when it came from the pool. The
        return value is ignored.

        Default: nothing.
        """
        return None

    def upstream_request_filter(self, session: Session, upstream_request: RequestHeader,
                                ctx: Any) -> None:
        """Runs just before the request head is sent upstream: change
        ``upstream_request`` (headers, ``uri``, ``method``) to change what is
        sent. The return value is ignored.

        Default: nothing (the head is forwarded as received, minus the
        hop-by-hop fields).
        """
        return None

    def upstream_response_filter(self, session: Session, upstream_response: ResponseHeader,
                                 ctx: Any) -> None:
        """Runs when the upstream's response head arrives (before
        ``response_filter``; Pingora runs it before its cache). Change
        ``upstream_response`` in place. The return value is ignored.

        Default: nothing.
        """
        return None

    def response_filter(self, session: Session, upstream_response: ResponseHeader,
                        ctx: Any) -> None:
        """Runs just before the response head is sent to the client: change
        ``upstream_response`` (``status``, ``headers``) in place. The return
        value is ignored.

        Default: nothing.
        """
        return None

    def response_body_filter(self, session: Session, body: bytes, end_of_stream: bool,
                             ctx: Any) -> Body:
        """Runs for every chunk of the response body on its way to the
        client, and once more with ``b""`` and ``end_of_stream=True``.

        Returns:
            None to send ``body`` unchanged, or the bytes to send instead.
            When this hook is overridden the response is sent chunked to
            HTTP/1.1 clients (close-delimited to 1.0 ones). A chunked
            response's trailer fields are not body: they follow the last
            chunk unchanged (``session.upstream_trailers`` shows them from
            the ``end_of_stream`` call on).

        Default: sends every chunk unchanged.
        """
        return None

    def upstream_response_body_filter(self, session: Session, body: bytes,
                                      end_of_stream: bool, ctx: Any) -> Body:
        """Runs for every chunk of the upstream's response body as it
        arrives (decoded when ``session.decompress_response()`` was asked),
        before ``response_body_filter``, and once more with ``b""`` and
        ``end_of_stream=True`` (Pingora runs it before its cache; here it is
        the first of the two response body filters).

        Returns:
            None to pass ``body`` on unchanged, or the bytes to pass on
            instead (``b""`` drops the chunk; at the end, bytes to add).
            As with ``response_body_filter``, the response then goes chunked.

        Default: passes every chunk on unchanged.
        """
        return None

    def suppress_error_log(self, session: Session, ctx: Any, error: Error) -> bool:
        """Runs when a request failed, before its error line is written on
        ``sluiceway.error`` (also for a connect failure that is retried).

        Returns:
            True to leave this error out of the log (expected failures: a
            health probe, a client known to hang up). ``logging`` still runs.

        Default: False (every failure is logged).
        """
        return False

    def request_summary(self, session: Session, ctx: Any) -> str:
        """Runs when an error line is written for the request: how to name
        the request in it.

        Returns:
            A short text (keep secrets out of it).

        Default: the method, target and client address, e.g.
        ``GET /api/items from 10.0.0.7:51234``.
        """
        return f"{session.req_header.method} {session.req_header.uri} from {session.client_addr}"

    def logging(self, session: Session, error: Optional[Error], ctx: Any) -> None:
        """Runs last for every request, answered or failed; ``error`` is the
        :class:`Error` that ended it, or None. The return value is ignored.

        Default: nothing (enable the ``sluiceway.access`` log for a line per
        request).
        """
        return None

    def fail_to_connect(self, session: Session, peer: HttpPeer, ctx: Any,
                        error: Error) -> Error:
        """Runs when connecting to ``peer`` failed. Nothing was sent, so
        ``error.retryable`` is True: ``upstream_peer`` is asked again (up to
        ``max_retries`` times per request). Set it to False to answer with
        the error instead.

        Returns:
            The error to go on with (usually ``error`` itself).

        Default: returns ``error`` unchanged (retried).
        """
        return error

    def error_while_proxy(self, session: Session, peer: HttpPeer, error: Error, ctx: Any,
                          client_reused: bool) -> Error:
        """Runs when an error happens after the request was sent upstream
        (timeout, invalid response, connection closed). ``client_reused`` is
        True when the client connection carried earlier requests.

        When the connection broke, was reset or timed out before any
        response byte, ``error.retryable`` says whether sending the request
        again is safe: True for idempotent methods (RFC 9110 9.2.2). Set or
        clear it (a POST your origin de-duplicates may be retried). When it
        is True and the request body was kept (``retry_buffer_bytes``),
        ``upstream_peer`` is asked again (up to ``max_retries``); a pooled
        connection the peer had closed is first replaced by a new one to
        the same peer, once.

        Returns:
            The error to go on with.

        Default: returns ``error`` unchanged.
        """
        return error

    def fail_to_proxy(self, session: Session, error: Error, ctx: Any) -> int:
        """Runs when the request failed, to decide the error response.

        Returns:
            The status to answer with (the proxy writes a small response
            when none was written yet), or 0 when the hook wrote the
            response itself (or none should be written: the connection is
            then closed).

        Default: answers ``error.status``: 502 for upstream errors, 504 for
        upstream timeouts, 400 for malformed client input, 500 for internal
        errors. When the response was already started the client connection
        is closed instead.
        """
        return error.status

