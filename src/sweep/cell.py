"""One cell: (model, layer, intervention, readout, seed) → metrics and per-example outcomes.

The unmodified model's artifacts (features, heads, probes) come from the cache; the cell
itself only runs what its intervention changes: blocks L + 1..N over the validation set,
starting from the cached hidden state L when it exists, else a full pass with a hook.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from sweep.artifacts import Artifacts, ComputeLedger, Features, Split
from sweep.cache import ArtifactCache, CorruptEntryError
from sweep.cellspec import CellSpec
from sweep.data import batches
from sweep.interventions import replacement_cls
from sweep.metrics import rank_metrics, require_finite, true_class_ranks
from sweep.models import LoadedModel
from sweep.probes import LinearHead

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CellResult:
    metrics: dict[str, float]
    outcomes: dict[str, torch.Tensor]  # per validation example
    counts: dict[str, int]
    compute: dict[str, Any]
    timings: dict[str, float]
    model_revision: str
    artifacts: dict[str, str]


def pick_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def measure(cfg: Mapping[str, Any], spec: CellSpec, cache: ArtifactCache) -> CellResult:
    """Measure one cell. A cached file found corrupt while reading (its entry is removed
    then) costs one more attempt, which recomputes that entry."""
    try:
        return _measure(cfg, spec, cache)
    except CorruptEntryError as exc:
        logger.warning("%s; measuring the cell again", exc)
        return _measure(cfg, spec, cache)


def _measure(cfg: Mapping[str, Any], spec: CellSpec, cache: ArtifactCache) -> CellResult:
    started = time.perf_counter()
    compute = spec.settings.compute
    torch.set_flush_denormal(compute.flush_denormal)
    device = pick_device(compute.device)
    ledger = ComputeLedger()
    artifacts = Artifacts(cfg, cache, device, ledger)
    identity, loaded = artifacts.model()  # first: a model that cannot load fails before any data work
    images_key, splits = artifacts.images(cfg["data"], cfg["model"]["preprocess"])
    features = artifacts.features(identity, loaded, images_key, splits)
    for readout, settings in cfg["model"]["readouts"].items():
        if settings["head"] == "fitted":
            loaded.adapter.install_head(readout, artifacts.fitted_head(features, readout))
    probes = artifacts.probes(features) if spec.intervention == "none" else None
    prepared = time.perf_counter()

    labels = features.labels["val"]
    logits, resumed = _intervened_logits(cfg, spec, artifacts, loaded, features, splits["val"])
    require_finite(logits, f"the {spec.readout} readout after intervention={spec.intervention} at layer {spec.layer}")
    ranks = true_class_ranks(logits, labels)
    metrics = {k: v for k, v in rank_metrics(logits, labels).items() if k in ("accuracy", "top5")}
    metrics["chance"] = 1.0 / logits.shape[1]
    outcomes = {"label": labels, "predicted": logits.argmax(1), "rank": ranks}
    if probes is not None:
        metrics.update(_layer_readouts(cfg, spec, artifacts, loaded, features, probes, outcomes))
    finished = time.perf_counter()

    return CellResult(
        metrics=metrics,
        outcomes=outcomes,
        counts={"n_train": len(features.labels["train"]), "n_val": len(labels), "n_classes": logits.shape[1]},
        compute={"block_calls": ledger.total, "block_calls_by_purpose": dict(ledger.block_calls),
                 "resumed_from_hidden": resumed, "device": device.type, "dtype": str(cfg["compute"]["dtype"]),
                 "batch_size": int(cfg["compute"]["batch_size"]), "cpu_threads": torch.get_num_threads()},
        timings={"prepare_s": prepared - started, "measure_s": finished - prepared},
        model_revision=loaded.revision,
        artifacts={"images": images_key, "features": features.key},
    )


def _intervened_logits(cfg: Mapping[str, Any], spec: CellSpec, artifacts: Artifacts, loaded: LoadedModel,
                       features: Features, val: Split) -> tuple[torch.Tensor, bool]:
    """Validation logits under the intervention, batch by batch in the canonical order
    (the same batches as the features pass, so an identity edit is bit-for-bit a no-op)."""
    adapter, readout = loaded.adapter, spec.readout
    replacement = replacement_cls(spec.intervention, cfg["intervention"], cls_at_layer=features.cls["val"][spec.layer],
                                  cls_at_embedding=features.cls["val"][0], seed=spec.seed)
    n, batch_size = len(features.labels["val"]), int(cfg["compute"]["batch_size"])
    out = []
    with torch.inference_mode(), artifacts.autocast():
        if replacement is None:
            stored = features.readout["val"][readout]
            for part in batches(n, batch_size):
                out.append(adapter.apply_head(readout, stored[part].to(artifacts.device)).cpu())
            return torch.cat(out), True
        replacement = replacement.to(artifacts.device)
        resume = features.has_hidden and bool(cfg["compute"]["resume_from_hidden"])
        hidden_at_layer = features.hidden(spec.layer) if resume else None
        for part in batches(n, batch_size):
            if hidden_at_layer is not None:
                hidden = adapter.with_cls(hidden_at_layer[part].to(artifacts.device), replacement[part])
                hidden = adapter.run_blocks(hidden, spec.layer, adapter.n_layers)
                artifacts.ledger.add("cell", (adapter.n_layers - spec.layer) * (part.stop - part.start))
            else:
                with adapter.cls_edit(spec.layer, lambda _cls, part=part: replacement[part]):
                    *_, hidden = adapter.hidden_states(artifacts.pixels(val.images[part]))
                artifacts.ledger.add("cell", adapter.n_layers * (part.stop - part.start))
            out.append(adapter.logits(hidden, readout).cpu())
    return torch.cat(out), resume


def _layer_readouts(cfg: Mapping[str, Any], spec: CellSpec, artifacts: Artifacts, loaded: LoadedModel,
                    features: Features, probes: tuple[list[LinearHead], list[dict[str, float]]],
                    outcomes: dict[str, torch.Tensor]) -> dict[str, float]:
    """What layer L's CLS already says: the probe, the last layer's probe, and the
    class-embedding projection through the final norm and head."""
    adapter = loaded.adapter
    labels, cls = features.labels["val"], features.cls["val"][spec.layer]
    heads, scores = probes
    readout = str(cfg["model"]["projection_readout"])
    with torch.inference_mode():
        projected = torch.cat([adapter.projection_logits(cls[part].to(artifacts.device), readout).cpu()
                               for part in batches(len(labels), spec.settings.compute.batch_size)])
    require_finite(projected, f"layer {spec.layer}'s class-embedding projection")
    probe_logits = heads[spec.layer].logits(cls)
    outcomes.update({"projection_predicted": projected.argmax(1),
                     "projection_rank": true_class_ranks(projected, labels),
                     "probe_predicted": probe_logits.argmax(1)})
    layer_scores = scores[spec.layer]
    projection = rank_metrics(projected, labels, "projection_")
    return {
        "probe_accuracy": layer_scores["probe_accuracy"],
        "last_probe_accuracy": layer_scores["last_probe_accuracy"],
        "projection_accuracy": projection["projection_accuracy"],
        "projection_top5": projection["projection_top5"],
        "identifiability": projection["projection_identifiability"],
        "identifiability_exact": projection["projection_identifiability_exact"],
    }
