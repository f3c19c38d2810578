#!/usr/bin/env bash
# The main job on the embedded default: the toy study (five toy architectures trained on
# digits on first use), every cell once, then the table and figures of the sweep.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
started=$(mktemp)
trap 'rm -f "$started"' EXIT
.venv/bin/sweep-run -m +experiment=toy sweep.name=toy "$@"
# A sweep that logs to W&B (the default) aggregates itself when it ends, for its summary run:
# the table is printed and the figures drawn already. Otherwise (logger=none, or nothing was
# left to run) aggregate here.
if [ ! multirun/toy/results.csv -nt "$started" ]; then
  .venv/bin/sweep-aggregate multirun/toy
fi
