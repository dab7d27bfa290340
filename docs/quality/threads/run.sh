#!/usr/bin/env bash
# Issue 11, item 5: a small cycle (digits, 120 labeled + 400 pool, width 8, 4 epochs + window 2)
# under the old thread default (torch's: one per core, here = the number of cores) and the new
# one (threads=0: cores minus the 1-minute load average), idle and with one busy neighbour
# (python -c 'while True: pass'), 3 repeats each, all under the heavy-work lock.
# Output: docs/quality/threads/results.jsonl (one line per run), summary by summarise.py.
set -euo pipefail
cd "$(dirname "$0")/../../.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-docs/quality/threads/results.jsonl}
CORES=$(nproc)
: > "$OUT"
measure() { for rep in 1 2 3; do
  PYTHONPATH=. "$PY" docs/quality/threads/measure.py "$CORES" "$1/old" >> "$OUT"
  PYTHONPATH=. "$PY" docs/quality/threads/measure.py 0 "$1/new" >> "$OUT"; done; }
sleep "${SETTLE:-60}"  # let the load average of earlier work decay
measure idle
"$PY" -c 'while True: pass' & NB=$!
trap 'kill $NB' EXIT
sleep 65  # the 1-minute load average sees the neighbour
measure busy
