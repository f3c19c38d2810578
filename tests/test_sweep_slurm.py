"""Sweeps on a real single-node SLURM cluster (launchers/local-slurm), through
`hydra/launcher=local_slurm`, a profile of the submitit SLURM launcher."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from sweeps import multirun, records

pytestmark = pytest.mark.slurm
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
    threads = {json.loads(p.read_text())["compute"]["cpu_threads"]
               for p in (tmp_path / "multirun" / "slurm").rglob("result.json")}
    assert threads == {1}


def test_a_cell_preempted_through_slurm_is_requeued_and_completes(slurm_env, tmp_path):
    env = {**slurm_env, "SWEEP_TEST_PAUSE": "toy_vit-L06-shuffle=15"}
    sweep = multirun(["model=toy_vit", "layer=6", "intervention=shuffle", "sweep.name=preempt", "logger=none",
                      "hydra/launcher=local_slurm"], env, tmp_path, background=True,
                     stdout=open(tmp_path / "out.log", "w"), stderr=subprocess.STDOUT)
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
    result = multirun(["model=toy_vit", "layer=6", "sweep.name=huge", "logger=none", "hydra/launcher=local_slurm",
                       "hydra.launcher.mem_gb=100000"], slurm_env, tmp_path)
    assert result.returncode == 2
    assert "could not submit" in result.stderr and "Memory specification can not be satisfied" in result.stderr
