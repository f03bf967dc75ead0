"""The runnable example in docs/load-balancing.md runs and behaves as described."""

import os
import re
import subprocess
import sys

from conftest import subprocess_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_doc_example_runs():
    with open(os.path.join(ROOT, "docs", "load-balancing.md")) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    example = next(b for b in blocks if "uvloop.run(main())" in b)
    env = subprocess_env()
    proc = subprocess.run([sys.executable, "-c", example], env=env, capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    out = dict(line.split(":", 1) for line in proc.stdout.splitlines() if not line.startswith(" "))
    up, down, back = (out[k].split() for k in ("all up", "one down", "recovered"))
    assert len(set(up)) == 3 and set(back) == set(up)
    assert len(set(down)) == 2 and set(down) < set(up)
    assert "Connection refused" in out["last error"]
    assert "is now DOWN" in proc.stdout and "is now up" in proc.stdout


def test_doc_quotes_the_least_conn_example_as_it_is():
    with open(os.path.join(ROOT, "docs", "load-balancing.md")) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    quoted = next(b for b in blocks if "load=self.lb.load(backend)" in b)
    with open(os.path.join(ROOT, "examples", "least_conn_lb.py")) as f:
        assert quoted in f.read()
