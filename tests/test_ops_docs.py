"""The "Try it" session in docs/operations.md runs as written (in a temporary
folder, on a free port, `sluiceway` being this checkout's) and does what its
comments say: start, a refused second start, reload, upgrade, rollback, a
killed worker replaced, logrotate, stop."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import subprocess_env
from proxy_harness import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(not shutil.which("curl"), reason="needs curl")


def _session_block():
    with open(os.path.join(ROOT, "docs", "operations.md")) as f:
        text = f.read()
    part = text[text.index("## Try it"):]
    return re.search(r"```sh\n(.*?)```", part, re.S).group(1)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_try_it_session_runs_as_written(tmp_path):
    port = free_port()
    folder = str(tmp_path / "sw-ops")
    script = (_session_block().replace("/tmp/sw-ops", folder)
              .replace("127.0.0.1:8080", f"127.0.0.1:{port}"))
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "sluiceway").write_text(f"#!/bin/sh\nexec {sys.executable} -m sluiceway.cli \"$@\"\n")
    (bindir / "sluiceway").chmod(0o755)
    env = subprocess_env(PATH=f"{bindir}:{os.environ['PATH']}")
    pid_file = os.path.join(folder, "sluiceway.pid")
    try:
        p = subprocess.run(["bash", "-euo", "pipefail", "-c", script], env=env, cwd=str(tmp_path),
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stdout + p.stderr
        versions = [line for line in p.stdout.split() if re.fullmatch(r"v\d", line)]
        assert versions == ["v1", "v2", "v3", "v2"], p.stdout
        assert "refused" in p.stdout
        assert "was killed by SIGKILL" in p.stdout
        log = open(os.path.join(folder, "error.log")).read()
        assert "log files reopened" in log
        # the stop: the last master is gone within its grace period
        pid = int(re.findall(r"master pid (\d+)", open(os.path.join(folder, "error.log.1")).read()
                             + log)[-1])
        deadline = time.monotonic() + 15
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid)
    finally:
        # whatever the script left running (it failed half-way): stop it by its pid
        try:
            pid = int(open(pid_file).read())
            os.kill(pid, signal.SIGINT)
        except (OSError, ValueError):
            pass
