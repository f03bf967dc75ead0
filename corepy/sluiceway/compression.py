"""Response compression (gzip, brotli, zstd) and decompression of upstream
responses, as the engine applies them.

The engine asks :meth:`CompressionPolicy.plan` once per response head (only
when compression is configured, or a hook asked for it on that request):
``plan`` looks at the request's ``Accept-Encoding`` and the response's
status, ``Content-Type``, ``Content-Length``, ``Content-Encoding`` and
``Cache-Control``, and returns what to do: a decoder for the upstream's
coding (when a hook wants the plain body), an encoder for the client's, and
the header changes (``Content-Encoding``, no ``Content-Length``,
``Vary: Accept-Encoding``, a strong ``ETag`` made weak). The body then
streams through them chunk by chunk (``legs.pyx``); nothing is buffered
whole.

Rules (what nginx's gzip module and Pingora's ResponseCompression do):

* never compress twice: a response that already has a ``Content-Encoding``
  other than ``identity`` is passed on as it is (unless a hook asked for
  it to be decompressed);
* only bodies: not HEAD, 1xx, 204, 304; not 206 or ``Content-Range`` (a
  part of a representation cannot be re-encoded); not ``Cache-Control:
  no-transform``;
* only types in the allow-list (``text/*`` style prefixes allowed), and
  only when the length is unknown or at least ``min_size`` bytes;
* the coding is the one the client prefers by q-value (RFC 9110 12.5.3:
  ``*`` stands for codings not named; ``q=0`` refuses), ties broken by the
  server's order (``algorithms``); no ``Accept-Encoding``, or nothing
  acceptable: identity.

gzip comes from the standard library (zlib); brotli and zstd need the
``brotli`` and ``zstandard`` packages (``pip install sluiceway[compression]``)
and are left out of the choice when they are not installed.
"""

from __future__ import annotations

import zlib
from typing import Dict, Iterable, List, Optional

__all__ = ["CompressionPolicy", "DEFAULT_TYPES", "available_algorithms", "parse_accept_encoding",
           "choose_encoding"]

DEFAULT_TYPES = (
    "text/*", "application/json", "application/javascript", "application/xml",
    "application/xhtml+xml", "application/rss+xml", "application/atom+xml",
    "application/ld+json", "application/manifest+json", "application/wasm",
    "image/svg+xml", "font/ttf", "font/otf",
)

DEFAULT_LEVELS = {"gzip": 6, "br": 4, "zstd": 3}
LEVEL_RANGES = {"gzip": (1, 9), "br": (0, 11), "zstd": (1, 22)}


# --- codecs -------------------------------------------------------------------

class _GzipEncoder:
    __slots__ = ("_c",)

    def __init__(self, level: int) -> None:
        self._c = zlib.compressobj(level, zlib.DEFLATED, 31)

    def compress(self, data) -> bytes:
        return self._c.compress(data)

    def flush(self) -> bytes:
        return self._c.flush()


class _ZlibDecoder:
    __slots__ = ("_d",)

    def __init__(self, wbits: int) -> None:
        self._d = zlib.decompressobj(wbits)

    def decompress(self, data) -> bytes:
        return self._d.decompress(data)

    def flush(self) -> bytes:
        return self._d.flush()


def _brotli():
    try:
        import brotli  # type: ignore
        return brotli
    except ImportError:
        return None


def _zstd():
    try:
        import zstandard  # type: ignore
        return zstandard
    except ImportError:
        return None


class _BrotliEncoder:
    __slots__ = ("_c",)

    def __init__(self, level: int) -> None:
        self._c = _brotli().Compressor(quality=level)

    def compress(self, data) -> bytes:
        return self._c.process(bytes(data))

    def flush(self) -> bytes:
        return self._c.finish()


class _BrotliDecoder:
    __slots__ = ("_d",)

    def __init__(self) -> None:
        self._d = _brotli().Decompressor()

    def decompress(self, data) -> bytes:
        return self._d.process(bytes(data))

    def flush(self) -> bytes:
        return b""


class _ZstdEncoder:
    __slots__ = ("_c",)

    def __init__(self, level: int) -> None:
        self._c = _zstd().ZstdCompressor(level=level).compressobj()

    def compress(self, data) -> bytes:
        return self._c.compress(bytes(data))

    def flush(self) -> bytes:
        return self._c.flush()


class _ZstdDecoder:
    __slots__ = ("_d",)

    def __init__(self) -> None:
        self._d = _zstd().ZstdDecompressor().decompressobj()

    def decompress(self, data) -> bytes:
        return self._d.decompress(bytes(data))

    def flush(self) -> bytes:
        return b""


def available_algorithms() -> List[str]:
    """The codings this installation can produce: gzip always; br and zstd
    when their packages are installed."""
    out = ["gzip"]
    if _brotli() is not None:
        out.append("br")
    if _zstd() is not None:
        out.append("zstd")
    return out


def _encoder(name: str, level: int):
    if name == "gzip":
        return _GzipEncoder(level)
    if name == "br":
        return _BrotliEncoder(level)
    return _ZstdEncoder(level)


def _decoder(coding: str):
    """A decoder for an upstream's Content-Encoding, or None when it is not
    one this installation can undo."""
    if coding in ("gzip", "x-gzip"):
        return _ZlibDecoder(47)  # gzip or zlib wrapper, detected
    if coding == "deflate":
        return _ZlibDecoder(15)
    if coding == "br" and _brotli() is not None:
        return _BrotliDecoder()
    if coding == "zstd" and _zstd() is not None:
        return _ZstdDecoder()
    return None


# --- negotiation ----------------------------------------------------------------

def parse_accept_encoding(value: Optional[str]) -> Dict[str, float]:
    """``Accept-Encoding`` as {coding: q} (lower case; ``x-gzip`` is gzip; a
    malformed q counts as 0, so it never enables a coding)."""
    out: Dict[str, float] = {}
    if not value:
        return out
    for part in value.split(","):
        token, _, params = part.strip().partition(";")
        token = token.strip().lower()
        if not token:
            continue
        if token == "x-gzip":
            token = "gzip"
        q = 1.0
        for p in params.split(";"):
            name, _, v = p.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(v.strip())
                except ValueError:
                    q = 0.0
                if not 0.0 <= q <= 1.0:
                    q = 0.0
        out[token] = max(q, out.get(token, 0.0)) if token in out else q
    return out


def choose_encoding(accept_encoding: Optional[str], offered: Iterable[str]) -> Optional[str]:
    """The coding to use, from ``offered`` (the server's order of
    preference), or None for identity."""
    accepted = parse_accept_encoding(accept_encoding)
    if not accepted:
        return None
    star = accepted.get("*", 0.0)
    best, best_q = None, 0.0
    for name in offered:
        q = accepted.get(name, star)
        if q > best_q:
            best, best_q = name, q
    return best


def _media_type(content_type: Optional[str]) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


class CompressionPolicy:
    """When and how responses are compressed.

    Args:
        enabled: compress responses by default (a hook can still turn it on
            or off per request, ``Session.compress_response``).
        algorithms: the codings offered, in the server's order of
            preference (ties in the client's q-values go to the first).
        min_size: a response with a ``Content-Length`` below this is sent
            as it is (an unknown length is compressed).
        types: media types to compress (``text/*``: any ``text/``).
        levels: {coding: level}; gzip 1-9, br 0-11, zstd 1-22.
    """

    def __init__(self, enabled: bool = True, algorithms: Iterable[str] = ("zstd", "br", "gzip"),
                 min_size: int = 256, types: Iterable[str] = DEFAULT_TYPES,
                 levels: Optional[Dict[str, int]] = None) -> None:
        have = available_algorithms()
        algorithms = [a.lower() for a in algorithms]
        for a in algorithms:
            if a not in LEVEL_RANGES:
                raise ValueError(f"unknown compression algorithm {a!r}: use gzip, br or zstd")
        self.enabled = bool(enabled)
        self.algorithms = [a for a in algorithms if a in have]
        self.min_size = int(min_size)
        self.types = tuple(t.lower() for t in types)
        self.levels = dict(DEFAULT_LEVELS)
        for name, level in (levels or {}).items():
            lo, hi = LEVEL_RANGES.get(name, (None, None))
            if lo is None:
                raise ValueError(f"unknown compression algorithm {name!r} in levels")
            if not isinstance(level, int) or not lo <= level <= hi:
                raise ValueError(f"compression level for {name} must be {lo}..{hi}, got {level!r}")
            self.levels[name] = level

    @classmethod
    def from_conf(cls, conf) -> Optional["CompressionPolicy"]:
        """The policy of a ServerConf; None when nothing is compressed by
        default and the settings are the defaults (a hook can still ask)."""
        return cls(conf.compression, conf.compression_algorithms, conf.compression_min_size,
                   conf.compression_types, {"gzip": conf.compression_gzip_level,
                                            "br": conf.compression_brotli_level,
                                            "zstd": conf.compression_zstd_level})

    def _type_ok(self, content_type: Optional[str]) -> bool:
        mt = _media_type(content_type)
        if not mt:
            return False
        for t in self.types:
            if t.endswith("/*"):
                if mt.startswith(t[:-1]):
                    return True
            elif mt == t:
                return True
        return False

    def plan(self, accept_encoding: Optional[str], status: int, headers, has_body: bool,
             compress: Optional[bool] = None, level: Optional[int] = None,
             decompress: bool = False):
        """What to do with one response, or None (send it as it is).

        Args:
            accept_encoding: the request's Accept-Encoding (None: absent).
            status: the response status.
            headers: the response's HeaderMap (read here; changed by the
                caller with the result's ``edit``).
            has_body: whether the response has a body for this request.
            compress: a hook's choice for this request (None: the policy's).
            level: a hook's level for the chosen coding (None: configured).
            decompress: a hook wants the plain body (undo the upstream's
                coding).

        Returns:
            None, or ``(decoder, encoder, coding)``: a decoder for the
            upstream's coding (or None), an encoder for the client's (or
            None) and that coding's name; the caller then applies
            :func:`edit_headers`.
        """
        if not has_body:
            return None
        ce = (headers.get("content-encoding") or "").strip().lower()
        decoder = None
        if ce and ce != "identity":
            if not decompress:
                return None  # never compress twice
            decoder = _decoder(ce)
            if decoder is None:
                return None  # a coding we cannot undo: as it is
        want = self.enabled if compress is None else compress
        encoder = None
        coding = None
        if want and status != 206 and headers.get("content-range") is None and \
                "no-transform" not in (headers.get("cache-control") or "").lower() and \
                self._type_ok(headers.get("content-type")):
            cl = headers.get("content-length")
            small = False
            if cl is not None and decoder is None:
                try:
                    small = int(cl) < self.min_size
                except ValueError:
                    small = False
            if not small:
                coding = choose_encoding(accept_encoding, self.algorithms)
                if coding is not None:
                    encoder = _encoder(coding, self.levels[coding] if level is None else
                                       max(LEVEL_RANGES[coding][0], min(level, LEVEL_RANGES[coding][1])))
        if decoder is None and encoder is None:
            return None
        return decoder, encoder, coding


def edit_headers(headers, decoded: bool, coding: Optional[str]) -> None:
    """Change a response head's fields for a new coding: the upstream's
    Content-Encoding goes when it was decoded; the new one is set; the
    length is unknown now; caches learn the response varies by
    Accept-Encoding; a strong ETag becomes weak (the bytes differ)."""
    if decoded:
        headers.pop("content-encoding", None)
    headers.pop("content-length", None)
    if coding is not None:
        headers["Content-Encoding"] = coding
        vary = ",".join(headers.getall("vary"))
        names = [v.strip().lower() for v in vary.split(",") if v.strip()]
        if "*" not in names and "accept-encoding" not in names:
            headers["Vary"] = (vary + ", Accept-Encoding") if vary else "Accept-Encoding"
        etag = headers.get("etag")
        if etag is not None and not etag.startswith("W/"):
            headers["ETag"] = "W/" + etag
