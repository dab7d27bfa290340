#!/usr/bin/env bash
# One device call: the CUDA-graph training step against the eager one (graph_probe.py), then the
# quality bench at width 64 with cuda_graph on and off (same seeds, one process per job, PAR at a
# time, default 1: six side by side did not finish a cycle in 210 s on an H200): AULC must not
# move beyond the seeds' spread. Run from the repository root:
#   OUT=... bash docs/bench/gpu/run_graph.sh        (SMOKE=1: tiny sizes, runs on a CPU)
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-runs/graph}; PY=${PY:-python3}; SMOKE=${SMOKE:-0}; SEEDS=${SEEDS:-"0 1 2"}
mkdir -p "$OUT/q"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  $PY -c "import torch, platform; print('torch', torch.__version__, 'python', platform.python_version())"; nproc; } > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"
if [ "$SMOKE" = 1 ]; then QP=(--quick); Q=(--subsample 300 --cycles 1 --width 8 --max-epochs 5); SEEDS="0"
else QP=(); Q=(--cycles 5 --width 64 --max-epochs 40); fi
[ "${SKIP_PROBE:-0}" = 1 ] || timeout ${PROBE_S:-260} $PY docs/bench/gpu/graph_probe.py "${QP[@]}" --out "$OUT" > "$OUT/graph_probe.log" 2>&1; echo "probe rc=$?"
[ "${SKIP_PROBE:-0}" = 1 ] || grep -A20 '^summary:' "$OUT/graph_probe.log"
job() { local seed=$1 g=$2; local d="$OUT/q/s${seed}_graph-$g"; mkdir -p "$d"
  timeout ${QUALITY_S:-200} $PY -m ncalr_backend.bench quality "${Q[@]}" --seeds "$seed," --initial 0.1 --query 0.05 \
    --threads 1 --set device=auto --set cuda_graph=$g --strategies ncalr,margin --noise-type symmetric --noise-rate 0.2 \
    --out "$d" --no-plot > "$d/run.log" 2>&1; echo "seed $seed cuda_graph=$g rc=$?"; }
export -f job; export OUT PY; export Q_STR="${Q[*]}"
Q_ARGS="${Q[*]}"
[ "${SKIP_QUALITY:-0}" = 1 ] && exit 0
for s in $SEEDS; do for g in true false; do echo "$s $g"; done; done > "$OUT/jobs.txt"
# bash arrays do not export: the job reads Q from the environment string
sed -i 's/^/ /' "$OUT/jobs.txt"
xargs -P "${PAR:-1}" -L 1 bash -c 'Q=($Q_STR); job $0 $1' < "$OUT/jobs.txt"
for f in "$OUT"/q/*/run.log; do echo "== $f"; grep -m2 -E "^\| (ncalr|margin) " "$f"; done
tar czf /tmp/q.tgz -C "$OUT" q && mv /tmp/q.tgz "$OUT/q.tgz"; rm -rf "$OUT/q"
