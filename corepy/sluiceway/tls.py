"""TLS on listening addresses: options, certificate files, contexts.

``ProxyService.add_tls(addr, cert, key, **options)`` and the configuration's
``tls_listen`` entries make a :class:`TlsOptions`; :func:`build` reads its
files and makes the listener's :class:`ListenerTls`: one server
``ssl.SSLContext`` per group of certificates that serve the same names (an
RSA and an ECDSA pair for the same names share one context, and OpenSSL
picks the one the client supports), and an ``sni_callback`` on the first
(the default) that switches a connection to the context of the name it
asked for. The engine is given the default context; ``docs/tls.md`` is the
user's side of it.

Contexts are made in the master before the workers fork (``_bind``), so
every worker has the same session-ticket keys: a client resumes its session
on whichever worker accepts it. A reload (SIGHUP, or ``watch_certs`` seeing
the files change) makes new contexts (new certificates, new ticket keys)
for the new workers; connections already open keep theirs.
"""

from __future__ import annotations

import os
import ssl
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ._base.tls import ClientCert, TlsInfo

__all__ = ["TlsOptions", "ListenerTls", "build", "INTERMEDIATE_CIPHERS", "TlsInfo", "ClientCert"]

#: TLS 1.2 cipher suites of Mozilla's "intermediate" profile (TLS 1.3's
#: three suites are OpenSSL's defaults and are not set by this string).
INTERMEDIATE_CIPHERS = ("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
                        "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
                        "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
                        "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:"
                        "DHE-RSA-CHACHA20-POLY1305")

_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}
_CLIENT_AUTH = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL,
                "required": ssl.CERT_REQUIRED}


@dataclass(frozen=True)
class TlsOptions:
    """A TLS listener's settings (the keys of a ``tls_listen`` entry and the
    keyword arguments of ``add_tcp``'s TLS twin, ``add_tls``).

    ``certificates`` is a tuple of ``(cert_path, key_path)``: PEM files, the
    certificate file holding the chain (leaf first). Certificates for the
    same names (an RSA and an ECDSA one) are served side by side; the first
    certificate's names are the default, for clients that send no SNI or a
    name no certificate has.
    """

    certificates: Tuple[Tuple[str, str], ...]
    min_version: str = "TLSv1.2"
    max_version: str = "TLSv1.3"
    ciphers: str = INTERMEDIATE_CIPHERS
    ecdh_curve: Optional[str] = None
    alpn: Tuple[str, ...] = ("http/1.1",)
    session_tickets: bool = True
    handshake_timeout: float = 60.0
    client_auth: str = "none"
    client_ca: Optional[str] = None
    watch_certs: bool = False

    def __post_init__(self) -> None:
        if not self.certificates:
            raise ValueError("a TLS listener needs a certificate: give cert and key "
                             "(or certificates: [{cert: ..., key: ...}])")
        for pair in self.certificates:
            if (not isinstance(pair, tuple) or len(pair) != 2 or
                    not all(isinstance(p, str) and p for p in pair)):
                raise ValueError(f"a certificate is a (cert_path, key_path) pair of file names, "
                                 f"got {pair!r}")
        for key in ("min_version", "max_version"):
            if getattr(self, key) not in _VERSIONS:
                raise ValueError(f"{key} must be TLSv1.2 or TLSv1.3, got {getattr(self, key)!r}")
        if _VERSIONS[self.min_version] > _VERSIONS[self.max_version]:
            raise ValueError(f"min_version {self.min_version} is above max_version "
                             f"{self.max_version}")
        if not isinstance(self.ciphers, str) or not self.ciphers:
            raise ValueError(f"ciphers must be an OpenSSL cipher string, got {self.ciphers!r}")
        if self.ecdh_curve is not None and not isinstance(self.ecdh_curve, str):
            raise ValueError(f"ecdh_curve must be a curve name such as prime256v1, "
                             f"got {self.ecdh_curve!r}")
        if not all(isinstance(p, str) and 0 < len(p) < 256 for p in self.alpn):
            raise ValueError(f"alpn must be a list of protocol names such as http/1.1, "
                             f"got {list(self.alpn)!r}")
        if not isinstance(self.session_tickets, bool) or not isinstance(self.watch_certs, bool):
            raise ValueError("session_tickets and watch_certs must be true or false")
        if (isinstance(self.handshake_timeout, bool) or
                not isinstance(self.handshake_timeout, (int, float)) or self.handshake_timeout < 0):
            raise ValueError(f"handshake_timeout must be seconds (0: no limit), "
                             f"got {self.handshake_timeout!r}")
        if self.client_auth not in _CLIENT_AUTH:
            raise ValueError(f"client_auth must be none, optional or required, "
                             f"got {self.client_auth!r}")
        if self.client_auth != "none" and not self.client_ca:
            raise ValueError(f"client_auth: {self.client_auth} needs client_ca, the file of CA "
                             "certificates that client certificates must chain to")

    @classmethod
    def make(cls, cert: Optional[str] = None, key: Optional[str] = None, *,
             certificates: Optional[Sequence[Any]] = None, **options: Any) -> "TlsOptions":
        """Options from ``add_tls``'s arguments or a ``tls_listen`` entry:
        ``cert`` and ``key``, and/or ``certificates`` (``(cert, key)`` pairs
        or ``{cert: ..., key: ...}`` mappings); the other keys as the
        fields. Raises ValueError naming what is wrong."""
        pairs: List[Tuple[str, str]] = []
        if cert is not None or key is not None:
            if not cert or not key:
                raise ValueError("a TLS listener's cert needs its key, and the key its cert")
            pairs.append((cert, key))
        for c in certificates or ():
            if isinstance(c, dict):
                unknown = set(c) - {"cert", "key"}
                if unknown or "cert" not in c or "key" not in c:
                    raise ValueError(f"a certificates entry is {{cert: path, key: path}}, got {c!r}")
                pairs.append((c["cert"], c["key"]))
            elif isinstance(c, (tuple, list)) and len(c) == 2:
                pairs.append((c[0], c[1]))
            else:
                raise ValueError(f"a certificates entry is (cert, key) or {{cert: ..., key: ...}}, "
                                 f"got {c!r}")
        known = {f for f in cls.__dataclass_fields__} - {"certificates"}
        for k in options:
            if k not in known:
                import difflib

                close = difflib.get_close_matches(k, known, n=1)
                raise ValueError(f"unknown TLS option {k!r}" +
                                 (f" (did you mean {close[0]}?)" if close else "") +
                                 f"; the options are {', '.join(sorted(known))}")
        if "alpn" in options:
            a = options["alpn"]
            options["alpn"] = (a,) if isinstance(a, str) else tuple(a or ())
        if "handshake_timeout" in options and isinstance(options["handshake_timeout"], int) and \
                not isinstance(options["handshake_timeout"], bool):
            options["handshake_timeout"] = float(options["handshake_timeout"])
        return cls(certificates=tuple(pairs), **options)

    def files(self) -> Tuple[str, ...]:
        """Every file the listener reads."""
        out = [p for pair in self.certificates for p in pair]
        if self.client_ca:
            out.append(self.client_ca)
        return tuple(out)


def file_state(paths: Sequence[str]) -> tuple:
    """What tells that files changed: (inode, size, mtime) of each (None
    for one that cannot be read)."""
    out = []
    for p in paths:
        try:
            st = os.stat(p)
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append(None)
    return tuple(out)


def _cert_facts(path: str) -> dict:
    """The leaf certificate of a PEM file as ``ssl`` decodes it."""
    try:
        # The only decoder of a certificate file in the standard library.
        return ssl._ssl._test_decode_cert(path)  # type: ignore[attr-defined]
    except OSError as exc:
        raise ValueError(f"cannot read certificate {path}: {exc.strerror or exc}") from None
    except ssl.SSLError as exc:
        raise ValueError(f"{path} is not a PEM certificate: {exc.reason or exc}") from None


def _names(facts: dict) -> Tuple[str, ...]:
    """The DNS names a certificate serves (its SANs, else its CN)."""
    names = [v.lower() for t, v in facts.get("subjectAltName", ()) if t == "DNS"]
    if not names:
        for rdn in facts.get("subject", ()):
            for k, v in rdn:
                if k == "commonName":
                    names.append(v.lower())
    return tuple(names)


@dataclass
class ListenerTls:
    """One TLS listener's contexts: ``context`` (the default, given to the
    engine; its ``sni_callback`` picks another by name), ``by_name``
    (exact names), ``by_suffix`` (``*.example.com`` as ``example.com``),
    ``state`` (``file_state`` of its files when they were read)."""

    options: TlsOptions
    context: ssl.SSLContext
    by_name: Dict[str, ssl.SSLContext] = field(default_factory=dict)
    by_suffix: Dict[str, ssl.SSLContext] = field(default_factory=dict)
    state: tuple = ()

    def _sni(self, sslobj, name: Optional[str], ctx: ssl.SSLContext) -> None:
        """The contexts' sni_callback: note the name (``session.tls.sni``)
        and switch to the context that serves it, if not the default."""
        if name is None:
            return None
        name = name.lower()
        sslobj._sw_sni = name
        pick = self.by_name.get(name)
        if pick is None:
            pick = self.by_suffix.get(name.partition(".")[2])
        if pick is not None and pick is not ctx:
            sslobj.context = pick
        return None

    def sni_names(self) -> Tuple[Tuple[str, bool, ssl.SSLContext], ...]:
        """What ``_sni`` chooses from, for the engine's C TLS layer (which
        does the same choice in C): ``(name, is_suffix, context)``, exact
        names first."""
        return (tuple((n, False, c) for n, c in self.by_name.items()) +
                tuple((n, True, c) for n, c in self.by_suffix.items()))


# OpenSSL's reasons for refusing a certificate and key, in words.
_LOAD_REASONS = {
    "KEY_VALUES_MISMATCH": "the key does not match the certificate",
    "NO_CERTIFICATE_ASSIGNED": "the key does not match the certificate (another key type)",
    "PEM_LIB": "the files are not a PEM certificate chain and a PEM private key",
    "NO_START_LINE": "the files are not a PEM certificate chain and a PEM private key",
    "EE_KEY_TOO_SMALL": "the key is too small for OpenSSL's security level",
    "CA_MD_TOO_WEAK": "the certificate is signed with a digest OpenSSL refuses (e.g. SHA-1)",
}


def _context(opts: TlsOptions, pairs: Sequence[Tuple[str, str]]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _VERSIONS[opts.min_version]
    ctx.maximum_version = _VERSIONS[opts.max_version]
    try:
        ctx.set_ciphers(opts.ciphers)
    except ssl.SSLError:
        raise ValueError(f"ciphers: OpenSSL accepts none of {opts.ciphers!r}") from None
    if opts.ecdh_curve:
        try:
            ctx.set_ecdh_curve(opts.ecdh_curve)
        except (ValueError, ssl.SSLError):
            raise ValueError(f"ecdh_curve: unknown curve {opts.ecdh_curve!r} (e.g. prime256v1, "
                             "secp384r1)") from None
    if opts.alpn:
        ctx.set_alpn_protocols(list(opts.alpn))
    ctx.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    if not opts.session_tickets:
        ctx.options |= ssl.OP_NO_TICKET
        ctx.num_tickets = 0
    ctx.verify_mode = _CLIENT_AUTH[opts.client_auth]
    if opts.client_ca:
        try:
            ctx.load_verify_locations(cafile=opts.client_ca)
        except OSError as exc:
            raise ValueError(f"cannot read client_ca {opts.client_ca}: "
                             f"{exc.strerror or exc}") from None
        except ssl.SSLError as exc:
            raise ValueError(f"client_ca {opts.client_ca} holds no PEM CA certificate: "
                             f"{exc.reason or exc}") from None
    for cert, key in pairs:
        try:
            ctx.load_cert_chain(cert, key)
        except OSError as exc:
            if isinstance(exc, ssl.SSLError):
                reason = exc.reason or ("PEM_LIB" if "PEM lib" in str(exc) else "")
                why = _LOAD_REASONS.get(reason, reason or str(exc))
                raise ValueError(f"cannot load certificate {cert} with key {key}: {why}") from None
            raise ValueError(f"cannot read {exc.filename or cert + ' or ' + key}: "
                             f"{exc.strerror or exc}") from None
    return ctx


def build(opts: TlsOptions, now: Optional[float] = None) -> ListenerTls:
    """Read the listener's files and make its contexts.

    Raises:
        ValueError: a file cannot be read, a key does not match its
            certificate, a certificate has expired (or is not valid yet),
            a cipher string or curve is unknown. Nothing is half-made.
    """
    now = time.time() if now is None else now
    state = file_state(opts.files())
    groups: Dict[Tuple[str, ...], List[Tuple[str, str]]] = {}
    for cert, key in opts.certificates:
        facts = _cert_facts(cert)
        after = facts.get("notAfter")
        if after and ssl.cert_time_to_seconds(after) < now:
            raise ValueError(f"certificate {cert} expired on {after}")
        before = facts.get("notBefore")
        if before and ssl.cert_time_to_seconds(before) > now + 86400:
            raise ValueError(f"certificate {cert} is not valid before {before}")
        groups.setdefault(_names(facts), []).append((cert, key))
    contexts = [(names, _context(opts, pairs)) for names, pairs in groups.items()]
    lt = ListenerTls(opts, contexts[0][1], state=state)
    for names, ctx in contexts:
        for n in names:
            if n.startswith("*."):
                lt.by_suffix.setdefault(n[2:], ctx)
            else:
                lt.by_name.setdefault(n, ctx)
    for _, ctx in contexts:
        # Every context: the one a connection starts on is the default,
        # but a name the client asks for may change it.
        ctx.sni_callback = lt._sni
    return lt
