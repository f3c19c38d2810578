"""sweep on Hydra 1.3 (this venv) and on Hydra 1.4's release candidate, without a warning.

Hydra 1.4 finds plugins by their `hydra.plugins` entry points and warns about an editable
install whose `hydra_plugins` it cannot list, about `version_base`, about config targets
instantiated without an execution whitelist; OmegaConf 2.4 about `register_new_resolver`.
The 1.4 venv is a fresh one holding only hydra-core, omegaconf and hydra-submitit-launcher
at their 1.4 release candidates (from PyPI, or from PIP_FIND_LINKS offline) and an editable
install of a copy of the source (the hardest case for plugin discovery: `sweep.conf` mapped
from conf/); torch and the rest come from this venv by a `.pth` line (tests/test_install.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest
from test_install import REPO, ok

pytestmark = pytest.mark.slow

HYDRA_14 = ["hydra-core==1.4.0rc3", "omegaconf==2.4.1rc2", "hydra-submitit-launcher==1.4.0rc3"]
COMMANDS = {
    "config": ["sweep-run", "--cfg", "job"],
    "sweep plan": ["sweep-run", "-m", "+experiment=toy", "sweep.dry_run=true"],
    "prepare plan": ["sweep-prepare", "+experiment=toy", "sweep.dry_run=true"],
    "submitit launcher": ["sweep-run", "--cfg", "hydra", "--package", "hydra.launcher", "hydra/launcher=slurm"],
}


def hydra_14_venv(where: Path) -> Path:
    """A venv with Hydra 1.4rc and sweep installed editable; returns its bin/."""
    venv.EnvBuilder(with_pip=False).create(where / "venv")
    python = where / "venv" / "bin" / "python"
    purelib = ok([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip()
    (Path(purelib) / "sweep-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = [python, "-m", "pip", "install", "-q", "--no-deps", "--ignore-installed", "--disable-pip-version-check"]
    ok([*pip, "--pre", *HYDRA_14])
    source = where / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    for name in ("src", "conf"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    ok([*pip, "--no-build-isolation", "--no-index", "-e", source])
    return where / "venv" / "bin"


@pytest.fixture(scope="module", params=["1.3", "1.4rc"])
def hydra_bin(request, tmp_path_factory) -> tuple[str, Path]:
    if request.param == "1.3":
        return request.param, Path(sys.executable).parent
    return request.param, hydra_14_venv(tmp_path_factory.mktemp("hydra14"))


@pytest.mark.parametrize("what", COMMANDS)
def test_runs_without_a_warning(hydra_bin, what, cli_env, tmp_path):
    version, bin = hydra_bin
    env = {k: v for k, v in cli_env.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    versions = ok(
        [bin / "python", "-c", "import hydra, omegaconf; print(hydra.__version__, omegaconf.__version__)"], env=env
    )
    assert versions.startswith("1.4.0rc" if version == "1.4rc" else "1.3."), versions
    command, *args = COMMANDS[what]
    result = subprocess.run(
        [str(bin / command), *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "warn" not in result.stderr.lower() and "deprecat" not in result.stderr.lower(), result.stderr
    if what == "submitit launcher":
        assert "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher" in result.stdout


def test_the_editable_install_maps_sweep_conf_to_the_top_level_conf(hydra_bin, tmp_path):
    _, bin = hydra_bin
    where = ok(
        [bin / "python", "-c", "import sweep.conf; print(sweep.conf.__file__)"],
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    conf = Path(where.strip()).parent
    assert conf.name == "conf" and (conf.parent / "src" / "sweep").is_dir(), conf
    assert (conf / "hydra" / "launcher" / "slurm.yaml").is_file() and (conf / "experiment" / "toy.yaml").is_file()
