#!/usr/bin/env bash
# Ablations + candidate improvements at 20% symmetric noise, same seeds and settings as the full
# run (so ncalr / random / entropy of docs/quality/full/noise_0.2 are the references; identical
# initial sets and oracle answers). Results: docs/quality/ablations/.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
out=docs/quality/ablations/noise_0.2
mkdir -p "$out"
"$PY" -m ncalr_backend.bench quality --seeds 3 --cycles 5 --initial 0.1 --query 0.05 \
    --width 8 --max-epochs 40 --tpt-window 10 --warm-start true --set batch_size=32 \
    --noise-type symmetric --noise-rate 0.2 \
    --strategies ncalr_bal,ncalr_plus,cmap,ff,ncalr:cmap_center=false,ncalr:cmap_sign=neg,ncalr:tpt_window=5,ncalr:warm_start=false \
    --out "$out" 2>&1 | tee "$out/run.log"
