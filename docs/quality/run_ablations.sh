#!/usr/bin/env bash
# Ablations at 20% symmetric noise, seeds 0 and 1, same settings as the full run: the references
# (ncalr, random, entropy, ...) are those of docs/quality/full/noise_0.2 for the same seeds
# (identical initial sets and oracle answers). Results: docs/quality/ablations/noise_0.2/.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
out=docs/quality/ablations/noise_0.2
mkdir -p "$out"
"$PY" -m ncalr_backend.bench quality --seeds 0,1 --cycles 5 --initial 0.1 --query 0.05 \
    --width 8 --max-epochs 40 --tpt-window 10 --warm-start true --set batch_size=32 \
    --noise-type symmetric --noise-rate 0.2 \
    --strategies cmap,ff,ncalr:cmap_sign=neg,ncalr:cmap_center=false,ncalr:tpt_window=5,ncalr:warm_start=false \
    --out "$out" 2>&1 | tee "$out/run.log"
