#!/usr/bin/env bash
# The full acquisition-quality run on digits (issue 4): symmetric noise 0, 0.2, 0.4; 3 seeds; 5 cycles
# (10% -> 35% of the pool). One process, one torch thread (fastest on the shared 2-core machine).
# Results: docs/quality/full/noise_<rate>/{results.json,curves.png,table.md,run.log}.
#   noise 0.0 ran with STRATEGIES=ncalr,random,entropy,margin,coreset,bald,baal-bald
#   noise 0.2 ran with STRATEGIES=ncalr,random,entropy,margin,coreset,bald,ncalr_plus
#   noise 0.4 ran with STRATEGIES=ncalr,random,entropy,margin,coreset,bald
#   (baal-bald ranks exactly as the engine's bald on the same MC samples, so under noise its
#    trajectory would repeat bald's; the per-cycle score agreement with baal is still recorded).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
STRATEGIES=${STRATEGIES:-ncalr,random,entropy,margin,coreset,bald,ncalr_plus}
COMMON=(--seeds "${SEEDS:-3}" --cycles 5 --initial 0.1 --query 0.05 --strategies "$STRATEGIES"
        --width 8 --max-epochs 40 --tpt-window 10 --warm-start true --set batch_size=32)
for rate in ${RATES:-0.0 0.2 0.4}; do
  out=${OUT_ROOT:-docs/quality/full}/noise_${rate}
  mkdir -p "$out"
  /usr/bin/time -v "$PY" -m ncalr_backend.bench quality "${COMMON[@]}" \
      --noise-type symmetric --noise-rate "$rate" --out "$out" 2>&1 | tee "$out/run.log"
done
