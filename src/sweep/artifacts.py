"""The expensive things cells share, each computed once and kept in the artifact cache.

* ``images``   — the data subset, decoded, resized and cropped to uint8 (per preprocessing).
* ``toy_model``— a toy trained on digits, as a `save_pretrained` folder.
* ``features`` — one unmodified pass over train + val: the CLS token at every layer and every
  readout's features (no hidden states: a work unit recomputes the prefix it needs).
* ``head``     — a head fitted here on the train readout features (BEiT-22k, DINOv2, CLIP).
* ``probes``   — per-layer CLS probes, with their validation scores.

Every spec names what produced the artifact (upstream artifacts by key), so a change
anywhere upstream gives a new key. Each spec is cut from the cell's measured config
(`cellspec.measured_config`: everything but the settings declared to change no number), by
naming what the artifact does *not* read — so a setting added later reaches every key by
default, as it reaches the cell's identity.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sweep.cache import ArtifactCache, content_key
from sweep.cellspec import NOT_MEASURED, CellSpec, without
from sweep.data import (
    DECODER_VERSION,
    SAMPLER_VERSION,
    SPLITS,
    batches,
    load_split,
    normalise,
    pixel_settings,
    preprocess_split,
)
from sweep.linear_heads import LinearHead
from sweep.metrics import rank_metrics
from sweep.models import LoadedModel, check_classes, load_model
from sweep.probes import fit_probes
from sweep.progress import progress_bar
from sweep.rules import plain
from sweep.settings import Compute
from sweep.toy import train_toy

#: file in the cache's root remembering weight-file hashes (local model folders' identity)
FILE_HASHES = "file_hashes.json"


@dataclass
class ComputeLedger:
    """Transformer-block applications and wall time spent by this process, by purpose."""

    block_calls: dict[str, int] = field(default_factory=dict)

    def add(self, purpose: str, calls: int) -> None:
        self.block_calls[purpose] = self.block_calls.get(purpose, 0) + calls

    @property
    def total(self) -> int:
        return sum(self.block_calls.values())


class Split:
    """One split's preprocessed images and labels, read (and hash-checked) from the cache
    on first use: a cell that starts from cached features never touches pixels, and at
    ImageNet scale they are gigabytes."""

    def __init__(self, path: Path, verified: Callable[[], Path]) -> None:
        self._path, self._verified = path, verified
        self._tensors: dict[str, torch.Tensor] | None = None

    def __len__(self) -> int:
        if self._tensors is None:  # from the header alone: no pixels read
            with safe_open(self._path, framework="pt") as f:
                return int(f.get_slice("labels").get_shape()[0])
        return len(self._tensors["labels"])

    @property
    def images(self) -> torch.Tensor:
        """(n, 3, H, W) uint8."""
        return self._load()["images"]

    @property
    def labels(self) -> torch.Tensor:
        """(n,) class indices."""
        return self._load()["labels"]

    def _load(self) -> dict[str, torch.Tensor]:
        if self._tensors is None:
            self._tensors = load_file(self._verified())
        return self._tensors


@dataclass(frozen=True)
class Features:
    """The unmodified model's view of the data."""

    key: str
    cls: dict[str, torch.Tensor]  # split -> (N + 1, n, D)
    readout: dict[str, dict[str, torch.Tensor]]  # split -> readout -> (n, ...)
    labels: dict[str, torch.Tensor]


def _write_seconds(out: Path, seconds: Mapping[str, float]) -> None:
    """How long each split took to compute, for benchmarks (bench_sweep_compute --scaling)."""
    (out / "meta.json").write_text(json.dumps({"seconds": dict(seconds)}))


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


#: model settings a toy's training does not read: how it is read out, and its label
TOY_UNREAD = ("name", "readouts", "projection_readout")
#: model settings the features pass does not read: its label and which head reads the
#: readouts' features (the features are the heads' input; `readouts.<r>.head` is dropped too)
FEATURES_UNREAD = ("name", "projection_readout")


def images_spec(data: Mapping[str, Any], preprocess: Mapping[str, Any]) -> dict[str, Any]:
    """What the images artifact is keyed by: the data subset (its measured settings) and what
    changes its pixels (`pixel_settings`), not the normalisation, so models of one pixel
    geometry share a decode."""
    return {
        "data": without(plain(data), NOT_MEASURED, "data."),
        "preprocess": pixel_settings(plain(preprocess)),
        "decoder": DECODER_VERSION,
        "sampler": SAMPLER_VERSION,
    }


def cached_images(
    cache: ArtifactCache, data: Mapping[str, Any], preprocess: Mapping[str, Any]
) -> tuple[str, dict[str, Split]]:
    """The data subset decoded at this pixel geometry (computed once, under the cache's lock):
    its key and its splits. Needs no model, so `sweep-prepare` builds it on a login node."""
    spec = images_spec(data, preprocess)

    def compute(out: Path) -> None:
        seconds = {}
        for split in SPLITS:
            started = time.perf_counter()
            images, labels = preprocess_split(load_split(data, split), preprocess)
            save_file({"images": images, "labels": labels}, out / f"{split}.safetensors")
            seconds[split] = time.perf_counter() - started
        _write_seconds(out, seconds)

    folder = cache.get_or_compute(
        "images", spec, compute, lazy=("*.safetensors",), description=f"{data['name']} images"
    )
    splits = {
        split: Split(folder / f"{split}.safetensors", partial(cache.verified, folder, f"{split}.safetensors"))
        for split in SPLITS
    }
    return content_key("images", spec), splits


@dataclass(frozen=True)
class Runtime:
    """Where and how this process runs the blocks: the device, the precision and the rows per
    call (`compute.*`). Not part of the cache: `Artifacts` keys what depends on it."""

    device: torch.device
    dtype: str
    batch_size: int

    @classmethod
    def of(cls, compute: Compute) -> Runtime:
        return cls(pick_device(compute.device), compute.dtype, compute.batch_size)

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.dtype == "bfloat16")

    def batches(self, n: int) -> Iterator[slice]:
        return batches(n, self.batch_size)

    def pixels(self, images: torch.Tensor, preprocess: Mapping[str, Any]) -> torch.Tensor:
        """uint8 images -> the model's normalised input, on the device."""
        return normalise(images.to(self.device, non_blocking=True), preprocess)


def pick_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


class Artifacts:
    """The artifact cache's front for one unit: gets (or computes, once, under the cache's
    lock) what its cells need. `spec` is any cell of the unit (they share every setting an
    artifact reads); each key is cut from its identity."""

    def __init__(self, spec: CellSpec, cache: ArtifactCache, runtime: Runtime, ledger: ComputeLedger):
        assert spec.settings is not None, "a cell spec made by cell_spec carries its settings"
        self.settings, self.identity = spec.settings, spec.science
        self.model_settings = spec.settings.model
        self.cache, self.runtime, self.ledger = cache, runtime, ledger
        self.keys: dict[str, str] = {}  # kind -> the key of each entry this cell read, for its record

    @property
    def device(self) -> torch.device:
        return self.runtime.device

    def _get(
        self,
        kind: str,
        spec: Mapping[str, Any],
        compute: Callable[[Path], None],
        *,
        name: str | None = None,
        **options: Any,
    ) -> Path:
        folder = self.cache.get_or_compute(kind, spec, compute, **options)
        self.keys[name or kind] = content_key(kind, spec)
        return folder

    # -- images ---------------------------------------------------------------------
    def images(self, data: Mapping[str, Any] | None = None, name: str = "images") -> tuple[str, dict[str, Split]]:
        """The data subset (`data`, else the cell's) at the model's pixel geometry."""
        data = self.settings.data.values if data is None else data
        key, splits = cached_images(self.cache, data, self.model_settings.preprocess)
        self.keys[name] = key
        return key, splits

    def pixels(self, images: torch.Tensor) -> torch.Tensor:
        return self.runtime.pixels(images, self.model_settings.preprocess)

    # -- model ----------------------------------------------------------------------
    def model(self) -> tuple[str, LoadedModel]:
        """Load the configured model; returns which weights it is too (the hub's commit, the
        local files' hash, or the toy's cache key), for the features' key."""
        model = self.model_settings
        check_classes(model)  # before a toy's training reads its images
        weights: str | Path = str(model.source)
        toy_key = None
        if model.is_toy:
            weights, toy_key = self._toy_weights()
        loaded = load_model(
            model,
            weights,
            device=self.device,
            attn_implementation=self.settings.compute.attn_implementation,
            hash_memo=self.cache.root / FILE_HASHES,
        )
        return toy_key or loaded.revision, loaded

    def _toy_weights(self) -> tuple[Path, str]:
        training = self.settings.toy_training
        assert training is not None, "a toy's cell has toy_training settings"
        images_key, splits = self.images(training.data.values, name="toy_images")
        spec = {
            "model": without(self.identity["model"], TOY_UNREAD),
            "training": self.identity["toy_training"],
            "images": images_key,
        }

        def compute(out: Path) -> None:
            train = splits["train"]
            train_toy(self.model_settings, training, train.images, train.labels, out)

        folder = self._get("toy_model", spec, compute, description=f"train {self.model_settings.name}")
        return folder, content_key("toy_model", spec)

    # -- features -------------------------------------------------------------------
    def features(self, weights: str, loaded: LoadedModel, images_key: str, splits: Mapping[str, Split]) -> Features:
        readouts = sorted(self.model_settings.readouts)
        model = without(self.identity["model"], FEATURES_UNREAD)
        model["readouts"] = {r: without(settings, ("head",)) for r, settings in model["readouts"].items()}
        spec = {
            "model": model,
            "weights": weights,
            "images": images_key,
            "compute": {**self.identity["compute"], "batch_size": self.runtime.batch_size, "device": self.device.type},
        }

        def compute(out: Path) -> None:
            seconds = {}
            for split in SPLITS:
                started = time.perf_counter()
                self._unmodified_pass(loaded, splits[split], readouts, out, split)
                seconds[split] = time.perf_counter() - started
            _write_seconds(out, seconds)

        key = content_key("features", spec)
        folder = self._get("features", spec, compute, description=f"{self.model_settings.name} unmodified pass")
        cls, readout, labels = {}, {}, {}
        for split in SPLITS:
            tensors = load_file(folder / f"{split}.safetensors")
            cls[split], labels[split] = tensors["cls"], tensors["labels"]
            readout[split] = {r: tensors[f"readout.{r}"] for r in readouts}
        return Features(key, cls, readout, labels)

    def _unmodified_pass(self, loaded: LoadedModel, split: Split, readouts: list[str], out: Path, name: str) -> None:
        adapter, n = loaded.adapter, len(split)
        cls = torch.empty(adapter.n_layers + 1, n, adapter.hidden_size)
        features: dict[str, list[torch.Tensor]] = {r: [] for r in readouts}
        bar = progress_bar(total=n, desc=f"features {self.model_settings.name} {name}", unit="img")
        with torch.inference_mode(), self.runtime.autocast():
            for part in self.runtime.batches(n):
                hidden = None
                for layer, hidden in enumerate(adapter.hidden_states(self.pixels(split.images[part]))):
                    cls[layer, part] = hidden[:, adapter.cls_index].float().cpu()
                for readout in readouts:
                    features[readout].append(adapter.float_readout_features(hidden, readout).cpu())
                self.ledger.add("features", adapter.n_layers * (part.stop - part.start))
                bar.update(part.stop - part.start)
        bar.close()
        tensors = {"cls": cls, "labels": split.labels}
        tensors.update({f"readout.{r}": torch.cat(v) for r, v in features.items()})
        save_file(tensors, out / f"{name}.safetensors")

    # -- heads and probes -----------------------------------------------------------
    def fitted_head(self, features: Features, readout: str) -> LinearHead:
        probe, n_classes = self.settings.probe, self.settings.data["n_classes"]
        spec = {"features": features.key, "readout": readout, "probe": self.identity["probe"], "n_classes": n_classes}

        def compute(out: Path) -> None:
            train = features.readout["train"][readout]
            (head,) = fit_probes(
                train.flatten(1),
                features.labels["train"],
                n_classes,
                method=probe.choice,
                settings=probe.values,
                device=self.device.type,
            )
            save_file(head.state_dict(), out / "head.safetensors")

        folder = self._get("head", spec, compute, name=f"head.{readout}", description=f"{readout} head")
        return LinearHead.from_state_dict(load_file(folder / "head.safetensors"))

    def probes(self, features: Features) -> tuple[list[LinearHead], list[dict[str, float]]]:
        """Per-layer CLS probes and, per layer, the validation scores of that layer's probe
        and of the last layer's probe applied to that layer."""
        probe, n_classes = self.settings.probe, self.settings.data["n_classes"]
        spec = {"features": features.key, "probe": self.identity["probe"], "n_classes": n_classes}

        def compute(out: Path) -> None:
            heads = fit_probes(
                features.cls["train"],
                features.labels["train"],
                n_classes,
                method=probe.choice,
                settings=probe.values,
                device=self.device.type,
            )
            val_cls, labels = features.cls["val"], features.labels["val"]
            scores = [
                {
                    **rank_metrics(head.logits(val_cls[layer]), labels, "probe_"),
                    **rank_metrics(heads[-1].logits(val_cls[layer]), labels, "last_probe_"),
                }
                for layer, head in enumerate(heads)
            ]
            save_file(
                {f"{layer}.{k}": v for layer, head in enumerate(heads) for k, v in head.state_dict().items()},
                out / "probes.safetensors",
            )
            (out / "scores.json").write_text(json.dumps(scores, indent=1))

        folder = self._get("probes", spec, compute, description="per-layer CLS probes")
        tensors = load_file(folder / "probes.safetensors")
        heads = [
            LinearHead.from_state_dict(
                {k.split(".", 1)[1]: v for k, v in tensors.items() if k.split(".", 1)[0] == str(layer)}
            )
            for layer in range(features.cls["train"].shape[0])
        ]
        return heads, _read_json(folder / "scores.json")
