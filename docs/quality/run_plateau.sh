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
if [ "${STEP:-}" = 3seeds ]; then
  C3=(--seeds 3 --cycles 4 --initial 0.1 --query 0.05 --width 8 --max-epochs 40 --tpt-window 10
      --warm-start true --threads 1 --set batch_size=32 --strategies ncalr,ncalr:tpt_criterion=plateau)
  for rate in ${RATES:-0.0 0.2 0.4}; do
    mkdir -p "$ROOT/3seeds/noise_$rate"
    nice -n 5 "$PY" -m ncalr_backend.bench quality "${C3[@]}" --noise-type symmetric --noise-rate "$rate" \
        --out "$ROOT/3seeds/noise_$rate" > "$ROOT/3seeds/noise_$rate/run.log" 2>&1 &
    [ "$rate" = 0.2 ] && wait  # two at a time on 2 cores
  done
  wait
  exit 0
fi
mkdir -p "$ROOT/noise_0.4" "$ROOT/multilabel"
nice -n 5 "$PY" -m ncalr_backend.bench quality "${COMMON[@]}" --set batch_size=32 \
    --noise-type symmetric --noise-rate 0.4 --out "$ROOT/noise_0.4" > "$ROOT/noise_0.4/run.log" 2>&1 &
nice -n 5 "$PY" -m ncalr_backend.bench quality "${COMMON[@]}" --set batch_size=16 \
    --dataset digits-multilabel --multilabel-pairs-fraction 0.5 --out "$ROOT/multilabel" > "$ROOT/multilabel/run.log" 2>&1 &
wait
# Second step (before changing the default): noise 0.0 / 0.2 / 0.4, 3 seeds each, 4 cycles:
#   STEP=3seeds bash docs/quality/run_plateau.sh  -> docs/quality/plateau/3seeds/noise_<rate>/
