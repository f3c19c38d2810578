"""`sweep-run` as a user meets it: one cell, its record, and clear errors on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import FAST

pytestmark = pytest.mark.slow  # runs sweep-run in subprocesses


def sweep_run(args, env, cwd, timeout=300):
    flags = [a for a in args if a.startswith("--") or a in ("job", "hydra", "all")]  # Hydra wants flags first
    overrides = [a for a in args if a not in flags]
    return subprocess.run(
        [sys.executable, "-m", "sweep.run", *flags, *FAST, *overrides],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def no_records(folder: Path) -> bool:
    return not list(folder.rglob("result.json")) and not list(folder.rglob("started.json"))


def test_one_cell_writes_its_record_and_a_second_run_skips_it(cli_env, tmp_path):
    first = sweep_run(
        ["model=toy_vit", "layer=3", "intervention=shuffle", "readout=native", "seed=0"], cli_env, tmp_path
    )
    assert first.returncode == 0, first.stderr
    (record_path,) = tmp_path.glob("runs/toy_vit/toy_vit-L03-shuffle-native-s0-*/result.json")
    record = json.loads(record_path.read_text())
    assert record["status"] == "complete" and record["layer"] == 3 and record["n_layers"] == 6
    assert set(record["metrics"]) == {"accuracy", "top5", "chance", "donor_accuracy", "donor_agreement"}
    assert record["versions"]["transformers"] and record["versions"]["model_revision"]
    outcomes = (record_path.parent / "outcomes.csv").read_text().splitlines()
    assert outcomes[0] == "example,label,predicted,rank,donor,donor_predicted"
    assert len(outcomes) == 1 + record["counts"]["n_val"]
    again = sweep_run(["model=toy_vit", "layer=-4", "intervention=shuffle"], cli_env, tmp_path)
    assert "already done" in again.stdout + again.stderr
    assert json.loads(record_path.read_text()) == record


@pytest.mark.parametrize(
    "args, message",
    [
        (["model=resnet"], "Could not find 'model/resnet'"),
        (["intervention=dropout"], "Could not find 'intervention/dropout'"),
        (["model=toy_vit", "layer=9"], "valid layers are 0..6"),
        (["model=clip", "~model.readouts.cls", "model.projection_readout=native", "readout=cls"], "no 'cls' readout"),
        (
            ["data=imagefolder", "data.root=/no/such/imagenet", "model=toy_vit"],
            "/no/such/imagenet/train does not exist",
        ),
        (["model=toy_vit", "model.hf_class=Bogus"], "model.hf_class=Bogus is invalid"),  # found as the unit starts
    ],
)
def test_bad_input_is_a_clear_error_before_any_work(cli_env, tmp_path, args, message):
    """Before any work: no record, and nothing in a fresh artifact cache (no weights loaded,
    no toy trained, no image decoded)."""
    cache = tmp_path / "cache"
    result = sweep_run(args, {**cli_env, "SWEEP_CACHE_DIR": str(cache)}, tmp_path)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert no_records(tmp_path)
    assert not (tmp_path / "runs").exists(), "a refused cell leaves no folder"
    assert not cache.exists() or not [p for p in cache.rglob("*") if p.is_file()]


def test_a_cell_folder_is_named_by_the_cell_and_a_bad_config_gets_none():
    """`hydra.run.dir` is `runs/${cell:subdir}`. A config that is no valid cell has no folder
    to name: resolving it raises the cell's ConfigError (once it was `runs/invalid/...`, one
    folder shared by every bad config)."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf
    from omegaconf.errors import InterpolationResolutionError

    from sweep.cellspec import cell_spec
    from sweep.conf_path import CONF_PACKAGE
    from sweep.run import CheckCell  # noqa: F401  (importing sweep.run registers ${cell:...})

    with initialize_config_module(config_module=CONF_PACKAGE, version_base="1.3"):
        good = compose("config", overrides=[*FAST, "model=toy_vit", "layer=3"], return_hydra_config=True)
        bad = compose("config", overrides=[*FAST, "model=toy_vit", "layer=9"], return_hydra_config=True)
    assert OmegaConf.select(good, "hydra.run.dir") == f"runs/{cell_spec(good).subdir}"
    with pytest.raises(
        InterpolationResolutionError,
        match=r"LayerOutOfRange raised .*: layer=9 is out of range for toy_vit.*valid layers are 0\.\.6",
    ):
        OmegaConf.select(bad, "hydra.run.dir")


def test_a_gated_hub_dataset_without_access_says_how_to_use_local_data(cli_env, tmp_path):
    env = {**cli_env, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = sweep_run(["model=toy_vit", "data=imagenet", "data.n_classes=10"], env, tmp_path)
    assert result.returncode == 2
    assert "data=imagefolder data.root=" in result.stderr and "HF_TOKEN" in result.stderr
    assert no_records(tmp_path)
    cache = Path(cli_env["SWEEP_CACHE_DIR"])
    assert not list((cache / "tmp").glob("*")) if (cache / "tmp").exists() else True


def test_cfg_job_shows_every_setting(cli_env, tmp_path):
    result = sweep_run(["--cfg", "job", "model=deit", "layer=7"], cli_env, tmp_path)
    assert result.returncode == 0
    for key in (
        "hf_class: DeiTForImageClassificationWithTeacher",
        "layer: 7",
        "probe:",
        "attn_implementation",
        "checkpoint_s",
        "cache:",
        "wandb:",
    ):
        assert key in result.stdout


def test_a_cell_whose_lease_was_taken_over_writes_no_record(cli_env, tmp_path):
    """An owner that missed its heartbeats for stale_after_s may be taken over; when it
    comes back it must not write a second record beside the new owner's."""
    env = {**cli_env, "SWEEP_TEST_PAUSE": "toy_vit-L06=20"}
    command = [sys.executable, "-m", "sweep.run", *FAST, "model=toy_vit", "layer=6"]
    cell = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while "SWEEP_TEST_PAUSE: holding" not in _log_text(tmp_path):
        assert cell.poll() is None and time.time() < deadline
        time.sleep(0.5)
    (lease_path,) = tmp_path.glob("runs/toy_vit/*/started.json")
    other = {**json.loads(lease_path.read_text()), "token": "another-owner", "pid": 1, "host": "elsewhere"}
    lease_path.write_text(json.dumps(other))  # what a take-over by another launch leaves
    output, _ = cell.communicate(timeout=300)
    assert cell.returncode == 0, output
    assert "took this cell's lease over" in output
    assert not list(tmp_path.glob("runs/toy_vit/*/result.json"))
    assert json.loads(lease_path.read_text())["token"] == "another-owner"


def _log_text(folder: Path) -> str:
    return "".join(p.read_text() for p in folder.glob("runs/toy_vit/*/*.log"))


def test_ctrl_c_is_one_line_and_exit_130(cli_env, tmp_path):
    """Ctrl-C while a sweep runs (its cell held before its record by SWEEP_TEST_PAUSE, so the
    signal lands inside sweep-run, not before or after it)."""
    import signal

    command = [sys.executable, "-m", "sweep.run", "-m", "model=toy_vit", "layer=3", "sweep.name=interrupted", *FAST]
    process = subprocess.Popen(
        command,
        env={**cli_env, "SWEEP_TEST_PAUSE": "toy_vit=120"},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lease = tmp_path / "multirun" / "interrupted"
    deadline = time.monotonic() + 240
    while not list(lease.glob("*/*/started.json")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Traceback" not in err and "sweep-run: interrupted (Ctrl-C)" in err, err
