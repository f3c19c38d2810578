"""Share of work-unit time spent waiting on cache locks, in a toy sweep on real SLURM.

    python benchmarks/bench_lock_wait.py    # needs root and launchers/local-slurm/install.sh

Runs `+experiment=toy`-shaped grids of two toys through `hydra/launcher=local_slurm`
twice, from a cache holding only the trained toys (so each model's features, heads and
probes are computed during the sweep):

* default units (one per model): each unit computes its own model's artifacts;
* `sweep.unit.max_cells=8`: each model is split into several units, which would all wait
  on the first one's features lock; a `prepare-…` unit computes them first instead.

Each unit's job writes `units/<id>/summary.json` with its wall time and the seconds its
cache spent waiting for another process's lock; the figure is their ratio, summed.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sweep_compute import sweep  # noqa: E402
from slurm_fixture import local_slurm_unavailable, start_local_slurm, stop_local_slurm  # noqa: E402

GRID = [
    "model=toy_vit,toy_deit",
    "layer=range(0,7)",
    "intervention=none,shuffle",
    "readout=native,cls",
    "seed=0",
    "logger=none",
]


def lock_share(sweep_dir: Path) -> tuple[int, float, float]:
    summaries = [json.loads(p.read_text()) for p in sweep_dir.glob("units/*/summary.json")]
    return len(summaries), sum(s["wall_s"] for s in summaries), sum(s["lock_wait_s"] for s in summaries)


def main() -> None:
    reason = local_slurm_unavailable()
    if reason:
        sys.exit(f"cannot start the local SLURM cluster: {reason}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ.update(start_local_slurm(root / "slurm"))  # SLURM_CONF, for sbatch and the sweeps' squeue
        cache = root / "cache"
        try:
            sweep(["model=toy_vit,toy_deit", "layer=0", "logger=none", "sweep.name=warmup"], root, cache)  # trains
            for name, extra in (("per-model", []), ("split", ["sweep.unit.max_cells=8"])):
                for kind in ("features", "probes", "head"):
                    shutil.rmtree(cache / kind, ignore_errors=True)
                seconds = sweep([*GRID, f"sweep.name={name}", "hydra/launcher=local_slurm", *extra], root, cache)
                units, wall, waited = lock_share(root / "multirun" / name)
                print(
                    f"[{name}] {units} units in {seconds:.0f} s: unit time {wall:.1f} s, waiting on locks "
                    f"{waited:.2f} s = {100 * waited / wall:.1f} % of unit time"
                )
        finally:
            stop_local_slurm(root / "slurm")


if __name__ == "__main__":
    main()
