"""The runnable example in docs/limits.md runs and says what the doc says."""

import os
import re
import subprocess
import sys

from conftest import subprocess_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_docs_example_runs():
    with open(os.path.join(ROOT, "docs", "limits.md"), encoding="utf-8") as f:
        text = f.read()
    example = re.search(r"## A runnable example.*?```python\n(.*?)```", text, re.S).group(1)
    env = subprocess_env()
    proc = subprocess.run([sys.executable, "-c", example], capture_output=True, text=True,
                          timeout=60, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["200"] * 5 + ["429"] * 2
    assert "'X-RateLimit-Remaining': '0'" in lines[4]
    assert "'Retry-After': '60'" in lines[5]


def test_docs_sliding_example_runs():
    with open(os.path.join(ROOT, "docs", "limits.md"), encoding="utf-8") as f:
        text = f.read()
    block = re.search(r"```python\n([^`]*sliding=True, clock=[^`]*)```", text).group(1)
    env = subprocess_env()
    proc = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True,
                          timeout=60, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr


def test_docs_shared_example_runs():
    with open(os.path.join(ROOT, "docs", "limits.md"), encoding="utf-8") as f:
        text = f.read()
    block = re.search(r"## Shared by every worker.*?```python\n(.*?)```", text, re.S).group(1)
    proc = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True,
                          timeout=60, env=subprocess_env(), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["66048", "262656", "33280"]
