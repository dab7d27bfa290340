#!/usr/bin/env bash
# The scale benchmark's baseline (issue 13): main's service code, N = 2000 and 10000, run on a clean
# committed tree of branch i13-bench, on the shared 2-core machine, under the heavy-work lock.
set -euo pipefail
cd "$(dirname "$0")/../../../.."
flock /tmp/ncalr-heavy.lock /work/main/.venv/bin/python -m ncalr_backend.bench scale \
    --tasks 2000,10000 --labeled 50 --more 10 --out docs/bench/scale/baseline
