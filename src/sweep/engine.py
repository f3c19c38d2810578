"""The shared-suffix engine: every cell of a work unit from one pass over the validation set.

The unit loads its model and cached artifacts once. Cells without an intervention read
the cached readout features (no block runs). For the others, each validation batch runs
the unmodified forward once, up to the deepest intervened layer; at every layer L that a
cell needs, it branches once per distinct (intervention, seed) — the *branch* — replaces
the CLS token (or, for a knockout, cuts attention edges in the blocks after L), runs
blocks L + 1..N once, and applies every readout that a cell of the branch asks for to that
one output. Replacement CLS tokens come from the cached CLS
features of the whole validation set (a shuffle's donor may sit in any batch). A shuffle of
another token (`intervention.token`: distillation, registers, patches) needs the donors'
own hidden states at L, which are not cached: each batch's donors run their own unmodified
prefix, once per distinct set of donors (a seed), shared by every layer and token that
reads it (`_DonorStreams`). Nothing but one batch's hidden states (one per donor set) is
ever held, and none is written anywhere.

Two measurements ride on the branch at no extra block: an intervention with donors
(`Intervention.donors`) scores the output against each donor's label and against the
donor's own unmodified prediction (`_donor_metrics`), and `probe_after` applies the cached
layer-L' probe to the branch's CLS at each block output L' > L (`_run_suffix`).

Each cell's progress (true-class rank and prediction per validation example so far) is
saved atomically every `checkpoint_s` to a file its caller names, so a killed unit resumes
at its last checkpoint; the numbers are the same either way, batch for batch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save

from sweep.artifacts import Artifacts, ComputeLedger, Features, Runtime
from sweep.cache import ArtifactCache, CorruptEntryError
from sweep.cellspec import CellSpec
from sweep.files import WriteFailed, atomic_write_bytes
from sweep.interventions import NONE, AttentionCut
from sweep.linear_heads import LinearHead
from sweep.metrics import NonFiniteLogits, rank_metrics, require_finite, top_k_accuracy, true_class_ranks
from sweep.models import LoadedModel
from sweep.progress import progress_bar
from sweep.settings import CellSettings
from sweep.units import branch_key, donor_key, reads_donor_states

logger = logging.getLogger(__name__)

PROGRESS_FORMAT = "2"  # 2: with probe_after's probe predictions


@dataclass(frozen=True)
class CellResult:
    metrics: dict[str, Any]  # floats, and `probe_after`: {layer: accuracy} (docs/results.md)
    outcomes: dict[str, torch.Tensor]  # per validation example
    counts: dict[str, int]
    compute: dict[str, Any]
    timings: dict[str, float]
    model_revision: str
    artifacts: dict[str, str]


#: emit(spec, result, error): exactly one of result and error is set
Emit = Callable[[CellSpec, "CellResult | None", "BaseException | None"], None]


@dataclass
class _Prepared:
    artifacts: Artifacts
    loaded: LoadedModel
    images_key: str
    features: Features
    probes: tuple[list[LinearHead], list[dict[str, float]]] | None
    val_images: torch.Tensor | None
    seconds: float

    @property
    def settings(self) -> CellSettings:
        return self.artifacts.settings

    @property
    def runtime(self) -> Runtime:
        return self.artifacts.runtime


def prepare(unit: CellSpec, specs: Sequence[CellSpec], cache: ArtifactCache, ledger: ComputeLedger) -> _Prepared:
    """Model, images, features, fitted heads and (for `none` cells) probes of the unit that
    `unit` (any of its cells: they share every setting these read) belongs to. A cached file
    found corrupt while reading (its entry is removed then) costs one more attempt, which
    recomputes that entry."""
    try:
        return _prepare(unit, specs, cache, ledger)
    except CorruptEntryError as exc:
        logger.warning("%s; preparing the unit again", exc)
        return _prepare(unit, specs, cache, ledger)


def _prepare(unit: CellSpec, specs: Sequence[CellSpec], cache: ArtifactCache, ledger: ComputeLedger) -> _Prepared:
    started = time.perf_counter()
    assert unit.settings is not None, "a cell spec made by cell_spec carries its settings"
    artifacts = Artifacts(unit, cache, Runtime.of(unit.settings.compute), ledger)
    weights, loaded = artifacts.model()  # first: a model that cannot load fails before any data work
    torch.set_flush_denormal(unit.settings.compute.flush_denormal)  # after a toy's training, which sets its own
    images_key, splits = artifacts.images()
    features = artifacts.features(weights, loaded, images_key, splits)
    for readout in unit.settings.model.fitted_readouts:
        loaded.adapter.install_head(readout, artifacts.fitted_head(features, readout))
    wants_probes = not specs or any(s.intervention == NONE or _probe_after(s) for s in specs)
    probes = artifacts.probes(features) if wants_probes else None
    n_layers = loaded.adapter.n_layers
    needs_pixels = any(s.intervention != NONE and (s.layer < n_layers or reads_donor_states(s)) for s in specs)
    val_images = splits["val"].images if needs_pixels else None
    return _Prepared(artifacts, loaded, images_key, features, probes, val_images, time.perf_counter() - started)


def _probe_after(spec: CellSpec) -> bool:
    return bool(spec.settings.edit.values["probe_after"])


# -- per-cell progress -------------------------------------------------------------------


@dataclass
class CellProgress:
    """What one intervened cell has measured so far: per validation example, the true
    class's rank and the prediction (-1 where not yet measured or not finite), and with
    `probe_after` each later layer's probe prediction on the intervened CLS."""

    spec: CellSpec
    n: int
    probe_layers: list[int] = field(default_factory=list)  # L + 1..N with probe_after, else none
    rank: torch.Tensor = field(init=False)
    predicted: torch.Tensor = field(init=False)
    probe_predicted: torch.Tensor = field(init=False)  # (len(probe_layers), n)
    rows: int = 0  # examples measured, a prefix of the validation order
    n_classes: int = 0
    resumed_rows: int = 0  # of which read back from a checkpoint
    bad: list[int] = field(default_factory=list)  # rows whose logits were not finite

    def __post_init__(self) -> None:
        self.rank = torch.full((self.n,), -1, dtype=torch.long)
        self.predicted = torch.full((self.n,), -1, dtype=torch.long)
        self.probe_predicted = torch.full((len(self.probe_layers), self.n), -1, dtype=torch.long)

    def add(
        self, part: slice, logits: torch.Tensor, labels: torch.Tensor, probe_predicted: torch.Tensor | None = None
    ) -> None:
        if part.start < self.rows:  # measured before a resume: the same numbers again
            return
        if self.probe_layers:
            assert probe_predicted is not None, "a probe_after cell needs the later layers' probe predictions"
            self.probe_predicted[:, part] = probe_predicted
        self.n_classes = logits.shape[1]
        finite = torch.isfinite(logits).all(dim=1)
        if not bool(finite.all()):
            self.bad.extend((part.start + finite.logical_not().nonzero().flatten()).tolist())
        index = torch.arange(part.start, part.stop)[finite]
        if len(index):
            self.rank[index] = true_class_ranks(logits[finite], labels[finite])
            self.predicted[index] = logits[finite].argmax(1)
        self.rows = part.stop

    def save(self, path: Path, meta: Mapping[str, str]) -> None:
        tensors = {
            "rank": self.rank[: self.rows].clone(),
            "predicted": self.predicted[: self.rows].clone(),
            "probe_predicted": self.probe_predicted[:, : self.rows].clone(),
            "bad": torch.tensor(self.bad, dtype=torch.long),
        }
        atomic_write_bytes(
            path, save(tensors, metadata={**meta, "rows": str(self.rows), "n_classes": str(self.n_classes)})
        )

    def load(self, path: Path, meta: Mapping[str, str]) -> None:
        """Resume from `path` when it was written for this very cell and pass; else start over."""
        try:
            with safe_open(path, framework="pt") as f:
                saved = f.metadata() or {}
                if any(saved.get(k) != v for k, v in meta.items()):
                    return
                rows = int(saved["rows"])
                self.rank[:rows], self.predicted[:rows] = f.get_tensor("rank"), f.get_tensor("predicted")
                self.probe_predicted[:, :rows] = f.get_tensor("probe_predicted")
                self.bad = f.get_tensor("bad").tolist()
                self.n_classes = int(saved["n_classes"])
        except Exception as error:  # a torn or foreign file: safetensors raises several kinds
            if path.exists():
                logger.warning(
                    "ignoring the progress file %s (%s); measuring %s from the start",
                    path,
                    type(error).__name__,
                    self.spec.name,
                )
            return
        self.rows = self.resumed_rows = rows


class Checkpoints:
    """Where each cell's progress lives, and how often it is written."""

    def __init__(self, path_of: Callable[[CellSpec], Path], interval_s: float) -> None:
        self.path_of, self.interval_s = path_of, interval_s
        self._last = time.monotonic()

    def due(self) -> bool:
        return time.monotonic() - self._last >= self.interval_s

    def save(self, cells: Sequence[CellProgress], meta: Callable[[CellSpec], Mapping[str, str]]) -> None:
        """A checkpoint that cannot be written (a full disk) only loses its insurance: the
        pass goes on, and its cells' records, far smaller, may still fit."""
        for cell in cells:
            if cell.rows < cell.n:
                try:
                    cell.save(self.path_of(cell.spec), meta(cell.spec))
                except WriteFailed as error:
                    logger.warning("%s; the pass goes on without this checkpoint", error)
        self._last = time.monotonic()

    def discard(self, spec: CellSpec) -> None:
        self.path_of(spec).unlink(missing_ok=True)


# -- the unit -------------------------------------------------------------------------


@dataclass
class _Branch:
    layer: int
    replacement: torch.Tensor | None  # the CLS each example carries at `layer`; None: left as it is
    cells: list[CellProgress]
    donors: torch.Tensor | None = None  # each example's donor, for interventions that have them
    probe_layers: list[int] = field(default_factory=list)  # later layers probed (probe_after)
    block_calls: int = 0
    cut: AttentionCut | None = None  # attention edges cut in the blocks after `layer`
    token: str | None = None  # moved from the donors' hidden states (reads_donor_states); None: not
    donor_key: str | None = None  # which donor stream it reads (with `token`)

    @property
    def from_features(self) -> bool:
        """At L = N, a CLS replacement reads the cached readout features: no block, no pixels."""
        return self.token is None and self.layer == self.n_layers

    @property
    def n_layers(self) -> int:
        return self.cells[0].spec.n_layers

    def output(
        self,
        prepared: _Prepared,
        hidden: torch.Tensor,
        part: slice,
        device: torch.device,
        donor_hidden: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Hidden state N of this branch from the unmodified hidden state `layer` of batch
        `part`: its CLS replaced, or its token taken from `donor_hidden` (the donors' hidden
        state `layer`), its blocks run with its attention cut (each where the intervention has
        one), and with probe_after the later probes' predictions."""
        adapter = prepared.loaded.adapter
        if self.replacement is not None:
            hidden = adapter.with_cls(hidden, self.replacement[part].to(device, non_blocking=True))
        if self.token is not None:
            assert donor_hidden is not None, "a branch that moves a token needs its donors' hidden state"
            hidden = adapter.with_tokens(hidden, donor_hidden, self.token)
        with adapter.attention_cut(self.cut):
            return _run_suffix(prepared, self, hidden)

    @property
    def readouts(self) -> list[str]:
        return sorted({c.spec.readout for c in self.cells})

    def add(
        self,
        part: slice,
        labels: torch.Tensor,
        logits_of: Callable[[str], torch.Tensor],
        probe_predicted: torch.Tensor | None = None,
    ) -> None:
        """Every readout a cell of the branch asks for, computed once on the branch's output."""
        for readout in self.readouts:
            logits = logits_of(readout).cpu()
            for cell in self.cells:
                if cell.spec.readout == readout:
                    cell.add(part, logits, labels, probe_predicted if cell.probe_layers else None)


def measure_unit(
    specs: Sequence[CellSpec], cache: ArtifactCache, emit: Emit, *, checkpoints: Checkpoints | None = None
) -> dict[str, Any]:
    """Measure `specs` (cells of one unit: equal but for layer, intervention, readout and
    seed) and `emit` each as soon as it is measured. Returns the unit's compute summary."""
    ledger = ComputeLedger()
    prepared = prepare(specs[0], specs, cache, ledger)
    started = time.perf_counter()
    emit_s = 0.0

    def timed_emit(spec: CellSpec, result: CellResult | None, error: BaseException | None) -> None:
        """The caller's emit, timed: records and W&B runs are bookkeeping, not measurement."""
        nonlocal emit_s
        emitted = time.perf_counter()
        emit(spec, result, error)
        emit_s += time.perf_counter() - emitted

    nones = [s for s in specs if s.intervention == NONE]
    others = [s for s in specs if s.intervention != NONE]
    shares = _Shares(ledger, specs)
    layer_readouts: dict[int, tuple[dict[str, float], dict[str, torch.Tensor]]] = {}
    for spec in nones:
        _emit_guarded(timed_emit, spec, lambda spec=spec: _none_result(spec, prepared, layer_readouts, shares))
    if others:
        _measure_branches(others, prepared, timed_emit, checkpoints, shares)
    return {
        "block_calls": ledger.total,
        "block_calls_by_purpose": dict(ledger.block_calls),
        "prepare_s": prepared.seconds,
        "measure_s": time.perf_counter() - started - emit_s,
        "bookkeeping_s": emit_s,
    }  # records, outcomes and W&B runs, written as each cell is measured


def _emit_guarded(emit: Emit, spec: CellSpec, result: Callable[[], CellResult]) -> None:
    """A failure of one cell's own numbers (non-finite logits) fails that cell, not the unit."""
    try:
        value = result()
    except NonFiniteLogits as error:
        emit(spec, None, error)
        return
    emit(spec, value, None)


class _Shares:
    """Each cell's share of the unit's block applications: the features pass (when this unit
    computed it) split over every cell, the unmodified prefix over the intervened cells, the
    donors' prefixes over the cells that read donor states, and each branch's suffix over the
    cells reading it. Records then sum to what the unit ran."""

    def __init__(self, ledger: ComputeLedger, specs: Sequence[CellSpec]) -> None:
        self.ledger, self.n_cells = ledger, len(specs)
        self.n_intervened = sum(s.intervention != NONE for s in specs)
        self.n_reading_donors = sum(reads_donor_states(s) for s in specs)

    def of(self, branch: _Branch | None) -> float:
        share = self.ledger.block_calls.get("features", 0) / self.n_cells
        if branch is not None:
            share += self.ledger.block_calls.get("unmodified", 0) / self.n_intervened
            share += branch.block_calls / len(branch.cells)
            if branch.token is not None:
                share += self.ledger.block_calls.get("donor", 0) / self.n_reading_donors
        return share


def _result(
    spec: CellSpec,
    prepared: _Prepared,
    metrics: dict[str, float],
    outcomes: dict[str, torch.Tensor],
    compute: dict[str, Any],
    n_classes: int,
) -> CellResult:
    features, device = prepared.features, prepared.artifacts.device
    return CellResult(
        metrics=metrics,
        outcomes=outcomes,
        counts={"n_train": len(features.labels["train"]), "n_val": len(features.labels["val"]), "n_classes": n_classes},
        compute={
            **compute,
            "device": device.type,
            "dtype": prepared.runtime.dtype,
            "batch_size": prepared.runtime.batch_size,
            "cpu_threads": torch.get_num_threads(),
        },
        timings={"prepare_s": prepared.seconds},
        model_revision=prepared.loaded.revision,
        artifacts=dict(prepared.artifacts.keys),
    )


def _none_result(
    spec: CellSpec,
    prepared: _Prepared,
    layer_readouts: dict[int, tuple[dict[str, float], dict[str, torch.Tensor]]],
    shares: _Shares,
) -> CellResult:
    started = time.perf_counter()
    labels = prepared.features.labels["val"]
    logits = unmodified_logits(prepared, spec.readout)
    metrics = {k: v for k, v in rank_metrics(logits, labels).items() if k in ("accuracy", "top5")}
    metrics["chance"] = 1.0 / logits.shape[1]
    outcomes = {"label": labels, "predicted": logits.argmax(1), "rank": true_class_ranks(logits, labels)}
    if spec.layer not in layer_readouts:  # readout-independent: once per layer
        layer_readouts[spec.layer] = _layer_readouts(spec, prepared)
    layer_metrics, layer_outcomes = layer_readouts[spec.layer]
    metrics.update(layer_metrics)
    outcomes.update(layer_outcomes)
    if _probe_after(spec):  # the unmodified CLS: the probes' own validation scores
        assert prepared.probes is not None
        scores = prepared.probes[1]
        metrics["probe_after"] = {
            str(later): scores[later]["probe_accuracy"] for later in range(spec.layer + 1, spec.n_layers + 1)
        }
    result = _result(spec, prepared, metrics, outcomes, {"block_calls": shares.of(None)}, logits.shape[1])
    result.timings["measure_s"] = time.perf_counter() - started
    return result


def unmodified_logits(prepared: _Prepared, readout: str) -> torch.Tensor:
    """`readout`'s logits of the unmodified model on the validation set, from the cached
    features (no block runs): what `none` cells score, and each donor's own prediction."""
    adapter, features, device = prepared.loaded.adapter, prepared.features, prepared.artifacts.device
    stored = features.readout["val"][readout]
    with torch.inference_mode(), prepared.runtime.autocast():
        logits = torch.cat(
            [
                adapter.apply_head(readout, stored[part].to(device)).cpu()
                for part in prepared.runtime.batches(len(stored))
            ]
        )
    require_finite(logits, f"the {readout} readout of the unmodified model")
    return logits


def _layer_readouts(spec: CellSpec, prepared: _Prepared) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """What layer L's CLS already says: the probe, the last layer's probe, and the
    class-embedding projection through the final norm and head."""
    adapter, features, device = prepared.loaded.adapter, prepared.features, prepared.artifacts.device
    labels, cls = features.labels["val"], features.cls["val"][spec.layer]
    assert prepared.probes is not None
    heads, scores = prepared.probes
    readout = prepared.settings.model.projection_readout
    with torch.inference_mode():
        projected = torch.cat(
            [
                adapter.projection_logits(cls[part].to(device), readout).cpu()
                for part in prepared.runtime.batches(len(labels))
            ]
        )
    require_finite(projected, f"layer {spec.layer}'s class-embedding projection")
    probe_logits = heads[spec.layer].logits(cls)
    outcomes = {
        "projection_predicted": projected.argmax(1),
        "projection_rank": true_class_ranks(projected, labels),
        "probe_predicted": probe_logits.argmax(1),
    }
    layer_scores = scores[spec.layer]
    projection = rank_metrics(projected, labels, "projection_")
    metrics = {
        "probe_accuracy": layer_scores["probe_accuracy"],
        "last_probe_accuracy": layer_scores["last_probe_accuracy"],
        "projection_accuracy": projection["projection_accuracy"],
        "projection_top5": projection["projection_top5"],
        "identifiability": projection["projection_identifiability"],
        "identifiability_exact": projection["projection_identifiability_exact"],
    }
    return metrics, outcomes


def _measure_branches(
    specs: Sequence[CellSpec], prepared: _Prepared, emit: Emit, checkpoints: Checkpoints | None, shares: _Shares
) -> None:
    started = time.perf_counter()
    features = prepared.features
    labels = features.labels["val"]
    n, batch_size = len(labels), prepared.runtime.batch_size
    branches: dict[tuple, _Branch] = {}
    for spec in specs:
        key = branch_key(spec)
        edit = spec.settings.edit
        if key not in branches:
            replacement = edit.replacement(
                cls_at_layer=features.cls["val"][spec.layer], cls_at_embedding=features.cls["val"][0], seed=spec.seed
            )
            cut = edit.attention_cut(layer=spec.layer, n_layers=spec.n_layers)
            donors = edit.donors(n=n, seed=spec.seed)
            probe_layers = list(range(spec.layer + 1, spec.n_layers + 1)) if _probe_after(spec) else []
            token = spec.token if reads_donor_states(spec) else None
            if token is not None:
                prepared.loaded.adapter.token_slots(token)  # a model without it fails here, before the pass
            # on the host: moved one batch at a time
            branches[key] = _Branch(
                spec.layer,
                replacement,
                [],
                donors,
                probe_layers,
                cut=cut,
                token=token,
                donor_key=donor_key(spec) if token is not None else None,
            )
        branches[key].cells.append(CellProgress(spec, n, branches[key].probe_layers))
    cells = [c for b in branches.values() for c in b.cells]

    def meta(spec: CellSpec) -> dict[str, str]:
        return {
            "format": PROGRESS_FORMAT,
            "cell_id": spec.cell_id,
            "features": features.key,
            "n": str(n),
            "batch_size": str(batch_size),
        }

    if checkpoints is not None:
        for cell in cells:
            cell.load(checkpoints.path_of(cell.spec), meta(cell.spec))
    start = min(c.rows for c in cells)
    if start:
        logger.info("resuming %d cells at validation example %d of %d (their checkpoint)", len(cells), start, n)
    by_layer: dict[int, list[_Branch]] = {}
    for branch in branches.values():
        by_layer.setdefault(branch.layer, []).append(branch)
    try:
        _pass(prepared, by_layer, cells, labels, start, checkpoints, meta)
    except (SystemExit, KeyboardInterrupt):  # preemption (submitit's USR2 handler), Ctrl-C: keep what is done
        if checkpoints is not None:
            checkpoints.save(cells, meta)
        raise
    measured_s = time.perf_counter() - started
    unmodified: dict[str, torch.Tensor] = {}  # readout -> predictions, for the donor metrics
    for branch in branches.values():
        for cell in branch.cells:
            _emit_guarded(
                emit,
                cell.spec,
                lambda cell=cell, branch=branch: _branch_result(
                    cell, branch, prepared, shares.of(branch), measured_s, len(cells), unmodified
                ),
            )


class _DonorStreams:
    """The donors' own unmodified hidden states of one batch, one stream per distinct set of
    donors (`donor_key`), advanced block by block beside the recipients' prefix and only as
    deep as the deepest branch that reads it."""

    def __init__(self, branches: Sequence[_Branch]) -> None:
        self.donors: dict[str, torch.Tensor] = {}
        self.deepest: dict[str, int] = {}
        for branch in branches:
            if branch.donor_key is not None:
                assert branch.donors is not None, "a branch that moves a token needs donors"
                self.donors[branch.donor_key] = branch.donors
                self.deepest[branch.donor_key] = max(branch.layer, self.deepest.get(branch.donor_key, 0))
        self.hidden: dict[str, torch.Tensor] = {}

    def start(self, prepared: _Prepared, part: slice) -> None:
        adapter, artifacts = prepared.loaded.adapter, prepared.artifacts
        assert prepared.val_images is not None
        self.hidden = {
            key: adapter.embed(artifacts.pixels(prepared.val_images[donors[part]]))
            for key, donors in self.donors.items()
        }

    def advance(self, prepared: _Prepared, layer: int, rows: int) -> None:
        """Every stream that a branch at `layer` or deeper reads, to hidden state `layer`."""
        for key, hidden in self.hidden.items():
            if layer <= self.deepest[key]:
                self.hidden[key] = prepared.loaded.adapter.run_block(layer - 1, hidden)
                prepared.artifacts.ledger.add("donor", rows)

    def at(self, branch: _Branch) -> torch.Tensor | None:
        return None if branch.donor_key is None else self.hidden[branch.donor_key]


def _pass(
    prepared: _Prepared,
    by_layer: dict[int, list[_Branch]],
    cells: list[CellProgress],
    labels: torch.Tensor,
    start: int,
    checkpoints: Checkpoints | None,
    meta: Callable[[CellSpec], Mapping[str, str]],
) -> None:
    """The unit's one pass over the validation batches from `start` (see the module docstring)."""
    adapter, features, artifacts = prepared.loaded.adapter, prepared.features, prepared.artifacts
    n = len(labels)
    branches = [b for at_layer in by_layer.values() for b in at_layer]
    deepest = max((b.layer for b in branches if not b.from_features), default=None)  # of the prefix to run
    streams = _DonorStreams(branches)
    bar = progress_bar(
        total=n - start,
        desc=f"unit {prepared.settings.model.name}: {len(cells)} cells, {len(branches)} branches",
        unit="img",
    )
    with torch.inference_mode(), prepared.runtime.autocast():
        for part in prepared.runtime.batches(n):
            if part.stop <= start:
                continue
            rows = part.stop - part.start
            if deepest is not None:
                hidden = adapter.embed(artifacts.pixels(prepared.val_images[part]))
                streams.start(prepared, part)
                for layer in range(deepest + 1):
                    if layer:
                        hidden = adapter.run_block(layer - 1, hidden)
                        artifacts.ledger.add("unmodified", rows)
                        streams.advance(prepared, layer, rows)
                    for branch in by_layer.get(layer, ()):
                        if branch.from_features:
                            continue
                        branched, probe_predicted = branch.output(
                            prepared, hidden, part, artifacts.device, streams.at(branch)
                        )
                        branch.block_calls += (branch.n_layers - layer) * rows
                        artifacts.ledger.add("branch", (branch.n_layers - layer) * rows)
                        branch.add(
                            part,
                            labels[part],
                            lambda readout, branched=branched: adapter.logits(branched, readout),
                            probe_predicted,
                        )
            for branch in branches:  # at L = N: the cached features, the CLS replaced
                if branch.from_features:
                    branch.add(
                        part,
                        labels[part],
                        lambda readout, branch=branch, part=part: adapter.apply_head(
                            readout,
                            adapter.features_with_cls(
                                features.readout["val"][readout][part].to(artifacts.device),
                                branch.replacement[part].to(artifacts.device),
                                readout,
                            ),
                        ),
                    )
            bar.update(rows)
            if checkpoints is not None and part.stop < n and checkpoints.due():
                checkpoints.save(cells, meta)
    bar.close()


def _run_suffix(prepared: _Prepared, branch: _Branch, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Blocks L + 1..N on the edited hidden state, one at a time (as `run_blocks` does);
    with probe_after, the cached layer-L' probe's prediction on the CLS of each block output
    L' > L, shape (N - L, rows). No extra block runs."""
    adapter = prepared.loaded.adapter
    predicted = []
    for index in range(branch.layer, adapter.n_layers):
        hidden = adapter.run_block(index, hidden)
        if branch.probe_layers:
            assert prepared.probes is not None
            cls = hidden[:, adapter.cls_index].float().cpu()  # as the features pass stored it
            with torch.autocast("cpu", enabled=False):  # the probes' scores were computed in full precision
                predicted.append(prepared.probes[0][index + 1].logits(cls).argmax(1))
    return hidden, torch.stack(predicted) if predicted else None


def _branch_result(
    cell: CellProgress,
    branch: _Branch,
    prepared: _Prepared,
    share: float,
    measured_s: float,
    n_cells: int,
    unmodified: dict[str, torch.Tensor],
) -> CellResult:
    spec, labels = cell.spec, prepared.features.labels["val"]
    if cell.bad:
        raise NonFiniteLogits(
            f"the {spec.readout} readout after intervention={spec.intervention} at layer {spec.layer}: "
            f"{len(cell.bad)} of {cell.n} rows of logits are not finite (NaN or inf; first bad row "
            f"{min(cell.bad)}); no score is recorded"
        )
    n_classes = cell.n_classes
    metrics = {
        "accuracy": top_k_accuracy(cell.rank, 1),
        "top5": top_k_accuracy(cell.rank, min(5, n_classes)),
        "chance": 1.0 / n_classes,
    }
    outcomes = {"label": labels, "predicted": cell.predicted, "rank": cell.rank}
    if branch.donors is not None:
        if spec.readout not in unmodified:
            unmodified[spec.readout] = unmodified_logits(prepared, spec.readout).argmax(1)
        donor_metrics, donor_outcomes = _donor_metrics(cell.predicted, labels, branch.donors, unmodified[spec.readout])
        metrics.update(donor_metrics)
        outcomes.update(donor_outcomes)
    if _probe_after(spec):  # at L = N no later layer: empty
        metrics["probe_after"] = {
            str(later): float((cell.probe_predicted[i] == labels).double().mean())
            for i, later in enumerate(cell.probe_layers)
        }
    result = _result(
        spec, prepared, metrics, outcomes, {"block_calls": share, "resumed_rows": cell.resumed_rows}, n_classes
    )
    result.timings["measure_s"] = measured_s / n_cells
    return result


def _donor_metrics(
    predicted: torch.Tensor, labels: torch.Tensor, donors: torch.Tensor, unmodified_predicted: torch.Tensor
) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """How much of the intervened output follows the donor: its label (donor_accuracy) and
    its own unmodified prediction with the same readout (donor_agreement). A shuffle that
    only destroys the CLS scores chance on both; one whose output reads the donor's CLS
    approaches the donor's accuracy and 1."""
    donor_predicted = unmodified_predicted[donors]
    metrics = {
        "donor_accuracy": float((predicted == labels[donors]).double().mean()),
        "donor_agreement": float((predicted == donor_predicted).double().mean()),
    }
    return metrics, {"donor": donors, "donor_predicted": donor_predicted}
