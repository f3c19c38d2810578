"""A cell's identity: layer indexing, validation before any weights load, stable ids."""

import pytest
from hydra import compose, initialize_config_module

from sweep.cellspec import LayerOutOfRange, NotApplicable, cell_spec, resolve_layer
from sweep.conf_path import CONF_PACKAGE
from sweep.errors import ConfigError


def config(*overrides):
    with initialize_config_module(config_module=CONF_PACKAGE, version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_negative_layers_count_from_the_end():
    assert resolve_layer(-1, 12) == 12
    assert resolve_layer(-13, 12) == 0
    assert resolve_layer(0, 12) == 0


def test_an_out_of_range_layer_names_the_valid_range():
    with pytest.raises(LayerOutOfRange, match=r"valid layers are 0\.\.6"):
        cell_spec(config("model=toy_vit", "layer=7"))


def test_cls_readout_on_a_model_without_one_is_refused_with_the_reason():
    with pytest.raises(ConfigError, match="no readout of the CLS token alone; use readout=native"):
        cell_spec(config("model=clip", "~model.readouts.cls", "model.projection_readout=native", "readout=cls"))


@pytest.mark.parametrize("model, readout, has", [
    ("vit", "distillation", "native, cls"), ("dinov2", "distillation", "native, cls, patch_mean"),
    ("deit", "patch_mean", "native, cls, distillation"), ("toy_clip", "patch_mean", "native, cls")])
def test_a_readout_the_model_lacks_is_not_applicable_and_names_the_models_readouts(model, readout, has):
    """Not a bad setting but a grid point this model cannot run: a sweep skips it with this line."""
    with pytest.raises(NotApplicable, match=rf"model {model} has no '{readout}' readout \(it has: {has}\)"):
        cell_spec(config(f"model={model}", f"readout={readout}"))


def test_identity_depends_on_science_not_on_where_or_how_fast_it_runs():
    base = cell_spec(config("model=toy_vit", "layer=3", "intervention=shuffle"))
    assert base.layer == 3 and base.name == "toy_vit-L03-shuffle-native-s0"
    same = cell_spec(config("model=toy_vit", "layer=-4", "intervention=shuffle", "compute.batch_size=7",
                            "cache.dir=/elsewhere", "sweep.name=x"))
    assert same.cell_id == base.cell_id
    for change in ("seed=1", "readout=cls", "intervention.permutation=randperm", "data.val_per_class=50"):
        other = cell_spec(config("model=toy_vit", "layer=3", "intervention=shuffle", change))
        assert other.cell_id != base.cell_id, change


@pytest.mark.parametrize("override, message", [
    ("model.adapter=resnet", r"model.adapter=resnet is invalid: it must be one of vit, deit, beit, dinov2, dinov2_reg, clip"),
    ("model.readouts.native.head=fited", r"model.readouts.native.head=fited is invalid: it must be one of native, fitted"),
    ("+model.readouts.cls.visual_projection=true", r"model.readouts.cls.visual_projection is not a setting of ViTAdapter"),
    ("+model.readouts.mean.head=fitted", r"model.readouts.mean is not a readout of ViTAdapter; it supports native, cls"),
    ("+model.revison=v2", r"model.revison is not a setting of model; its settings are: name, adapter, hf_class"),
])
def test_a_model_config_its_adapter_cannot_read_is_refused_when_the_cell_is_specified(override, message):
    with pytest.raises(ConfigError, match=message):
        cell_spec(config("model=toy_vit", "layer=3", override))


def test_specifying_cells_imports_neither_torch_nor_transformers():
    """The planner specifies thousands of cells; the adapters' registry it checks models
    against must not pull torch in (nor transformers, for `model.hf_class`)."""
    import subprocess
    import sys

    code = "import sys, sweep.cellspec, sweep.plan; print('torch' in sys.modules, 'transformers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split() \
        == ["False", "False"]


def test_a_knockout_at_the_last_layer_is_refused_there_is_no_block_to_cut():
    with pytest.raises(LayerOutOfRange, match=r"intervention=knockout acts in the blocks after layer L.*0\.\.5"):
        cell_spec(config("model=toy_vit", "layer=-1", "intervention=knockout"))
    spec = cell_spec(config("model=toy_vit", "layer=5", "intervention=knockout", "seed=3"))
    assert spec.seed is None and spec.science["intervention"] == {"name": "knockout", "edge": "patches_to_cls",
                                                                  "span": "after", "probe_after": False}
    bad = "intervention.edge=cls_to_cls"
    with pytest.raises(ConfigError, match="intervention.edge=cls_to_cls is invalid.*patches_to_cls, cls_to_patches"):
        cell_spec(config("model=toy_vit", "layer=2", "intervention=knockout", bad))


@pytest.mark.parametrize("model, token, has", [
    ("vit", "distillation", "cls, patches"), ("deit", "registers", "cls, distillation, patches"),
    ("dinov2", "registers", "cls, patches"), ("toy_dinov2_reg", "distillation", "cls, registers, patches")])
def test_a_token_the_model_lacks_is_not_applicable_and_names_the_models_tokens(model, token, has):
    """A sweep over intervention.token skips such a point with this line; a cell refuses it."""
    with pytest.raises(NotApplicable, match=rf"model {model} has no '{token}' token for intervention.token "
                                            rf"\(it has: {has}\)"):
        cell_spec(config(f"model={model}", "intervention=shuffle", f"intervention.token={token}"))


def test_the_token_is_part_of_a_shuffles_identity_and_its_name():
    cls, patches = (cell_spec(config("model=toy_vit", "layer=2", "intervention=shuffle", f"intervention.token={t}"))
                    for t in ("cls", "patches"))
    assert cls.cell_id != patches.cell_id and (cls.token, patches.token) == ("cls", "patches")
    assert (cls.name, patches.name) == ("toy_vit-L02-shuffle-native-s0", "toy_vit-L02-shuffle@patches-native-s0")
    assert cell_spec(config("model=toy_vit", "intervention=zero")).token is None  # no token setting: the CLS
    with pytest.raises(ConfigError, match="intervention.token=cl is invalid: it must be one of cls, distillation, "
                                          "registers, patches"):
        cell_spec(config("model=toy_vit", "intervention=shuffle", "intervention.token=cl"))
