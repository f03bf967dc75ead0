#!/usr/bin/env bash
# The project's test command (README and .ci/run call exactly this).
#   1. install test dependencies (Debian + PyPI),
#   2. build and install sluiceway from this checkout,
#   3. run the default suite, then the slow suite (load, wheel) as a second step.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/install-deps.sh
python3 -m pip install -q .
# Tests import the installed package, not the source tree.
python3 -m pytest tests -q -ra
python3 -m pytest tests -q -ra -m slow
