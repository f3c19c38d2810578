#!/usr/bin/env bash
# The test suite, on CPU: ruff (lint and format check), then pytest with the arguments given
# (`-m "not slow"`: the fast loop). SLURM tests use the local cluster of launchers/local-slurm
# (install it first with launchers/local-slurm/install.sh; CI does).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/python -m pytest "$@"
