"""Loading the five HF architectures: from the hub, a local folder, or a toy trained here.

All three go through the same `from_pretrained` call (`trust_remote_code` off); a toy is
just a local folder that `toy.train_toy` wrote with `save_pretrained` into the cache.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers

from sweep.adapters import Adapter, make_adapter
from sweep.errors import SweepError

transformers.utils.logging.disable_progress_bar()  # our own bars report progress


class ModelUnavailable(SweepError):
    """The model's weights cannot be read; the message says how to provide them."""


@dataclass(frozen=True)
class LoadedModel:
    adapter: Adapter
    revision: str


def hf_class(model_cfg: Mapping[str, Any]) -> type:
    name = str(model_cfg["hf_class"])
    try:
        return getattr(transformers, name)
    except AttributeError:
        raise ValueError(f"transformers has no class '{name}' (model.hf_class)") from None


def load_model(model_cfg: Mapping[str, Any], weights: str | Path, *, device: torch.device,
               attn_implementation: str) -> LoadedModel:
    """Load `weights` (hub id or folder) as `model.hf_class` and wrap it in its adapter."""
    cls = hf_class(model_cfg)
    kwargs = dict(model_cfg.get("load_kwargs") or {})
    revision = model_cfg.get("revision")
    try:
        model = cls.from_pretrained(str(weights), revision=revision, trust_remote_code=False,
                                    attn_implementation=attn_implementation, **kwargs)
    except OSError as error:
        raise ModelUnavailable(
            f"could not load {model_cfg['name']} from '{weights}' ({' '.join(str(error).split())[:120]}). "
            "Without hub access, download it "
            "elsewhere (`hf download <id> --local-dir DIR`) and set model.source=DIR") from error
    model = model.to(device).eval()
    adapter = make_adapter(str(model_cfg["adapter"]), model)
    expected = int(model_cfg["n_layers"])
    if adapter.n_layers != expected:
        raise ValueError(f"{model_cfg['name']} has {adapter.n_layers} blocks but conf/model says "
                         f"n_layers: {expected}; fix the YAML")
    found_revision = getattr(model.config, "_commit_hash", None) or revision or "local"
    return LoadedModel(adapter, str(found_revision))
