#!/usr/bin/env bash
# Build a manylinux wheel into wheelhouse/: `python -m build --wheel`, then
# `auditwheel repair` (llhttp is compiled in, so no external library is
# grafted; auditwheel checks the symbol versions and sets the platform tag).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-wheelhouse}
rm -rf dist
python3 -m build --wheel --outdir dist .
python3 -m auditwheel repair --wheel-dir "$out" dist/sluiceway-*.whl
ls "$out"/sluiceway-*manylinux*.whl
