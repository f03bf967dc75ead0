"""The runnable examples in docs/traffic.md run and do what the doc says."""

import os
import re
import subprocess
import sys

from conftest import subprocess_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _blocks():
    with open(os.path.join(ROOT, "docs", "traffic.md"), encoding="utf-8") as f:
        return re.findall(r"```python\n(.*?)```", f.read(), re.S)


def test_early_answer_example_runs():
    example = next(b for b in _blocks() if "asyncio.run(main())" in b)
    proc = subprocess.run([sys.executable, "-c", example], capture_output=True, text=True,
                          timeout=60, env=subprocess_env(), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "b'HTTP/1.1 401 Unauthorized'"


def test_retry_opt_in_example_compiles():
    example = next(b for b in _blocks() if "error_while_proxy" in b)
    ns = {}
    exec("from sluiceway import HttpPeer, ProxyHttp\n" + example, ns)
    assert ns["App"].error_while_proxy is not None
