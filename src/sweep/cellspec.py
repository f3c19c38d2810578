"""What a cell *is*: its validated settings, its identity hash and its folder name.

Deliberately free of torch and transformers: the sweeper plans thousands of cells with
it (dry runs, resume checks) in a fraction of a second.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig

from sweep.adapters import ADAPTERS
from sweep.errors import ConfigError
from sweep.interventions import intervention_label, variant
from sweep.rules import Integer, Rule, checked, invalid, plain
from sweep.settings import MODEL_KEYS, CellSettings, Model, check_data_folders, parse_integer, parse_settings

#: What a cell id means; part of every identity, so bump it only when cells measure something
#: else (then every cell is measured again). 2: the identity includes
#: compute.attn_implementation and compute.flush_denormal, and the seed only where the
#: intervention draws random numbers; 3: intervention.probe_after; 4: the shuffle's
#: intervention.token; 5: the identity is the whole resolved config but NOT_MEASURED (a
#: setting added later is in it by default). A new metric or record field is not a new
#: measurement: it bumps `record.RECORD_FORMAT`, which is in no cell id (docs/recipes.md).
IDENTITY_FORMAT = 5

#: The settings that change no number a cell reports: where its records, logs and cache
#: live, what it logs, how its launch is packed, and how many rows a call carries. Every
#: other key of a cell's resolved config is in its identity, so a setting added later is in
#: it by default. `tests/test_identity.py` changes every leaf of a toy cell's config and
#: checks the declaration: a change of one of these keys leaves the cell's numbers bit for
#: bit as they were (compute.device and compute.batch_size are in the key of every artifact
#: they feed, where float rounding could differ), and a change of any other changes the id.
NOT_MEASURED = (
    "hydra",
    "logger",
    "wandb",
    "sweep",
    "cache",
    "outcomes",
    "compute.device",
    "compute.batch_size",
    "data.token_env",
    "toy_training.data.token_env",
)
#: the grid's axes inside an identity: the table compares everything else within a series
GRID_KEYS = ("layer", "seed")


def is_scientific(key: str) -> bool:
    """Whether the config key `key` (dotted, as on a command line; a group override such as
    `logger=none` is its group's key) is part of a cell's identity: anything not in or under
    NOT_MEASURED."""
    key = key.lstrip("+~").replace("/", ".")
    return not any(key == other or key.startswith(other + ".") for other in NOT_MEASURED)


def without(node: Mapping[str, Any], dotted: Iterable[str], prefix: str = "") -> dict[str, Any]:
    """`node` (plain containers) without the keys `dotted` names, relative to `prefix`."""
    out = {}
    for key, value in node.items():
        path = f"{prefix}{key}"
        if path in dotted:
            continue
        out[key] = without(value, dotted, f"{path}.") if isinstance(value, Mapping) else value
    return out


def measured_config(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The part of a cell's resolved config that its numbers can depend on: everything but
    NOT_MEASURED, and `toy_training` only for a toy (nothing else trains one). The artifact
    cache's keys are cut from it (sweep.artifacts), so what the identity covers, they cover."""
    # top-level keys one at a time, so that an unmeasured node is never resolved: `hydra`
    # refers to the cell's own folder (`${cell:subdir}`), which is named after this identity
    config = without({key: plain(cfg[key]) for key in cfg if key not in NOT_MEASURED}, NOT_MEASURED)
    if (config.get("model") or {}).get("toy") is None:
        config.pop("toy_training", None)
    return config


__all__ = [
    "MODEL_KEYS",
    "NOT_MEASURED",
    "CellSpec",
    "LayerOutOfRange",
    "NotApplicable",
    "cell_spec",
    "is_scientific",
    "measured_config",
    "resolve_layer",
]


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
            f"0..{n_layers} (0 = embedding output, {n_layers} = last block), or -{n_layers + 1}..-1 from the end"
        )
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


#: `from_pretrained` arguments that `models.load_model` sets itself, and why `model.load_kwargs`
#: may not: given twice, the load would end in a TypeError after the cell started, and a
#: checkpoint's own code must never run on the machines that load it.
LOADER_ARGUMENTS = {
    "trust_remote_code": "left out: models always load with trust_remote_code=False, so no code shipped with a "
    "checkpoint runs; choose a built-in class with model.hf_class",
    "revision": "left out; set model.revision instead",
    "attn_implementation": "left out; set compute.attn_implementation instead",
    "output_loading_info": "left out: the loader asks for it to check what loaded",
    "ignore_mismatched_sizes": "left out: the loader sets it to name mismatched weights itself",
}


def _check_load_kwargs(load_kwargs: Any) -> None:
    if load_kwargs is None:
        return
    if not isinstance(load_kwargs, Mapping):
        raise ConfigError(f"model.load_kwargs must be a group of from_pretrained arguments, not {load_kwargs!r}")
    for key, why in LOADER_ARGUMENTS.items():
        if key in load_kwargs:
            raise invalid(f"model.load_kwargs.{key}", load_kwargs[key], why)


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
    _check_load_kwargs(model.get("load_kwargs"))
    if model["projection_readout"] not in model["readouts"]:
        raise ConfigError(
            f"model.projection_readout={model['projection_readout']} is invalid: it must be one of "
            f"the model's readouts ({', '.join(model['readouts'])})"
        )
    return model


def identity(
    cfg: DictConfig | Mapping[str, Any],
    settings: CellSettings,
    *,
    model: Mapping[str, Any],
    readout: str,
    layer: int,
    seed: int | None,
) -> dict[str, Any]:
    """What a cell's id hashes: its whole resolved config, each checked group in its checked
    form (`1` and `1.0` are one value), the layer resolved (-1 is N), the seed only where
    the intervention draws random numbers, and without NOT_MEASURED (`measured_config`)."""
    config = {key: cfg[key] for key in cfg}
    config.update(
        model=dict(model),
        readout=readout,
        layer=layer,
        seed=seed,
        data=dict(settings.data.values),
        intervention=dict(settings.intervention.values),
        probe={"method": settings.probe.choice, "settings": dict(settings.probe.values)},
        compute=dict(vars(settings.compute)),
    )
    if settings.toy_training is not None:
        config["toy_training"] = {**vars(settings.toy_training), "data": dict(settings.toy_training.data.values)}
    return {"format": IDENTITY_FORMAT, **measured_config(config)}


def cell_spec(cfg: DictConfig | Mapping[str, Any]) -> CellSpec:
    """Validate every setting of the cell (cheaply, before any weights load) and identify it.

    Raises `NotApplicable` for a grid point this model cannot run, `ConfigError` for any
    other bad setting, and `DataUnavailable` for data that cannot give the subsets asked for
    (`sweep.data.check_data`)."""
    model = _model(cfg["model"])
    n_layers, model_name = int(model["n_layers"]), str(model["name"])
    settings = parse_settings(cfg, model=Model.of(model))
    layer = resolve_layer(parse_integer("layer", cfg["layer"], Integer()), n_layers, model_name)
    seed = parse_integer("seed", cfg["seed"], Integer(0))
    intervention = settings.edit
    if not intervention.seeded:
        seed = None  # a grid over seeds measures such a cell once
    if intervention.needs_a_block and layer == n_layers:
        raise LayerOutOfRange(
            f"layer={cfg['layer']} is L = {n_layers}, the last hidden state of {model_name}: intervention="
            f"{intervention.name} acts in the blocks after layer L and there is none; valid layers are "
            f"0..{n_layers - 1}, or -{n_layers + 1}..-2 from the end"
        )
    token = intervention.token if "token" in intervention.settings else None
    supported_tokens = ADAPTERS[model["adapter"]].supported_tokens
    if token is not None and token not in supported_tokens:
        raise NotApplicable(
            f"model {model_name} has no '{token}' token for intervention.token (it has: {', '.join(supported_tokens)})"
        )
    readout = checked("readout", plain(cfg["readout"]), {"name": Rule()})["name"]
    readouts = model["readouts"]
    if readout not in readouts:
        raise NotApplicable(
            f"model {model_name} has no '{readout}' readout (it has: {', '.join(readouts)}); "
            + (
                f"its model config (model/{model_name}.yaml) declares no readout of the CLS token alone; "
                "use readout=native"
                if readout == "cls"
                else "choose one of those"
            )
        )
    check_data_folders(settings.data.values)
    if settings.toy_training is not None:  # the toy learns digits first: a subset it lacks fails now, not then
        check_data_folders(settings.toy_training.data.values, "toy_training.data")
    science = identity(cfg, settings, model=model, readout=readout, layer=layer, seed=seed)
    return CellSpec(
        model=model_name,
        layer=layer,
        n_layers=n_layers,
        intervention=intervention.name,
        readout=readout,
        seed=seed,
        science=science,
        settings=settings,
        token=token,
    )
