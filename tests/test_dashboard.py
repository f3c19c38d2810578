"""sweep.dashboard: a sweep's summary run in W&B (job_type aggregate), read back from its
offline run files (no W&B server can run here): the results table, the three figures and
one accuracy-vs-layer line plot per model; re-running replaces it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fake_sweep import make_sweep
from sweeps import multirun
from wandb_files import OfflineRun, offline_runs

from sweep.aggregate import load_local
from sweep.dashboard import accuracy_lines, log_replacing, summary_run_id, summary_settings
from sweep.errors import ConfigError
from sweep.record import COLUMNS

pytestmark = pytest.mark.slow  # runs a sweep that logs its summary run

FIGURES = ("main_result", "identifiability", "controls")
SERIES = ["probe", "shuffle (native readout)", "shuffle (CLS-only readout)", "chance"]


def aggregate(sweep_dir: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`sweep-aggregate <sweep> wandb.log=true` offline, in its own process as a user runs it."""
    env = {**os.environ, "WANDB_MODE": "offline", "HOME": str(sweep_dir.parent), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "sweep.aggregate_cli", str(sweep_dir), "wandb.log=true", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def summary_runs(sweep_dir: Path) -> list[OfflineRun]:
    """The runs under the sweep folder with job_type aggregate (the cells' are there too)."""
    return [run for run in offline_runs(sweep_dir) if run.run.job_type == "aggregate"]


def charts(run: OfflineRun) -> dict[str, dict]:
    """Line plots by key: W&B keeps each one's panel spec in the config (_wandb.visualize),
    its points in the summary table `<key>_table`."""
    return run.config["_wandb"].get("visualize", {})


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    return make_sweep(tmp_path_factory.mktemp("dash"), sweep_id="dash")


def test_accuracy_lines_are_the_main_figures_series_per_model(fake):
    lines = accuracy_lines(load_local(fake.sweep_dir).complete)
    assert list(lines) == ["tiny_a", "tiny_b"]
    assert [line.label for line in lines["tiny_a"]] == SERIES
    probe, shuffle_native, _, chance = lines["tiny_a"]
    assert list(probe.layers) == [0, 1, 2, 3] and list(chance.layers) == [0, 1, 2, 3]
    assert all(value == pytest.approx(0.1) for value in chance.mean)  # ten classes
    record = next(
        r
        for r in fake.records
        if r["model"] == "tiny_a"
        and r["layer"] == 2
        and r["intervention"] == "shuffle"
        and r["readout"] == "native"
        and r["seed"] == 0
    )
    other = next(r for r in fake.records if r["name"] == record["name"].replace("-s0", "-s1"))
    assert shuffle_native.mean[2] == pytest.approx((record["metrics"]["accuracy"] + other["metrics"]["accuracy"]) / 2)


def test_the_summary_run_holds_the_table_the_figures_and_a_line_plot_per_model(fake):
    done = aggregate(fake.sweep_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "summary run (group dash, job_type aggregate)" in done.stdout
    (run,) = summary_runs(fake.sweep_dir)
    assert run.folder.parent == fake.sweep_dir / "wandb"
    assert (run.run.run_id, run.run.run_group, run.run.display_name) == (summary_run_id("dash"), "dash", "summary-dash")
    assert len(run.history) == 1  # everything in one step, mirrored in the summary
    results = run.table("results")
    assert run.summary["results"]["_type"] == "table-file"
    assert len(results["data"]) == len(load_local(fake.sweep_dir).frame) and "probe_accuracy" in results["columns"]
    for name in FIGURES:
        image = run.summary[f"figures/{name}"]
        assert image["_type"] == "image-file" and (run.folder / "files" / image["path"]).stat().st_size > 1000
    assert sorted(charts(run)) == ["accuracy_vs_layer/tiny_a", "accuracy_vs_layer/tiny_b"]
    spec = charts(run)["accuracy_vs_layer/tiny_a"]["panel_config"]
    assert spec["panelDefId"] == "wandb/lineseries/v0" and spec["stringSettings"]["xname"] == "layer"
    points = run.table("accuracy_vs_layer/tiny_a_table")
    assert points["columns"] == ["step", "lineKey", "lineVal"]  # step is the layer
    assert {line for _, line, _ in points["data"]} == set(SERIES)
    assert [0.1] * 4 == [value for _, line, value in points["data"] if line == "chance"]
    assert (run.summary["cells/complete"], run.summary["cells/failed"], run.summary["cells/missing"]) == (
        len(load_local(fake.sweep_dir).complete),
        1,
        1,
    )


def test_aggregating_again_replaces_the_summary_run_with_the_new_content(tmp_path):
    sweep = make_sweep(tmp_path, sweep_id="again")
    assert aggregate(sweep.sweep_dir).returncode == 0
    shutil.rmtree(sweep.sweep_dir / "tiny_b")  # the second aggregation has one model fewer
    done = aggregate(sweep.sweep_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    (run,) = summary_runs(sweep.sweep_dir)  # one run folder, not one per aggregation
    assert [p for p in (sweep.sweep_dir / "wandb").iterdir() if not p.is_symlink() and p.is_dir()] == [run.folder]
    assert list(charts(run)) == ["accuracy_vs_layer/tiny_a"] and len(run.history) == 1
    assert not [key for key in run.summary if "tiny_b" in key]
    assert not [path for path in run.media if "tiny_b" in path.name]
    assert "tiny_b" not in {row[COLUMNS.index("model")] for row in run.table("results")["data"]}


class ResumedRun:
    """Stands in for a resumed online run, whose summary still holds the previous
    aggregation's keys (no W&B server can run here; offline, the old folder is removed)."""

    def __init__(self, summary: dict) -> None:
        self.summary, self.steps = dict(summary), []

    def log(self, data: dict) -> None:
        self.steps.append(data)
        self.summary.update({f"{k}_table" if k.startswith("accuracy_vs_layer/") else k: v for k, v in data.items()})


def test_a_resumed_run_keeps_only_the_new_aggregations_summary_keys():
    run = ResumedRun(
        {
            "_runtime": 30,
            "_wandb": {"runtime": 30},
            "results": "old",
            "figures/controls": "old",
            "accuracy_vs_layer/tiny_a_table": "old",
            "accuracy_vs_layer/tiny_b_table": "old",
        }
    )
    log_replacing(run, {"results": "new", "accuracy_vs_layer/tiny_a": "chart"})
    assert run.summary == {
        "_runtime": 30,
        "_wandb": {"runtime": 30},
        "results": "new",
        "accuracy_vs_layer/tiny_a_table": "chart",
    }
    assert len(run.steps) == 1


def test_a_bad_wandb_mode_stops_sweep_aggregate_before_it_reads_anything(fake, tmp_path):
    done = aggregate(fake.sweep_dir, f"out={tmp_path / 'out'}", env={"WANDB_MODE": "sideways"})
    assert done.returncode == 2
    assert "wandb.log=true: WANDB_MODE=sideways is invalid: it must be one of online, offline, disabled" in done.stderr
    assert not (tmp_path / "out").exists()


def test_the_settings_are_those_the_sweeps_cells_ran_with(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert summary_settings(tmp_path).project == "sweep"  # no multirun.yaml: conf/config.yaml's
    (tmp_path / "multirun.yaml").write_text(
        yaml.safe_dump(
            {
                "wandb": {
                    "project": "cls-study",
                    "entity": None,
                    "mode": "offline",
                    "base_url": "https://api.wandb.ai",
                    "reachability_timeout_s": 1.0,
                    "init_timeout_s": 30,
                    "finish_timeout_s": 60,
                    "tags": ["a"],
                    "log_outcomes": False,
                }
            }
        )
    )
    settings = summary_settings(tmp_path)
    assert (settings.project, settings.mode, settings.tags) == ("cls-study", "offline", ("a",))
    assert summary_settings(None, project="other", entity="me").project == "other"
    (tmp_path / "multirun.yaml").write_text(yaml.safe_dump({"wandb": {"project": "p", "mode": "sometimes"}}))
    with pytest.raises(ConfigError, match="wandb"):
        summary_settings(tmp_path)


def test_a_sweep_with_logger_wandb_ends_with_its_summary_run(cache_dir, tmp_path):
    env = {**os.environ, "SWEEP_CACHE_DIR": str(cache_dir), "WANDB_MODE": "offline", "HOME": str(tmp_path)}
    result = multirun(
        [
            "model=toy_vit",
            "layer=5,6",
            "intervention=none,shuffle",
            "readout=native,cls",
            "sweep.name=ends",
            "logger=wandb",
        ],
        env,
        tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    sweep_dir = tmp_path / "multirun" / "ends"
    assert (sweep_dir / "results.csv").exists() and (sweep_dir / "figures" / "main_result.png").exists()
    runs = offline_runs(sweep_dir)
    (run,) = [r for r in runs if r.run.job_type == "aggregate"]  # one summary run in the group ...
    assert len(runs) == 9 and {r.run.run_group for r in runs} == {"ends"}  # ... beside the 8 cells' runs
    assert run.run.run_id == summary_run_id("ends") and len(run.table("results")["data"]) == 8
    # where its hint says (`wandb sync <sweep>/wandb/offline-run-*`), though the cells' W&B cache is in the sweep too
    assert run.folder.parent == sweep_dir / "wandb"
    assert list(charts(run)) == ["accuracy_vs_layer/toy_vit"]
    assert {f"figures/{name}" for name in FIGURES} <= set(run.summary)
