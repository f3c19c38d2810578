import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # tests share helpers such as tiny_models

import os
import subprocess
from contextlib import contextmanager

import pytest
from hydra import compose, initialize_config_module

from sweep.conf_path import CONF_PACKAGE

# Small and quick, but trained well enough that the controls are meaningful.
FAST = ["toy_training.epochs=30", "data.train_per_class=60", "data.val_per_class=40",
        "toy_training.data.train_per_class=60", "toy_training.data.val_per_class=40", "logger=none"]


def compose_cell(*overrides: str):
    """The config `sweep-run` would run, composed in-process."""
    with initialize_config_module(config_module=CONF_PACKAGE, version_base="1.3"):
        return compose("config", overrides=[*FAST, *overrides])


def _mount(*args: str) -> None:
    """Mounts need root (root ignores permission bits, so chmod would not stop its writes);
    where they are not allowed the test is skipped."""
    if os.geteuid() != 0:
        pytest.skip("a real read-only or full folder needs a mount, which needs root")
    result = subprocess.run(["mount", *args], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"mount {' '.join(args)} is not allowed here: {result.stderr.strip()}")


@contextmanager
def read_only(folder: Path):
    """`folder` really read-only inside the block: a read-only bind mount onto itself."""
    _mount("--bind", str(folder), str(folder))
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], check=True, capture_output=True)
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@contextmanager
def small_disk(folder: Path, size: str):
    """A real filesystem of `size` (a tmpfs) at `folder` inside the block, to fill up."""
    _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder))
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def fill(folder: Path) -> None:
    """Fill `folder`'s filesystem: writes fail with ENOSPC from now on (removing
    `folder`/filler frees it)."""
    block = b"\0" * 4096
    with open(folder / "filler", "wb", buffering=0) as filler:
        try:
            while True:
                filler.write(block)
        except OSError:
            pass


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """One artifact cache per test session: toys train once, every test reuses them."""
    path = tmp_path_factory.mktemp("cache")
    os.environ["SWEEP_CACHE_DIR"] = str(path)
    return path


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
