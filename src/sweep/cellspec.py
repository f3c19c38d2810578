"""What a cell *is*: its validated settings, its identity hash and its folder name.

Deliberately free of torch and transformers: the sweeper plans thousands of cells with
it (dry runs, resume checks) in a fraction of a second.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from omegaconf import DictConfig

from sweep.adapters import ADAPTERS
from sweep.errors import ConfigError
from sweep.interventions import INTERVENTIONS, edited_token, intervention_label, variant
from sweep.rules import Integer, Rule, checked, plain
from sweep.settings import CellSettings, check_data_folders, parse_integer, parse_settings

RECORD_FORMAT = 4  # 2: the identity includes compute.attn_implementation and compute.flush_denormal,
                   # and the seed only where the intervention draws random numbers;
                   # 3: records carry the donor metrics, and intervention.probe_after is in the identity;
                   # 4: the shuffle's intervention.token is in the identity, records carry `token`

#: config key -> its name in a cell's identity: the only settings that change what a cell
#: measures. The cell id hashes their values; the sweep id hashes the overrides of exactly
#: these keys, so that a setting of how or where cells run (batch size, device, logger,
#: cache, launcher) never starts a new sweep folder.
SCIENCE = {"model": "model", "data": "data", "intervention": "intervention", "readout": "readout",
           "probe": "probe", "layer": "layer", "seed": "seed", "compute.dtype": "dtype",
           "compute.attn_implementation": "attn_implementation", "compute.flush_denormal": "flush_denormal",
           "toy_training": "toy_training"}


def is_scientific(key: str) -> bool:
    """Whether the config key `key` (dotted, as on a command line) is, or lies inside, one of
    the keys of a cell's identity."""
    key = key.lstrip("+~")
    return any(key == science or key.startswith(science + ".") for science in SCIENCE)


__all__ = ["MODEL_KEYS", "SCIENCE", "CellSpec", "LayerOutOfRange", "NotApplicable", "cell_spec", "is_scientific",
           "resolve_layer"]


class NotApplicable(ConfigError):
    """A valid grid point that this model cannot run (a layer, readout or token it lacks): a sweep
    skips it with a line, where any other bad setting stops the whole plan."""


class LayerOutOfRange(NotApplicable):
    """The requested layer does not exist in this model."""


def resolve_layer(layer: int, n_layers: int, model_name: str = "the model") -> int:
    """Hidden-state index 0..N; negative values count from the end (-1 = N)."""
    if not -(n_layers + 1) <= layer <= n_layers:
        raise LayerOutOfRange(
            f"layer={layer} is out of range for {model_name}, which has {n_layers} blocks: valid layers are "
            f"0..{n_layers} (0 = embedding output, {n_layers} = last block), or -{n_layers + 1}..-1 from the end")
    return layer % (n_layers + 1)


@dataclass(frozen=True)
class CellSpec:
    """The scientific content of one cell, validated; equal specs give equal results."""

    model: str
    layer: int
    n_layers: int
    intervention: str
    readout: str
    seed: int | None  # None: the intervention draws no random numbers, so no seed changes the cell
    science: Mapping[str, Any]
    token: str | None = None  # what the intervention moves (`intervention.token`); None: it has no such setting
    settings: CellSettings | None = field(default=None, compare=False)

    @property
    def cell_id(self) -> str:
        text = json.dumps(self.science, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def name(self) -> str:
        seed = "" if self.seed is None else f"-s{self.seed}"
        label = intervention_label(self.intervention, variant(self.intervention, self.science["intervention"]))
        return f"{self.model}-L{self.layer:02d}-{label}-{self.readout}{seed}"

    @property
    def subdir(self) -> str:
        """Output folder inside a sweep: keyed by cell, not by Hydra's job number."""
        return f"{self.model}/{self.name}-{self.cell_id[:8]}"


#: every key a model config (conf/model/*.yaml) may set -> whether it must be set: the one
#: declaration of a model's keys, so a typo (`+model.revison=...`) is refused, not ignored
MODEL_KEYS = MappingProxyType({
    "name": True, "adapter": True, "hf_class": True, "n_layers": True, "readouts": True, "projection_readout": True,
    "source": False, "revision": False, "load_kwargs": False, "toy": False, "preprocess": False})


def _model(node: Any) -> dict[str, Any]:
    """The model node, with what can be checked without loading it: its architecture is
    one the adapters know and can read out as its `readouts` say. (`hf_class` and
    `toy.config_class` name classes of transformers, which the planner does not import:
    they are checked as the cell's unit starts, before any data is read.)"""
    model = plain(node)
    if not isinstance(model, Mapping):
        raise ConfigError(f"model must be a group of settings, not {model!r}")
    unknown = sorted(set(model) - set(MODEL_KEYS))
    if unknown:
        raise ConfigError(f"model.{unknown[0]} is not a setting of model; its settings are: {', '.join(MODEL_KEYS)}")
    for key in (key for key, required in MODEL_KEYS.items() if required):
        if key not in model:
            raise ConfigError(f"model.{key} is not set (its model config, model/{model.get('name', '<name>')}.yaml)")
    Integer(1).check("model.n_layers", model["n_layers"])
    if not isinstance(model["readouts"], Mapping):
        raise ConfigError(f"model.readouts must be a group of readouts, not {model['readouts']!r}")
    ADAPTERS[model["adapter"]].check_readouts(model["readouts"])
    if model["projection_readout"] not in model["readouts"]:
        raise ConfigError(f"model.projection_readout={model['projection_readout']} is invalid: it must be one of "
                          f"the model's readouts ({', '.join(model['readouts'])})")
    return model


def cell_spec(cfg: DictConfig | Mapping[str, Any]) -> CellSpec:
    """Validate every setting of the cell (cheaply, before any weights load) and identify it.

    Raises `NotApplicable` for a grid point this model cannot run, `ConfigError` for any
    other bad setting, and `DataUnavailable` for data that cannot give the subsets asked for
    (`sweep.data.check_data`)."""
    model = _model(cfg["model"])
    n_layers, model_name = int(model["n_layers"]), str(model["name"])
    settings = parse_settings(cfg, is_toy=model.get("toy") is not None)
    layer = resolve_layer(parse_integer("layer", cfg["layer"], Integer()), n_layers, model_name)
    seed = parse_integer("seed", cfg["seed"], Integer(0))
    intervention = INTERVENTIONS[settings.intervention.choice]
    if not intervention.seeded:
        seed = None  # a grid over seeds measures such a cell once
    if intervention.needs_a_block and layer == n_layers:
        raise LayerOutOfRange(
            f"layer={cfg['layer']} is L = {n_layers}, the last hidden state of {model_name}: intervention="
            f"{settings.intervention.choice} acts in the blocks after layer L and there is none; valid layers are "
            f"0..{n_layers - 1}, or -{n_layers + 1}..-2 from the end")
    values = settings.intervention.values
    token = edited_token(settings.intervention.choice, values) if "token" in intervention.settings else None
    supported_tokens = ADAPTERS[model["adapter"]].supported_tokens
    if token is not None and token not in supported_tokens:
        raise NotApplicable(f"model {model_name} has no '{token}' token for intervention.token (it has: "
                            f"{', '.join(supported_tokens)})")
    readout = checked("readout", plain(cfg["readout"]), {"name": Rule()})["name"]
    readouts = model["readouts"]
    if readout not in readouts:
        raise NotApplicable(
            f"model {model_name} has no '{readout}' readout (it has: {', '.join(readouts)}); "
            + (f"its model config (model/{model_name}.yaml) declares no readout of the CLS token alone; "
               "use readout=native" if readout == "cls" else "choose one of those"))
    check_data_folders(settings.data.values)
    if settings.toy_training is not None:  # the toy learns digits first: a subset it lacks fails now, not then
        check_data_folders(settings.toy_training.data.values, "toy_training.data")
    compute = settings.compute
    science: dict[str, Any] = {
        "format": RECORD_FORMAT,
        "model": model,
        "data": dict(settings.data.values),
        "intervention": dict(settings.intervention.values),
        "readout": readout,
        "probe": {"method": settings.probe.choice, "settings": dict(settings.probe.values)},
        "layer": layer,
        "seed": seed,
        "dtype": compute.dtype,
        "attn_implementation": compute.attn_implementation,
        "flush_denormal": compute.flush_denormal,
    }
    if settings.toy_training is not None:
        toy = settings.toy_training
        science["toy_training"] = {**{k: getattr(toy, k) for k in ("epochs", "batch_size", "lr", "weight_decay",
                                                                   "seed")}, "data": dict(toy.data.values)}
    return CellSpec(model=model_name, layer=layer, n_layers=n_layers, intervention=settings.intervention.choice,
                    readout=readout, seed=seed, science=science, settings=settings, token=token)
