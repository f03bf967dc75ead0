"""The README's Python examples run as written."""

import os
import re
import subprocess
import sys

from conftest import subprocess_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_python_blocks_run(tmp_path):
    with open(os.path.join(ROOT, "README.md")) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    assert len(blocks) >= 2
    for block in blocks:
        out = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True,
                             timeout=60, env=subprocess_env(), cwd=str(tmp_path))
        assert out.returncode == 0, f"{block}\n{out.stderr}"


def test_readme_test_command_is_what_ci_runs():
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        ci = f.read()
    assert "bash ci/test.sh" in readme and "bash ci/test.sh" in ci
