#!/usr/bin/env bash
# One prepared GPU session, sized for a short lease (default budget 540 s of wall time):
#   1. the `best` recipe on MNIST and on Fashion-MNIST, both at once (bf16 autocast + torch.compile, data on
#      the GPU); each is a launch-bound small model, so two share a big card with little loss;
#   2. `python -m benchmarks.gpu` (vit_lab vs timm: fp32 / bf16 / bf16 + compile, and vit_lab with CUDA graphs;
#      img/s and epoch time),
#      once the trainings end or at BENCH_AT seconds, whichever comes first;
#   3. at the budget, unfinished trainings get SIGTERM (they checkpoint and can resume), and everything is packed
#      into $OUT: logs, benchmark JSON, run_<name>.tgz (metrics, history, logs, checkpoint).
# A later lease continues them: unpack the tgz files into a git-ignored folder that travels (carry), e.g.
#   mkdir -p .devruns && for f in run_*.tgz; do tar xzf $f -C .devruns; done
#   RESUME_FROM=.devruns TRAIN=best_mnist BENCH_AT=9999 bash benchmarks/gpu_session.sh   # MNIST only; the
#   benchmark then runs only if the training ends with time to spare
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
COMPILE_MODE=${COMPILE_MODE:-default}     # torch.compile mode of the trainings; reduce-overhead = CUDA graphs
BEST_ARGS=${BEST_ARGS:-}
TRAIN=${TRAIN:-best_mnist best_fashion}   # which runs: best_mnist, best_fashion
RESUME_FROM=${RESUME_FROM:-}              # a folder of <name>/checkpoint.pt (earlier leases' runs) to continue
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

declare -A EXTRA=([best_mnist]="" [best_fashion]="data=fashion_mnist")
PIDS=()
for name in $TRAIN; do
  [[ -v "EXTRA[$name]" ]] || { echo "TRAIN: unknown run '$name'; use best_mnist and/or best_fashion"; exit 2; }
  args=${EXTRA[$name]}
  if [ -n "$RESUME_FROM" ] && [ -f "$RESUME_FROM/$name/checkpoint.pt" ]; then
    args="$args resume=$(cd "$RESUME_FROM/$name" && pwd)"
  fi
  $PY -m vit_lab.train experiment=best device=$DEVICE device.precision=$PRECISION device.compile=$COMPILE \
    device.compile_mode=$COMPILE_MODE device.threads=4 trainer.progress=false hydra.run.dir="$RUNS/$name" $args $BEST_ARGS >"$OUT/$name.log" 2>&1 &
  PIDS+=($!)
  echo "[session] $name started at $(elapsed) s, pid $!: $args"
done
running() { local n=0 p; for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && n=$((n + 1)); done; echo $n; }

while [ "$(running)" -gt 0 ] && [ "$(elapsed)" -lt "$BENCH_AT" ]; do sleep 2; done
echo "[session] benchmark starts at $(elapsed) s (trainings still running: $(running))"
left=$(( BUDGET - $(elapsed) - 25 ))
if [ "$left" -gt 30 ]; then
  timeout --signal=INT "$left" $PY -m benchmarks.gpu $BENCH_ARGS 2>&1 | tee "$OUT/gpu_bench.log"
fi

while [ "$(running)" -gt 0 ] && [ "$(elapsed)" -lt $(( BUDGET - 20 )) ]; do sleep 2; done
for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null && echo "[session] budget reached: SIGTERM to $p (it checkpoints)"; done
for _ in $(seq 15); do [ "$(running)" -gt 0 ] || break; sleep 1; done
wait
cp benchmarks/results/gpu-*.json "$OUT/" 2>/dev/null
for name in $TRAIN; do tar czf "$OUT/run_$name.tgz" -C "$RUNS" "$name" 2>/dev/null; done  # <16 MiB each
for name in $TRAIN; do
  echo "== $name"; grep -E "epoch [0-9]+/|test_acc|error|Error" "$OUT/$name.log" | tail -4
done
echo "[session] done at $(elapsed) s"
