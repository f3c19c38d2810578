#!/usr/bin/env bash
# The test suite, on CPU. SLURM tests use the local cluster of launchers/local-slurm
# (install it first with launchers/local-slurm/install.sh; CI does).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m pytest "$@"
