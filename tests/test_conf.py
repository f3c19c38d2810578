"""The shipped configuration (`sweep.conf`): files that extend others with Hydra's `defaults:`
compose to exactly the settings they always had, so no cell changes its identity."""

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from sweep.cellspec import cell_spec
from sweep.conf_path import CONF_PACKAGE
from sweep.errors import ConfigError

# The cell ids of two cells per model (record format 3: intervention.probe_after in the
# identity); the toys composed to these before and after they started from toy_base.yaml.
# The id hashes the whole composed model node, so any key a toy gains, loses or changes
# (e.g. a real model's load_kwargs or visual_projection leaking into its toy) shows here.
# Update these only together with a deliberate change of what a cell measures (and then
# bump cellspec.RECORD_FORMAT), or of a model node: deit, dinov2 and their toys changed on
# purpose when they gained the distillation and patch_mean readouts (the records' format
# did not change, so RECORD_FORMAT stayed).
CELL_IDS = {
    "vit": ("61645f1b87e7b5af", "66dd8fd098c95a86"), "deit": ("817e7629c0d396f6", "756cc5d57a3c0c4b"),
    "beit": ("1756c0658241eaab", "be1398923c954571"), "dinov2": ("2113a20615460822", "accf67f8ed4d2842"),
    "clip": ("f06dd0fc7c7e5e10", "163880d388608b76"), "toy_vit": ("7ee432e6db20ca89", "dd27d2604b8fd00e"),
    "toy_deit": ("3220c6781a1eefb4", "d30c22021e3eda2a"), "toy_beit": ("09b51c63cfbc8f99", "0ed4b30dcfb37c99"),
    "toy_dinov2": ("e72b0600e203754a", "11a89b1101382f88"), "toy_clip": ("0b48dec679ad6b40", "61a0e19ab781f78a"),
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
