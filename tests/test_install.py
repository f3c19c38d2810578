"""sweep installed like any Python tool: a wheel, in a fresh virtual environment, run from
an empty folder, with a user's own model and cluster profile in a folder of their own.

The wheel is built from a copy of the source (pyproject.toml, README.md, src/, conf/) and
installed without its dependencies into a fresh venv, whose site-packages gets one `.pth`
line naming this venv's site-packages: torch and the rest are reused, not downloaded, and
the editable install of the source tree stays out of sight (a `.pth` file in a folder
added by a `.pth` line is not executed), so the wheel's copy is the one that runs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path
from typing import NamedTuple

import pytest
from helpers import FAST

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SHIPPED = "import sweep.conf_path as c; print(c.CONF_DIR)"
CELL = ["model=toy_vit", "layer=3", "intervention=shuffle", "readout=native", "seed=0"]


class Installed(NamedTuple):
    wheel: Path
    bin: Path  # the fresh venv's bin/: python and the four commands


def ok(command: list, **kwargs) -> str:
    """Run a setup step; its stderr is the failure's message."""
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{command} failed: {result.stderr}"
    return result.stdout


def build_wheel(into: Path) -> Path:
    """`pip wheel` offline, from a copy of what a source distribution holds."""
    source = into / "source"
    source.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    for name in ("src", "conf"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    ok(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "-w",
            into / "dist",
            source,
        ]
    )
    (wheel,) = (into / "dist").glob("sweep-*.whl")
    return wheel


def fresh_venv(where: Path, wheel: Path) -> Path:
    """A venv holding only the wheel; its dependencies come from this venv by a `.pth` line."""
    venv.EnvBuilder(with_pip=False).create(where)
    python = where / "bin" / "python"
    purelib = ok([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip()
    (Path(purelib) / "sweep-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # --ignore-installed: the dependencies' folder also lists this venv's editable sweep
    ok([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed", wheel])
    return where / "bin"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    root = tmp_path_factory.mktemp("install")
    wheel = build_wheel(root / "build")
    return Installed(wheel, fresh_venv(root / "venv", wheel))


@pytest.fixture
def env(cli_env) -> dict:
    """`cli_env` (shared toy cache, W&B offline) without any path into the source tree."""
    return {k: v for k, v in cli_env.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def run(installed: Installed, command: str, args: list, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    """One of the installed commands, as a user runs it."""
    return subprocess.run(
        [str(installed.bin / command), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=600
    )


def shipped_configs(installed: Installed, env: dict) -> Path:
    """Where the installed package keeps its YAML files (what docs/sweeps.md tells users to run)."""
    return Path(ok([installed.bin / "python", "-c", SHIPPED], env=env).strip())


def user_folder(where: Path, shipped: Path) -> Path:
    """A user's config folder: a new model (a copy of toy_vit named my_vit) and a cluster
    profile (a copy of `local` named mine), in Hydra's group layout."""
    (where / "model").mkdir(parents=True)
    text = (shipped / "model" / "toy_vit.yaml").read_text()
    (where / "model" / "my_vit.yaml").write_text(text.replace("name: toy_vit", "name: my_vit"))
    (where / "hydra" / "launcher").mkdir(parents=True)
    shutil.copy2(shipped / "hydra" / "launcher" / "local.yaml", where / "hydra" / "launcher" / "mine.yaml")
    return where


def test_the_wheel_ships_the_configuration_and_the_sweeper(installed):
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    for name in (
        "sweep/conf/__init__.py",
        "sweep/conf/config.yaml",
        "sweep/conf/reference.yaml",
        "sweep/conf/model/toy_vit.yaml",
        "sweep/conf/experiment/toy.yaml",
        "sweep/conf/hydra/launcher/slurm.yaml",
        "sweep/conf/hydra/launcher/local.yaml",
        "hydra_plugins/sweep_cells/cell_sweeper.py",
    ):
        assert name in names, f"{name} is not in {installed.wheel.name}"


def test_the_wheels_copy_is_the_one_that_runs(installed, env, tmp_path):
    where = ok(
        [
            installed.bin / "python",
            "-c",
            "import sweep, hydra_plugins.sweep_cells as p; print(sweep.__file__); print(p.__file__)",
        ],
        env=env,
        cwd=tmp_path,
    ).split()
    venv_root = installed.bin.parent
    assert all(Path(path).is_relative_to(venv_root) for path in where), where


def test_a_cell_runs_from_an_empty_folder(installed, env, tmp_path):
    result = run(installed, "sweep-run", [*FAST, *CELL], env, tmp_path)
    assert result.returncode == 0, result.stderr
    (record,) = tmp_path.glob("runs/toy_vit/toy_vit-L03-shuffle-native-s0-*/result.json")
    assert json.loads(record.read_text())["status"] == "complete"


def test_a_users_model_and_cluster_profile_are_picked_up_by_a_multirun(installed, env, tmp_path):
    config_dir = user_folder(tmp_path / "my-configs", shipped_configs(installed, env))
    work = tmp_path / "work"
    work.mkdir()
    result = run(
        installed,
        "sweep-run",
        [
            "-m",
            "--config-dir",
            str(config_dir),
            *FAST,
            "model=my_vit,toy_vit",
            "layer=2,3",
            "intervention=shuffle",
            "readout=native",
            "seed=0",
            "hydra/launcher=mine",
            "sweep.name=mine",
        ],
        env,
        work,
    )
    assert result.returncode == 0, result.stderr
    sweep_dir = work / "multirun" / "mine"
    records = [json.loads(p.read_text()) for p in sweep_dir.rglob("result.json")]
    assert sorted((r["model"], r["layer"]) for r in records) == [
        ("my_vit", 2),
        ("my_vit", 3),
        ("toy_vit", 2),
        ("toy_vit", 3),
    ]
    assert all(r["status"] == "complete" for r in records)
    choices = ok(
        [
            installed.bin / "python",
            "-c",
            "import sys; from omegaconf import OmegaConf; "
            "print(OmegaConf.load(sys.argv[1]).hydra.runtime.choices['hydra/launcher'])",
            sweep_dir / "multirun.yaml",
        ],
        env=env,
    )
    assert choices.strip() == "mine"

    # the other commands, from the wheel too: status, the table (reads the shipped reference.yaml), the cache
    status = run(installed, "sweep-status", [str(sweep_dir)], env, work)
    assert status.returncode == 0 and "4 done" in status.stdout, status.stdout + status.stderr
    table = run(installed, "sweep-aggregate", [str(sweep_dir)], env, work)
    assert table.returncode == 0, table.stderr
    assert (sweep_dir / "results.csv").is_file()
    cache = run(installed, "sweep-cache", ["info"], env, work)
    assert cache.returncode == 0 and "toy_model" in cache.stdout, cache.stdout + cache.stderr


def test_hydra_searchpath_adds_a_users_folder_too(installed, env, tmp_path):
    config_dir = user_folder(tmp_path / "my-configs", shipped_configs(installed, env))
    result = run(
        installed,
        "sweep-run",
        ["--cfg", "job", "--package", "model", f"hydra.searchpath=[file://{config_dir}]", "model=my_vit"],
        env,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "name: my_vit" in result.stdout
