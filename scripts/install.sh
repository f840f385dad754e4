#!/usr/bin/env bash
# Create .venv and install GASE with the pinned versions CI uses (CPU torch 2.13.0; CUDA is used when present).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for c in python3.11 python3.12 python3.10 python3; do
    if command -v "$c" >/dev/null 2>&1; then PY=$c; break; fi
  done
fi
"$PY" -c 'import sys; assert (3, 10) <= sys.version_info[:2] <= (3, 12), "GASE needs Python 3.10-3.12"' || {
  echo "install.sh: GASE needs Python 3.10-3.12 (found $("$PY" --version)). Set PYTHON=/path/to/python3.11." >&2; exit 2; }
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -c requirements/constraints.txt -e ".[test]"
echo "GASE installed in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__, "CUDA" if torch.cuda.is_available() else "CPU")'))"
