"""W&B per cell, offline (no W&B server can run here): one run per cell in its folder,
online falling back to offline fast, and no secret in any file a sweep writes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from sweep.tracking import choose_mode, run_id
from sweeps import multirun

SECRETS = {"WANDB_API_KEY": "local-0123456789abcdef0123456789abcdef01234567", "HF_TOKEN": "hf_SeCrEt0123456789"}


@pytest.fixture(scope="module")
def wandb_sweep(tmp_path_factory, cache_dir):
    import os
    cwd = tmp_path_factory.mktemp("wandb")
    env = {**os.environ, "SWEEP_CACHE_DIR": str(cache_dir), "WANDB_MODE": "offline", **SECRETS,
           "HOME": str(cwd)}  # no ~/.netrc: nothing to find a key in but the environment
    result = multirun(["model=toy_vit", "layer=5,6", "intervention=none,shuffle", "sweep.name=tracked",
                       "logger=wandb", "wandb.project=cls-tokens"], env, cwd)
    assert result.returncode == 0, result.stdout + result.stderr
    return cwd, cwd / "multirun" / "tracked"


def test_every_cell_writes_one_offline_wandb_run_in_its_own_folder(wandb_sweep):
    _, sweep_dir = wandb_sweep
    cells = [p.parent for p in sweep_dir.rglob("result.json")]
    assert len(cells) == 4
    for cell in cells:
        record = json.loads((cell / "result.json").read_text())
        (log,) = cell.glob("wandb/offline-run-*/run-*.wandb")  # exactly one run, inside the cell's folder
        assert log.name == f"run-{run_id('tracked', record['cell_id'])}.wandb"
        raw = log.read_bytes()  # protobuf keeps strings and JSON values verbatim
        for expected in ("tracked", record["name"], record["intervention"], "cls-tokens",   # group, name, job type
                         "hidden_cache_budget_gb",                                         # the resolved config
                         f"{record['metrics']['accuracy']}"):                              # the summary
            assert expected.encode() in raw, expected


def test_no_secret_reaches_any_file_the_sweep_writes(wandb_sweep):
    cwd, _ = wandb_sweep
    for path in Path(cwd).rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for name, secret in SECRETS.items():
                assert secret.encode() not in data, f"{name} leaked into {path}"


def test_online_without_a_key_falls_back_to_offline_and_says_why(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    mode, why = choose_mode({"mode": "online", "base_url": "https://api.wandb.ai", "reachability_timeout_s": 1})
    assert mode == "offline" and "no W&B API key" in why


def test_online_with_an_unreachable_server_falls_back_within_seconds(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", SECRETS["WANDB_API_KEY"])
    started = time.perf_counter()
    mode, why = choose_mode({"mode": "online", "base_url": "http://127.0.0.1:9", "reachability_timeout_s": 1})
    assert mode == "offline" and "unreachable" in why
    assert time.perf_counter() - started < 5


def test_wandb_mode_from_the_environment_wins_over_the_config(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert choose_mode({"mode": "online", "base_url": "x", "reachability_timeout_s": 1}) == ("disabled", None)


def test_a_cell_asked_to_log_online_without_server_finishes_offline_with_one_message(cli_env, tmp_path):
    import subprocess
    import sys
    from conftest import FAST
    env = {k: v for k, v in cli_env.items() if k != "WANDB_MODE"}
    env.update(WANDB_API_KEY=SECRETS["WANDB_API_KEY"], HOME=str(tmp_path))
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "sweep.run", *FAST, "model=toy_vit", "layer=6", "logger=wandb",
                             "wandb.mode=online", "wandb.base_url=http://127.0.0.1:9"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert output.count("W&B: logging offline because the W&B server 127.0.0.1:9 is unreachable") == 1
    assert "wandb sync" in output
    assert list(tmp_path.glob("runs/toy_vit/*/wandb/offline-run-*/run-*.wandb"))
    assert time.perf_counter() - started < 120
