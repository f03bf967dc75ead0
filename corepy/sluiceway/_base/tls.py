"""What a hook sees of a client's TLS connection: ``session.tls`` (a
:class:`TlsInfo`) and ``session.client_cert`` (a :class:`ClientCert`).

The engine makes them from the handshake's result the first time a hook
asks (once per connection: later requests on it get the same objects), so
a request whose hooks do not look costs nothing.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple, Optional, Tuple

__all__ = ["TlsInfo", "ClientCert"]


class TlsInfo(NamedTuple):
    """A client connection's TLS, as agreed in its handshake."""

    #: ``"TLSv1.3"`` or ``"TLSv1.2"``.
    version: str
    #: The cipher suite, as OpenSSL names it (``"TLS_AES_256_GCM_SHA384"``,
    #: ``"ECDHE-RSA-AES128-GCM-SHA256"``).
    cipher: str
    #: The server name the client asked for (SNI), lower-case; None when it
    #: sent none (a client connecting to an IP address does not).
    sni: Optional[str]
    #: The protocol agreed by ALPN (``"http/1.1"``), or None when the
    #: client offered none the listener accepts.
    alpn: Optional[str]
    #: True when the client resumed an earlier session (a session ticket or
    #: a cached session) instead of a full handshake.
    resumed: bool


class ClientCert(NamedTuple):
    """The certificate a client presented and the listener verified against
    its ``client_ca`` (``client_auth: optional`` or ``required``)."""

    #: The subject as one string, most specific first, RFC 4514 style:
    #: ``"CN=alice,O=Example"``.
    subject: str
    #: The issuer, the same way.
    issuer: str
    #: The subject alternative names as ``(type, value)`` pairs:
    #: ``(("DNS", "alice.example"), ("email", "alice@example.com"))``.
    sans: Tuple[Tuple[str, str], ...]
    #: The serial number in hexadecimal, as OpenSSL prints it.
    serial: str
    #: The SHA-256 fingerprint of the DER certificate, lower-case hex.
    fingerprint_sha256: str
    #: ``notBefore`` and ``notAfter`` as OpenSSL prints them
    #: (``"Jan  5 09:00:00 2027 GMT"``; ``ssl.cert_time_to_seconds`` reads them).
    not_before: str
    not_after: str
    #: The certificate in DER.
    der: bytes


_SHORT = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU",
          "countryName": "C", "stateOrProvinceName": "ST", "localityName": "L",
          "emailAddress": "emailAddress", "domainComponent": "DC", "serialNumber": "serialNumber"}


def _name(rdns) -> str:
    """``ssl``'s decoded name (a tuple of RDNs, least specific first) as an
    RFC 4514 string (most specific first; commas and the like escaped)."""
    out = []
    for rdn in reversed(rdns or ()):
        parts = []
        for key, value in rdn:
            v = "".join("\\" + c if c in ',+"\\<>;=' else c for c in str(value))
            if v[:1] in (" ", "#"):
                v = "\\" + v
            if v.endswith(" "):
                v = v[:-1] + "\\ "
            parts.append(f"{_SHORT.get(key, key)}={v}")
        out.append("+".join(parts))
    return ",".join(out)


def client_cert(decoded: Optional[dict], der: bytes) -> ClientCert:
    """The :class:`ClientCert` of a verified peer certificate: ``decoded``
    is what ``SSLObject.getpeercert()`` returned, ``der`` the DER bytes."""
    d = decoded or {}
    return ClientCert(subject=_name(d.get("subject")), issuer=_name(d.get("issuer")),
                      sans=tuple((str(t), str(v)) for t, v in d.get("subjectAltName", ())),
                      serial=str(d.get("serialNumber", "")),
                      fingerprint_sha256=hashlib.sha256(der).hexdigest(),
                      not_before=str(d.get("notBefore", "")), not_after=str(d.get("notAfter", "")),
                      der=der)
