"""A cell's settings, typed: each group declares its valid values and is checked once.

`cellspec.cell_spec` parses every group of the composed config into a frozen object here,
so a bad value fails when the cell is specified — in `sweep-run` before any model loads
or toy trains, and in a sweep's plan (dry run included) before anything is launched —
with a message naming the key, the value and what is valid. Modelled on scikit-learn's
declared parameter constraints: a group is a table of rules, one per key, and the table is
the documentation of what the key accepts.

Torch-free on purpose: the planner parses thousands of cells in a second.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from sweep.errors import ConfigError
from sweep.interventions import COMMON_SETTINGS, INTERVENTIONS, Intervention, configured
from sweep.probes import PROBES
from sweep.registry import Registry
from sweep.rules import (
    MISSING,
    Device,
    Flag,
    Integer,
    Name,
    OneOf,
    Optional,
    Real,
    Rule,
    Text,
    TextList,
    Url,
    checked,
    frozen,
    invalid,
    plain,
)

# --------------------------------------------------------------------------- the groups

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("float32", "bfloat16")
ATTENTION = ("sdpa", "eager")
VERIFY_MODES = ("full", "size")
LOGGERS = ("none", "wandb")
WANDB_MODES = ("online", "offline", "disabled")
WANDB_ENV_MODES = (*WANDB_MODES, "dryrun")

_SUBSET = {
    "name": Text(),
    "source": Text(),
    "n_classes": Integer(2),
    "train_per_class": Integer(1),
    "val_per_class": Integer(1),
    "seed": Integer(0),
}
#: classes of ImageNet-1k, the index order of the image folder and the hub data
#: (src/sweep/resources/imagenet1k_wnids.txt; a test keeps the two equal)
IMAGENET_CLASSES = 1000
#: data source -> its settings (digits has ten classes)
DATA_SOURCES: Mapping[str, Mapping[str, Rule]] = {
    "sklearn_digits": {**_SUBSET, "n_classes": Integer(2, 10)},
    "imagefolder": {
        **_SUBSET,
        "n_classes": Integer(2, IMAGENET_CLASSES),
        "root": Text(),
        "train_dir": Text(),
        "val_dir": Text(),
    },
    "hub": {
        **_SUBSET,
        "n_classes": Integer(2, IMAGENET_CLASSES),
        "hub_id": Text(),
        "train_split": Text(),
        "val_split": Text(),
        "token_env": Text(),
        "shuffle_buffer": Integer(1),
    },
}
DATA_HINTS = {"root": "data=imagefolder needs data.root=/path/to/imagenet (train/<wnid>/*.JPEG, val/<wnid>/*.JPEG)"}


@dataclass(frozen=True)
class Compute:
    device: str
    dtype: str
    batch_size: int
    attn_implementation: str
    flush_denormal: bool

    RULES = MappingProxyType(
        {
            "device": Device(),
            "dtype": OneOf(*DTYPES),
            "batch_size": Integer(1),
            "attn_implementation": OneOf(*ATTENTION),
            "flush_denormal": Flag(),
        }
    )


@dataclass(frozen=True)
class Cache:
    dir: str
    enabled: bool
    verify: str

    RULES = MappingProxyType({"dir": Text(), "enabled": Flag(), "verify": OneOf(*VERIFY_MODES)})


@dataclass(frozen=True)
class Wandb:
    project: str
    entity: str | None
    mode: str
    base_url: str
    reachability_timeout_s: float
    init_timeout_s: float
    finish_timeout_s: float
    tags: tuple[str, ...]
    log_outcomes: bool

    RULES = MappingProxyType(
        {
            "project": Text(),
            "entity": Optional(Text()),
            "mode": OneOf(*WANDB_MODES),
            "base_url": Url(),
            "reachability_timeout_s": Real(0, low_open=True),
            "init_timeout_s": Real(0, low_open=True),
            "finish_timeout_s": Real(0, low_open=True),
            "tags": TextList(),
            "log_outcomes": Flag(),
        }
    )


@dataclass(frozen=True)
class Tracking:
    logger: str
    wandb: Wandb | None  # checked only when logger=wandb uses it


@dataclass(frozen=True)
class ToyTraining:
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    seed: int
    data: Mapping[str, Any]

    RULES = MappingProxyType(
        {
            "epochs": Integer(1),
            "batch_size": Integer(1),
            "lr": Real(0, low_open=True),
            "weight_decay": Real(0),
            "seed": Integer(0),
            "data": Rule(),
        }
    )


@dataclass(frozen=True)
class Variant:
    """A group whose settings depend on one of its keys (an intervention's name, a probe's
    method, a data source): the choice, and its checked settings."""

    choice: str
    values: Mapping[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.values[key]


@dataclass(frozen=True)
class Model:
    """A model group (conf/model/<name>.yaml). Its fields are the one declaration of the keys
    a model config may set (required: those without a default); `cellspec` checks the
    values, which needs the adapters (what an architecture can read out)."""

    name: str
    adapter: str
    hf_class: str
    n_layers: int
    readouts: Mapping[str, Mapping[str, Any]]  # readout -> {head: native | fitted, ...options}
    projection_readout: str  # whose head the class-embedding projection uses
    source: str | None = None  # hub id or local folder; `toy` for a toy
    revision: str | None = None
    load_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    toy: Mapping[str, Any] | None = None  # a toy's HF config class and config
    preprocess: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, node: Mapping[str, Any]) -> Model:
        """From a checked model node (a key set to null takes its default)."""
        return cls(**{key: value for key, value in node.items() if value is not None})

    @property
    def is_toy(self) -> bool:
        return self.toy is not None

    @property
    def fitted_readouts(self) -> list[str]:
        """The readouts whose head is fitted here (not the checkpoint's own)."""
        return [name for name, readout in self.readouts.items() if readout["head"] == "fitted"]


#: model key -> whether a model config must set it (from `Model`'s fields)
MODEL_KEYS: Mapping[str, bool] = MappingProxyType(
    {
        f.name: f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        for f in dataclasses.fields(Model)
    }
)


@dataclass(frozen=True)
class CellSettings:
    """Every setting a cell acts on, checked."""

    model: Model
    compute: Compute
    intervention: Variant
    edit: Intervention  # the intervention, configured once with the checked `intervention` settings
    probe: Variant
    data: Variant
    cache: Cache
    tracking: Tracking
    outcomes_save: bool
    toy_training: ToyTraining | None


# --------------------------------------------------------------------------- parsing


def parse_fixed(cls: type, key: str, node: Any, hints: Mapping[str, str] = MappingProxyType({})) -> Any:
    return cls(**checked(key, plain(node), cls.RULES, hints=hints))


def rules_of(registry: Registry) -> dict[str, Mapping[str, Rule]]:
    """A registry's choices, each with the settings its class declares."""
    return {name: entry.settings for name, entry in registry.items()}


def parse_variant(
    key: str,
    node: Any,
    selector: str,
    table: Mapping[str, Mapping[str, Rule]],
    *,
    nested: str | None = None,
    hints: Mapping[str, str] = MappingProxyType({}),
) -> Variant:
    """`table[node[selector]]` checks the rest of the group (or its `nested` sub-group)."""
    node = plain(node)
    if not isinstance(node, Mapping):
        raise ConfigError(f"{key} must be a group of settings, not {node!r}")
    choice = node.get(selector, MISSING)
    if choice not in table:
        raise invalid(f"{key}.{selector}", choice, "one of " + ", ".join(table))
    if nested is None:
        rules = {selector: OneOf(*table), **table[choice]}
        return Variant(choice, frozen(checked(key, node, rules, hints=hints)))
    checked(key, node, {selector: OneOf(*table), nested: Rule()})
    return Variant(choice, frozen(checked(f"{key}.{nested}", node[nested], table[choice], hints=hints)))


def parse_data(node: Any, key: str = "data") -> Variant:
    return parse_variant(key, node, "source", DATA_SOURCES, hints=DATA_HINTS)


def parse_tracking(cfg: Mapping[str, Any]) -> Tracking:
    logger = checked("logger", plain(cfg["logger"]), {"name": OneOf(*LOGGERS)})["name"]
    wandb = parse_fixed(Wandb, "wandb", cfg["wandb"]) if logger == "wandb" else None
    env_mode = os.environ.get("WANDB_MODE")
    if logger == "wandb" and env_mode and env_mode not in WANDB_ENV_MODES:
        raise invalid("WANDB_MODE (environment)", env_mode, "one of " + ", ".join(WANDB_ENV_MODES))
    return Tracking(logger, wandb)


def parse_integer(key: str, value: Any, rule: Integer) -> int:
    return rule.check(key, plain(value))


def parse_cache(cfg: Mapping[str, Any]) -> Cache:
    return parse_fixed(
        Cache,
        "cache",
        cfg["cache"],
        hints={
            "dir": "set cache.dir, or SWEEP_CACHE_DIR when it is set but empty, to a folder (on a cluster, one that "
            "every node shares)"
        },
    )


def parse_settings(cfg: Mapping[str, Any], *, model: Model) -> CellSettings:
    """Every group of a composed cell config, checked (see the module docstring); `model`
    is checked by `cellspec`, which knows the adapters."""
    toy = None
    if model.is_toy:
        toy = parse_fixed(ToyTraining, "toy_training", cfg["toy_training"])
        toy = ToyTraining(**{**toy.__dict__, "data": parse_data(cfg["toy_training"]["data"], "toy_training.data")})
    intervention = parse_variant("intervention", cfg["intervention"], "name", rules_of(INTERVENTIONS))
    return CellSettings(
        model=model,
        compute=parse_fixed(Compute, "compute", cfg["compute"]),
        intervention=intervention,
        edit=configured(intervention.choice, intervention.values),
        probe=parse_variant("probe", cfg["probe"], "method", rules_of(PROBES), nested="settings"),
        data=parse_data(cfg["data"]),
        cache=parse_cache(cfg),
        tracking=parse_tracking(cfg),
        outcomes_save=checked("outcomes", plain(cfg["outcomes"]), {"save": Flag()})["save"],
        toy_training=toy,
    )


@dataclass(frozen=True)
class SweepRun:
    """The `sweep:` settings that change what a launch does (the rest name folders)."""

    dry_run: bool
    force: bool
    heartbeat_s: float
    stale_after_s: float
    unit: UnitSize


@dataclass(frozen=True)
class UnitSize:
    """How the cell sweeper packs cells into work units (`sweep.unit`): a unit is one Hydra
    job (one SLURM array task) that loads its model once and shares every unmodified pass
    and suffix among its cells. Null limits: one unit per model, data and compute settings."""

    max_cells: int | None
    max_cost: int | None  # block applications per validation image (the plan's estimate)
    checkpoint_s: float  # a killed unit loses at most this much of its pass

    RULES = MappingProxyType(
        {
            "max_cells": Optional(Integer(1)),
            "max_cost": Optional(Integer(1)),
            "checkpoint_s": Real(0),
            "id": Optional(Text()),
        }
    )


#: every key of the `sweep:` group (`lease` and `unit` are checked as groups of their own):
#: a key outside it (`+sweep.result_from=...`, a typo) is refused, not silently ignored
SWEEP_RULES = MappingProxyType(
    {
        "name": Optional(Name()),
        "id": Optional(Name()),
        "root": Text(),
        "dry_run": Flag(),
        "force": Flag(),
        "results_from": TextList(),
        "lease": Rule(),
        "unit": Rule(),
    }
)


def parse_sweep(sweep: Mapping[str, Any]) -> SweepRun:
    values = checked("sweep", plain(sweep), SWEEP_RULES)
    flags = {key: values[key] for key in ("dry_run", "force")}
    lease = checked(
        "sweep.lease",
        plain(sweep["lease"]),
        {"heartbeat_s": Real(0, low_open=True), "stale_after_s": Real(0, low_open=True)},
    )
    if lease["heartbeat_s"] >= lease["stale_after_s"]:
        raise invalid(
            "sweep.lease.heartbeat_s",
            lease["heartbeat_s"],
            f"below sweep.lease.stale_after_s ({lease['stale_after_s']:g}): a live owner would look dead",
        )
    unit = checked("sweep.unit", plain(sweep["unit"]), UnitSize.RULES)
    unit.pop("id")  # the unit a job runs, set by the sweeper: read by sweep.run, not a choice
    return SweepRun(**flags, **lease, unit=UnitSize(**unit))


# --------------------------------------------------------------------------- where the cell runs


def check_data_folders(data: Mapping[str, Any], key: str = "data") -> None:
    """The data a cell reads, checked as far as listing files and reading image headers
    goes (`sweep.data.check_data`): cheap, so it is checked before any model loads or toy
    trains rather than when the images are first read."""
    from sweep.data import check_data  # numpy and PIL: only once a cell is specified

    check_data(data, key)


def check_cache_dir(setting: str, root: Path) -> None:
    """`cache.dir` (`setting`, at the absolute `root`) must be a folder this process can
    write: a file, a folder under /proc, a read-only mount otherwise fails the cell only once
    its lease is taken and its model loads, as a traceback and a `failed` record. Creates the
    folder (the cache would) and a nameless probe file, which vanishes when closed."""
    if root.exists() and not root.is_dir():
        raise invalid("cache.dir", setting, f"a folder, and {root} is a file")
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root):
            pass
    except OSError as error:
        raise invalid(
            "cache.dir",
            setting,
            f"a folder this process can create and write ({root}: "
            f"{error.strerror or error}); set cache.dir or SWEEP_CACHE_DIR to one "
            "(on a cluster, one that every node shares)",
        ) from None


def cuda_visible() -> bool:
    """Whether this machine shows an NVIDIA GPU to this process, without importing torch."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    gpus = Path("/proc/driver/nvidia/gpus")
    return (gpus.is_dir() and any(gpus.iterdir())) or Path("/dev/nvidia0").exists()


def check_device(compute: Compute, *, cuda_devices: int) -> None:
    """Refuse a CUDA device this machine does not have (before any model loads)."""
    if not compute.device.startswith("cuda"):
        return
    index = int(compute.device.partition(":")[2] or 0)
    if index >= cuda_devices:
        found = f"it has {cuda_devices} CUDA device(s)" if cuda_devices else "CUDA is not available on this machine"
        raise ConfigError(
            f"compute.device={compute.device} is invalid here: {found}; use compute.device=auto "
            "(the GPU where there is one) or compute.device=cpu"
        )


# --------------------------------------------------------------------------- documentation


def settings_table() -> str:
    """Every checked key and what it accepts, as the markdown table in docs/settings.md (a
    test keeps the two equal, so the documentation cannot drift from the rules)."""
    rows: list[tuple[str, str]] = [
        ("layer", "an integer, 0..N or -(N+1)..-1 (N = model.n_layers)"),
        ("seed", Integer(0).description),
    ]
    fixed = (
        ("compute", Compute.RULES),
        ("cache", Cache.RULES),
        ("wandb (logger=wandb)", Wandb.RULES),
        ("toy_training", ToyTraining.RULES),
    )
    for group, rules in fixed:
        prefix = group.split()[0]
        rows += [(f"{prefix}.{key}", rule.description) for key, rule in rules.items() if key != "data"]
    rows += [
        ("logger", "one of " + ", ".join(LOGGERS)),
        ("outcomes.save", Flag.description),
        ("sweep.name", SWEEP_RULES["name"].description),
        ("sweep.root", SWEEP_RULES["root"].description),
        ("sweep.results_from", SWEEP_RULES["results_from"].description),
        ("sweep.dry_run", Flag.description),
        ("sweep.force", Flag.description),
        ("sweep.lease.heartbeat_s", "a number > 0, below sweep.lease.stale_after_s"),
        ("sweep.lease.stale_after_s", "a number > 0"),
    ]
    rows += [(f"sweep.unit.{key}", rule.description) for key, rule in UnitSize.RULES.items() if key != "id"]
    variants = (
        ("intervention", "name", rules_of(INTERVENTIONS), ""),
        ("probe", "method", rules_of(PROBES), "settings."),
        ("data", "source", DATA_SOURCES, ""),
    )
    for group, selector, table, nested in variants:
        rows.append((f"{group}.{selector}", "one of " + ", ".join(table)))
        if group == "data":
            rows += [
                (
                    f"data.{key}",
                    rule.description
                    + (
                        f" (at most 10 for sklearn_digits, {IMAGENET_CLASSES} for imagefolder and hub)"
                        if key == "n_classes"
                        else ""
                    ),
                )
                for key, rule in _SUBSET.items()
                if key != "source"
            ]
        common = COMMON_SETTINGS if group == "intervention" else {}
        rows += [(f"{group}.{key} (every {group})", rule.description) for key, rule in common.items()]
        for choice, rules in table.items():
            rows += [
                (f"{group}.{nested}{key} ({group}.{selector}={choice})", rule.description)
                for key, rule in rules.items()
                if key not in _SUBSET and key not in common
            ]
    return "\n".join(["| key | valid values |", "|---|---|", *(f"| `{k}` | {v} |" for k, v in rows)])
