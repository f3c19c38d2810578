"""What many test files share that is not a fixture: the fast toy settings, a composed cell,
and real read-only or full folders (mounts). Fixtures live in conftest.py and are used as
fixtures; this module is imported by name (`from helpers import compose_cell`)."""

from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from sweep.conf_path import CONF_PACKAGE

# Small and quick, but trained well enough that the controls are meaningful.
FAST = [
    "toy_training.epochs=30",
    "data.train_per_class=60",
    "data.val_per_class=40",
    "toy_training.data.train_per_class=60",
    "toy_training.data.val_per_class=40",
    "logger=none",
]


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
