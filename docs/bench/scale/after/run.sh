#!/usr/bin/env bash
# The scale benchmark after issue 13's changes (task mirror + delta reads, images decoded into
# preallocated arrays, the head of the order written): 32x32 RGB images (the service's default
# IMAGE_SIZE/IMAGE_CHANNELS), 3 cycles per N, on a clean committed tree, under the heavy-work lock.
set -euo pipefail
cd "$(dirname "$0")/../../../.."
PY=${PY:-.venv/bin/python}
flock /tmp/ncalr-heavy.lock "$PY" -m ncalr_backend.bench scale \
    --tasks "${TASKS:-2000,10000}" --labeled 50 --more 10 --cycles 3 --out "${OUT:-docs/bench/scale/after}"
