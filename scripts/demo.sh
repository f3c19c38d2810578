#!/usr/bin/env bash
# The main job on the embedded default: the toy study (five toy architectures trained on
# digits on first use), every cell once, then the table and figures of the sweep.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/sweep-run -m +experiment=toy sweep.name=toy "$@"
.venv/bin/sweep-aggregate multirun/toy
