import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # tests share helpers such as tiny_models

import os

import pytest
from hydra import compose, initialize_config_dir

from sweep.conf_path import CONF_DIR

# Small and quick, but trained well enough that the controls are meaningful.
FAST = ["toy_training.epochs=30", "data.train_per_class=60", "data.val_per_class=40",
        "toy_training.data.train_per_class=60", "toy_training.data.val_per_class=40", "logger=none"]


def compose_cell(*overrides: str):
    """The config `sweep-run` would run, composed in-process."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=[*FAST, *overrides])


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
