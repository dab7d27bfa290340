#!/usr/bin/env bash
# One call on the lent GPU machine (device tool): the GPU path's figures and a width-64 check of the
# quality result. Run from the repository root with the machine's python3 (torch preinstalled):
#   OUT=... bash docs/bench/gpu/run_device.sh
# Everything lands under $OUT and is packed into $OUT/device.tgz at the end (the tool returns
# at most 8 files). Each part has its own time limit so the whole stays under ~9 minutes.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-runs/device}
PY=${PY:-python3}
SMOKE=${SMOKE:-0}
DEVICE=${DEVICE:-cuda}
T0=$(date +%s)
left() { echo $(( ${DEADLINE:-520} - ($(date +%s) - T0) )); }
mkdir -p "$OUT/q"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  $PY -c "import torch, numpy, sklearn, platform; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'python', platform.python_version(), 'numpy', numpy.__version__, 'sklearn', sklearn.__version__)"
  nproc; git log -1 --format='%H %s' 2>/dev/null || true; git status --short | head -5; } > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"
if [ "$SMOKE" = 1 ]; then
  TB=(--size 16 --batch 16 --steps 2 --skip-warm); CP=(--labeled 200 --pool 2000 --size 16 --width 8 --max-epochs 3)
  Q=(--subsample 400 --cycles 1 --width 8 --max-epochs 5); SEEDS="0 1"; SETTINGS="sym02"
else
  TB=(--batch 128); CP=(--labeled 5000 --pool 100000); Q=(--cycles 5 --width 64 --max-epochs 40); SEEDS="0 1 2 3 4"
  SETTINGS=${SETTINGS:-"sym00 sym04 ood02"}
fi
# 1. throughput (NCHW vs channels-last, bf16) and the digits cycle, alone on the GPU
[ "$SMOKE" = 1 ] || timeout 110 $PY -m ncalr_backend.bench training "${TB[@]}" --out "$OUT/training" > "$OUT/training.log" 2>&1; echo "training rc=$?"
# 2. one product-size cycle and the pool inference rate
timeout 150 $PY docs/bench/gpu/cycle_probe.py "${CP[@]}" --out "$OUT/probe" > "$OUT/probe.log" 2>&1; echo "probe rc=$?"
# 3. quality at width 64 on the GPU, at the engine defaults (rate and warm starts by width: 0.00625, every
#    cycle from scratch): one process per (setting, seed, strategy), all side by side
#    (16 CPU cores there), seed-major so that whatever the deadline cuts, finished pairs come first
STRATS=${STRATS:-ncalr,margin}
job() { local setting=$1 seed=$2 strat=$3; local args
  case $setting in
    sym00) args=(--noise-type none);;
    sym02) args=(--noise-type symmetric --noise-rate 0.2);;
    sym04) args=(--noise-type symmetric --noise-rate 0.4);;
    asym03) args=(--noise-type asymmetric --noise-rate 0.3);;
    ood02) args=(--noise-type symmetric --noise-rate 0.2 --ood-fraction 0.2);;
    lt10) args=(--imbalance-factor 10);;
  esac
  mapfile -t Q < "$OUT/q_args.txt"
  local d="$OUT/q/${setting}_s${seed}_${strat//[^a-z0-9_]/-}"; mkdir -p "$d"
  local t; t=$(left); [ "$t" -gt 20 ] || { echo "$setting seed $seed $strat skipped (deadline)"; return 0; }
  timeout "$t" $PY -m ncalr_backend.bench quality "${Q[@]}" --seeds "$seed," --initial 0.1 --query 0.05 \
    --tpt-window 10 --threads 1 --set batch_size=32 --set device=$DEVICE --strategies "$strat" \
    "${args[@]}" --out "$d" --no-plot > "$d/run.log" 2>&1; echo "$setting seed $seed $strat rc=$? at $(( $(date +%s) - T0 )) s"; }
export -f job left; export OUT PY T0 DEADLINE DEVICE
printf '%s\n' "${Q[@]}" > "$OUT/q_args.txt"  # bash arrays do not export: pass Q through a file
for seed in $SEEDS; do for s in $SETTINGS; do for st in ${STRATS//,/ }; do echo "$s $seed $st"; done; done; done > "$OUT/jobs.txt"
xargs -P "${PAR:-16}" -L 1 bash -c 'job $0 $1 $2' < "$OUT/jobs.txt"
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader >> "$OUT/machine.txt" 2>&1 || true
echo "elapsed $(( $(date +%s) - T0 )) s"
tar czf "/tmp/device.tgz" -C "$OUT" . && mv /tmp/device.tgz "$OUT/device.tgz" && ls -la "$OUT"
