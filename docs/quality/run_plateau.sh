#!/usr/bin/env bash
# The plateau criterion for the terminal phase (tpt_criterion=plateau) against the accuracy
# threshold alone, where the threshold is out of reach: symmetric label noise 0.4 and multi-label
# digits. 2 seeds, 4 cycles (10% -> 30%), width 8, one torch thread; both runs side by side.
# Outputs: docs/quality/plateau/{noise_0.4,multilabel}/ (results.json, curves.png, table.md, run.log)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
ROOT=${OUT_ROOT:-docs/quality/plateau}
COMMON=(--seeds "${SEEDS:-2}" --cycles 4 --initial 0.1 --query 0.05 --width 8 --max-epochs 40 --tpt-window 10
        --warm-start true --threads 1 --strategies ncalr,ncalr:tpt_criterion=plateau)
mkdir -p "$ROOT/noise_0.4" "$ROOT/multilabel"
nice -n 5 "$PY" -m ncalr_backend.bench quality "${COMMON[@]}" --set batch_size=32 \
    --noise-type symmetric --noise-rate 0.4 --out "$ROOT/noise_0.4" > "$ROOT/noise_0.4/run.log" 2>&1 &
nice -n 5 "$PY" -m ncalr_backend.bench quality "${COMMON[@]}" --set batch_size=16 \
    --dataset digits-multilabel --multilabel-pairs-fraction 0.5 --out "$ROOT/multilabel" > "$ROOT/multilabel/run.log" 2>&1 &
wait
