"""Planning a sweep from its grids, with a stand-in for Hydra's composition (the real
one is exercised end to end in test_sweep.py)."""

from __future__ import annotations

import json
from functools import cache

import pytest
from helpers import compose_cell
from omegaconf import OmegaConf

from sweep.cellspec import NOT_MEASURED, cell_spec
from sweep.errors import ConfigError
from sweep.plan import Dimension, GroupComposer, derive_sweep_id, index_results, make_plan

MODELS = {"a": 2, "b": 3}


@cache
def _real(intervention: str) -> str:
    return OmegaConf.to_yaml(compose_cell("model=vit", f"intervention={intervention}"))


def compose(groups):
    """What Hydra would compose for `model=<name>`: a real cell config, with two stand-in
    models of 2 and 3 blocks."""
    choice = dict(g.split("=") for g in groups)
    cfg = OmegaConf.to_container(OmegaConf.create(_real(choice.get("intervention", "none"))))
    cfg["model"].update(name=choice["model"], n_layers=MODELS[choice["model"]])
    return cfg


def dims(**axes):
    out = []
    for key, values in axes.items():
        group = key in ("model", "intervention")
        out.append(Dimension(key, group, tuple(f"{key}={v}" for v in values), tuple(values)))
    return out


def test_a_union_of_grids_plans_each_cell_once_and_skips_layers_a_model_lacks(tmp_path):
    grids = [
        dims(model=["a", "b"], layer=[0, 3], intervention=["none", "shuffle"], seed=[0, 1]),
        dims(model=["a", "b"], layer=[0, 3], intervention=["none"], seed=[0]),
    ]  # a subset of the first
    plan = make_plan(grids, GroupComposer(compose), "s", tmp_path, [])
    # none draws no random numbers: one cell over both seeds. b: 2 layers × (1 none + 2 shuffle
    # seeds); a: layer 0 only, likewise
    assert len(plan.runnable) == 6 + 3
    assert len(plan.skipped) == 4 + 1  # a's layer 3 in both grids (skipped points are not merged)
    assert "layer=3 is out of range for a" in plan.skipped[0].skipped
    assert len({c.spec.cell_id for c in plan.runnable}) == 9
    assert plan.merged_seedless == 3 and plan.merged_overlap == 3  # the second grid repeats 3 none cells
    assert {c.spec.seed for c in plan.runnable if c.spec.intervention == "none"} == {None}


def test_composition_is_reused_per_group_option():
    calls = []
    composer = GroupComposer(lambda groups: calls.append(groups) or compose(groups))
    for model in ("a", "b"):
        for intervention in ("none", "shuffle", "zero"):
            cfg = composer(("intervention=" + intervention, "model=" + model))
            assert cfg["model"]["name"] == model and cfg["intervention"]["name"] == intervention
    assert len(calls) == 4  # the base, then one per other option: not one per combination


def test_the_sweep_id_is_stable_and_ignores_how_the_sweep_runs():
    a = derive_sweep_id(None, "toy", ["model=a", "layer=1", "hydra/launcher=slurm", "sweep.dry_run=true"])
    b = derive_sweep_id(None, "toy", ["layer=1", "model=a", "logger=none", "compute.batch_size=8"])
    assert a == b and a.startswith("toy-")
    assert derive_sweep_id(None, "toy", ["model=b", "layer=1"]) != a
    assert derive_sweep_id("mine", "toy", ["model=a"]) == "mine"


def test_the_sweep_id_hashes_exactly_the_settings_of_a_cells_identity():
    base = ["model=toy_vit", "layer=1"]
    how_it_runs = [
        "compute.batch_size=8",
        "compute.device=cpu",
        "cache.dir=/elsewhere",
        "outcomes.save=false",
        "wandb.project=other",
        "logger=none",
        "sweep.unit.max_cells=3",
        "hydra/launcher=slurm",
        "data.token_env=MY_TOKEN",
    ]
    assert {derive_sweep_id(None, "toy", [*base, extra]) for extra in how_it_runs} == {
        derive_sweep_id(None, "toy", base)
    }
    what_it_measures = [
        "compute.attn_implementation=eager",
        "compute.flush_denormal=false",
        "compute.dtype=bfloat16",
        "toy_training.epochs=3",
        "data.val_per_class=5",
        "probe=logistic",
        "readout=cls",
        "seed=1",
        "intervention.group_size=64",
        "model.n_layers=3",
        "model.preprocess.std=[0.6,0.6,0.6]",
        "+note=a-comment",
    ]
    ids = {derive_sweep_id(None, "toy", [*base, extra]) for extra in what_it_measures}
    assert len(ids) == len(what_it_measures) and derive_sweep_id(None, "toy", base) not in ids
    # and the cell's identity is the whole config but the declared keys (plus its record format)
    cfg = OmegaConf.to_container(compose_cell("model=toy_vit", "layer=1"), resolve=True)
    spec = cell_spec(cfg)
    assert set(spec.science) == {"format", *(set(cfg) - set(NOT_MEASURED))}
    assert "batch_size" not in spec.science["compute"] and "device" not in spec.science["compute"]


def _record(folder, **fields):
    folder.mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps({"cell_id": "c1", "name": "cell", "status": "complete", **fields}))
    return folder


def test_two_different_records_of_one_cell_in_results_from_are_refused_naming_both(tmp_path):
    first = _record(tmp_path / "one" / "m" / "cell", metrics={"accuracy": 0.5})
    second = _record(tmp_path / "two" / "m" / "cell", metrics={"accuracy": 0.7})
    with pytest.raises(ConfigError, match="two different records of cell cell") as refused:
        index_results([tmp_path / "one", tmp_path / "two"])
    assert str(first) in str(refused.value) and str(second) in str(refused.value)


def test_one_record_reached_twice_or_copied_is_one_record(tmp_path):
    first = _record(tmp_path / "one" / "m" / "cell", metrics={"accuracy": 0.5})
    _record(tmp_path / "copy" / "m" / "cell", metrics={"accuracy": 0.5})
    assert index_results([tmp_path / "one", tmp_path, tmp_path / "copy"]) == {"c1": first}
