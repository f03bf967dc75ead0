#!/usr/bin/env bash
# Install the Debian packages the build and the tests need on a fresh
# Debian 12 machine, when missing (as root): a C compiler and the Python
# headers and venv module (to build sluiceway), nginx (and its stream module), redis-server and prometheus
# (tests start their own on free ports), wrk, curl and openssl (tests and benchmarks). The Python packages go into virtual environments
# (ci/test.sh), never into the system Python. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v gcc >/dev/null 2>&1 || need+=(gcc libc6-dev)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
python3 -c 'import os, sysconfig; raise SystemExit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
    >/dev/null 2>&1 || need+=(python3-dev)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
# nginx's stream module: the tests' L4 balancer that sends the PROXY protocol
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || need+=(libnginx-mod-stream)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || need+=(redis-server)
# Prometheus (the server and promtool): the metrics tests scrape with the real one
{ [ -x /usr/bin/prometheus ] && command -v promtool >/dev/null 2>&1; } || need+=(prometheus)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    else
        echo "ci/install-deps.sh: please install Debian packages: ${need[*]} (needs root: sudo apt-get install ${need[*]})" >&2
        exit 1
    fi
fi
