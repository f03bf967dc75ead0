"""`sluiceway new NAME` writes a project whose test passes as written."""

import subprocess
import sys

from conftest import subprocess_env
from test_testing_plugin import _plugin_args


def test_new_project_test_passes_and_config_checks(tmp_path):
    out = subprocess.run([sys.executable, "-m", "sluiceway", "new", "edge_proxy"], cwd=str(tmp_path),
                         capture_output=True, text=True, timeout=60, env=subprocess_env())
    assert out.returncode == 0, out.stderr
    proj = tmp_path / "edge_proxy"
    assert sorted(p.name for p in proj.iterdir()) == [
        "README.md", "conf.yaml", "edge_proxy.py", "edge_proxy.service", "test_edge_proxy.py"]
    app = (proj / "edge_proxy.py").read_text()
    for hook in ("def request_filter", "def upstream_peer", "def response_filter", "def logging"):
        assert hook in app
    unit = (proj / "edge_proxy.service").read_text()
    assert "ExecStart=/opt/edge_proxy/venv/bin/sluiceway run edge_proxy:App" in unit
    assert "ExecReload=/bin/kill -HUP $MAINPID" in unit
    env = subprocess_env(PYTHONPATH=str(proj))
    test = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *_plugin_args()],
                          cwd=str(proj), capture_output=True, text=True, timeout=120, env=env)
    assert test.returncode == 0 and "4 passed" in test.stdout, test.stdout[-3000:] + test.stderr[-2000:]
    check = subprocess.run([sys.executable, "-m", "sluiceway", "run", "edge_proxy:App", "-c", "conf.yaml", "-t"],
                           cwd=str(proj), capture_output=True, text=True, timeout=60, env=env)
    assert check.returncode == 0 and "is valid" in check.stdout, check.stderr


def test_new_refuses_bad_names_and_existing_folders(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "sluiceway", "new", *a], cwd=str(tmp_path),
                                    capture_output=True, text=True, timeout=60, env=subprocess_env())
    assert run("my-proxy").returncode == 2 and "module name" in run("my-proxy").stderr
    assert run("json").returncode == 2
    (tmp_path / "taken").mkdir()
    r = run("taken")
    assert r.returncode == 1 and "exists" in r.stderr
