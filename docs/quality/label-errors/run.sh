#!/usr/bin/env bash
# Issue 12: finding wrong labels (python -m ncalr_backend.bench label-errors) and relabeling inside
# active learning (python -m ncalr_backend.bench relabel), digits, one process, one torch thread.
# Results: docs/quality/label-errors/<setting>/{results.json,table.md,run.log}, pr_curves.png.
set -euo pipefail
cd "$(dirname "$0")/../../.."
PY=${PY:-.venv/bin/python}
OUT=docs/quality/label-errors
M="ncalr,cleanlab,cleanlab-pbar,signal:last,signal:aum,signal:p_mean,signal:learned_late,signal:fluctuation,combo:aum+p_mean,combo:p_mean+learned_late,combo:aum+p_mean+learned_late+fluctuation"
run() { local name=$1; shift; mkdir -p "$OUT/$name"
  "$PY" -m ncalr_backend.bench label-errors --seeds "${SEEDS:-5}" --labeled 0.3 --width 8 --threads 1 \
      --methods "$M" --no-plot --out "$OUT/$name" "$@" 2>&1 | tee "$OUT/$name/run.log"; }
run sym_0.2 --noise-type symmetric --noise-rate 0.2
run sym_0.4 --noise-type symmetric --noise-rate 0.4
run asym_0.3 --noise-type asymmetric --noise-rate 0.3
run sym_0.3_ood0.2 --noise-type symmetric --noise-rate 0.3 --ood-fraction 0.2
run sym_0.3_lt10 --noise-type symmetric --noise-rate 0.3 --imbalance-factor 10
run sym_0.3_warm --noise-type symmetric --noise-rate 0.3 --previous-share 0.8
run inst_0.2 --noise-type instance --noise-rate 0.2  # annotators who err on ambiguous items (2026-12-01)
"$PY" -m ncalr_backend.bench label-errors --plot-from $OUT/sym_0.2 $OUT/sym_0.4 $OUT/asym_0.3 \
    $OUT/sym_0.3_ood0.2 $OUT/sym_0.3_lt10 $OUT/sym_0.3_warm $OUT/inst_0.2 --out $OUT
# today's defaults (2026-12-01): relabel_sym_0.2_head, relabel_sym_0.4_head, relabel_inst_0.2, e.g.
#   python -m ncalr_backend.bench relabel --seeds 3 --shares 0,0.25,0.5 --width 8 --threads 1 \
#       --noise-type instance --noise-rate 0.2 --out $OUT/relabel_inst_0.2
# the loop below made the earlier relabel_sym_<rate> runs, at 377b701 / b4c7ef1 (the training before the flagged labels left the window)
for rate in 0.2 0.4; do mkdir -p "$OUT/relabel_sym_$rate"
  "$PY" -m ncalr_backend.bench relabel --seeds "${SEEDS:-3}" --shares 0,0.25,0.5 --width 8 --threads 1 \
      --noise-type symmetric --noise-rate $rate --out "$OUT/relabel_sym_$rate" 2>&1 | tee "$OUT/relabel_sym_$rate/run.log"
done
