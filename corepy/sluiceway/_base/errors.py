"""sluiceway's error type.

One exception type, :class:`Error`, carries everything the proxy needs to
decide what to do with a failure: where it came from (``source``), whether
trying again on another connection or peer may help (``retryable``), the
HTTP status it maps to when it must be answered (``status``) and the
underlying cause (``__cause__``). Subclasses only narrow the kind.
"""

from __future__ import annotations

__all__ = ["Error", "ParseError", "DOWNSTREAM", "UPSTREAM", "INTERNAL"]

DOWNSTREAM = "downstream"
UPSTREAM = "upstream"
INTERNAL = "internal"


class Error(Exception):
    """A proxy error.

    Args:
        message: what went wrong, and where possible what to change.
        status: the HTTP status this error is answered with (e.g. 502).
        source: ``"downstream"`` (the client's fault), ``"upstream"`` (the
            peer's) or ``"internal"`` (ours or the user's hook).
        retryable: True when the same request may succeed on a new connection
            or another peer.

    Attributes:
        kind: ``"connect"`` for a failure to connect to the upstream,
            ``"invalid_response"`` for an upstream response that does not
            parse, else ``""`` (the metrics count errors by kind).
    """

    kind = ""

    def __init__(self, message: str, *, status: int = 500, source: str = INTERNAL,
                 retryable: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.source = source
        self.retryable = retryable

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.message!r}, status={self.status}, "
                f"source={self.source!r}, retryable={self.retryable})")


class ParseError(Error):
    """Malformed or over-limit HTTP/1.x input.

    Attributes:
        status: 400 bad request, 414 URI too long, 431 header fields too
            large, 501 unsupported method or transfer coding, 505 version not
            supported; 502 for anything wrong in an upstream's response.
        offset: the offending byte's offset in the stream given to the parser
            (counting from the first byte ever fed).
        reason: the short reason, without the offset and excerpt.
    """

    def __init__(self, reason: str, *, status: int, offset: int, excerpt: bytes = b"",
                 source: str = DOWNSTREAM) -> None:
        msg = f"{reason} (at byte {offset}"
        msg += f", near {excerpt!r})" if excerpt else ")"
        super().__init__(msg, status=status, source=source, retryable=False)
        self.reason = reason
        self.offset = offset
        self.excerpt = excerpt
