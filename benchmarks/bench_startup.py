"""Start-up and bookkeeping: planning a 10,000-cell grid, re-launching a finished one, and a
cell's fixed overhead.

    python benchmarks/bench_startup.py

1. `sweep-run -m <10,080-point grid> sweep.dry_run=true` wall time (target <= 10 s), and
   whether torch was imported on that path (it must not be).
2. The same grid re-launched when every cell already has a complete record (records are
   written for the planned cells first) (target <= 10 s).
3. A cell's fixed overhead: an in-process sweep of cached `none` cells with W&B offline,
   (wall - the first cell) / (cells - 1) (target <= 3 s); the first cell includes imports.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GRID = [
    "model=toy_vit,toy_deit,toy_beit,toy_dinov2,toy_clip",
    "layer=range(0,7)",
    "intervention=none,shuffle,zero,mean,noise,reset",
    "readout=native,cls",
    "seed=range(0,24)",
]
PROBE = (
    "import runpy, sys; sys.argv = ['sweep-run', '-m', *sys.argv[1:]]\n"
    "try: runpy.run_module('sweep.run', run_name='__main__')\n"
    "except SystemExit: pass\n"
    "print('TORCH_IMPORTED', 'torch' in sys.modules)"
)


def timed(args: list[str], cwd: Path, env: dict) -> tuple[float, str]:
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=cwd, env=env, capture_output=True, text=True)
    return time.perf_counter() - started, out.stdout + out.stderr


def fake_records(cwd: Path, env: dict) -> int:
    """Complete records for every cell the planner would run (ids from the planner itself)."""
    code = (
        "import json, sys\nfrom pathlib import Path\n"
        "from hydra import compose, initialize_config_module\nfrom sweep.conf_path import CONF_PACKAGE\n"
        "from sweep.plan import Dimension, GroupComposer, make_plan\n"
        "from omegaconf import OmegaConf\n"
        "with initialize_config_module(config_module=CONF_PACKAGE, version_base='1.3'):\n"
        "    compose_groups = lambda g: OmegaConf.to_container(compose('config', overrides=list(g)), resolve=True)\n"
        "    dims = [Dimension('model', True, tuple(f'model={m}' for m in 'toy_vit toy_deit toy_beit toy_dinov2 toy_clip'.split()), (None,) * 5),\n"
        "            Dimension('intervention', True, tuple(f'intervention={i}' for i in 'none shuffle zero mean noise reset'.split()), (None,) * 6),\n"
        "            Dimension('readout', True, ('readout=native', 'readout=cls'), (None, None)),\n"
        "            Dimension('layer', False, tuple(f'layer={l}' for l in range(7)), tuple(range(7))),\n"
        "            Dimension('seed', False, tuple(f'seed={s}' for s in range(24)), tuple(range(24)))]\n"
        "    plan = make_plan([dims], GroupComposer(compose_groups), 'done', Path('multirun/done'), [])\n"
        "for cell in plan.runnable:\n"
        "    folder = Path('multirun/done') / cell.spec.subdir\n    folder.mkdir(parents=True, exist_ok=True)\n"
        "    (folder / 'result.json').write_text(json.dumps({'cell_id': cell.spec.cell_id, 'status': 'complete'}))\n"
        "print(len(plan.runnable))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        env = {**os.environ, "SWEEP_CACHE_DIR": str(cwd / "cache"), "WANDB_MODE": "offline", "SWEEP_PROGRESS": "0"}
        seconds, out = timed([*GRID, "sweep.dry_run=true", "sweep.name=plan"], cwd, env)
        planned = next(line for line in out.splitlines() if line.startswith("sweep plan"))
        print(f"dry run: {seconds:.1f} s (target <= 10 s): {'PASS' if seconds <= 10 else 'FAIL'}  [{planned}]")
        print(f"  torch imported on the dry-run path: {'TORCH_IMPORTED True' in out}")

        n = fake_records(cwd, env)
        seconds, out = timed([*GRID, "sweep.name=done"], cwd, env)
        summary = next(line for line in out.splitlines() if line.startswith("sweep done"))
        print(
            f"re-launch with all {n} cells done: {seconds:.1f} s (target <= 10 s): "
            f"{'PASS' if seconds <= 10 and ', 0 to run' in summary else 'FAIL'}  [{summary}]"
        )

        cell = ["model=toy_vit", "intervention=none", "toy_training.epochs=3", "logger=wandb"]
        subprocess.run([sys.executable, "-m", "sweep.run", *cell, "layer=0"], cwd=cwd, env=env, capture_output=True)
        for k, layers in ((1, "6"), (7, "range(0,7)")):
            started = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "sweep.run", "-m", *cell, f"layer={layers}", f"sweep.name=o{k}"],
                cwd=cwd,
                env=env,
                capture_output=True,
                check=True,
            )
            if k == 1:
                one = time.perf_counter() - started
            else:
                per_cell = (time.perf_counter() - started - one) / (k - 1)
        print(
            f"cell fixed overhead (config, record, W&B offline, cached artifacts): {per_cell:.2f} s per cell "
            f"(target <= 3 s): {'PASS' if per_cell <= 3 else 'FAIL'}; a process's first cell, imports included: "
            f"{one:.1f} s"
        )


if __name__ == "__main__":
    main()
