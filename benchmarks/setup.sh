#!/usr/bin/env bash
# Install what benchmarks/run.py uses: wrk, nginx, h2load and nghttpx (Debian
# packages) and aiohttp (the reference proxy), into the current Python
# environment.
set -euo pipefail
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    apt-get install -y -qq wrk nginx-light libnginx-mod-stream curl nghttp2-client nghttp2-proxy
fi
python -m pip install -q aiohttp grpcio
