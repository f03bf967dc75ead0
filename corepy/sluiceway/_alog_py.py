"""The JSON access-log record in pure Python: the reference for the C
formatter (csrc/sw_alog.h) the engine uses; tests drive both with the same
inputs.

A record is a dict with the keys of ``sw_alog_rec_t``; strings are bytes.
"""

from __future__ import annotations

import datetime
import json


def json_str(b: bytes) -> bytes:
    """``b`` as the inside of a JSON string: what json.dumps gives for it
    decoded as UTF-8 (bytes that are not, as the text ``\\xNN``), ASCII
    only."""
    return json.dumps(b.decode("utf-8", "backslashreplace"))[1:-1].encode("ascii")


def secs(t: float) -> bytes:
    """Seconds with 6 decimals, rounded to the microsecond as the C does
    (``t * 1e6 + 0.5``, truncated); not > 0: 0."""
    if not t > 0.0:
        t = 0.0
    us = int(t * 1e6 + 0.5)
    return b"%d.%06d" % (us // 1000000, us % 1000000)


def _addr(host: bytes, port: int) -> bytes:
    return b'"' + json_str(host) + (b":%d" % port if port >= 0 else b"") + b'"'


def _opt_secs(t: float) -> bytes:
    return b"null" if t < 0.0 else secs(t)


def json_record(r: dict) -> bytes:
    """One access-log line (``"\\n"`` included), as sw_alog_json writes it."""
    t = datetime.datetime(1970, 1, 1) + datetime.timedelta(seconds=r["time_sec"])
    ms = min(max(r["time_ms"], 0), 999)
    parts = [
        b'{"time":"%04d-%02d-%02dT%02d:%02d:%02d.%03dZ"' % (
            t.year, t.month, t.day, t.hour, t.minute, t.second, ms),
        b',"request_id":"' + json_str(r["request_id"]) + b'"',
        b',"client":' + _addr(r["client"], r["client_port"]),
        b',"method":"' + json_str(r["method"]) + b'"',
        b',"path":"' + json_str(r["path"]) + b'"',
        b',"protocol":"HTTP/1.' + (b"1" if r["minor"] else b"0") + b'"',
        b',"status":%d' % max(r["status"], 0),
        b',"request_bytes":%d' % r["request_bytes"],
        b',"response_bytes":%d' % r["response_bytes"],
        b',"upstream":' + (_addr(r["upstream"], r["upstream_port"])
                           if r["upstream"] is not None else b"null"),
        b',"upstream_status":' + (b"%d" % r["upstream_status"] if r["upstream_status"] > 0
                                  else b"null"),
        b',"duration":' + secs(r["duration"]),
        b',"upstream_connect":' + _opt_secs(r["upstream_connect"]),
        b',"upstream_first_byte":' + _opt_secs(r["upstream_first_byte"]),
        b',"upstream_reused":' + (b"true" if r["upstream_reused"] else b"false"),
        b',"retries":%d' % r["retries"],
        b',"error":' + (b'"' + json_str(r["error"]) + b'"' if r["error"] is not None
                        else b"null"),
        r.get("extra") or b"",
        b"}\n",
    ]
    return b"".join(parts)
