#!/usr/bin/env bash
# Create .venv (once) with everything sweep needs. torch: the CPU build where no NVIDIA GPU
# is visible, a CUDA build otherwise. SWEEP_TORCH_SPEC / SWEEP_TORCH_INDEX_URL override that.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "error: sweep needs Python >= 3.10 (found $("$PYTHON" --version 2>&1)); set PYTHON=/path/to/python3.x" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with $("$PYTHON" --version)"
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
if ! .venv/bin/python -c 'import torch' 2>/dev/null; then
  if [ -n "${SWEEP_TORCH_SPEC:-}" ]; then
    spec=$SWEEP_TORCH_SPEC
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    spec="torch>=2.2,<3"       # a GPU is present: PyPI's default (CUDA) build
  else
    spec="torch==2.13.0"       # no GPU: the CPU build (from local wheels where the machine has them)
  fi
  echo "installing $spec"
  "${PIP[@]}" install ${SWEEP_TORCH_INDEX_URL:+--index-url "$SWEEP_TORCH_INDEX_URL"} "$spec"
fi
if ! .venv/bin/python -c 'import sweep, pytest' 2>/dev/null || [ pyproject.toml -nt .venv/.sweep-installed ]; then
  echo "installing sweep and its dependencies into .venv"
  "${PIP[@]}" install -e ".[test]"
  touch .venv/.sweep-installed
fi
