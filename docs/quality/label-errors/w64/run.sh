#!/usr/bin/env bash
# The label check against cleanlab at the product's width (64): the settings of ../run.sh, seeds 0-2, one process,
# one torch thread (ran from a clean detached worktree at 7855447 in /tmp/wtB). Table: python3 docs/quality/label-errors/w64/summarise.py
cd "$(dirname "$0")/../../../.."
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
OUT=docs/quality/label-errors/w64
M="ncalr,cleanlab,cleanlab-pbar,signal:last,signal:aum,signal:p_mean,signal:learned_late,signal:fluctuation,combo:aum+p_mean,combo:p_mean+learned_late,combo:aum+p_mean+learned_late+fluctuation"
run() { local name=$1; shift; mkdir -p "$OUT/$name"
  .venv/bin/python -m ncalr_backend.bench label-errors --seeds 3 --labeled 0.3 --width 64 --threads 1 \
      --methods "$M" --no-plot --out "$OUT/$name" "$@" > "$OUT/$name/run.log" 2>&1; echo "$name rc=$?"; }
run sym_0.2 --noise-type symmetric --noise-rate 0.2
run sym_0.4 --noise-type symmetric --noise-rate 0.4
run asym_0.3 --noise-type asymmetric --noise-rate 0.3
run inst_0.2 --noise-type instance --noise-rate 0.2
run sym_0.3_ood0.2 --noise-type symmetric --noise-rate 0.3 --ood-fraction 0.2
run sym_0.3_lt10 --noise-type symmetric --noise-rate 0.3 --imbalance-factor 10
run sym_0.3_warm --noise-type symmetric --noise-rate 0.3 --previous-share 0.8
echo LE-DONE
