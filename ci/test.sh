#!/usr/bin/env bash
# The project's test command (README and .ci/run call exactly this).
#   1. Debian packages the tests use (ci/install-deps.sh);
#   2. the release artefacts: a manylinux wheel per CPython 3.10-3.13 found,
#      and the sdist (ci/build-wheels.sh, into wheelhouse/);
#   3. the default suite on CPython 3.11, 3.10 and 3.12 (a matrix): each in
#      a fresh virtual environment under build/ with that Python's wheel and
#      the test requirements installed; nothing goes into the system Python;
#   4. the in-process proxy suites again on the stdlib event loop, and the
#      TLS listener suites on ssl's own TLS layer (3.11);
#   5. the slow suite (load, soak, wheels in clean venvs without a compiler,
#      the README's install command) on 3.11.
# A Python missing from the machine is reported as skipped; any failure makes
# the whole run fail after every step ran. SLUICEWAY_TEST_PYTHONS="3.11"
# narrows the matrix.
set -uo pipefail
cd "$(dirname "$0")/.."
. ci/pythons.sh
bash ci/install-deps.sh || exit 1

status=0
step() { echo; echo "== $* ($(date +%T))"; }

step "wheels and sdist"
t0=$SECONDS
SLUICEWAY_WHEELS_SKIP_MISSING=1 bash ci/build-wheels.sh wheelhouse || exit 1
echo "wheels: $((SECONDS - t0)) s"

venv_for() {  # venv_for X.Y -> path of a venv with that Python's wheel and the test requirements
    local v=$1 py tag dir
    py=$(find_python "$v")
    [ -z "$py" ] && [ "$v" = "$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')" ] && py=$(command -v python3)
    [ -z "$py" ] && return 1
    tag=cp${v/./}
    dir=build/ci-venv-$v
    rm -rf "$dir"
    "$py" -m venv "$dir" || return 2
    "$dir/bin/python" -m pip install -q --upgrade pip || return 2
    "$dir/bin/python" -m pip install -q -r ci/requirements-test.txt || return 2
    "$dir/bin/python" -m pip install -q wheelhouse/sluiceway-*-"$tag"-"$tag"-*manylinux*.whl || return 2
    echo "$dir"
}

for v in ${SLUICEWAY_TEST_PYTHONS:-3.11 3.10 3.12}; do
    step "default suite on CPython $v"
    t0=$SECONDS
    dir=$(venv_for "$v"); rc=$?
    if [ $rc = 1 ]; then echo "CPython $v: SKIPPED (not installed on this machine)"; continue; fi
    if [ $rc != 0 ]; then echo "CPython $v: could not set up its venv"; status=1; continue; fi
    "$dir/bin/python" -m pytest tests -q -ra || status=1
    echo "CPython $v: $((SECONDS - t0)) s"
done

step "in-process proxy suites on the stdlib event loop (CPython 3.11)"
# The engine runs on any asyncio loop; uvloop is the default. The reference
# loop runs the suites that drive requests end to end in this process.
t0=$SECONDS
SLUICEWAY_TEST_LOOP=asyncio build/ci-venv-3.11/bin/python -m pytest -q -ra \
    tests/test_proxy_core.py tests/test_proxy_hooks.py tests/test_proxy_errors.py \
    tests/test_proxy_timeouts.py || status=1
echo "stdlib loop: $((SECONDS - t0)) s"

step "TLS listener suites on ssl's own layer (CPython 3.11)"
# TLS listeners run on the C layer (csrc/sw_tls.c) where they can; the
# layer over ssl.SSLObject still serves the others (client certificates,
# upstreams) and SLUICEWAY_TLS_LAYER=python. Listeners on it, too:
t0=$SECONDS
SLUICEWAY_TLS_LAYER=python build/ci-venv-3.11/bin/python -m pytest -q -ra \
    tests/test_tls_listen.py tests/test_tls_reload.py tests/test_tls_c_layer.py || status=1
echo "ssl's layer: $((SECONDS - t0)) s"

step "slow suite on CPython 3.11"
t0=$SECONDS
SLUICEWAY_WHEELHOUSE=$PWD/wheelhouse build/ci-venv-3.11/bin/python -m pytest tests -q -ra -m slow || status=1
echo "slow suite: $((SECONDS - t0)) s"
exit $status
