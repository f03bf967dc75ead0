"""The package and its build: loud failures, pinned llhttp, the wheel."""

import hashlib
import os
import subprocess
import sys
import tarfile
import venv

import pytest

import sluiceway
from sluiceway import _compiled

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_setup_module():
    """Import setup.py without running setup() (it is guarded by __main__)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("sluiceway_setup", os.path.join(ROOT, "setup.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_missing_compiled_module_fails_loudly_with_a_hint():
    with pytest.raises(ImportError) as info:
        _compiled.load("_no_such_module")
    msg = str(info.value)
    assert "_no_such_module" in msg and "pip install" in msg and "cp3" in msg


def test_import_without_compiled_modules_fails_loudly(tmp_path):
    # A copy of the package's Python files, without the built .so files.
    import shutil

    src = os.path.dirname(sluiceway.__file__)
    dst = tmp_path / "sluiceway"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    out = subprocess.run([sys.executable, "-c", "import sluiceway"], cwd=str(tmp_path),
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert out.returncode != 0
    assert "compiled module '_http' could not be imported" in out.stderr
    assert "pip install" in out.stderr


def test_package_imports_compiled_parser():
    from sluiceway import _http

    assert _http.__file__.endswith(".so")
    assert sluiceway.__version__


def test_wrong_llhttp_hash_fails_the_build_with_what_to_do(tmp_path):
    setup_mod = load_setup_module()
    bad = tmp_path / setup_mod.LLHTTP_SDIST
    with tarfile.open(bad, "w:gz"):
        pass
    with pytest.raises(SystemExit) as info:
        setup_mod._unpack(str(bad), str(tmp_path / "out"))
    msg = str(info.value)
    assert setup_mod.LLHTTP_SHA256 in msg and "Delete it" in msg
    assert not (tmp_path / "out").exists()


def test_offline_dir_without_sources_is_named(tmp_path, monkeypatch):
    setup_mod = load_setup_module()
    monkeypatch.setenv("SLUICEWAY_LLHTTP_DIR", str(tmp_path))
    with pytest.raises(SystemExit, match="SLUICEWAY_LLHTTP_DIR=.*holds no llhttp.h"):
        setup_mod.llhttp_dir()


def test_no_third_party_source_is_committed():
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("not a git checkout")
    names = {os.path.basename(p) for p in out.stdout.split()}
    assert not names & {"llhttp.c", "llhttp.h", "api.c", "http.c"}


@pytest.mark.slow
def test_manylinux_wheel_installs_and_imports_in_a_fresh_venv(tmp_path):
    wheelhouse = tmp_path / "wheelhouse"
    subprocess.run(["bash", os.path.join(ROOT, "ci", "build-wheel.sh"), str(wheelhouse)],
                   cwd=ROOT, check=True, timeout=900)
    wheels = list(wheelhouse.glob("sluiceway-*manylinux*.whl"))
    assert len(wheels) == 1, wheels
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = str(env_dir / "bin" / "python")
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # no source tree in sight
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", str(wheels[0])], check=True, timeout=300,
                   cwd=str(tmp_path), env=clean)
    code = ("import sluiceway, sluiceway._http as h; p = h.RequestParser(); "
            "p.feed(b'GET /x HTTP/1.1\\r\\nHost: a\\r\\n\\r\\n'); print(h.__file__); print(p.next_event().path)")
    out = subprocess.run([py, "-c", code], cwd=str(tmp_path), capture_output=True, text=True, timeout=60,
                         env=clean)
    assert out.returncode == 0, out.stderr
    so_path, path = out.stdout.split()
    assert so_path.startswith(str(env_dir)) and path == "/x"


@pytest.mark.slow
def test_our_sdist_carries_llhttp_and_builds_without_a_second_download(tmp_path):
    subprocess.run([sys.executable, "-m", "build", "--sdist", "--outdir", str(tmp_path), ROOT],
                   check=True, capture_output=True, timeout=600)
    (sdist,) = tmp_path.glob("sluiceway-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = tar.getnames()
        tar.extractall(tmp_path / "src")
    top = names[0].split("/")[0]
    for f in ("llhttp.h", "api.c", "http.c", "llhttp.c", "LICENSE"):
        assert f"{top}/third_party/llhttp/{f}" in names
    # With the package index switched off, any attempt to download fails.
    env = {**os.environ, "PIP_NO_INDEX": "1", "SLUICEWAY_LLHTTP_DIR": ""}
    env.pop("SLUICEWAY_LLHTTP_DIR")
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation", "--no-deps",
                          "-w", str(tmp_path / "whl"), str(tmp_path / "src" / top)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert list((tmp_path / "whl").glob("sluiceway-*.whl"))
