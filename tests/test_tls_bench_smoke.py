"""bench/tls_compare.py (TLS listeners against nginx) run with tiny counts,
so that the harness keeps working between the runs that measure: one round
of one second for a wrk row and an s_time row, a few idle connections
(about 15 s on the 2-core machine: the proxies start, every listener is
probed, s_time takes a second more than asked). The numbers are not
looked at, only that every part measured something, without errors, and
that both proxies negotiated the same TLS."""

import math
import os
import shutil
import sys

import pytest

import sluiceway.server

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
NEEDS = ("nginx", "wrk", "openssl", "taskset")

pytestmark = [
    pytest.mark.skipif(not hasattr(sluiceway.server.ProxyService, "add_tls"),
                       reason="no TLS listeners in this tree (ProxyService.add_tls)"),
    pytest.mark.skipif(any(shutil.which(t) is None and not os.path.exists(f"/usr/sbin/{t}")
                           for t in NEEDS), reason="needs " + ", ".join(NEEDS)),
]


@pytest.fixture(scope="module")
def tls_compare():
    sys.path.insert(0, BENCH)
    try:
        import tls_compare
        yield tls_compare
    finally:
        sys.path.remove(BENCH)


def test_every_row_measures_both_proxies(tls_compare, capsys):
    rows = "ka /small,resumed 1.2"   # wrk, and s_time (whose -new rows parse alike)
    res = tls_compare.main(["--duration", "1", "--rounds", "1", "--procs", "1",
                            "--rows", rows, "--idle", "20", "--warmup", "0"])
    out = capsys.readouterr().out
    assert "WARNING" not in out, out
    for (cert, version), seen in res["probe"].items():
        assert set(seen) == {"nginx", "sluiceway"}
        assert seen["nginx"] == seen["sluiceway"], (cert, version, seen)
        assert seen["nginx"].startswith("TLSv" + version), seen
    for row in rows.split(","):
        for name in ("nginx", "sluiceway"):
            (r,) = res["runs"][(row, name)]
            assert r["count"] > 0 and r["errors"] == 0, (row, name, r)
            assert r["cpu"] > 0 and math.isfinite(r["rate"]), (row, name, r)
        (ratio,) = res["ratios"][(row, "sluiceway")]
        assert ratio > 0
    # s_time -reuse: every timed connection resumed, on both
    for name in ("nginx", "sluiceway"):
        (r,) = res["runs"][("resumed 1.2", name)]
        done, _, made = r["note"].split()[1].partition("/")
        assert done == made and int(made) > 0, (name, r["note"])
    assert set(res["idle"]) == {"nginx", "sluiceway"}
    assert all(math.isfinite(v) for v in res["idle"].values())
