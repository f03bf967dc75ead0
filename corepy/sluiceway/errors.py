"""sluiceway's error type: :class:`Error` (with ``status``, ``source``,
``retryable`` and the cause) and :class:`ParseError`. Defined in the
package's ground floor (``sluiceway._base.errors``), which the compiled
modules import."""

from ._base.errors import DOWNSTREAM, INTERNAL, UPSTREAM, Error, ParseError

__all__ = ["Error", "ParseError", "DOWNSTREAM", "UPSTREAM", "INTERNAL"]
