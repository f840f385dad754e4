#!/usr/bin/env bash
# The GPU checks of "Fast, bounded and unbreakable" in one run (about 5-7 minutes on an H100):
#   1. speed, eager (bf16 autocast + channels_last), float32 and int16 host arrays, vs the bare backbone
#   2. equality: CUDA fp32 vs CPU, bf16 vs fp32, out-of-memory retries and CPU fallback, compiled vs eager
#   3. speed, the plain fp32 path (what bf16 + channels_last buy)
#   4. speed, torch.compile with fixed batch shapes (both GASE and the bare backbone compiled)
# Results go to $OUT (or benchmarks/results): gpu_check.log and four JSON files (5 files in all).
# monai is the one package the GPU image lacks: carry .whl (holding monai-*.whl); it is installed to /tmp/site.
#
#   OUT=/tmp/out bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results}"
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
if ! "$PY" -c "import monai" >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/monai-*.whl || { echo "cannot install monai from .whl" | tee "$LOG"; exit 1; }
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv; nproc;
  "$PY" -c "import torch, monai; print('torch', torch.__version__, 'monai', monai.__version__)"; } 2>&1 | tee "$LOG"

status=0
run() {  # run NAME ARGS...: one step, its output appended to the log; a failing step does not stop the rest
  local name=$1
  shift
  echo "== $name: $PY $*" | tee -a "$LOG"
  local t0=$SECONDS
  "$PY" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$LOG"
  [ "$rc" -eq 0 ] || status=1
}
# most important first: what a timeout cuts off is the compiled run, not the eager numbers or the checks
run speed_eager benchmarks/speed.py --device cuda --repeats 10 --dtype float32 int16 --json "$OUT/speed_eager.json"
run fast_path benchmarks/fast_path_check.py --device cuda --compile --train-iterations 150 \
  --json "$OUT/fast_path.json"
run speed_fp32 benchmarks/speed.py --device cuda --repeats 5 --fp32 --no-bare --json "$OUT/speed_fp32.json"
run speed_compile benchmarks/speed.py --device cuda --repeats 10 --compile --dtype float32 int16 \
  --json "$OUT/speed_compile.json"
echo "gpu_check: $([ "$status" -eq 0 ] && echo 'all steps ran' || echo 'a step FAILED (see above)')" | tee -a "$LOG"
exit "$status"
