"""The registries: one class per intervention, probe method and adapter, and the only list
of valid choices for each."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from helpers import compose_cell
from omegaconf import OmegaConf

from sweep.adapters import ADAPTERS
from sweep.cellspec import cell_spec
from sweep.conf_path import CONF_DIR
from sweep.errors import ConfigError
from sweep.interventions import INTERVENTIONS, Intervention
from sweep.probes import PROBES
from sweep.registry import Registry
from sweep.rules import Real
from sweep.settings import settings_table


def test_a_name_that_is_not_registered_names_the_key_the_value_and_the_choices():
    with pytest.raises(ConfigError, match=r"intervention.name=dropout is invalid: it must be one of none, shuffle"):
        INTERVENTIONS["dropout"]
    with pytest.raises(ConfigError, match=r"model.adapter=resnet is invalid: it must be one of vit, deit, beit"):
        ADAPTERS["resnet"]
    assert ["a"] not in PROBES  # an unhashable value from a config is simply not a choice


def test_a_name_registered_twice_is_refused():
    registry: Registry[type] = Registry("thing.name")
    registry.register("one")(int)
    with pytest.raises(ValueError, match="'one' is registered twice"):
        registry.register("one")(float)


def _yaml_values(group: str, key: str) -> set[str]:
    """`key` of each file of `group` that sets it (model/toy_base.yaml, which the toys extend, does not)."""
    values = (yaml.safe_load(path.read_text()).get(key) for path in (Path(CONF_DIR) / group).glob("*.yaml"))
    return {value for value in values if value is not None}


def test_each_registry_offers_exactly_what_its_config_group_offers():
    assert _yaml_values("intervention", "name") == set(INTERVENTIONS)
    assert _yaml_values("probe", "method") == set(PROBES)
    assert _yaml_values("model", "adapter") == set(ADAPTERS)


@pytest.fixture
def scale_intervention():
    """An intervention added the way a contributor adds one: a class and its settings."""

    class Scale(Intervention):
        settings = {"factor": Real(0, low_open=True)}

        def replacement(self, *, cls_at_layer, cls_at_embedding, seed):
            return cls_at_layer * self.values["factor"]

    INTERVENTIONS.register("scale")(Scale)
    yield Scale
    INTERVENTIONS._entries.pop("scale")


def _cell_with(intervention: dict) -> dict:
    cfg = OmegaConf.to_container(compose_cell("model=toy_vit", "layer=3"), resolve=True)
    return {**cfg, "intervention": intervention}


def test_an_intervention_added_as_one_class_is_checked_measured_and_documented(scale_intervention):
    spec = cell_spec(_cell_with({"name": "scale", "factor": 2.0, "probe_after": False}))
    assert spec.intervention == "scale" and spec.seed is None  # draws no random numbers: no seed
    with pytest.raises(ConfigError, match=r"intervention.factor=0 is invalid: it must be a number > 0"):
        cell_spec(_cell_with({"name": "scale", "factor": 0, "probe_after": False}))
    with pytest.raises(ConfigError, match=r"intervention.probe_after is not set; it must be true or false"):
        cell_spec(_cell_with({"name": "scale", "factor": 2.0}))  # every intervention's setting, in its YAML
    with pytest.raises(ConfigError, match=r"intervention.group_size is not a setting of intervention"):
        cell_spec(_cell_with({"name": "scale", "factor": 2.0, "probe_after": False, "group_size": 128}))
    cls = torch.randn(5, 4)
    assert torch.equal(spec.settings.edit.replacement(cls_at_layer=cls, cls_at_embedding=cls, seed=None), cls * 2)
    assert "| `intervention.factor (intervention.name=scale)` | a number > 0 |" in settings_table()


def test_the_seed_is_part_of_a_cell_exactly_when_its_intervention_draws_random_numbers():
    for name, intervention in INTERVENTIONS.items():
        cfg = OmegaConf.to_container(
            compose_cell("model=toy_vit", "layer=3", f"intervention={name}", "seed=7"), resolve=True
        )
        assert cell_spec(cfg).seed == (7 if intervention.seeded else None), name
