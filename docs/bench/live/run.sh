#!/usr/bin/env bash
# The live benchmark (issue 11, item 5): 600 digit tasks, an annotator labeling as fast as "Label All
# Tasks" serves (20% asymmetric noise) up to 580 labels, cycles from the annotation webhooks (service
# triggers), demo engine; (a) on the idle machine, (b) with one CPU-burning neighbour process.
# Run on a clean committed tree of branch i11-live, on the shared 2-core machine, under the heavy-work lock.
set -euo pipefail
cd "$(dirname "$0")/../../.."
PY=${PY:-/work/main/.venv/bin/python}
flock /tmp/ncalr-heavy.lock "$PY" -m ncalr_backend.bench live --tasks 600 --labels 580 --noise asym:0.2 \
    --max-minutes 20 --out docs/bench/live/idle
flock /tmp/ncalr-heavy.lock "$PY" -m ncalr_backend.bench live --tasks 600 --labels 580 --noise asym:0.2 \
    --max-minutes 20 --busy 1 --out docs/bench/live/busy
"$PY" -m ncalr_backend.bench live --plot docs/bench/live/idle/results.json docs/bench/live/busy/results.json \
    --out docs/bench/live
