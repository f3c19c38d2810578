"""The shipped configuration (`sweep.conf`): files that extend others with Hydra's `defaults:`
compose to exactly the settings they always had, so no cell changes its identity."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from sweep.cellspec import cell_spec
from sweep.conf_path import CONF_DIR, CONF_PACKAGE
from sweep.errors import ConfigError

# The cell ids of two cells per model (identity format 5: the identity is the whole resolved
# config but cellspec.NOT_MEASURED; DeiT's distillation and DINOv2's patch_mean readouts in
# their model nodes).
# The toys composed to these before and after they started from toy_base.yaml. The id
# hashes the whole composed model node, so any key a toy gains, loses or changes (e.g. a
# real model's load_kwargs or visual_projection leaking into its toy) shows here. Update
# these only together with a deliberate change of what a cell measures (and then bump
# cellspec.IDENTITY_FORMAT), or of a model node.
CELL_IDS = {
    "vit": ("b1386d00dc08b876", "c0edf2d31d34961b"),
    "deit": ("fb1b6b7c2b6d9feb", "3cf9d4d882fa687f"),
    "beit": ("c9632d273971b3b2", "5f8681fb3a84df46"),
    "dinov2": ("a41005472bfe444b", "55da4275c5df75e1"),
    "dinov2_reg": ("112d21bdaddf3672", "f7b22ddf90959c67"),
    "clip": ("cef80bfcb31cf03f", "f5a3709067dfa95c"),
    "toy_vit": ("dad933eabeb2b32c", "fa89f88e608d03ea"),
    "toy_deit": ("99ad12f5643eb900", "14fc860bd72d5043"),
    "toy_beit": ("603744d9e5a3374a", "d0e1e4e4597ed6a0"),
    "toy_dinov2": ("f8e84baddfdd0d57", "98ccabb796a1dad7"),
    "toy_dinov2_reg": ("65e5cc352868d25a", "17de429b9a4e41a9"),
    "toy_clip": ("b21a321b7a6dce05", "6ca9b68dda873dc4"),
}
SHUFFLE_L3, NONE_LAST_CLS = (
    ["layer=3", "intervention=shuffle", "readout=native", "seed=0"],
    ["layer=-1", "intervention=none", "readout=cls"],
)


def composed(*overrides: str, hydra: bool = False):
    with initialize_config_module(config_module=CONF_PACKAGE, version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra)


@pytest.mark.parametrize("model", sorted(CELL_IDS))
def test_each_model_keeps_its_cell_ids(model):
    ids = tuple(cell_spec(composed(f"model={model}", *cell)).cell_id for cell in (SHUFFLE_L3, NONE_LAST_CLS))
    assert ids == CELL_IDS[model]


def test_a_toy_is_toy_base_plus_its_architecture():
    toy_clip = OmegaConf.to_container(composed("model=toy_clip").model)
    assert toy_clip["source"] == "toy" and toy_clip["load_kwargs"] == {} and toy_clip["n_layers"] == 4
    assert toy_clip["readouts"]["cls"] == {"head": "fitted", "visual_projection": False}
    assert OmegaConf.to_container(composed("model=toy_vit").model)["n_layers"] == 6  # toy_base's


def test_toy_base_alone_is_not_a_model():
    with pytest.raises(ConfigError, match=r"model\.name is not set"):
        cell_spec(composed("model=toy_base"))


def test_the_local_slurm_profile_is_the_shipped_one_sized_for_one_cpu_node():
    slurm = composed("hydra/launcher=slurm", hydra=True).hydra.launcher
    local = composed("hydra/launcher=local_slurm", hydra=True).hydra.launcher
    own = {
        "partition": "debug",
        "timeout_min": 60,
        "cpus_per_task": 1,
        "gpus_per_node": None,
        "mem_gb": 2,
        "array_parallelism": 4,
        "signal_delay_s": 30,
    }
    assert {key: local[key] for key in own} == own
    for key in set(slurm) - set(own):  # the rest (setup lines, submitit folder, requeues) is slurm.yaml's
        assert OmegaConf.to_container(local, resolve=False)[key] == OmegaConf.to_container(slurm, resolve=False)[key], (
            key
        )
    assert local.setup == ["export PYTHONUNBUFFERED=1", "export OMP_NUM_THREADS=1"]  # its own cpus_per_task


EXPERIMENTS = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_shipped_preset_plans_a_sweep(experiment, tmp_path):
    """A dry run of each preset, as a user types it: its grids compose, every cell is
    specified, and what a model cannot run is a skip line, not an error (nothing loads)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "SWEEP_CACHE_DIR": str(tmp_path / "cache"), "WANDB_MODE": "offline", "HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "sweep.run", "-m", f"+experiment={experiment}", "logger=none", "sweep.dry_run=true"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "dry run: nothing launched" in output and " cells, 0 already done" in output, output
    if experiment == "tokens":  # a token a model lacks is a skip line naming the tokens it has
        assert "model vit has no 'distillation' token for intervention.token (it has: cls, patches)" in output
    if experiment == "readouts":
        assert "model vit has no 'patch_mean' readout (it has: native, cls)" in output
