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
    assert len(blocks) >= 3
    for block in blocks:
        # Not as __main__: a program's `run_forever()` stays unstarted, but its
        # imports, classes and top-level code run; a ProxyHttp it defines must
        # be accepted by http_proxy_service.
        runner = (
            "import sys\nns = {'__name__': 'readme_example'}\n"
            "exec(compile(sys.argv[1], 'README.md', 'exec'), ns)\n"
            "from sluiceway import ProxyHttp, ServerConf, http_proxy_service\n"
            "for v in list(ns.values()):\n"
            "    if isinstance(v, type) and issubclass(v, ProxyHttp) and v is not ProxyHttp:\n"
            "        http_proxy_service(ServerConf(), v())\n")
        out = subprocess.run([sys.executable, "-c", runner, block], capture_output=True, text=True,
                             timeout=60, env=subprocess_env(), cwd=str(tmp_path))
        assert out.returncode == 0, f"{block}\n{out.stderr}"


def test_readme_test_command_is_what_ci_runs():
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        ci = f.read()
    assert "bash ci/test.sh" in readme and "bash ci/test.sh" in ci
