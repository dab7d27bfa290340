#!/usr/bin/env bash
# Ablations, clean labels, seeds 0 and 1, same settings as the full run; ncalr (fused, centred,
# +dCMA, window 10, warm start) is the reference inside the same run (identical initial sets).
# Clean labels because under noise the seed-to-seed spread of the AULC (2-4 points at 20% noise)
# swamps the differences two or three seeds can resolve. Results: docs/quality/ablations/noise_0.0/.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
out=docs/quality/ablations/noise_0.0
mkdir -p "$out"
/usr/bin/time -v "$PY" -m ncalr_backend.bench quality --seeds 0,1 --cycles 5 --initial 0.1 --query 0.05 \
    --width 8 --max-epochs 40 --tpt-window 10 --warm-start true --set batch_size=32 \
    --noise-type none \
    --strategies ncalr,cmap,ff,ncalr:cmap_sign=neg,ncalr:cmap_center=false,ncalr:tpt_window=5,ncalr:warm_start=false \
    --out "$out" 2>&1 | tee "$out/run.log"
