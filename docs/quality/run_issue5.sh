#!/usr/bin/env bash
# Issue 5, part 4: long tail with space alignment, SELI-vs-ETF geometry, multi-label digits.
# Each run: python -m ncalr_backend.bench quality ...; results under docs/quality/issue5/<run>/
# {results.json, curves.png, geometry.png, table.md, run.log}. Same protocol as run_full.sh except
# 4 cycles (10% -> 30% of the pool) and 2-3 seeds, to fit the shared 2-core CPU.
#   RUNS="lt10 lt100 balanced multilabel" (default: all); SEEDS overrides the seed count.
#   lt10 / lt100:  --imbalance-factor 10 / 100; NCAL-R without SpA, with spa=proj|slerp|reg,
#                  with loss=logit_adjusted; baselines random, margin, entropy, coreset.
#   balanced:      imbalance 1, for the SELI-vs-ETF comparison (ncalr, ncalr:spa=slerp, random).
#   multilabel:    --dataset digits-multilabel --multilabel-pairs-fraction 0.5; ncalr, random,
#                  entropy, margin, coreset.
# Then the side-by-side geometry figure (balanced vs imbalance 100):
#   python -m ncalr_backend.bench.quality_report --geometry docs/quality/issue5/balanced \
#       docs/quality/issue5/lt100 --out docs/quality/issue5
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
ROOT=${OUT_ROOT:-docs/quality/issue5}
COMMON=(--cycles 4 --initial 0.1 --query 0.05 --width 8 --max-epochs 40 --tpt-window 10
        --warm-start true --set batch_size=${BATCH:-16} --threads 1)
LT="ncalr,ncalr:spa=proj,ncalr:spa=slerp,ncalr:spa=reg,ncalr:loss=logit_adjusted,random,margin,entropy,coreset"
run() {  # name, extra args...
  local name=$1; shift
  mkdir -p "$ROOT/$name"
  nice -n 5 "$PY" -m ncalr_backend.bench quality "${COMMON[@]}" "$@" --out "$ROOT/$name" 2>&1 | tee "$ROOT/$name/run.log"
}
for r in ${RUNS:-lt10 lt100 balanced multilabel}; do
  case $r in
    lt10) run lt10 --seeds "${SEEDS:-3}" --imbalance-factor 10 --strategies "$LT" ;;
    lt100) run lt100 --seeds "${SEEDS:-3}" --imbalance-factor 100 --strategies "$LT" ;;
    balanced) run balanced --seeds "${SEEDS:-2}" --strategies ncalr,ncalr:spa=slerp,random ;;
    multilabel) run multilabel --seeds "${SEEDS:-2}" --dataset digits-multilabel --multilabel-pairs-fraction 0.5 \
                    --strategies ncalr,random,entropy,margin,coreset ;;
    *) echo "unknown run $r" >&2; exit 2 ;;
  esac
done
if [ -f "$ROOT/balanced/results.json" ] && [ -f "$ROOT/lt100/results.json" ]; then
  "$PY" -m ncalr_backend.bench.quality_report --geometry "$ROOT/balanced" "$ROOT/lt100" --out "$ROOT"
fi
