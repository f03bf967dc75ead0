#!/usr/bin/env bash
# Install what the tests need on a fresh Debian 12 machine: Debian's nginx,
# redis-server (tests start their own on a free port), wrk and curl (when running as root and missing), and the Python test
# dependencies from PyPI. Idempotent; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || need+=(redis-server)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    else
        echo "ci/install-deps.sh: please install Debian packages: ${need[*]} (needs root)" >&2
        exit 1
    fi
fi

python3 -m pip install -q --upgrade pip
python3 -m pip install -q -r ci/requirements-test.txt
