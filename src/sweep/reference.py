"""What the hub models should score on ImageNet-1k, and the check that a sweep does.

A sweep whose plain accuracy is far below the reference has almost always read the
images or the weights wrongly (a resize, a normalisation, a head that did not load); the
numbers after it would be meaningless, so `sweep-aggregate` says so in one line per model.
The values live in `conf/reference.yaml` (sources in docs/reference.md), not here,
each with the settings it was measured at: a head fitted here moves with the training images
and the probe, so only cells at those settings are compared, and a (model, readout) without
a reference is named rather than passed over. Torch-free, like aggregation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from sweep.conf_path import CONF_DIR
from sweep.record import probe_settings_text

REFERENCE_FILE = "reference.yaml"
IMAGENET_SOURCES = ("imagenet", "imagefolder")
IMAGENET_CLASSES = 1000


def load_reference(conf_dir: Path = CONF_DIR) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.load(Path(conf_dir) / REFERENCE_FILE), resolve=True)


def reference_warnings(complete: pd.DataFrame, reference: Mapping[str, Any] | None = None) -> list[str]:
    """One line per (model, readout) with plain cells on ImageNet-1k: a warning where their
    mean accuracy is more than the tolerance below the reference, and a note where there is
    no reference or where some cells were not compared (settings other than the reference's:
    a head fitted on 2 images per class is not a broken model). Only cells at the settings
    the reference was measured with are averaged, so 0.80 and 0.70 from two settings cannot
    average out. Cells on other data are not compared."""
    reference = load_reference() if reference is None else reference
    tolerance, expected = float(reference["tolerance"]), reference["models"]
    plain = complete[
        (complete["intervention"] == "none")
        & complete["data"].isin(IMAGENET_SOURCES)
        & (complete["n_classes"] == IMAGENET_CLASSES)
    ]
    lines = []
    for (model, readout), cells in plain.groupby(["model", "readout"], sort=True):
        entry = (expected.get(model) or {}).get(readout)
        if entry is None:
            lines.append(
                f"note: {model} (readout={readout}) has no reference accuracy on ImageNet-1k "
                f"(docs/reference.md): its {len(cells)} plain cells are not checked"
            )
            continue
        same = measured_like(cells, entry)
        others = cells[~same]
        if len(others):
            found = "; ".join(sorted({settings_text(row) for row in others.to_dict("records")}))
            lines.append(
                f"note: {len(others)} plain cells of {model} (readout={readout}) are not compared with "
                f"its reference, measured at {settings_text(entry)}: theirs are {found}"
            )
        cells = cells[same]
        value = float(entry["accuracy"])
        accuracy = float(cells["accuracy"].mean()) if len(cells) else math.nan
        if accuracy < value - tolerance:  # False without a cell to compare (NaN)
            lines.append(
                f"warning: {model} (readout={readout}) scores {accuracy:.3f} without intervention on "
                f"ImageNet-1k, {value - accuracy:.3f} below its reference {value:.3f} "
                f"(tolerance {tolerance:g}, {len(cells)} cells); check its preprocessing and the weights "
                f"it loaded (docs/reference.md)"
            )
    return lines


def measured_like(cells: pd.DataFrame, entry: Mapping[str, Any]) -> pd.Series:
    """Which cells were measured at the entry's settings. An entry without `train_per_class`
    or `probe` (a native head) does not depend on them: every cell matches."""
    same = pd.Series(True, index=cells.index)
    if "train_per_class" in entry:
        same &= cells["train_per_class"] == int(entry["train_per_class"])
    if "probe" in entry:
        same &= (cells["probe_method"] == entry["probe"]["method"]) & (
            cells["probe_settings"] == probe_settings_text(entry["probe"]["settings"])
        )
    return same.fillna(False).astype(bool)


def settings_text(settings: Mapping[str, Any]) -> str:
    """`train_per_class=10, probe=ridge {"alpha":1.0,...}` from a reference entry or a table
    row; the native head's entry, which depends on neither, reads `any settings`."""
    if isinstance(settings.get("probe"), Mapping):
        method, probe = settings["probe"]["method"], probe_settings_text(settings["probe"]["settings"])
    else:
        method, probe = settings.get("probe_method"), settings.get("probe_settings")
    parts = [
        f"train_per_class={settings['train_per_class']}" if "train_per_class" in settings else None,
        f"probe={method} {probe}" if method is not None else None,
    ]
    return ", ".join(part for part in parts if part) or "any settings"
