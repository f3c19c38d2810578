"""Sweeps with the local launcher: planning, exactly-once, resume after a kill, bad input."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import pytest
from helpers import compose_cell, fill, read_only, small_disk
from sweeps import GRID, checkpointed_rows, fresh, multirun, records

from sweep.cellspec import cell_spec

pytestmark = pytest.mark.slow  # real multiruns (sweeper, launchers, kills, full disks)


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory, cache_dir):
    """GRID run once, uninterrupted: the reference table."""
    cwd = tmp_path_factory.mktemp("reference")
    env = {**os.environ, "SWEEP_CACHE_DIR": str(cache_dir), "WANDB_MODE": "offline"}
    result = multirun([*GRID, "sweep.name=reference", "logger=none"], env, cwd)
    assert result.returncode == 0, result.stdout + result.stderr
    return cwd / "multirun" / "reference", result.stdout


def test_a_grid_over_models_of_different_depth_skips_missing_layers_with_a_line(finished_sweep):
    sweep_dir, stdout = finished_sweep
    assert "skipped 2: layer=5 is out of range for toy_clip, which has 4 blocks" in stdout
    assert "12 grid points -> 10 cells, 0 already done, 10 to run" in stdout
    assert "10 cells: 10 done" in stdout
    assert len(records(sweep_dir)) == 10
    for path in sweep_dir.rglob("result.json"):  # folders are keyed by cell, not by job number
        record = json.loads(path.read_text())
        assert path.parent.name == f"{record['name']}-{record['cell_id'][:8]}"


def test_relaunching_a_finished_sweep_runs_nothing(finished_sweep, cli_env):
    sweep_dir, _ = finished_sweep
    before = records(sweep_dir)
    again = multirun([*GRID, "sweep.name=reference", "logger=none"], cli_env, sweep_dir.parent.parent)
    assert again.returncode == 0
    assert "10 cells, 10 already done, 0 to run" in again.stdout
    assert records(sweep_dir) == before
    forced = multirun(
        [*GRID, "sweep.name=reference", "logger=none", "sweep.force=true", "sweep.dry_run=true"],
        cli_env,
        sweep_dir.parent.parent,
    )
    assert "10 cells, 0 already done, 10 to run" in forced.stdout  # sweep.force=true recomputes done cells


def test_the_dry_run_lists_exactly_the_cells_a_real_run_executes(cli_env, tmp_path):
    args = [*GRID, "sweep.name=planned", "logger=none"]
    plan = multirun([*args, "sweep.dry_run=true"], cli_env, tmp_path)
    assert plan.returncode == 0
    planned = set(re.findall(r"^    (\S+)  \[", plan.stdout, flags=re.M))
    assert len(planned) == 10 and not (tmp_path / "multirun" / "planned").exists()
    real = multirun(args, cli_env, tmp_path)
    assert real.returncode == 0
    assert {r["name"] for r in records(tmp_path / "multirun" / "planned").values()} == planned
    # with some cells done, the plan says so and lists only the rest
    for path in list((tmp_path / "multirun" / "planned").rglob("result.json"))[:3]:
        path.unlink()
    replan = multirun([*args, "sweep.dry_run=true"], cli_env, tmp_path)
    assert "10 cells, 7 already done, 3 to run" in replan.stdout
    assert len(re.findall(r"^    (\S+)  \[", replan.stdout, flags=re.M)) == 3


def test_a_cell_killed_mid_run_leaves_no_record_and_a_relaunch_runs_only_it(finished_sweep, cli_env, tmp_path):
    """The sweep is killed while its last cell is being written: the cells written before
    are done, that one has no record (and shows as killed), and the re-launch runs it alone."""
    args = [*GRID, "sweep.name=crashy", "logger=none"]
    victim = "toy_clip-L04-shuffle"  # the last cell of the last unit the local launcher runs
    sweep = multirun(
        args,
        {**cli_env, "SWEEP_TEST_PAUSE": f"{victim}=120"},
        tmp_path,
        background=True,
        stdout=open(tmp_path / "out.log", "w"),
        stderr=open(tmp_path / "err.log", "w"),
    )
    sweep_dir = tmp_path / "multirun" / "crashy"
    deadline = time.time() + 300
    # A unit takes every cell's lease (started.json) when it starts: wait for the victim's own hold.
    while f"SWEEP_TEST_PAUSE: holding {victim}" not in (tmp_path / "out.log").read_text():
        assert sweep.poll() is None and time.time() < deadline, (tmp_path / "err.log").read_text()
        time.sleep(0.2)
    sweep.send_signal(signal.SIGKILL)
    sweep.wait()
    (victim_dir,) = sweep_dir.glob(f"toy_clip/{victim}*")
    assert not (victim_dir / "result.json").exists()
    assert len(records(sweep_dir)) == 9

    status = multirun_status(sweep_dir, cli_env)
    assert "9 done" in status and "killed" in status

    relaunch = multirun(args, cli_env, tmp_path)
    assert relaunch.returncode == 0, relaunch.stderr
    assert "10 cells, 9 already done, 1 to run" in relaunch.stdout
    assert records(sweep_dir) == records(finished_sweep[0])


def multirun_status(sweep_dir, env):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "sweep.status", str(sweep_dir)], env=env, capture_output=True, text=True
    ).stdout


def test_a_disk_that_fills_up_mid_sweep_ends_it_with_one_line_and_lets_every_lease_go(cli_env, tmp_path):
    """The sweep folder is a real 8 MiB filesystem (a tmpfs), filled while the unit holds its
    second cell just before that cell's record is written. The records that could not be
    written are named with the error, no cell is left held by the finished launch (its unit
    ran in this very process), the sweep exits 1, and once there is space again the cells
    without a record are pending, for a re-launch to run."""
    root = tmp_path / "multirun"
    root.mkdir()
    victim = "toy_vit-L04-none"  # the unit writes toy_vit-L03-none's record first
    args = ["model=toy_vit", "layer=3,4", "intervention=none,shuffle", "sweep.name=full", "logger=none"]
    out, err = tmp_path / "out.log", tmp_path / "err.log"
    with small_disk(root, "8m"):
        sweep = multirun(
            args,
            {**cli_env, "SWEEP_TEST_PAUSE": f"{victim}=30"},
            tmp_path,
            background=True,
            stdout=open(out, "w"),
            stderr=open(err, "w"),
        )
        deadline = time.time() + 600
        while f"SWEEP_TEST_PAUSE: holding {victim}" not in out.read_text():
            assert sweep.poll() is None and time.time() < deadline, err.read_text()
            time.sleep(0.2)
        fill(root)
        sweep.wait(timeout=300)
        output = out.read_text() + err.read_text()
        sweep_dir = root / "full"
        assert sweep.returncode == 1, output
        assert re.search(
            rf"could not write multirun/full/toy_vit/{victim}\S+/result\.json: No space left on device", output
        ), output
        assert "RUNNING" not in output and "Traceback" not in output, output
        assert [record["name"] for record in records(sweep_dir).values()] == ["toy_vit-L03-none-native"]
        for lease in sweep_dir.rglob("started.json"):
            assert json.loads(lease.read_text())["released"] is not None, lease
        (root / "filler").unlink()
        status = multirun_status(sweep_dir, cli_env)
        assert "4 cells: 1 done, 3 pending" in status, status


def test_a_read_only_sweep_folder_is_relaunched_without_a_write_or_refused_in_one_line(cli_env, tmp_path):
    """An archived sweep, its folder a read-only mount: a re-launch that finds every cell done
    writes nothing (not even plan.json) and exits 0; one with a cell to run ends with one line
    naming the file it could not write. The records are stand-ins written here (the planner
    reads only a record's status and cell id), so that no model has to run."""
    sweep_dir = tmp_path / "multirun" / "archive"
    args = ["model=toy_vit", "layer=3,4", "intervention=none", "sweep.name=archive", "logger=none"]
    folders = []
    for layer in (3, 4):
        spec = cell_spec(compose_cell("model=toy_vit", f"layer={layer}", "intervention=none"))
        folders.append(sweep_dir / spec.subdir)
        folders[-1].mkdir(parents=True)
        (folders[-1] / "result.json").write_text(
            json.dumps({"cell_id": spec.cell_id, "name": spec.name, "status": "complete"})
        )
    first = multirun(args, cli_env, tmp_path)  # writes plan.json
    assert first.returncode == 0 and "2 cells, 2 already done, 0 to run" in first.stdout, first.stderr
    with read_only(sweep_dir):
        again = multirun(args, cli_env, tmp_path)
        assert "2 cells: 2 done" in multirun_status(sweep_dir, cli_env)
    assert again.returncode == 0, again.stderr
    assert "2 already done, 0 to run" in again.stdout and "Traceback" not in again.stderr
    (folders[1] / "result.json").unlink()
    with read_only(sweep_dir):
        pending = multirun(args, cli_env, tmp_path)
    assert pending.returncode == 1, pending.stdout + pending.stderr
    assert pending.stderr.strip().splitlines() == [
        f"error: could not write {sweep_dir}/multirun.yaml: Read-only file system"
    ], pending.stderr


def test_a_failing_cell_does_not_stop_the_others_and_is_reported(cli_env, tmp_path):
    # the real ViT needs the hub, which this machine cannot reach: its cells fail, the toy's run
    env = {**cli_env, "HF_HUB_OFFLINE": "1"}
    result = multirun(
        ["model=toy_vit,vit", "layer=5,6", "intervention=none", "sweep.name=failing", "logger=none"], env, tmp_path
    )
    assert result.returncode == 1
    assert "4 cells: 2 done, 2 failed" in result.stdout
    assert (
        "FAILED  vit-L05-none-native: ModelUnavailable: model vit (google/vit-base-patch16-224 at revision main) "
        "is not in the Hugging Face cache"
        in result.stdout
        and "sweep-prepare" in result.stdout
    )
    assert "model.source=DIR" in result.stdout


def test_a_unit_whose_batch_raised_takes_its_error_and_leaves_later_units_their_own(cli_env, tmp_path):
    """One unit per batch, through submitit's local launcher. The first unit's job is killed
    (as the OOM killer would kill it), so `launch` raises for its batch; the second batch
    still runs, and its unit fails on its own (the real ViT needs the hub, offline here).
    Each cell is reported with its own unit's error, none with the other's."""
    env = {**cli_env, "HF_HUB_OFFLINE": "1", "SWEEP_TEST_PAUSE": "toy_vit-L06=600"}  # held until killed
    log = tmp_path / "sweep.log"
    sweep = multirun(
        [
            "model=toy_vit,vit",
            "layer=6",
            "intervention=none",
            "readout=native",
            "sweep.name=killed",
            "logger=none",
            "hydra/launcher=submitit_local",
            "hydra.sweeper.max_batch_size=1",
        ],
        env,
        tmp_path,
        background=True,
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.time() + 300
    while not (leases := list(tmp_path.glob("multirun/killed/toy_vit/*/started.json"))):
        assert sweep.poll() is None and time.time() < deadline, log.read_text()
        time.sleep(0.2)
    os.kill(json.loads(leases[0].read_text())["pid"], signal.SIGKILL)  # the unit's job, not the sweep
    assert sweep.wait(timeout=600) == 1, log.read_text()
    output = log.read_text()
    assert "2 cells: 2 failed" in output
    assert "FAILED  toy_vit-L06-none-native: UncompletedJobError: Job " in output  # submitit: no result
    assert (
        "FAILED  vit-L06-none-native: ModelUnavailable: model vit (google/vit-base-patch16-224 at revision main) "
        "is not in the Hugging Face cache" in output
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["+experiment=nope"], "Could not find 'experiment/nope'"),
        (["+experiment=toy", "hydra/launcher=nope"], "Could not find 'hydra/launcher/nope'"),
        (["model=toy_vit,toy_clip", "layer=range(20,22)"], "no cell of this sweep can run"),
    ],
)
def test_bad_sweeps_are_refused_with_a_clear_error(cli_env, tmp_path, args, message):
    result = multirun([*args, "sweep.dry_run=true"], cli_env, tmp_path)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr


def test_asking_for_slurm_where_there_is_none_says_so(cli_env, tmp_path):
    env = {**cli_env, "PATH": os.path.dirname(os.__file__)}  # a PATH without sbatch
    result = multirun(
        ["model=toy_vit", "layer=1", "hydra/launcher=slurm", "sweep.name=noslurm", "logger=none"], env, tmp_path
    )
    assert result.returncode == 2
    assert "`sbatch` is not on this machine's PATH" in result.stderr


MEASURED = re.compile(r"\[sweep\.run\]\[INFO\] - (\S+): accuracy=", flags=re.M)  # run_cell's line after measuring


def test_two_launches_of_one_sweep_at_once_measure_every_cell_exactly_once(cli_env, tmp_path):
    args = [
        "model=toy_vit",
        "layer=3,4,5,6",
        "intervention=none,shuffle",
        "readout=native",
        "seed=0",
        "sweep.name=twice",
        "logger=none",
    ]
    logs = [tmp_path / f"launch{i}.log" for i in (1, 2)]
    launches = [
        multirun(args, cli_env, tmp_path, background=True, stdout=open(log, "w"), stderr=subprocess.STDOUT)
        for log in logs
    ]
    codes = [launch.wait(timeout=900) for launch in launches]
    outputs = [log.read_text() for log in logs]
    assert codes == [0, 0], "\n\n".join(outputs)
    measured = [name for output in outputs for name in MEASURED.findall(output)]
    done = records(tmp_path / "multirun" / "twice")
    print(
        f"two concurrent launches: {len(done)} cells, {len(measured)} measurements, "
        f"{len(measured) - len(set(measured))} duplicates; per launch "
        f"{[len(MEASURED.findall(o)) for o in outputs]}"
    )
    assert len(done) == 8 and all(r["status"] == "complete" for r in done.values())
    assert sorted(measured) == sorted(r["name"] for r in done.values())  # each cell measured once, by one launch


def test_cells_taken_from_results_from_are_done_in_status_and_in_the_table(cli_env, tmp_path):
    from sweep.aggregate import load_local

    base = ["model=toy_vit", "intervention=none", "readout=native", "seed=0", "logger=none"]
    first = multirun([*base, "layer=6", "sweep.name=first"], cli_env, tmp_path)
    assert first.returncode == 0, first.stderr
    taken = "sweep.results_from=[multirun/first]"
    second = multirun([*base, "layer=5,6", "sweep.name=second", taken], cli_env, tmp_path)
    assert "2 cells, 1 already done, 1 to run" in second.stdout and "2 cells: 2 done" in multirun_status(
        tmp_path / "multirun" / "second", cli_env
    )
    nothing_left = multirun([*base, "layer=6", "sweep.name=third", taken], cli_env, tmp_path)
    assert "1 cells, 1 already done, 0 to run" in nothing_left.stdout
    assert "1 cells: 1 done" in multirun_status(tmp_path / "multirun" / "third", cli_env)
    for name, n in (("second", 2), ("third", 1)):
        table = load_local(tmp_path / "multirun" / name)
        assert len(table.complete) == n and table.missing.empty, name


# A unit of 18 cells (6 read cached features, 12 run the shared-suffix pass), checkpointing
# after every validation batch so that a kill lands between checkpoints.
UNIT_GRID = [
    "model=toy_vit",
    "layer=0,2,4",
    "intervention=none,shuffle",
    "readout=native,cls",
    "seed=0,1",
    "logger=wandb",
    "wandb.mode=offline",
    "sweep.unit.checkpoint_s=0",
    "compute.batch_size=32",
]
RESUMED = re.compile(r"resuming (\d+) cells at validation example (\d+) of (\d+)")


def test_a_unit_killed_at_random_points_resumes_at_its_checkpoints_and_ends_as_if_never_killed(cli_env, tmp_path):
    """A node dies, the OOM killer strikes, someone hits Ctrl-\\ — repeatedly, anywhere in a
    unit's life (preparing, mid-pass, between checkpoints, while writing records). Each
    re-launch must take over the dead unit's leases, resume every cell at its last
    checkpoint (so a kill costs at most one checkpoint interval), write each cell once, and
    leave no temporary, checkpoint or duplicate W&B run behind: the sweep ends exactly as
    one run that was never killed."""
    import random

    rng = random.Random(20261201)
    reference = multirun([*UNIT_GRID, "sweep.name=calm"], cli_env, tmp_path)  # trains the toy if no test did
    assert reference.returncode == 0, reference.stdout + reference.stderr
    calm_dir = tmp_path / "multirun" / "calm"
    sweep_dir = tmp_path / "multirun" / "killed"
    command = [*UNIT_GRID, "sweep.name=killed"]
    kills, outputs, resumed_at = [], [], []
    for attempt in range(8):
        log = tmp_path / f"launch{attempt}.log"
        rows_before = checkpointed_rows(sweep_dir)
        launched = time.time()
        sweep = multirun(
            command,
            cli_env,
            tmp_path,
            background=True,
            stdout=open(log, "w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        # Where each kill lands: an event of the unit's life, then a seeded-random delay.
        if len(kills) == 0:  # mid-pass: once all 12 intervened cells have a checkpoint
            trigger, count, delay = "progress.safetensors", 12, rng.uniform(0, 1.0)
        elif len(kills) == 1:  # preparing: once the re-launch's job has taken over the leases
            trigger, count, delay = "started.json", 1, rng.uniform(0, 1.0)
        elif len(kills) == 2 and len(rows_before) > 1:  # amid the records: after some, before the rest
            trigger, count, delay = "result.json", rng.randint(1, len(rows_before) - 1), rng.uniform(0, 0.15)
        else:
            trigger = None
        if trigger:
            while sweep.poll() is None and fresh(sweep_dir.rglob(trigger), since=launched) < count:
                time.sleep(0.01)
            time.sleep(delay)
            if sweep.poll() is None:
                os.killpg(sweep.pid, signal.SIGKILL)  # the whole group: the job and wandb's service
                kills.append(f"{delay:.2f} s after {count} fresh {trigger}")
        code = sweep.wait(timeout=300)
        outputs.append(log.read_text())
        found = RESUMED.search(outputs[-1])
        # where every pending cell has a checkpoint, a launch that gets to the pass resumes there
        if rows_before and min(rows_before.values()) > 0 and (found or code == 0):
            assert found and (int(found[1]), int(found[2])) == (len(rows_before), min(rows_before.values())), (
                rows_before,
                outputs[-1],
            )
            resumed_at.append(int(found[2]))
        if code == 0:
            break
        assert code == -signal.SIGKILL, outputs[-1]
    else:
        pytest.fail("the sweep never finished:\n" + "\n\n".join(outputs))
    print(f"kills: {kills}; {len(outputs)} launches; re-launches resumed at validation examples {resumed_at}")
    assert len(kills) == 3 and resumed_at

    assert records(sweep_dir) == records(calm_dir) and len(records(calm_dir)) == 18
    results = sorted(sweep_dir.rglob("result.json"))
    assert len(results) == 18  # one record per cell, none duplicated
    for path in results:
        cell = path.parent
        assert (cell / "outcomes.csv").read_text() == (
            calm_dir / cell.relative_to(sweep_dir) / "outcomes.csv"
        ).read_text(), cell.name
        assert len(list(cell.glob("wandb/offline-run-*"))) == 1, cell.name  # one W&B run per cell
    resumed = [json.loads(p.read_text())["compute"].get("resumed_rows", 0) for p in results]
    assert max(resumed) > 0  # some cell's record was finished from a checkpoint, not from the start
    leftovers = [p for p in sweep_dir.rglob("*") if p.name.endswith(".tmp") or p.name == "progress.safetensors"]
    assert not leftovers


def test_only_an_error_raised_while_submitting_stops_the_sweep(tmp_path):
    """A refused submission stops the sweep (every later batch would be refused alike); a
    unit's job that failed does not. Both errors below are submitit's own, raised for real,
    and both are a FailedJobError whose message names a folder that here says "sbatch":
    only where each was raised tells them apart."""
    import submitit

    from hydra_plugins.sweep_cells.cell_sweeper import _is_submission_error

    folder = tmp_path / "sbatch-Submission"
    slurm = submitit.SlurmExecutor(folder=folder)
    slurm.update_parameters(partition="no-such-partition", time=1)
    with pytest.raises(Exception) as refused:  # sbatch refuses it (FileNotFoundError where it is not installed)
        slurm.submit(print, "never runs")
    job = submitit.LocalExecutor(folder=folder).submit(int, "not a number")  # the job raises ValueError
    with pytest.raises(submitit.core.utils.FailedJobError, match="sbatch-Submission") as failed:
        job.result()
    assert _is_submission_error(refused.value)
    assert not _is_submission_error(failed.value)
