"""The package and its build: loud failures, pinned llhttp, the wheel."""

import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

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


# ------------------------------------------------------------------- wheels --

WHEEL_PYTHONS = ("3.10", "3.11", "3.12", "3.13")


def find_python(version):
    """The interpreter ci/pythons.sh finds for X.Y, or None."""
    out = subprocess.run(["bash", "-c", f". ci/pythons.sh && find_python {version}"], cwd=ROOT,
                         capture_output=True, text=True)
    return out.stdout.strip() or None


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory):
    """The wheels and sdist of ci/build-wheels.sh: those in
    $SLUICEWAY_WHEELHOUSE when CI built them already, else built here."""
    given = os.environ.get("SLUICEWAY_WHEELHOUSE")
    if given and list(Path(given).glob("sluiceway-*.whl")):
        return Path(given)
    out = tmp_path_factory.mktemp("wheelhouse")
    subprocess.run(["bash", os.path.join(ROOT, "ci", "build-wheels.sh"), str(out)], cwd=ROOT,
                   check=True, timeout=2400, env={**os.environ, "SLUICEWAY_WHEELS_SKIP_MISSING": "1"})
    return out


def elf_sections(data: bytes):
    """Section names of a 64-bit little-endian ELF file."""
    import struct

    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    def sh(i):
        name, _type = struct.unpack_from("<II", data, shoff + i * shentsize)
        off, size = struct.unpack_from("<QQ", data, shoff + i * shentsize + 0x18)
        return name, off, size
    _, stroff, _ = sh(shstrndx)
    names = []
    for i in range(shnum):
        n = sh(i)[0]
        names.append(data[stroff + n:data.index(b"\0", stroff + n)].decode())
    return names


def check_wheel_contents(path):
    import zipfile

    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        sos = [n for n in names if n.endswith(".so")]
        assert {os.path.basename(n).split(".")[0] for n in sos} >= {"_engine", "_http", "_lb", "_limits"}
        for n in sos:
            sections = elf_sections(z.read(n))
            assert not [x for x in sections if x.startswith(".debug")], f"{n} keeps debug info"
        licences = {os.path.basename(n) for n in names if ".dist-info/" in n and "LICENSE" in n}
        assert licences >= {"LICENSE", "LICENSE.llhttp"}, names
        notice = " ".join(next(z.read(n) for n in names if n.endswith("LICENSE.llhttp")).decode().split())
        assert "llhttp 9.3.0" in notice and "Permission is hereby granted" in notice
        entry_points = next(z.read(n) for n in names if n.endswith(".dist-info/entry_points.txt")).decode()
        assert "[pytest11]" in entry_points and "sluiceway.pytest_plugin" in entry_points
    assert os.path.getsize(path) < 1_500_000, f"{path} is {os.path.getsize(path)} bytes"


@pytest.mark.slow
@pytest.mark.parametrize("version", WHEEL_PYTHONS)
def test_wheel_installs_without_a_compiler_then_selfchecks_and_proxies(wheelhouse, version, tmp_path):
    py = find_python(version)
    if py is None:
        pytest.skip(f"no CPython {version} on this machine")
    if version not in os.environ.get("SLUICEWAY_WHEEL_PYTHONS", " ".join(WHEEL_PYTHONS)).split():
        pytest.skip(f"SLUICEWAY_WHEEL_PYTHONS leaves out {version}")
    tag = "cp" + version.replace(".", "")
    wheels = list(wheelhouse.glob(f"sluiceway-*-{tag}-{tag}-*manylinux*x86_64*.whl"))
    assert len(wheels) == 1, sorted(p.name for p in wheelhouse.iterdir())
    check_wheel_contents(wheels[0])
    env_dir = tmp_path / "venv"
    subprocess.run([py, "-m", "venv", str(env_dir)], check=True, timeout=120)
    bindir = str(env_dir / "bin")
    # No source tree, no compiler: only the venv on PATH, CC pointing nowhere.
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CC", "CXX", "LDSHARED")}
    clean.update(PATH=bindir, CC="/nonexistent/cc", CXX="/nonexistent/c++")
    pip = subprocess.run([bindir + "/python", "-m", "pip", "install", "-q", "--only-binary", ":all:",
                          str(wheels[0])], cwd=str(tmp_path), env=clean, capture_output=True, text=True,
                         timeout=600)
    assert pip.returncode == 0, pip.stderr[-3000:]
    out = subprocess.run([bindir + "/python", "-m", "sluiceway.selfcheck"], cwd=str(tmp_path), env=clean,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "selfcheck OK" in out.stdout, out.stdout + out.stderr
    assert str(env_dir) in out.stdout            # the installed copy, not a source tree
    version_out = subprocess.run([bindir + "/sluiceway", "--version"], env=clean, capture_output=True,
                                 text=True, timeout=60, cwd=str(tmp_path))
    assert f"{version}." in version_out.stdout and "llhttp 9.3.0" in version_out.stdout
    demo = subprocess.Popen([bindir + "/sluiceway", "demo", "-p", "0"], env=clean, cwd=str(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = demo.stdout.readline()
        url = line.split("proxy on ", 1)[1].split()[0]
        import urllib.request

        with urllib.request.urlopen(url, timeout=10) as r:
            assert r.status == 200 and r.headers["x-proxied-by"] == "sluiceway"
            assert b"demo origin" in r.read()
    finally:
        demo.send_signal(signal.SIGINT)
        assert demo.wait(10) == 0


@pytest.mark.slow
def test_our_sdist_carries_llhttp_and_builds_without_a_second_download(wheelhouse, tmp_path):
    (sdist,) = wheelhouse.glob("sluiceway-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = tar.getnames()
        tar.extractall(tmp_path / "src")
    top = names[0].split("/")[0]
    for f in ("llhttp.h", "api.c", "http.c", "llhttp.c", "LICENSE"):
        assert f"{top}/third_party/llhttp/{f}" in names
    assert f"{top}/LICENSE" in names and f"{top}/LICENSE.llhttp" in names
    # With the package index switched off, any attempt to download fails.
    env = {**os.environ, "PIP_NO_INDEX": "1", "SLUICEWAY_LLHTTP_DIR": ""}
    env.pop("SLUICEWAY_LLHTTP_DIR")
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation", "--no-deps",
                          "-w", str(tmp_path / "whl"), str(tmp_path / "src" / top)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert list((tmp_path / "whl").glob("sluiceway-*.whl"))
