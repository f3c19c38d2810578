"""What a cell *is*: its validated settings, its identity hash and its folder name.

Deliberately free of torch and transformers: the sweeper plans thousands of cells with
it (dry runs, resume checks) in a fraction of a second.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from sweep.errors import ConfigError

INTERVENTIONS = ("none", "shuffle", "zero", "mean", "noise", "reset")
RECORD_FORMAT = 1


class LayerOutOfRange(ConfigError):
    """The requested layer does not exist in this model."""


def resolve_layer(layer: int, n_layers: int, model_name: str = "the model") -> int:
    """Hidden-state index 0..N; negative values count from the end (-1 = N)."""
    if not -(n_layers + 1) <= layer <= n_layers:
        raise LayerOutOfRange(
            f"layer={layer} is out of range for {model_name}, which has {n_layers} blocks: valid layers are "
            f"0..{n_layers} (0 = embedding output, {n_layers} = last block), or -{n_layers + 1}..-1 from the end")
    return layer % (n_layers + 1)


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


@dataclass(frozen=True)
class CellSpec:
    """The scientific content of one cell, validated; equal specs give equal results."""

    model: str
    layer: int
    n_layers: int
    intervention: str
    readout: str
    seed: int
    science: Mapping[str, Any]

    @property
    def cell_id(self) -> str:
        text = json.dumps(self.science, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def name(self) -> str:
        return f"{self.model}-L{self.layer:02d}-{self.intervention}-{self.readout}-s{self.seed}"

    @property
    def subdir(self) -> str:
        """Output folder inside a sweep: keyed by cell, not by Hydra's job number."""
        return f"{self.model}/{self.name}-{self.cell_id[:8]}"


def cell_spec(cfg: DictConfig | Mapping[str, Any]) -> CellSpec:
    """Validate the cell's settings (cheaply, before any weights load) and identify it."""
    model = cfg["model"]
    n_layers = int(model["n_layers"])
    layer = resolve_layer(int(cfg["layer"]), n_layers, str(model["name"]))
    intervention = str(cfg["intervention"]["name"])
    if intervention not in INTERVENTIONS:
        raise ConfigError(f"unknown intervention '{intervention}'; choose one of {', '.join(INTERVENTIONS)}")
    readout = str(cfg["readout"]["name"])
    readouts = model["readouts"]
    if readout not in readouts:
        raise ConfigError(
            f"model {model['name']} has no '{readout}' readout (it has: {', '.join(readouts)}); "
            + ("its readout is the token average, so a CLS-only readout does not exist; use readout=native"
               if readout == "cls" else "choose one of those"))
    science: dict[str, Any] = {
        "format": RECORD_FORMAT,
        "model": _plain(model),
        "data": _plain(cfg["data"]),
        "intervention": _plain(cfg["intervention"]),
        "readout": readout,
        "probe": _plain(cfg["probe"]),
        "layer": layer,
        "seed": int(cfg["seed"]),
        "dtype": str(cfg["compute"]["dtype"]),
    }
    if model.get("toy") is not None:
        science["toy_training"] = _plain(cfg["toy_training"])
    return CellSpec(model=str(model["name"]), layer=layer, n_layers=n_layers, intervention=intervention,
                    readout=readout, seed=int(cfg["seed"]), science=science)
