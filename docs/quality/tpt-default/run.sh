#!/usr/bin/env bash
# Issue 11, item 1: the terminal-phase criterion, old default (tpt_criterion=accuracy) against the
# new one (plateau with the transient-plateau guard), side by side from the same initial sets:
# symmetric noise 0 / 0.2 / 0.4, asymmetric 0.3, multi-label digits. 3 seeds, 4 cycles (10% -> 30%),
# width 8, 40-epoch cap, window 10, batch 32 (16 for multi-label), one torch thread, one at a time.
# Outputs: docs/quality/tpt-default/<setting>/{results.json,curves.png,table.md,run.log};
# summary: python docs/quality/tpt-default/summarise.py
set -euo pipefail
cd "$(dirname "$0")/../../.."
PY=${PY:-.venv/bin/python}
ROOT=${OUT_ROOT:-docs/quality/tpt-default}
C=(--seeds 3 --cycles 4 --initial 0.1 --query 0.05 --width 8 --max-epochs 40 --tpt-window 10
   --warm-start true --threads 1 --strategies ncalr:tpt_criterion=accuracy,ncalr)
run() { local name=$1; shift; mkdir -p "$ROOT/$name"
  flock /tmp/ncalr-heavy.lock "$PY" -m ncalr_backend.bench quality "${C[@]}" "$@" --out "$ROOT/$name" > "$ROOT/$name/run.log" 2>&1; }
for rate in 0.0 0.2 0.4; do run "symmetric_$rate" --set batch_size=32 --noise-type symmetric --noise-rate "$rate"; done
run asymmetric_0.3 --set batch_size=32 --noise-type asymmetric --noise-rate 0.3
run multilabel --set batch_size=16 --dataset digits-multilabel --multilabel-pairs-fraction 0.5
