"""The shipped configuration (`sweep.conf`): files that extend others with Hydra's `defaults:`
compose to exactly the settings they always had, so no cell changes its identity."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from sweep.cellspec import cell_spec
from sweep.conf_path import CONF_DIR, CONF_PACKAGE
from sweep.errors import ConfigError

# The cell ids of two cells per model (record format 4: the shuffle's intervention.token in
# the identity; DeiT's distillation and DINOv2's patch_mean readouts in their model nodes).
# The toys composed to these before and after they started from toy_base.yaml. The id
# hashes the whole composed model node, so any key a toy gains, loses or changes (e.g. a
# real model's load_kwargs or visual_projection leaking into its toy) shows here. Update
# these only together with a deliberate change of what a cell measures (and then bump
# cellspec.RECORD_FORMAT where the record changes too), or of a model node.
CELL_IDS = {
    "vit": ("bde11a136eeb8b05", "9617a9e7a107abfc"), "deit": ("9f669602e9ac7a49", "9038d76e219c2952"),
    "beit": ("09b8a8b90fe64615", "1fa8bcff404809d1"), "dinov2": ("345e07d614b223fb", "83fd8e404bed7d62"),
    "dinov2_reg": ("d9888b0bb8347f28", "f3de14017b111f4f"), "clip": ("3610e9d144860b46", "e925760c9e3d3808"),
    "toy_vit": ("79d8516e3bbbf475", "294dabdd3f2472e0"), "toy_deit": ("0a5ba3cd7a7cb319", "3676084cff4b424b"),
    "toy_beit": ("b80a6b473ae30ebe", "776780550e98c622"), "toy_dinov2": ("e344af6ce09bb7c6", "5bfe064da9edec3f"),
    "toy_dinov2_reg": ("f5b2ecef51647fbb", "22c8e4f4ccab1e23"), "toy_clip": ("69eda74416dc1cd5", "3a985e5d00e65f2b"),
}
SHUFFLE_L3, NONE_LAST_CLS = ["layer=3", "intervention=shuffle", "readout=native", "seed=0"], \
    ["layer=-1", "intervention=none", "readout=cls"]


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
    own = {"partition": "debug", "timeout_min": 60, "cpus_per_task": 1, "gpus_per_node": None, "mem_gb": 2,
           "array_parallelism": 4, "signal_delay_s": 30}
    assert {key: local[key] for key in own} == own
    for key in set(slurm) - set(own):  # the rest (setup lines, submitit folder, requeues) is slurm.yaml's
        assert OmegaConf.to_container(local, resolve=False)[key] == OmegaConf.to_container(slurm, resolve=False)[key], key
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
    result = subprocess.run([sys.executable, "-m", "sweep.run", "-m", f"+experiment={experiment}", "logger=none",
                             "sweep.dry_run=true"], env=env, cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "dry run: nothing launched" in output and " cells, 0 already done" in output, output
    if experiment == "tokens":  # a token a model lacks is a skip line naming the tokens it has
        assert "model vit has no 'distillation' token for intervention.token (it has: cls, patches)" in output
    if experiment == "readouts":
        assert "model vit has no 'patch_mean' readout (it has: native, cls)" in output
