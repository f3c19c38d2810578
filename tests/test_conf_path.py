"""The shipped configuration and a user's own folder of configs, as Hydra composes them."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_module

from sweep.conf_path import CONF_DIR, CONF_PACKAGE, check_not_shadowed
from sweep.errors import ConfigError


def sources(folder) -> list:
    """Hydra's search path for a composition with `folder` added by `hydra.searchpath`."""
    with initialize_config_module(config_module=CONF_PACKAGE, version_base="1.3"):
        cfg = compose("config", overrides=[f"hydra.searchpath=[file://{folder}]"], return_hydra_config=True)
    return list(cfg.hydra.runtime.config_sources)


def test_new_names_and_identical_copies_of_shipped_files_pass(tmp_path):
    (tmp_path / "model").mkdir()
    shutil.copy2(CONF_DIR / "model" / "toy_vit.yaml", tmp_path / "model" / "toy_vit.yaml")  # changes nothing
    (tmp_path / "model" / "my_vit.yaml").write_text("defaults:\n  - toy_vit\n  - _self_\nname: my_vit\n")
    check_not_shadowed(sources(tmp_path))
    with initialize_config_module(config_module=CONF_PACKAGE, version_base="1.3"):
        cfg = compose("config", overrides=[f"hydra.searchpath=[file://{tmp_path}]", "model=my_vit"])
    assert cfg.model.name == "my_vit" and cfg.model.n_layers == 6  # the rest comes from toy_vit


def test_a_changed_file_named_like_a_shipped_one_is_refused_with_what_to_do(tmp_path):
    (tmp_path / "hydra" / "launcher").mkdir(parents=True)
    shipped = (CONF_DIR / "hydra" / "launcher" / "slurm.yaml").read_text()
    (tmp_path / "hydra" / "launcher" / "slurm.yaml").write_text(shipped.replace("partition: null", "partition: gpu"))
    with pytest.raises(ConfigError) as error:
        check_not_shadowed(sources(tmp_path))
    message = str(error.value)
    assert str(tmp_path / "hydra" / "launcher" / "slurm.yaml") in message
    assert "hydra/launcher/my_slurm.yaml" in message and "hydra/launcher=my_slurm" in message
    assert "`defaults: [slurm]`" in message


def test_a_primary_config_of_ones_own_is_picked_by_its_name(tmp_path):
    (tmp_path / "config.yaml").write_text("defaults:\n  - config\n  - _self_\nseed: 7\n")
    with pytest.raises(ConfigError, match="pick it with --config-name my_config"):
        check_not_shadowed(sources(tmp_path))


def test_sweep_run_refuses_it_before_any_work(cli_env, tmp_path):
    mine = tmp_path / "mine" / "model"
    mine.mkdir(parents=True)
    (mine / "toy_vit.yaml").write_text((CONF_DIR / "model" / "toy_vit.yaml").read_text() + "n_layers: 4\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sweep.run",
            "-m",
            "--config-dir",
            str(tmp_path / "mine"),
            "model=toy_vit",
            "layer=1",
            "logger=none",
        ],
        env=cli_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert "is hidden by the shipped model/toy_vit.yaml" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "multirun").exists()
