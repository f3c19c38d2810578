"""The tests' fixtures. Helpers that are not fixtures (the fast toy settings, a composed
cell, real read-only and full folders) are in helpers.py, imported by name."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # tests share helper modules such as tiny_models

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def cache_dir(tmp_path_factory):
    """One artifact cache per test session: toys train once, every test reuses them.
    SWEEP_CACHE_DIR points at it for every test from the first (so no test sees another
    cache because of the order tests ran in), and is restored when the session ends."""
    path = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SWEEP_CACHE_DIR", str(path))
        yield path


@pytest.fixture
def cli_env(cache_dir, tmp_path):
    """Environment for `sweep-run` subprocesses: shared cache, W&B never online."""
    return {**os.environ, "SWEEP_CACHE_DIR": str(cache_dir), "WANDB_MODE": "offline", "SWEEP_PROGRESS": "0"}


from slurm_fixture import local_slurm_unavailable, start_local_slurm, stop_local_slurm  # noqa: E402


@pytest.fixture(scope="session")
def local_slurm(tmp_path_factory):
    """A fresh local SLURM cluster for the session; yields its state dir.

    SLURM_CONF is set in os.environ for the session (submitit runs sbatch,
    squeue, sacct, scancel as subprocesses that inherit it) and restored after.
    """
    reason = local_slurm_unavailable()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and the local SLURM cluster cannot run: {reason}", pytrace=False)
        pytest.skip(reason)
    state_dir = tmp_path_factory.mktemp("local-slurm")
    env = start_local_slurm(state_dir)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield state_dir
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        stop_local_slurm(state_dir)
