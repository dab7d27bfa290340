#!/usr/bin/env bash
# Issue 11, item 2: NCAL-R (product defaults) against every baseline, 8 settings x 5 seeds.
# digits, ResNet-18 width 8, 10% -> 35% of the pool in 5 cycles of 5%, 40-epoch cap, window 10,
# warm start, one torch thread per process. One process per (setting, seed), so the grid runs in
# chunks and a chunk's results can be committed on their own:
#   bash docs/quality/issue11/run.sh [SETTING ...]        (default: all; SEEDS="0 1 2 3 4", PAR=1)
# Outputs: docs/quality/issue11/<setting>/s<seed>/{results.json,table.md,run.log};
# The opt-in OOD guard on the same seeds: OUT_ROOT=docs/quality/issue11/guard STRATS=ncalr:ood_mad=2 bash docs/quality/issue11/run.sh ood02 sym02
# summary, table and figure: .venv/bin/python docs/quality/issue11/summarise.py
set -uo pipefail
cd "$(dirname "$0")/../../.."
PY=${PY:-.venv/bin/python}
ROOT=${OUT_ROOT:-docs/quality/issue11}
SEEDS=${SEEDS:-"0 1 2 3 4"}
STRATS=${STRATS:-ncalr,random,entropy,margin,least_confidence,coreset,bald}
C=(--cycles 5 --initial 0.1 --query 0.05 --width 8 --max-epochs 40 --tpt-window 10 --warm-start true --threads 1
   --strategies "$STRATS" --no-plot)
args() {
  case $1 in
    sym00) echo "--set batch_size=32 --noise-type none";;
    sym02) echo "--set batch_size=32 --noise-type symmetric --noise-rate 0.2";;
    sym04) echo "--set batch_size=32 --noise-type symmetric --noise-rate 0.4";;
    asym03) echo "--set batch_size=32 --noise-type asymmetric --noise-rate 0.3";;
    # annotators who err on the ambiguous items (datasets.NoisyOracle, ``instance``), added 2026-12-01
    inst02) echo "--set batch_size=32 --noise-type instance --noise-rate 0.2";;
    ood02) echo "--set batch_size=32 --noise-type symmetric --noise-rate 0.2 --ood-fraction 0.2";;
    lt10) echo "--set batch_size=32 --imbalance-factor 10";;
    multilabel) echo "--set batch_size=16 --dataset digits-multilabel --multilabel-pairs-fraction 0.5";;
    # the same at the product's own epoch cap (EngineConfig.max_epochs = 60): the 40-epoch cap above
    # stops 20% of multi-label cycles before the plateau
    multilabel60) echo "--set batch_size=16 --dataset digits-multilabel --multilabel-pairs-fraction 0.5 --max-epochs 60";;
    *) echo "unknown setting $1" >&2; return 2;;
  esac
}
one() {  # setting seed
  local d="$ROOT/$1/s$2"; mkdir -p "$d"
  [ -f "$d/results.json" ] && { echo "skip $1 s$2 (done)"; return 0; }
  # shellcheck disable=SC2046
  "$PY" -m ncalr_backend.bench quality "${C[@]}" $(args "$1") --seeds "$2," --out "$d" > "$d/run.log" 2>&1
  echo "$1 s$2 rc=$?"
}
SETTINGS=("$@"); [ ${#SETTINGS[@]} -eq 0 ] && SETTINGS=(sym00 sym02 sym04 asym03 ood02 lt10 multilabel multilabel60 inst02)
for s in "${SETTINGS[@]}"; do args "$s" > /dev/null || exit 2; for seed in $SEEDS; do echo "$s $seed"; done; done |
  { while read -r s seed; do
    if [ "${PAR:-1}" -gt 1 ]; then
      while [ "$(jobs -rp | wc -l)" -ge "${PAR}" ]; do sleep 2; done
      one "$s" "$seed" &
    else
      one "$s" "$seed"
    fi
  done; wait; }
