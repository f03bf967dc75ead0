"""The README's Python examples run as written."""

import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request

import pytest

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
            "import inspect\n"
            "for v in list(ns.values()):\n"
            "    if isinstance(v, type) and issubclass(v, ProxyHttp) and v is not ProxyHttp:\n"
            "        needs = [p for p in inspect.signature(v).parameters.values()\n"
            "                 if p.default is p.empty and p.kind is p.POSITIONAL_OR_KEYWORD]\n"
            "        http_proxy_service(ServerConf(), v(*[('127.0.0.1', 9)] * len(needs)))\n")
        out = subprocess.run([sys.executable, "-c", runner, block], capture_output=True, text=True,
                             timeout=60, env=subprocess_env(), cwd=str(tmp_path))
        assert out.returncode == 0, f"{block}\n{out.stderr}"


def test_readme_test_command_is_what_ci_runs():
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        ci = f.read()
    assert "bash ci/test.sh" in readme and "bash ci/test.sh" in ci


def readme_block(marker):
    with open(os.path.join(ROOT, "README.md")) as f:
        blocks = re.findall(r"```sh\n(.*?)```", f.read(), re.S)
    return next(b.strip() for b in blocks if marker in b)


@pytest.mark.slow
def test_readme_first_command_makes_a_venv_installs_and_starts_the_demo(tmp_path):
    """The README's install line, as written, in a copy of this checkout (the
    demo on a free port instead of 8080)."""
    cmd = readme_block("python3 -m venv")
    assert cmd.startswith("python3 -m venv .venv") and cmd.endswith("sluiceway demo")
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    src = tmp_path / "src"
    for rel in filter(None, files.decode().split("\0")):
        if os.path.exists(os.path.join(ROOT, rel)):
            os.makedirs(src / os.path.dirname(rel), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, rel), src / rel)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    p = subprocess.Popen(["bash", "-c", cmd + " -p 0"], cwd=str(src), env=env, start_new_session=True,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line, seen = "", []
        while "proxy on" not in line:
            line = p.stdout.readline()
            seen.append(line)
            if not line and p.poll() is not None:
                raise AssertionError("".join(seen)[-3000:])
        url = line.split("proxy on ", 1)[1].split()[0]
        with urllib.request.urlopen(url, timeout=10) as r:
            assert r.status == 200 and r.headers["x-proxied-by"] == "sluiceway"
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGINT)
        assert p.wait(30) == 0
