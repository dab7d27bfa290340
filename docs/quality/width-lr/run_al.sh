#!/usr/bin/env bash
# The product's width (64) in the issue-11 active-learning protocol (digits, 10% -> 35% of the pool in
# 5 cycles, 40-epoch cap, window 10, batch 32, one torch thread; warm starts unless a run says
# warm_start=false), at the learning rate before 2026-12-01 (0.05 at every width: "lr=0.05", the
# default until then) and at the width rule (lr=0: 0.00625 at width 64). The engine's defaults since
# 2026-12-01 are "lr=0,warm_start=false" at width 64; every run sets its rate explicitly.
#   SEEDS="0" bash docs/quality/width-lr/run_al.sh sym00 sym02
#   RUNS="lr=0,lr_scope=head" SEEDS="0" bash docs/quality/width-lr/run_al.sh sym02   (the head alone: needs the
#   engine of 7d2b1de, where lr_scope existed; removed after this measurement)
#   RUNS="lr=0.05,cold_lr=0" SEEDS="0 1" bash docs/quality/width-lr/run_al.sh sym02   (a cold start by width, then 0.05)
#   RUNS="lr=0,warm_start=false lr=0.05" SEEDS="3 4" bash docs/quality/width-lr/run_al.sh sym02   (every cycle from scratch
#   at the width rule, with the default beside it)
#   RUNS="lr=0,warm_start=false" STRATS=random,entropy,least_confidence,coreset,bald TAG=baselines SEEDS="0 1 2" \
#     bash docs/quality/width-lr/run_al.sh sym02   (the other baselines at the defaults, in their own folder
#     <run>+baselines beside the NCAL-R and margin record of the same run; grid64.py joins them where the
#     first cycle trained identically in both, i.e. same code and kind of CPU)
# Outputs: docs/quality/width-lr/al/<setting>/lr<rate>[+TAG]/s<seed>/{results.json,table.md,run.log}
set -uo pipefail
cd "$(dirname "$0")/../../.."
PY=${PY:-.venv/bin/python}
SEEDS=${SEEDS:-0}
STRATS=${STRATS:-ncalr,margin}
C=(--cycles 5 --initial 0.1 --query 0.05 --width 64 --max-epochs 40 --tpt-window 10 --warm-start true --threads 1
   --strategies "$STRATS" --no-plot --set batch_size=32)
args() {
  case $1 in
    sym00) echo "--noise-type none";;
    sym02) echo "--noise-type symmetric --noise-rate 0.2";;
    sym04) echo "--noise-type symmetric --noise-rate 0.4";;
    asym03) echo "--noise-type asymmetric --noise-rate 0.3";;
    ood02) echo "--noise-type symmetric --noise-rate 0.2 --ood-fraction 0.2";;
    lt10) echo "--imbalance-factor 10";;
    inst02) echo "--noise-type instance --noise-rate 0.2";;
    # multi-label digits at the product's own epoch cap (60) and batch 16, as issue11/run.sh multilabel60
    multilabel60) echo "--dataset digits-multilabel --multilabel-pairs-fraction 0.5 --set batch_size=16 --max-epochs 60";;
    *) echo "unknown setting $1" >&2; return 2;;
  esac
}
for s in "$@"; do
  args "$s" > /dev/null || exit 2
  for seed in $SEEDS; do
    for run in ${RUNS:-lr=0.05 lr=0}; do  # each: engine settings joined by ','; lr=0 is the width rule
      d="docs/quality/width-lr/al/$s/$(echo "$run" | tr -d '=' | tr ',' '_')${TAG:++$TAG}/s$seed"; mkdir -p "$d"
      [ -f "$d/results.json" ] || [ -f "$d/results.json.gz" ] && { echo "skip $d"; continue; }
      sets=(); IFS=',' read -ra kv <<< "$run"; for x in "${kv[@]}"; do sets+=(--set "$x"); done
      # shellcheck disable=SC2046
      "$PY" -m ncalr_backend.bench quality "${C[@]}" "${sets[@]}" $(args "$s") --seeds "$seed," --out "$d" > "$d/run.log" 2>&1
      echo "$d rc=$?"
    done
  done
done
