"""submitit against a real single-node SLURM 22.05 cluster (launchers/local-slurm).

Needs root and the packages from launchers/local-slurm/install.sh; skipped
otherwise, except in CI (CI=true) where a missing cluster is a failure.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest

submitit = pytest.importorskip("submitit")
from submitit.core.utils import FailedJobError, UncompletedJobError  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

# Jobs unpickle this module's functions/classes in a python that cannot import
# it (tests/ is not on the job's sys.path): ship them by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture(scope="session")
def submitit_root(tmp_path_factory):
    # Fresh per session: job ids restart at 1 with every new cluster state,
    # so a reused folder would mix up submitit's %j-named files.
    return tmp_path_factory.mktemp("submitit")


@pytest.fixture
def executor_factory(local_slurm, submitit_root, request):
    def make(**params):
        folder = submitit_root / request.node.name / "%j"
        ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
        assert ex.cluster == "slurm"
        base = dict(slurm_partition="debug", timeout_min=60, mem_gb=1, cpus_per_task=1)
        base.update(params)
        ex.update_parameters(**base)
        return ex

    return make


def _wait_done(job, timeout: float) -> None:
    """job.done() with a deadline, so a broken cluster fails instead of hanging."""
    deadline = time.monotonic() + timeout
    while not job.done(force_check=True):
        if time.monotonic() > deadline:
            pytest.fail(f"job {job.job_id} not done after {timeout}s (state {job.state})")
        time.sleep(0.5)


def _sacct_states(job_id: str) -> list[str]:
    out = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-D", "-j", job_id, "-o", "State"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _wait_sacct_final(job_id: str, final: str, timeout: float = 30) -> list[str]:
    """sacct states of job_id once the last one is `final` (accounting lags a bit)."""
    deadline = time.monotonic() + timeout
    while True:
        states = _sacct_states(job_id)
        if states and states[-1] == final:
            return states
        if time.monotonic() > deadline:
            pytest.fail(f"sacct states of job {job_id}: {states}, expected final {final}")
        time.sleep(0.5)


def add(a, b):
    return a + b


def square_plus(x, offset=0):
    return x * x + offset


class Sleeper(submitit.helpers.Checkpointable):
    """Sleeps n_steps x step_s; submitit pickles it (with its progress) on USR2."""

    def __init__(self, marker: str) -> None:
        self.marker = marker
        self.step = 0
        self.starts = 0

    def __call__(self, n_steps: int, step_s: float) -> dict:
        self.starts += 1
        Path(self.marker).write_text(str(self.starts))  # "I am running, handlers installed"
        while self.step < n_steps:
            time.sleep(step_s)
            self.step += 1
        return {"step": self.step, "starts": self.starts, "job": os.environ.get("SLURM_JOB_ID")}


def test_single_job_result(executor_factory):
    job = executor_factory().submit(add, 2, 3)
    _wait_done(job, 60)
    assert job.result() == 5
    assert _wait_sacct_final(job.job_id, "COMPLETED") == ["COMPLETED"]


def test_job_array(executor_factory):
    jobs = executor_factory().map_array(square_plus, [1, 2, 3], [10, 10, 10])
    assert len(jobs) == 3
    array_ids = {j.job_id.split("_")[0] for j in jobs}
    assert len(array_ids) == 1, [j.job_id for j in jobs]
    for j in jobs:
        _wait_done(j, 60)
    assert [j.result() for j in jobs] == [11, 14, 19]


def test_over_memory_request_rejected_at_submission(executor_factory):
    node = subprocess.run(["scontrol", "show", "node", "localhost"], capture_output=True, text=True, check=True).stdout
    real_mb = int(re.search(r"RealMemory=(\d+)", node).group(1))
    ex = executor_factory(mem_gb=10 * (real_mb // 1024 + 1))
    with pytest.raises(FailedJobError) as info:
        ex.submit(add, 1, 1)
    msg = str(info.value)
    assert "sbatch: error" in msg
    assert re.search(r"Memory specification can not be satisfied|Requested node configuration is not available", msg), (
        msg
    )


def test_cancelled_job_result_raises(executor_factory):
    # Needs accounting: without slurmdbd sacct fails and result() hangs forever.
    job = executor_factory().submit(time.sleep, 300)
    subprocess.run(["scancel", job.job_id], check=True)
    _wait_done(job, 60)
    assert _wait_sacct_final(job.job_id, "CANCELLED") == ["CANCELLED"]
    # result() waits up to 15 s (class default) for a result file that a
    # cancelled job never writes; no need to wait that long here.
    job._results_timeout_s = 1
    with pytest.raises(UncompletedJobError):
        job.result()


def test_usr2_preemption_requeues_and_completes(executor_factory, tmp_path):
    # timeout_min=60: submitit counts a USR2 as a timeout (not a preemption)
    # once 80% of the time limit has passed or less than 10 min remain.
    ex = executor_factory(timeout_min=60)
    marker = tmp_path / "started"
    n_steps, step_s = 16, 0.5
    job = ex.submit(Sleeper(str(marker)), n_steps, step_s)

    deadline = time.monotonic() + 60
    while not marker.exists():
        if time.monotonic() > deadline:
            pytest.fail(f"job {job.job_id} did not start (state {job.state})")
        time.sleep(0.2)
    time.sleep(1.0)  # a few steps of progress to checkpoint
    subprocess.run(["scancel", "--signal=USR2", job.job_id], check=True)

    _wait_done(job, 90)
    result = job.result()
    assert result["starts"] == 2, result  # ran, was requeued, ran again
    assert result["step"] == n_steps
    assert result["job"] == job.job_id
    states = _wait_sacct_final(job.job_id, "COMPLETED")
    assert "REQUEUED" in states, states
    assert "preempted" in job.stderr(), job.stderr()
