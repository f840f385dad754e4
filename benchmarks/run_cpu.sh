#!/usr/bin/env bash
# The full domain-generalisation benchmark on a 2-core CPU: knee and pelvis train side by side, one
# process and one torch thread each (two cores busy, no thread contention), then the two runs are merged
# into one results folder (RESULTS.md, plots) and, with UPDATE_README=1, the README's Results section.
#
#   ITERATIONS=1000 bash benchmarks/run_cpu.sh [OUT_DIR]
#   REUSE=1 ITERATIONS=1000 bash benchmarks/run_cpu.sh [OUT_DIR]   # evaluate OUT_DIR's models again, no training
#   TRAIN_SEED=1 ITERATIONS=1000 bash benchmarks/run_cpu.sh [OUT_DIR] # same data, another training seed
#   DATA_SEED=1 ITERATIONS=1000 bash benchmarks/run_cpu.sh [OUT_DIR]  # other subjects (and training seed 1)
#   REUSE=1 RETRAIN=gase ITERATIONS=1000 bash benchmarks/run_cpu.sh [OUT_DIR]  # train GASE anew, reuse the rest
#   CONTEXT=3 ITERATIONS=1000 bash benchmarks/run_cpu.sh [OUT_DIR]  # every method reads 3 slices (gase.context),
#       CONTEXT_MM=8 of them 8 mm apart (default: the training scans' slice spacing)
#   METHODS="erm gase" ... bash benchmarks/run_cpu.sh [OUT_DIR]    # some methods (default: erm randcurve gase)
#   ANATOMIES=pelvis ... bash benchmarks/run_cpu.sh [OUT_DIR]      # one anatomy (default: knee pelvis)
#   FALSE_INVALID=400 ... bash benchmarks/run_cpu.sh [OUT_DIR]  # also count false-invalid calls of each GASE model
#       on 400 more source-style subjects (benchmarks/false_invalid.py; about 20-30 min per anatomy, side by
#       side; FALSE_INVALID_FIRST=400 takes subjects 400-799); the targets table then counts them. An existing
#       OUT_DIR/false_invalid_<anatomy>.json is kept, not recounted: delete it to recount.
#
# OUT_DIR (default benchmarks/results/cpu) receives knee/, pelvis/ (each a complete run with its
# run.log and models/) and the merged results at its top. Same protocol as run_full.sh (6 test subjects
# per style, 3 per OOD kind, batch 8, crop 128), at a fixed iteration budget instead of a timing probe.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-benchmarks/results/cpu}
ITERATIONS=${ITERATIONS:-1000}
PY=${PYTHON:-}
if [ -z "$PY" ]; then if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi; fi
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
extra=()
if [ "${REUSE:-0}" = 1 ]; then extra+=(--reuse-models); fi
if [ -n "${RETRAIN:-}" ]; then extra+=(--retrain $RETRAIN); fi  # with REUSE=1: train these methods anew
if [ -n "${TRAIN_SEED:-}" ]; then extra+=(--train-seed "$TRAIN_SEED"); fi
if [ -n "${DATA_SEED:-}" ]; then extra+=(--seed "$DATA_SEED"); fi
if [ -n "${CONTEXT:-}" ]; then extra+=(--context-slices "$CONTEXT"); fi
if [ -n "${CONTEXT_MM:-}" ]; then extra+=(--context-mm "$CONTEXT_MM"); fi
read -r -a methods <<< "${METHODS:-erm randcurve gase}"
read -r -a anatomies <<< "${ANATOMIES:-knee pelvis}"
pids=()
for anatomy in "${anatomies[@]}"; do
  mkdir -p "$OUT_DIR/$anatomy"
  "$PY" -m benchmarks.dg_benchmark --out "$OUT_DIR/$anatomy" --anatomy "$anatomy" \
    --methods "${methods[@]}" --device cpu --iterations "$ITERATIONS" --threads 1 --workers 0 \
    --test-subjects 6 --ood-subjects 3 --overwrite "${extra[@]}" > "$OUT_DIR/$anatomy/run.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
if [ "$status" -ne 0 ]; then
  echo "a benchmark process failed; see $OUT_DIR/knee/run.log and $OUT_DIR/pelvis/run.log" >&2
  exit 1
fi
if [ -n "${FALSE_INVALID:-}" ]; then
  fpids=()
  for anatomy in "${anatomies[@]}"; do
    f="$OUT_DIR/false_invalid_$anatomy.json"
    if [ -e "$f" ]; then
      echo "$f exists: kept, not recounted (delete it to count again for this run's model)" >&2
      continue
    fi
    "$PY" -m benchmarks.false_invalid --model "$OUT_DIR/$anatomy/models/$anatomy-gase" --anatomy "$anatomy" \
      --data-seed "${DATA_SEED:-0}" --subjects "$FALSE_INVALID" --first "${FALSE_INVALID_FIRST:-0}" --threads 1 \
      --out "$f" > "$OUT_DIR/$anatomy/false_invalid.log" 2>&1 &
    fpids+=($!)
  done
  for pid in ${fpids[@]+"${fpids[@]}"}; do wait "$pid" || status=1; done
  if [ "$status" -ne 0 ]; then
    echo "a false-invalid count failed; see $OUT_DIR/knee/false_invalid.log and $OUT_DIR/pelvis/false_invalid.log" >&2
    exit 1
  fi
fi
args=()
if [ "${UPDATE_README:-0}" = 1 ]; then args+=(--update-readme); fi
# (nproc would count OMP_NUM_THREADS, exported above, instead of the cores)
if [ "${#anatomies[@]}" -gt 1 ]; then
  joined=${anatomies[0]}
  for anatomy in "${anatomies[@]:1}"; do joined+=" and $anatomy"; done
  machine="CPU ($(uname -m), $(getconf _NPROCESSORS_ONLN) cores): $joined side by side, one process and 1 torch thread each"
else
  machine="CPU ($(uname -m), $(getconf _NPROCESSORS_ONLN) cores): ${anatomies[0]} alone, one process and 1 torch thread"
fi
runs=()
for anatomy in "${anatomies[@]}"; do runs+=("$OUT_DIR/$anatomy"); done
"$PY" -m benchmarks.merge "$OUT_DIR" "${runs[@]}" --machine "$machine" "${args[@]}"
