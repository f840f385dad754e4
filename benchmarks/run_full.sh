#!/usr/bin/env bash
# The full domain-generalisation benchmark (both anatomies, ERM / random curves / GASE), sized for one
# H100 in about 6 minutes: a timing probe sets the common iteration budget so that the six trainings
# take about TRAIN_SECONDS together; data, evaluation and plots take the rest (~2 min there).
#
#   bash benchmarks/run_full.sh [OUT_DIR] [ARCHIVE.tgz]
#
# OUT_DIR (default benchmarks/results/full) receives results.json, RESULTS.md, panel.npz, the PNGs,
# run.log and models/. With ARCHIVE, everything but models/ is also packed into that .tgz (one file to
# bring back from a device machine). Environment: TRAIN_SECONDS (200), DEVICE (auto), WORKERS (12),
# PYTHON (.venv/bin/python if present, else python3). Extra arguments after ARCHIVE go to the script.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-benchmarks/results/full}
ARCHIVE=${2:-}
PY=${PYTHON:-}
if [ -z "$PY" ]; then if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi; fi
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
"$PY" -m benchmarks.dg_benchmark --out "$OUT_DIR" --anatomy knee pelvis --methods erm randcurve gase \
  --device "${DEVICE:-auto}" --train-seconds "${TRAIN_SECONDS:-200}" --test-subjects 6 --ood-subjects 3 \
  --workers "${WORKERS:-12}" --overwrite "${@:3}" 2>&1 | tee "$OUT_DIR/run.log"
if [ -n "$ARCHIVE" ]; then
  tar -czf "$ARCHIVE" --exclude=models -C "$(dirname "$OUT_DIR")" "$(basename "$OUT_DIR")"
  echo "packed $OUT_DIR (without models/) into $ARCHIVE"
fi
