"""Build script for sluiceway's compiled modules.

Every ``pyx/sluiceway/<name>.pyx`` becomes the extension ``sluiceway.<name>``.
A module names the plain-C files it links from ``csrc/`` in its own header with
Cython's ``# distutils: sources = csrc/sw_x.c`` directive, so adding a module
needs no change here.  Modules listed in ``LLHTTP_MODULES`` also get llhttp.

llhttp is never committed.  Its C sources come, in this order, from:

1. ``SLUICEWAY_LLHTTP_DIR``: a directory holding llhttp's ``llhttp.h``,
   ``api.c``, ``http.c`` and ``llhttp.c`` (for offline builds);
2. ``third_party/llhttp/`` in an sdist that we produced (``sdist`` copies the
   fetched sources and llhttp's licence there);
3. ``build/llhttp-<version>/lib`` from an earlier build of this checkout;
4. the pinned ``llhttp`` sdist, downloaded by name with pip, checked against its
   sha256 and unpacked under ``build/``.

``LICENSE.llhttp`` (llhttp's licence, from the fetched sources) is written at
the top of the tree when ``sluiceway._http`` is built, so every wheel and
sdist carries it beside our ``LICENSE``.

Environment:
    SLUICEWAY_DEBUG=1     Cython line tracing, C assertions, -O0 -g.
    SLUICEWAY_ANNOTATE=1  write Cython's annotated HTML to build/annotate/.
"""

import glob
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile

import setuptools
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext as _build_ext
from setuptools.command.sdist import sdist as _sdist

HERE = os.path.dirname(os.path.abspath(__file__))
LLHTTP_PIN = "llhttp==9.3.0.0"
LLHTTP_SDIST = "llhttp-9.3.0.0.tar.gz"
LLHTTP_SHA256 = "0d989363e7fb6f270b9d49956e7a3945c26778f8c70a166815264309ac6a8295"
LLHTTP_FILES = ("llhttp.h", "api.c", "http.c", "llhttp.c")
LLHTTP_MODULES = {"sluiceway._http"}

DEBUG = os.environ.get("SLUICEWAY_DEBUG", "") not in ("", "0")
ANNOTATE = os.environ.get("SLUICEWAY_ANNOTATE", "") not in ("", "0")


class BuildError(SystemExit):
    def __init__(self, msg):
        super().__init__("sluiceway build: " + msg)


if int(setuptools.__version__.split(".")[0]) < 77 and __name__ == "__main__":
    raise BuildError(f"setuptools {setuptools.__version__} is too old: pyproject.toml gives the "
                     "licence as an SPDX expression, which needs setuptools 77 or newer. Run "
                     "python3 -m pip install -U 'setuptools>=77' (pip install . gets it by itself).")


def _rel(path):
    return os.path.relpath(path, HERE)


def _has_llhttp(d):
    return all(os.path.isfile(os.path.join(d, f)) for f in LLHTTP_FILES)


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 16), b""):
            h.update(block)
    return h.hexdigest()


def _download_sdist(dest_dir):
    """Fetch the pinned llhttp sdist with pip (by package name) into dest_dir."""
    os.makedirs(dest_dir, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "--no-build-isolation", "-d", dest_dir, LLHTTP_PIN]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as exc:
        raise BuildError(f"could not run pip to fetch {LLHTTP_PIN}: {exc}")
    path = os.path.join(dest_dir, LLHTTP_SDIST)
    if proc.returncode != 0 or not os.path.isfile(path):
        raise BuildError(
            f"could not download the {LLHTTP_PIN} sdist (pip said: "
            f"{(proc.stderr or proc.stdout).strip()[-600:]}).\n"
            "  Offline? Unpack llhttp 9.3.0's sources somewhere and set "
            "SLUICEWAY_LLHTTP_DIR to the folder holding llhttp.h, api.c, http.c "
            "and llhttp.c (its lib/ folder), or put the sdist at build/" + LLHTTP_SDIST)
    return path


def _unpack(sdist_path, dest):
    digest = _sha256(sdist_path)
    if digest != LLHTTP_SHA256:
        raise BuildError(
            f"{_rel(sdist_path)} has sha256 {digest}, expected {LLHTTP_SHA256}.\n"
            f"  Delete it and build again to download {LLHTTP_PIN} afresh; if it "
            "fails again, the package index is serving a different file.")
    tmp = dest + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    with tarfile.open(sdist_path, "r:gz") as tar:
        prefix = LLHTTP_SDIST[: -len(".tar.gz")] + "/"
        wanted = {prefix + "lib/" + f: f for f in LLHTTP_FILES}
        wanted[prefix + "LICENSE"] = "LICENSE"
        for member in tar.getmembers():
            name = wanted.get(member.name)
            if name and member.isfile():
                with tar.extractfile(member) as src, open(os.path.join(tmp, name), "wb") as dst:
                    shutil.copyfileobj(src, dst)
    if not _has_llhttp(tmp):
        raise BuildError(f"{_rel(sdist_path)} does not contain llhttp's lib/ sources")
    shutil.rmtree(dest, ignore_errors=True)
    os.rename(tmp, dest)


def llhttp_dir():
    """Return the directory with llhttp's C sources, fetching them if needed."""
    env = os.environ.get("SLUICEWAY_LLHTTP_DIR")
    if env:
        for cand in (env, os.path.join(env, "lib")):
            if _has_llhttp(cand):
                return cand
        raise BuildError(f"SLUICEWAY_LLHTTP_DIR={env} holds no llhttp.h, api.c, "
                         "http.c and llhttp.c (point it at llhttp's lib/ folder)")
    shipped = os.path.join(HERE, "third_party", "llhttp")
    if _has_llhttp(shipped):
        return shipped
    unpacked = os.path.join(HERE, "build", "llhttp-9.3.0", "lib")
    if _has_llhttp(unpacked):
        return unpacked
    sdist_path = os.path.join(HERE, "build", LLHTTP_SDIST)
    if not os.path.isfile(sdist_path):
        sdist_path = _download_sdist(os.path.join(HERE, "build"))
    _unpack(sdist_path, unpacked)
    return unpacked


NOTICE_FILE = "LICENSE.llhttp"
NOTICE_HEAD = """Third-party notice: llhttp

sluiceway's compiled module sluiceway._http contains the C sources of llhttp
{version} (api.c, http.c, llhttp.c, llhttp.h), an HTTP/1.x parser licensed
under the MIT License (llhttp itself: Copyright Fedor Indutny, 2018). The
sources come from the {pin} source distribution, whose licence text
follows, unchanged.

--------------------------------------------------------------------------------

"""


def write_notice(src_dir):
    """Write LICENSE.llhttp at the top of the tree from the licence in the
    fetched llhttp sources. setuptools' default licence-file patterns
    (LICEN[CS]E*) put it, beside our LICENSE, in every wheel's .dist-info and
    in the sdist. Generated at build time, never committed."""
    lic = os.path.join(src_dir, "LICENSE")
    if not os.path.isfile(lic):
        raise BuildError(f"{_rel(src_dir) if src_dir.startswith(HERE) else src_dir} has llhttp's "
                         "sources but no LICENSE; the wheel must carry llhttp's licence. Put "
                         f"the LICENSE of the {LLHTTP_PIN} sdist beside them.")
    with open(lic, encoding="utf-8") as f:
        text = f.read()
    body = NOTICE_HEAD.format(version=LLHTTP_PIN.split("==")[1].rsplit(".", 1)[0], pin=LLHTTP_PIN) + text
    path = os.path.join(HERE, NOTICE_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            if f.read() == body:
                return
    except OSError:
        pass
    with open(path, "w", encoding="utf-8") as f:
        f.write(body)


def _mode_changed():
    """True when the last build in this tree used another mode (debug,
    annotate, release): its generated C and objects must not be reused, or a
    release build would quietly keep -O0 tracing code."""
    stamp = os.path.join(HERE, "build", "mode")
    mode = f"debug={DEBUG} annotate={ANNOTATE}"
    try:
        with open(stamp) as f:
            old = f.read()
    except OSError:
        old = None
    if old == mode:
        return False
    os.makedirs(os.path.dirname(stamp), exist_ok=True)
    with open(stamp, "w") as f:
        f.write(mode)
    return old is not None


MODE_CHANGED = False


def extensions():
    from Cython.Build import cythonize

    global MODE_CHANGED
    MODE_CHANGED = _mode_changed()

    llhttp = None
    exts = []
    for pyx in sorted(glob.glob(os.path.join(HERE, "pyx", "sluiceway", "*.pyx"))):
        name = "sluiceway." + os.path.basename(pyx)[:-4]
        sources = [_rel(pyx)]
        include_dirs = [os.path.join(HERE, "csrc")]
        if name in LLHTTP_MODULES:
            if llhttp is None:
                llhttp = llhttp_dir()
                write_notice(llhttp)
            sources += [os.path.join(_rel(llhttp), f) for f in LLHTTP_FILES if f.endswith(".c")]
            include_dirs.append(llhttp)
        macros = [("CYTHON_TRACE", "1"), ("CYTHON_TRACE_NOGIL", "1")] if DEBUG else []
        # Hidden visibility: calls inside the module (llhttp's own helpers, our
        # callbacks) bind directly instead of through the PLT; Python only
        # needs PyInit_*, which Cython exports explicitly.
        cflags = ["-fvisibility=hidden"] + (["-O0", "-g", "-UNDEBUG"] if DEBUG else ["-O3"])
        exts.append(Extension(name, sources, include_dirs=include_dirs,
                              define_macros=macros, extra_compile_args=cflags))
    directives = {
        "language_level": 3,
        "embedsignature": True,
        "boundscheck": DEBUG,
        "wraparound": False,
        "initializedcheck": DEBUG,
        "cdivision": True,
        # Methods as plain builtins (vectorcall without CyFunction overhead);
        # the debug build turns binding on for line tracing.
        "binding": False,
    }
    if DEBUG:
        directives.update(linetrace=True, binding=True, profile=False)
    if ANNOTATE:
        os.makedirs(os.path.join(HERE, "build", "annotate"), exist_ok=True)
    return cythonize(
        exts,
        include_path=[os.path.join(HERE, "pyx")],
        compiler_directives=directives,
        annotate=ANNOTATE,
        build_dir=os.path.join("build", "annotate") if ANNOTATE else None,
        force=DEBUG or ANNOTATE or MODE_CHANGED,
        quiet=True,
    )


class build_ext(_build_ext):
    """Rebuild every object when the build mode changed since the last build."""

    def finalize_options(self):
        super().finalize_options()
        if MODE_CHANGED:
            self.force = True
        if self.parallel is None:
            # The engine's C file dominates; the other modules build beside it.
            self.parallel = min(4, os.cpu_count() or 1)


class sdist(_sdist):
    """Ship the fetched llhttp sources (and its licence) inside our sdist."""

    def make_release_tree(self, base_dir, files):
        # Extension sources from SLUICEWAY_LLHTTP_DIR outside the tree would be
        # listed as ../..., and copied next to the release tree (into the
        # checkout); third_party/ below carries them instead.
        files = [f for f in files if not os.path.normpath(f).startswith(os.pardir + os.sep)
                 and not os.path.isabs(f)]
        super().make_release_tree(base_dir, files)
        src = llhttp_dir()
        dst = os.path.join(base_dir, "third_party", "llhttp")
        os.makedirs(dst, exist_ok=True)
        for f in LLHTTP_FILES + ("LICENSE",):
            if os.path.isfile(os.path.join(src, f)):
                shutil.copy2(os.path.join(src, f), os.path.join(dst, f))


if __name__ == "__main__":
    setup(ext_modules=extensions(), cmdclass={"sdist": sdist, "build_ext": build_ext})
