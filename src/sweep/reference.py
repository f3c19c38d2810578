"""What the hub models should score on ImageNet-1k, and the check that a sweep does.

A sweep whose plain accuracy is far below the reference has almost always read the
images or the weights wrongly (a resize, a normalisation, a head that did not load); the
numbers after it would be meaningless, so `sweep-aggregate` says so in one line per model.
The values live in `conf/reference.yaml` (sources in docs/reference.md), not here.
Torch-free, like aggregation.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from sweep.conf_path import CONF_DIR

REFERENCE_FILE = "reference.yaml"
IMAGENET_SOURCES = ("imagenet", "imagefolder")
IMAGENET_CLASSES = 1000


def load_reference(conf_dir: Path = CONF_DIR) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.load(Path(conf_dir) / REFERENCE_FILE), resolve=True)


def reference_warnings(complete: pd.DataFrame, reference: Mapping[str, Any] | None = None) -> list[str]:
    """One line per (model, readout) whose mean plain accuracy on ImageNet-1k is more than
    the tolerance below its reference. Cells on other data, or of models without a
    reference, are not compared."""
    reference = load_reference() if reference is None else reference
    tolerance, expected = float(reference["tolerance"]), reference["models"]
    plain = complete[(complete["intervention"] == "none") & complete["data"].isin(IMAGENET_SOURCES)
                     & (complete["n_classes"] == IMAGENET_CLASSES)]
    lines = []
    for (model, readout), cells in plain.groupby(["model", "readout"], sort=True):
        value = (expected.get(model) or {}).get(readout)
        accuracy = float(cells["accuracy"].mean())
        if value is not None and accuracy < float(value) - tolerance:
            lines.append(f"warning: {model} (readout={readout}) scores {accuracy:.3f} without intervention on "
                         f"ImageNet-1k, {float(value) - accuracy:.3f} below its reference {float(value):.3f} "
                         f"(tolerance {tolerance:g}, {len(cells)} cells); check its preprocessing and the weights "
                         f"it loaded (docs/reference.md)")
    return lines
