#!/usr/bin/env bash
# Issue 11, item 3: clean test accuracy of the served checkpoint against the terminal-phase model,
# per cycle (results.json: cycles[].acc = served, acc_tpt = terminal-phase model, served = which
# checkpoint, flagged_fraction = share of the labeled set the label-error report flags).
# Strategies: ncalr:serve=holdout and ncalr:serve=tpt (nothing held out, the final model served:
# the cost of the held-out slice, paired per seed). The results here ran at commit 5af5dca, when
# serve=holdout was the engine default, as STRATEGIES=ncalr,ncalr:serve=tpt ("ncalr" in
# results.json and summary.md is serve=holdout).
# Symmetric noise 0 / 0.2 / 0.4 and asymmetric 0.3; 3 seeds, 4 cycles (10% -> 30%), width 8,
# 40-epoch cap, window 10, batch 32, one torch thread, one run at a time; engine defaults
# otherwise (tpt_criterion=plateau; warm start from the served weights, as the service does).
# WARM=tpt: warm start from the terminal-phase weights instead (outputs under warm_tpt/), e.g.
#   WARM=tpt STRATEGIES=ncalr SETTINGS="symmetric_0.0 symmetric_0.4" bash docs/quality/served-checkpoint/run.sh
# width16_symmetric_0.4/: the same at width 16, 2 seeds, noise 0.4 only (commit bb50605, engine as 5af5dca):
#   --seeds 2 --width 16 ... --strategies ncalr,ncalr:serve=tpt --noise-type symmetric --noise-rate 0.4
# onset/: the first design (serve the checkpoint at T_i whenever the plateau fired), commit 89ca462.
set -euo pipefail
cd "$(dirname "$0")/../../.."
PY=${PY:-.venv/bin/python}
ROOT=${OUT_ROOT:-docs/quality/served-checkpoint}
WARM=${WARM:-served}
[ "$WARM" = tpt ] && ROOT=$ROOT/warm_tpt
C=(--seeds 3 --cycles 4 --initial 0.1 --query 0.05 --width 8 --max-epochs 40 --tpt-window 10
   --warm-start true --warm-from "$WARM" --threads 1 --strategies "${STRATEGIES:-ncalr:serve=holdout,ncalr:serve=tpt}" --set batch_size=32)
run() { local name=$1; shift; mkdir -p "$ROOT/$name"
  flock /tmp/ncalr-heavy.lock "$PY" -m ncalr_backend.bench quality "${C[@]}" "$@" --out "$ROOT/$name" > "$ROOT/$name/run.log" 2>&1; }
for s in ${SETTINGS:-symmetric_0.0 symmetric_0.2 symmetric_0.4 asymmetric_0.3}; do
  run "$s" --noise-type "${s%_*}" --noise-rate "${s#*_}"
done
