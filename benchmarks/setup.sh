#!/usr/bin/env bash
# Install what benchmarks/run.py uses: wrk and nginx (Debian packages) and
# aiohttp (the reference proxy), into the current Python environment.
set -euo pipefail
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    apt-get install -y -qq wrk nginx-light curl
fi
python -m pip install -q aiohttp
