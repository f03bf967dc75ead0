"""The tests' names for the proxy test harness, which lives in the package
(:mod:`sluiceway.testing`, behind the pytest plugin): the tests use the same
machinery users get. This module keeps the names the suites import
(``Harness``, ``raw``, ``OriginThread``, ``Origin``, ``spawn``, ...) and adds
what only this repository needs (subprocesses that import the sluiceway under
test, the examples).

The origin's built-in paths are listed in :mod:`sluiceway.testing`.
Set SLUICEWAY_TEST_LOOP=asyncio to run the in-process suites on the stdlib
loop (the reference) instead of uvloop.
"""

from __future__ import annotations

import os

from sluiceway.testing import (  # noqa: F401  (re-exported for the suites)
    Harness, LoopThread, Origin, OriginThread, Received, Reply, _OriginProto, assert_response,
    count_responses, free_port, new_loop, open_fds, raw, wait_port,
)
from sluiceway.testing import PassThrough as SimpleApp  # noqa: F401

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def spawn(args, env=None, **kw):
    """Start a Python subprocess that imports the same sluiceway as the tests
    (``cwd`` defaults to the repository)."""
    import subprocess
    import sys

    from conftest import subprocess_env

    e = subprocess_env(**(env or {}))
    kw.setdefault("cwd", REPO)
    return subprocess.Popen([sys.executable] + list(args), env=e,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def stop_proc(proc, sig=None, timeout=10):
    """Signal (SIGTERM by default) the process we started and reap it."""
    import signal as _signal

    if proc.poll() is None:
        proc.send_signal(sig or _signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except Exception:
        proc.kill()
        proc.wait(5)
        raise


def run_example(script, env):
    """Start examples/<script> listening on a free port; return (process, base URL)."""
    import signal as _signal

    port = free_port()
    proc = spawn([f"examples/{script}"], dict(env, LISTEN=f"127.0.0.1:{port}"))
    try:
        wait_port(port, proc)
    except Exception:
        stop_proc(proc, _signal.SIGKILL)
        raise
    return proc, f"http://127.0.0.1:{port}"
