"""Sweeps on a real single-node SLURM cluster (launchers/local-slurm), through
`hydra/launcher=local_slurm`, a profile of the submitit SLURM launcher."""

from __future__ import annotations

import json
import pickle
import re
import subprocess
import time
from pathlib import Path

import pytest
from sweeps import checkpointed_rows, multirun, records

from sweep.cell_state import cell_state

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
GRID = ["model=toy_vit", "layer=4,5,6", "intervention=none,shuffle", "readout=native", "seed=0", "logger=none"]


@pytest.fixture
def slurm_env(local_slurm, cli_env):
    import os

    return {**cli_env, "SLURM_CONF": os.environ["SLURM_CONF"]}


def test_a_toy_sweep_on_slurm_equals_the_same_sweep_run_locally(slurm_env, tmp_path):
    local = multirun([*GRID, "sweep.name=local"], slurm_env, tmp_path)
    assert local.returncode == 0, local.stderr
    started = time.perf_counter()
    on_slurm = multirun([*GRID, "sweep.name=slurm", "hydra/launcher=local_slurm"], slurm_env, tmp_path)
    print(f"toy sweep through SLURM: {time.perf_counter() - started:.1f} s")
    assert on_slurm.returncode == 0, on_slurm.stdout + on_slurm.stderr
    assert "6 cells: 6 done" in on_slurm.stdout
    assert list((tmp_path / "multirun" / "slurm").glob(".submitit/*/*"))  # it really went through sbatch
    assert records(tmp_path / "multirun" / "slurm") == records(tmp_path / "multirun" / "local")
    # The profile's setup gives torch one thread per CPU SLURM allotted (cpus_per_task: 1).
    threads = {
        json.loads(p.read_text())["compute"]["cpu_threads"]
        for p in (tmp_path / "multirun" / "slurm").rglob("result.json")
    }
    assert threads == {1}


def test_a_cell_preempted_through_slurm_is_requeued_and_completes(slurm_env, tmp_path):
    env = {**slurm_env, "SWEEP_TEST_PAUSE": "toy_vit-L06-shuffle=15"}
    sweep = multirun(
        [
            "model=toy_vit",
            "layer=6",
            "intervention=shuffle",
            "sweep.name=preempt",
            "logger=none",
            "hydra/launcher=local_slurm",
        ],
        env,
        tmp_path,
        background=True,
        stdout=open(tmp_path / "out.log", "w"),
        stderr=subprocess.STDOUT,
    )
    started_file = None
    deadline = time.time() + 240
    while started_file is None:
        assert sweep.poll() is None and time.time() < deadline, (tmp_path / "out.log").read_text()
        found = list((tmp_path / "multirun" / "preempt").glob("toy_vit/*/started.json"))
        started_file = found[0] if found else None
        time.sleep(0.5)
    time.sleep(2)
    job_id = json.loads(started_file.read_text())["slurm_job_id"]
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True, env=slurm_env)
    assert sweep.wait(timeout=300) == 0, (tmp_path / "out.log").read_text()
    record = json.loads((started_file.parent / "result.json").read_text())
    assert record["status"] == "complete"
    assert json.loads(started_file.read_text())["slurm_restart_count"] == "1"  # it ran a second time


def test_a_profile_asking_for_more_memory_than_any_node_has_is_refused_clearly(slurm_env, tmp_path):
    result = multirun(
        [
            "model=toy_vit",
            "layer=6",
            "sweep.name=huge",
            "logger=none",
            "hydra/launcher=local_slurm",
            "hydra.launcher.mem_gb=100000",
        ],
        slurm_env,
        tmp_path,
    )
    assert result.returncode == 2
    assert "could not submit" in result.stderr and "Memory specification can not be satisfied" in result.stderr


MEASURED = re.compile(r"\[sweep\.run\]\[INFO\] - (\S+): accuracy=", flags=re.M)  # _write_cell's line after measuring


def submitted_cells(submitit_dir: Path, sweep_dir: Path) -> list[str]:
    """The cells one launch submitted: each submitit job pickle holds one work unit's
    overrides (`sweep.unit.id=...`), and the unit's file names its cells."""
    cells = []
    for path in submitit_dir.rglob("*_submitted.pkl"):
        overrides = dict(o.split("=", 1) for o in pickle.loads(path.read_bytes()).args[0])
        unit = json.loads((sweep_dir / "units" / overrides["sweep.unit.id"] / "unit.json").read_text())
        cells.extend(cell["name"] for cell in unit["cells"])  # none for a `prepare-...` unit
    return sorted(cells)


def test_a_relaunch_while_the_array_runs_submits_none_of_the_running_cells(slurm_env, tmp_path):
    """Someone re-runs the sweep command while the first launch's SLURM array is still
    running (or a cron job does). Cells that a running unit holds must not be submitted
    again, and a unit submitted twice (once pending in the first array, once by the
    re-launch) must still measure each of its cells once."""
    # Two units of two cells; array_parallelism=1 keeps the second unit pending while the first runs.
    args = [
        "model=toy_vit",
        "layer=5,6",
        "intervention=none,shuffle",
        "readout=native",
        "seed=0",
        "sweep.name=busy",
        "logger=none",
        "sweep.unit.max_cells=2",
        "hydra/launcher=local_slurm",
        "hydra.launcher.array_parallelism=1",
    ]
    sweep_dir = tmp_path / "multirun" / "busy"
    first = multirun(
        args,
        {**slurm_env, "SWEEP_TEST_PAUSE": "toy_vit=20"},
        tmp_path,
        background=True,
        stdout=open(tmp_path / "first.log", "w"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.time() + 240
    while not any(cell_state(f) == "running" for f in sweep_dir.glob("toy_vit/*")):
        assert first.poll() is None and time.time() < deadline, (tmp_path / "first.log").read_text()
        time.sleep(0.5)
    second = multirun(args, slurm_env, tmp_path)  # the same command again, while the array runs
    assert second.returncode == 0, second.stdout + second.stderr
    assert first.wait(timeout=400) == 0, (tmp_path / "first.log").read_text()

    running = re.findall(r"running elsewhere, not launched: (\S+) \(", second.stdout)
    assert len(running) == 2 and "2 running elsewhere, 2 to run in 1 work units" in second.stdout, second.stdout
    first_dir, second_dir = sorted((sweep_dir / ".submitit").iterdir())
    assert len(submitted_cells(first_dir, sweep_dir)) == 4
    resubmitted = submitted_cells(second_dir, sweep_dir)
    assert len(resubmitted) == 2 and not set(resubmitted) & set(running)  # no running cell submitted again
    measured = [
        name
        for log in sorted((sweep_dir / ".submitit").rglob("*_log.out"))
        for name in MEASURED.findall(log.read_text())
    ]
    done = records(sweep_dir)
    print(
        f"re-launch during a SLURM array: {len(done)} cells, {len(running)} running at the re-launch, "
        f"{len(resubmitted)} submitted by it, {len(measured)} measurements, "
        f"{len(measured) - len(set(measured))} duplicates"
    )
    assert len(done) == 4 and all(r["status"] == "complete" for r in done.values())
    assert sorted(measured) == sorted(r["name"] for r in done.values())  # each cell measured once


def test_a_unit_preempted_mid_unit_is_requeued_resumes_at_its_checkpoints_and_equals_an_uninterrupted_run(
    slurm_env, tmp_path
):
    """A unit's array task is preempted (SLURM sends USR2 before it kills) after its pass
    has checkpointed and while its cells' records are being written. submitit requeues the
    same job; the requeue must take over the unit's leases, resume each unwritten cell at its
    checkpoint instead of measuring it again from the start, and end with the records, outcomes
    and W&B runs of a run that was never preempted: none twice, nothing half-written."""
    grid = [
        "model=toy_vit",
        "layer=2,4",
        "intervention=shuffle",
        "readout=native,cls",
        "seed=0",
        "logger=wandb",
        "wandb.mode=offline",
        "sweep.unit.checkpoint_s=0",
        "compute.batch_size=32",
    ]
    calm = multirun([*grid, "sweep.name=calm"], slurm_env, tmp_path)
    assert calm.returncode == 0, calm.stdout + calm.stderr
    sweep_dir = tmp_path / "multirun" / "preempted"
    # hold the unit's first cell just before its record: the pass is done, every cell has a checkpoint
    env = {**slurm_env, "SWEEP_TEST_PAUSE": "toy_vit-L02-shuffle-cls=5"}
    sweep = multirun(
        [*grid, "sweep.name=preempted", "hydra/launcher=local_slurm"],
        env,
        tmp_path,
        background=True,
        stdout=open(tmp_path / "out.log", "w"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.time() + 240
    while not any("SWEEP_TEST_PAUSE: holding" in log.read_text() for log in sweep_dir.rglob("*_log.out")):
        assert sweep.poll() is None and time.time() < deadline, (tmp_path / "out.log").read_text()
        time.sleep(0.2)
    rows = checkpointed_rows(sweep_dir)
    assert len(rows) == 4 and min(rows.values()) > 0, rows
    (lease,) = sweep_dir.glob("toy_vit/toy_vit-L02-shuffle-cls-*/started.json")
    subprocess.run(
        ["scancel", "--signal=USR2", json.loads(lease.read_text())["slurm_job_id"]], check=True, env=slurm_env
    )
    assert sweep.wait(timeout=300) == 0, (tmp_path / "out.log").read_text()

    assert json.loads(lease.read_text())["slurm_restart_count"] == "1"  # the unit ran a second time
    assert records(sweep_dir) == records(tmp_path / "multirun" / "calm")
    results = sorted(sweep_dir.rglob("result.json"))
    assert len(results) == 4  # one record per cell
    for path in results:
        cell = path.parent
        assert json.loads(path.read_text())["compute"]["resumed_rows"] == rows[cell.name]  # from its checkpoint
        assert (cell / "outcomes.csv").read_text() == (
            tmp_path / "multirun" / "calm" / cell.relative_to(sweep_dir) / "outcomes.csv"
        ).read_text()
        assert len(list(cell.glob("wandb/offline-run-*"))) == 1, cell.name  # the preempted attempt's run replaced
    leftovers = [p for p in sweep_dir.rglob("*") if p.name.endswith(".tmp") or p.name == "progress.safetensors"]
    assert not leftovers
