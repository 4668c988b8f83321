#!/usr/bin/env bash
# One prepared GPU session, sized for a short lease (default budget 540 s of wall time):
#   1. the `best` recipe on MNIST and on Fashion-MNIST, both at once (bf16 autocast + torch.compile, data on
#      the GPU); each is a launch-bound small model, so two share a big card with little loss;
#   2. `python -m benchmarks.gpu` (vit_lab vs timm: fp32 / bf16 / bf16 + compile, img/s and epoch time),
#      once the trainings end or at BENCH_AT seconds, whichever comes first;
#   3. at the budget, unfinished trainings get SIGTERM (they checkpoint and can resume), and everything is packed
#      into $OUT: logs, benchmark JSON, run_<name>.tgz (metrics, history, logs, checkpoint).
#
#   bash benchmarks/gpu_session.sh                                  # on the GPU machine, from the repo root
#   DEVICE=cpu COMPILE=false BUDGET=120 BENCH_ARGS="--device cpu --smoke --no-save" \
#     BEST_ARGS="trainer.epochs=1 data.train_limit=256 data.test_limit=200" bash benchmarks/gpu_session.sh
#
# Wheels in $WHEELS (default .whl/: packages the GPU image lacks: hydra-core, omegaconf, optuna and their needs)
# are installed to /tmp/site first; VIT_LAB_DATA must point at the data (default ./.devdata, a copy that travels
# with the working tree and is git-ignored).
set -u
T0=$(date +%s)
BUDGET=${BUDGET:-540}
BENCH_AT=${BENCH_AT:-330}
DEVICE=${DEVICE:-cuda}
PRECISION=${PRECISION:-bf16}
COMPILE=${COMPILE:-true}
BEST_ARGS=${BEST_ARGS:-}
BENCH_ARGS=${BENCH_ARGS:---batch 128 --rounds 3 --steps 20 --epochs 1}
OUT=${OUT:-benchmarks/results/gpu_session}
RUNS=${RUNS:-/tmp/vit_lab_gpu_runs}
export VIT_LAB_DATA=${VIT_LAB_DATA:-$PWD/.devdata} PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$RUNS"
PY=${PY:-python3}
elapsed() { echo $(( $(date +%s) - T0 )); }

WHEELS=${WHEELS:-.whl}
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl \
    || { echo "wheel install failed"; exit 3; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv 2>/dev/null || true
  $PY -c "import torch, hydra, optuna, omegaconf; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'hydra', hydra.__version__, 'optuna', optuna.__version__)"
} 2>&1 | tee "$OUT/env.txt"

train() {  # name, then extra overrides
  local name=$1; shift
  $PY -m vit_lab.train experiment=best device=$DEVICE device.precision=$PRECISION device.compile=$COMPILE \
    device.threads=4 trainer.progress=false hydra.run.dir="$RUNS/$name" "$@" $BEST_ARGS >"$OUT/$name.log" 2>&1 &
  echo $!
}
P1=$(train best_mnist)
P2=$(train best_fashion data=fashion_mnist)
echo "[session] trainings started at $(elapsed) s: best_mnist pid $P1, best_fashion pid $P2"

while { kill -0 "$P1" 2>/dev/null || kill -0 "$P2" 2>/dev/null; } && [ "$(elapsed)" -lt "$BENCH_AT" ]; do sleep 2; done
running=0; for p in $P1 $P2; do kill -0 "$p" 2>/dev/null && running=$((running + 1)); done
echo "[session] benchmark starts at $(elapsed) s (trainings still running: $running)"
left=$(( BUDGET - $(elapsed) - 25 ))
if [ "$left" -gt 30 ]; then
  timeout --signal=INT "$left" $PY -m benchmarks.gpu $BENCH_ARGS 2>&1 | tee "$OUT/gpu_bench.log"
fi

while { kill -0 "$P1" 2>/dev/null || kill -0 "$P2" 2>/dev/null; } && [ "$(elapsed)" -lt $(( BUDGET - 20 )) ]; do sleep 2; done
for p in $P1 $P2; do kill -TERM "$p" 2>/dev/null && echo "[session] budget reached: SIGTERM to $p (it checkpoints)"; done
for _ in $(seq 15); do { kill -0 "$P1" 2>/dev/null || kill -0 "$P2" 2>/dev/null; } || break; sleep 1; done
wait
cp benchmarks/results/gpu-*.json "$OUT/" 2>/dev/null
for name in best_mnist best_fashion; do tar czf "$OUT/run_$name.tgz" -C "$RUNS" "$name" 2>/dev/null; done  # <16 MiB each
for name in best_mnist best_fashion; do
  echo "== $name"; grep -E "epoch [0-9]+/|test_acc|error|Error" "$OUT/$name.log" | tail -4
done
echo "[session] done at $(elapsed) s"
