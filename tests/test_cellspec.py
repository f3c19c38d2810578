"""A cell's identity: layer indexing, validation before any weights load, stable ids."""

import copy

import pytest
from helpers import compose_cell
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from sweep.cellspec import LayerOutOfRange, NotApplicable, cell_spec, is_scientific, resolve_layer
from sweep.conf_path import CONF_PACKAGE
from sweep.errors import ConfigError, SweepError


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


@pytest.mark.parametrize(
    "model, readout, has",
    [
        ("vit", "distillation", "native, cls"),
        ("dinov2", "distillation", "native, cls, patch_mean"),
        ("deit", "patch_mean", "native, cls, distillation"),
        ("toy_clip", "patch_mean", "native, cls"),
    ],
)
def test_a_readout_the_model_lacks_is_not_applicable_and_names_the_models_readouts(model, readout, has):
    """Not a bad setting but a grid point this model cannot run: a sweep skips it with this line."""
    with pytest.raises(NotApplicable, match=rf"model {model} has no '{readout}' readout \(it has: {has}\)"):
        cell_spec(config(f"model={model}", f"readout={readout}"))


def test_identity_depends_on_science_not_on_where_or_how_fast_it_runs():
    base = cell_spec(config("model=toy_vit", "layer=3", "intervention=shuffle"))
    assert base.layer == 3 and base.name == "toy_vit-L03-shuffle-native-s0"
    same = cell_spec(
        config(
            "model=toy_vit",
            "layer=-4",
            "intervention=shuffle",
            "compute.batch_size=7",
            "cache.dir=/elsewhere",
            "sweep.name=x",
        )
    )
    assert same.cell_id == base.cell_id
    for change in ("seed=1", "readout=cls", "intervention.permutation=randperm", "data.val_per_class=50"):
        other = cell_spec(config("model=toy_vit", "layer=3", "intervention=shuffle", change))
        assert other.cell_id != base.cell_id, change


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "model.adapter=resnet",
            r"model.adapter=resnet is invalid: it must be one of vit, deit, beit, dinov2, dinov2_reg, clip",
        ),
        (
            "model.readouts.native.head=fited",
            r"model.readouts.native.head=fited is invalid: it must be one of native, fitted",
        ),
        (
            "+model.readouts.cls.visual_projection=true",
            r"model.readouts.cls.visual_projection is not a setting of ViTAdapter",
        ),
        (
            "+model.readouts.mean.head=fitted",
            r"model.readouts.mean is not a readout of ViTAdapter; it supports native, cls",
        ),
        (
            "+model.load_kwargs.trust_remote_code=true",
            r"model.load_kwargs.trust_remote_code=True is invalid: it must be left out: models always load with "
            r"trust_remote_code=False",
        ),
        (
            "+model.load_kwargs.revision=main",
            r"model.load_kwargs.revision=main is invalid: .* set model.revision instead",
        ),
        ("model.load_kwargs=7", r"model.load_kwargs must be a group of from_pretrained arguments, not 7"),
        ("+model.revison=v2", r"model.revison is not a setting of model; its settings are: name, adapter, hf_class"),
    ],
)
def test_a_model_config_its_adapter_cannot_read_is_refused_when_the_cell_is_specified(override, message):
    with pytest.raises(ConfigError, match=message):
        cell_spec(config("model=toy_vit", "layer=3", override))


def test_specifying_cells_imports_neither_torch_nor_transformers():
    """The planner specifies thousands of cells; the adapters' registry it checks models
    against must not pull torch in (nor transformers, for `model.hf_class`)."""
    import subprocess
    import sys

    code = "import sys, sweep.cellspec, sweep.plan; print('torch' in sys.modules, 'transformers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split() == [
        "False",
        "False",
    ]


def test_a_knockout_at_the_last_layer_is_refused_there_is_no_block_to_cut():
    with pytest.raises(LayerOutOfRange, match=r"intervention=knockout acts in the blocks after layer L.*0\.\.5"):
        cell_spec(config("model=toy_vit", "layer=-1", "intervention=knockout"))
    spec = cell_spec(config("model=toy_vit", "layer=5", "intervention=knockout", "seed=3"))
    assert spec.seed is None and spec.science["intervention"] == {
        "name": "knockout",
        "edge": "patches_to_cls",
        "span": "after",
        "probe_after": False,
    }
    bad = "intervention.edge=cls_to_cls"
    with pytest.raises(ConfigError, match="intervention.edge=cls_to_cls is invalid.*patches_to_cls, cls_to_patches"):
        cell_spec(config("model=toy_vit", "layer=2", "intervention=knockout", bad))


@pytest.mark.parametrize(
    "model, token, has",
    [
        ("vit", "distillation", "cls, patches"),
        ("deit", "registers", "cls, distillation, patches"),
        ("dinov2", "registers", "cls, patches"),
        ("toy_dinov2_reg", "distillation", "cls, registers, patches"),
    ],
)
def test_a_token_the_model_lacks_is_not_applicable_and_names_the_models_tokens(model, token, has):
    """A sweep over intervention.token skips such a point with this line; a cell refuses it."""
    with pytest.raises(
        NotApplicable,
        match=rf"model {model} has no '{token}' token for intervention.token "
        rf"\(it has: {has}\)",
    ):
        cell_spec(config(f"model={model}", "intervention=shuffle", f"intervention.token={token}"))


def test_the_token_is_part_of_a_shuffles_identity_and_its_name():
    cls, patches = (
        cell_spec(config("model=toy_vit", "layer=2", "intervention=shuffle", f"intervention.token={t}"))
        for t in ("cls", "patches")
    )
    assert cls.cell_id != patches.cell_id and (cls.token, patches.token) == ("cls", "patches")
    assert (cls.name, patches.name) == ("toy_vit-L02-shuffle-native-s0", "toy_vit-L02-shuffle@patches-native-s0")
    assert cell_spec(config("model=toy_vit", "intervention=zero")).token is None  # no token setting: the CLS
    with pytest.raises(
        ConfigError, match="intervention.token=cl is invalid: it must be one of cls, distillation, registers, patches"
    ):
        cell_spec(config("model=toy_vit", "intervention=shuffle", "intervention.token=cl"))


# --------------------------------------------------------------------------- one cell id, one set of numbers

#: a toy cell small enough to run once per leaf of its config (the toy trains in a second)
WALKED = [
    "model=toy_vit",
    "layer=2",
    "intervention=shuffle",
    "intervention.probe_after=true",
    "logger=none",
    "toy_training.epochs=2",
    "data.train_per_class=12",
    "data.val_per_class=10",
    "toy_training.data.train_per_class=12",
    "toy_training.data.val_per_class=10",
]
#: another valid value for leaves where "the value, changed a little" is not one
OTHER_VALUE = {
    "compute.device": "cpu",
    "compute.dtype": "bfloat16",
    "compute.attn_implementation": "eager",
    "compute.batch_size": 7,
    "cache.verify": "size",
    "wandb.mode": "offline",
    "logger.name": "wandb",
    "intervention.permutation": "randperm",
    "intervention.token": "patches",
    "probe.method": "logistic",
    "model.preprocess.interpolation": "bicubic",
    "model.load_kwargs": {"use_safetensors": True},
    "model.revision": "main",
    "wandb.entity": "someone",
    "wandb.tags": ["a-tag"],
    "sweep.results_from": ["/elsewhere"],
    "sweep.name": "other",
    "sweep.id": "other",
    "sweep.unit.max_cells": 1,
    "sweep.unit.max_cost": 1,
    "sweep.unit.id": "other",
    "model.readouts.native.head": "fitted",
    "model.readouts.cls.head": "fitted",
    "model.projection_readout": "native",
    "wandb.base_url": "https://wandb.example.org",
}


def _leaves(node, prefix=""):
    for key, value in node.items():
        if isinstance(value, dict) and value:
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _other(key, value):
    if key in OTHER_VALUE:
        return OTHER_VALUE[key]
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 1.5 if value else 0.5
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, list) and value and all(isinstance(v, float) for v in value):
        return [round(value[0] + 0.1, 6), *value[1:]]
    raise AssertionError(f"no other value declared for {key}={value!r}: add one to OTHER_VALUE")


def _changed(config, key, value):
    changed = copy.deepcopy(config)
    *parents, leaf = key.split(".")
    node = changed
    for part in parents:
        node = node[part]
    node[leaf] = value
    return changed


def _numbers(config, cache):
    """The cell's metrics and per-example outcomes, or the error it ends in (no numbers)."""
    from sweep.cell import measure

    try:
        result = measure(cell_spec(config), cache)
    except Exception as error:  # a value accepted by the plan but refused when the cell runs
        return type(error).__name__, None, None
    return dict(result.metrics), {k: v.tolist() for k, v in result.outcomes.items()}, result.artifacts


@pytest.mark.slow
def test_every_leaf_of_a_cells_config_changes_its_id_or_none_of_its_numbers(tmp_path):
    """Walk every leaf of a toy cell's resolved config and change it to another valid value.
    Then (1) a warm cache (the unchanged cell's artifacts) gives exactly the numbers a cold one
    gives: no artifact key misses a setting its artifact reads (model.preprocess.std once
    did); and (2) the cell id changes, or an artifact the numbers come from changes, or every
    number stays bit for bit as it was: one cell id, one set of numbers."""
    from sweep.cache import ArtifactCache

    base = OmegaConf.to_container(compose_cell(*WALKED), resolve=True)
    warm = ArtifactCache(tmp_path / "warm")
    base_spec = cell_spec(base)
    base_numbers = _numbers(base, warm)
    assert base_numbers[1] is not None, base_numbers
    problems, refused = [], []
    for key, value in _leaves(base):
        other = _changed(base, key, _other(key, value))
        try:
            spec = cell_spec(other)
        except SweepError:
            refused.append(key)  # a value the plan refuses yields no numbers
            continue
        warm_numbers = _numbers(other, warm)
        cold_numbers = _numbers(other, ArtifactCache(tmp_path / "cold", enabled=False))
        if warm_numbers[:2] != cold_numbers[:2]:
            problems.append(f"{key}: a warm cache gives other numbers than a cold one (stale artifact)")
        same_id = spec.cell_id == base_spec.cell_id
        if same_id == is_scientific(key):
            problems.append(
                f"{key}: declared {'' if is_scientific(key) else 'not '}measured (NOT_MEASURED), "
                f"but the cell id {'stays' if same_id else 'changes'}"
            )
        if same_id and warm_numbers[2] == base_numbers[2] and warm_numbers[:2] != base_numbers[:2]:
            problems.append(f"{key}: one cell id and the same artifacts, two sets of numbers")
    assert not problems, "\n".join(problems)
    assert len(refused) < len(list(_leaves(base))) / 2, f"most changes were refused, so little was walked: {refused}"
