"""The study's figures, one panel per model, from a sweep table (see sweep.aggregate).

main_result      accuracy vs layer: probe (blue), shuffle with the native readout (orange),
                 shuffle with the CLS-only readout (green), chance (dashed), mean over seeds
                 with 95% bands over permutation draws and examples (sweep.intervals); dotted
                 in the shuffle's colours, the share of outputs that follow the donor
                 (donor_agreement, DONOR_SERIES)
reaccumulation   probe_after: per intervened layer L, the layer-L' probes' accuracy on the
                 intervened CLS at L' > L, beside the unmodified probe curve
tokens           intervention.token: per model, the shuffle of each token it has (CLS,
                 distillation, registers, patches) with the native readout: accuracy (solid)
                 and the share of outputs that follow the donor (dotted)
identifiability  the class-embedding view: per-layer probe, last-layer head applied to
                 layer L's CLS (projection), identifiability, last-layer probe
controls         accuracy vs layer for every intervention present, native readout
readouts         every readout of each model under the shuffle: accuracy (solid) and
                 donor_agreement (dotted) per readout, its `none` accuracy (thin dashed),
                 chance; drawn when some model has a readout beyond native and cls

Every figure but `tokens` reads the interventions on the CLS only (a shuffle of another
token is its own series there and in the table, `shuffle@patches`).

Every figure is written as PNG and PDF, and figures.json lists each figure's panels
(titles = model names) and series labels, so tests and users can check what was drawn
without reading images. Figures are built with matplotlib's object API (no pyplot), so
drawing leaves no global state behind and needs no display.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from sweep.aggregate import SourceError, SweepTable, series_labels
from sweep.files import atomic_write_bytes, atomic_write_text
from sweep.intervals import LEVEL, Interval, outcome_interval, summary_interval
from sweep.interventions import CLS, INTERVENTIONS, TOKENS
from sweep.record import parse_probe_after
from sweep.registry import Registry

FORMATS = ("png", "pdf")
FIGURES_FILE = "figures.json"
PANEL_SIZE = (3.4, 2.9)  # inches per panel
MAX_COLUMNS = 5  # the study's five models fit in one row
PNG_DPI = 150
TITLE_CHARS_PER_INCH = 11  # at fontsize 10
TEXT_LINE_IN = 0.2  # one line of title or legend text
LEGEND_CHAR_IN, LEGEND_ENTRY_IN = 0.075, 0.6  # legend text width per character and handle + padding, fontsize 9

PROBE, SHUFFLE_NATIVE, SHUFFLE_CLS, CHANCE = "probe", "shuffle (native readout)", "shuffle (CLS-only readout)", "chance"
PROJECTION, IDENTIFIABILITY, LAST_PROBE = "last-layer head (projection)", "identifiability", "last-layer probe"
DONOR_NATIVE, DONOR_CLS = "shuffle follows donor (native)", "shuffle follows donor (CLS-only)"
UNMODIFIED_PROBE = "probe, unmodified"
REACCUMULATION_CMAP = "viridis"  # one colour per intervened layer L, early dark to late light
CHANCE_STYLE = {"color": "grey", "linestyle": "--", "linewidth": 1.0}
# Controls: fixed colours per intervention, so a colour means the same thing in every panel
# (shuffle keeps main_result's orange).
INTERVENTION_COLORS = {"none": "k", "shuffle": "C1", "zero": "C3", "mean": "C4", "noise": "C5", "reset": "C6"}
# Distinct colours for what has none of its own: interventions' variants (each knockout edge
# and span), readouts and interventions added later.
SPARE_COLORS = ("C9", "C7", "C8", "C0", "C2", "navy", "olive", "teal")
# Readouts: native and cls keep main_result's orange and green.
READOUT_COLORS = {"native": "C1", "cls": "C2", "distillation": "C3", "patch_mean": "C4"}
#: the readouts main_result draws; the readouts figure is drawn for the others
MAIN_READOUTS = ("native", "cls")


@dataclass(frozen=True)
class Panel:
    title: str
    series: list[str]
    missing: list[str]  # expected series this model has no data for
    xlabel: str
    ylabel: str  # only the first panel of a row shows it (shared y axis)


@dataclass(frozen=True)
class FigureResult:
    """What happened to one figure: written files, or why it was skipped, plus notes a
    reader needs (where a band's example part is only bounded, which points have no band,
    which series are absent)."""

    name: str
    paths: list[Path]
    skipped: str | None
    panels: list[Panel]
    notes: list[str]


# --------------------------------------------------------------------------- series


@dataclass(frozen=True)
class Line:
    label: str
    layers: np.ndarray
    mean: np.ndarray
    low: np.ndarray | None = None
    high: np.ndarray | None = None
    band: str | None = None  # "outcomes", "records", "mixed": what the band's example part is read from


@dataclass(frozen=True)
class SeriesSpec:
    """How a main_result series is read from the table: which rows, which metric, and how
    each example's 0/1 outcome is read from outcomes.csv."""

    label: str
    color: str
    select: Callable[[pd.DataFrame], pd.DataFrame]
    metric: str
    correct: Callable[[pd.DataFrame], np.ndarray]
    linestyle: str = "-"


def _correct(outcomes: pd.DataFrame) -> np.ndarray:
    return (outcomes["rank"] == 0).to_numpy()


def _follows_donor(outcomes: pd.DataFrame) -> np.ndarray:
    return (outcomes["predicted"] == outcomes["donor_predicted"]).to_numpy()


def on_cls(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows of interventions on the CLS: a shuffle of the CLS, or an intervention without
    a token setting (its `token` is empty)."""
    return rows[rows["token"].isna() | (rows["token"] == CLS)]


def _probe_rows(rows: pd.DataFrame) -> pd.DataFrame:
    # none cells of every readout carry the same probe: keep one per (layer, seed)
    none = rows[(rows["intervention"] == "none") & rows["probe_accuracy"].notna()]
    return none.drop_duplicates(["layer", "seed"])


MAIN_SERIES = (
    SeriesSpec(PROBE, "C0", _probe_rows, "probe_accuracy", lambda o: (o["probe_predicted"] == o["label"]).to_numpy()),
    SeriesSpec(SHUFFLE_NATIVE, "C1", lambda r: _shuffle_rows("native", "accuracy")(r), "accuracy", _correct),
    SeriesSpec(SHUFFLE_CLS, "C2", lambda r: _shuffle_rows("cls", "accuracy")(r), "accuracy", _correct),
)


def _shuffle_rows(readout: str, metric: str, token: str = CLS) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """A shuffle's rows of one readout and token (a record older than the token setting, with
    no `token`, shuffled the CLS)."""

    def select(r: pd.DataFrame) -> pd.DataFrame:
        r = on_cls(r) if token == CLS else r[r["token"] == token]
        return r[(r["intervention"] == "shuffle") & (r["readout"] == readout) & r[metric].notna()]

    return select


# Dotted, in the colour of the shuffle series they belong to: the share of outputs equal to
# the donor image's own unmodified prediction (docs/results.md, donor_agreement).
DONOR_SERIES = (
    SeriesSpec(
        DONOR_NATIVE, "C1", _shuffle_rows("native", "donor_agreement"), "donor_agreement", _follows_donor, linestyle=":"
    ),
    SeriesSpec(
        DONOR_CLS, "C2", _shuffle_rows("cls", "donor_agreement"), "donor_agreement", _follows_donor, linestyle=":"
    ),
)


def mean_line(rows: pd.DataFrame, metric: str, label: str) -> Line:
    """Mean of `metric` over the rows of each layer (seeds, and readouts where the metric
    does not depend on them)."""
    means = rows.dropna(subset=[metric]).groupby("layer")[metric].mean().sort_index()
    return Line(label, means.index.to_numpy(dtype=int), means.to_numpy(dtype=float))


def banded_line(rows: pd.DataFrame, spec: SeriesSpec, outcomes: Mapping[str, pd.DataFrame] | None) -> Line:
    """Mean over seeds per layer with its sweep.intervals band: the example part from the
    per-example outcomes where every cell of the layer has them, from the records'
    accuracies and n_val otherwise (W&B). A seeded point with one seed has no band (NaN)."""
    rows = rows.dropna(subset=[spec.metric])
    layers, intervals, kinds = [], [], set()
    for layer, at_layer in rows.groupby("layer", sort=True):
        layers.append(int(layer))
        interval, kind = layer_interval(at_layer, spec, outcomes)
        intervals.append(interval)
        kinds.add(kind)
    band = kinds.pop() if len(kinds) == 1 else "mixed"
    return Line(
        spec.label,
        np.array(layers),
        np.array([i.mean for i in intervals]),
        np.array([i.low for i in intervals]),
        np.array([i.high for i in intervals]),
        band,
    )


def layer_interval(
    at_layer: pd.DataFrame, spec: SeriesSpec, outcomes: Mapping[str, pd.DataFrame] | None
) -> tuple[Interval, str]:
    """One point's interval, and what its example part was read from ("outcomes" or
    "records"). Rows without a seed are a seedless cell (one measurement)."""
    seeded = bool(at_layer["seed"].notna().any())
    per_seed = _seed_outcomes(at_layer, spec, outcomes)
    if per_seed is not None:
        return outcome_interval(per_seed, seeded=seeded), "outcomes"
    n_val = at_layer["n_val"].dropna()
    if n_val.empty:
        raise SourceError(f"cells {', '.join(at_layer['cell_id'])} record no n_val, needed for the {spec.label!r} band")
    return summary_interval(at_layer[spec.metric].to_numpy(dtype=float), int(n_val.min()), seeded=seeded), "records"


def _seed_outcomes(
    at_layer: pd.DataFrame, spec: SeriesSpec, outcomes: Mapping[str, pd.DataFrame] | None
) -> np.ndarray | None:
    """Seeds x examples 0/1 outcomes, or None when any cell of this layer lacks them. Every
    cell must list the same images in the same order (the interval pairs them up)."""
    if outcomes is None or not all(cell_id in outcomes for cell_id in at_layer["cell_id"]):
        return None
    per_seed, labels = [], {}
    for cell_id in at_layer["cell_id"]:
        table = outcomes[cell_id]
        try:
            per_seed.append(spec.correct(table))
        except KeyError as error:
            raise SourceError(
                f"outcomes of cell {cell_id} lack column {error}, needed for the "
                f"{spec.label!r} band (docs/results.md lists the columns)"
            ) from error
        if "label" in table:
            labels[cell_id] = table["label"].to_numpy()
    first = next(iter(labels.items()), None)
    for cell_id, label in labels.items():
        if not np.array_equal(label, first[1]):
            raise SourceError(
                f"outcomes of cells {first[0]} and {cell_id} ({spec.label!r}, one layer) list "
                f"different images ({len(first[1])} and {len(label)} rows, or other labels): "
                f"the band pairs examples across seeds"
            )
    return np.stack(per_seed)


# --------------------------------------------------------------------------- figures


#: figure(complete rows, per-example outcomes or None, out_dir) -> FigureResult
FigureFunction = Callable[[pd.DataFrame, "Mapping[str, pd.DataFrame] | None", Path], "FigureResult"]
#: every figure `sweep-aggregate` draws, in the order figures.json lists them: a figure is one
#: function registered here (`@FIGURES.register("name")`), named as its files are
FIGURES: Registry[FigureFunction] = Registry("figure")


def draw_figures(table: SweepTable, out_dir: Path) -> dict[str, FigureResult]:
    """Draw every figure the table has data for into `out_dir` (PNG + PDF each) and write
    figures.json. A skipped figure's old files are removed, so the folder always matches
    figures.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    complete = table.frame[table.frame["status"] == "complete"]
    results = [figure(complete, table.outcomes, out_dir) for _, figure in FIGURES.items()]
    for result in results:
        if result.skipped:
            for fmt in FORMATS:
                (out_dir / f"{result.name}.{fmt}").unlink(missing_ok=True)
    _write_index(out_dir, results)
    return {result.name: result for result in results}


@FIGURES.register("main_result")
def main_result(complete: pd.DataFrame, outcomes: Mapping[str, pd.DataFrame] | None, out_dir: Path) -> FigureResult:
    """Decodable (probe) vs used (accuracy after the CLS shuffle), per layer and model."""
    name = "main_result"
    relevant = complete[complete["intervention"].isin(["none", "shuffle"])]
    if relevant.empty:
        return _skipped(name, "no complete intervention=none or intervention=shuffle cells")
    models = list(dict.fromkeys(relevant["model"]))
    fig, axes = _panels(len(models))
    banded = _Banded(outcomes)
    for ax, model in zip(axes, models):
        rows = complete[complete["model"] == model]
        missing: list[str] = []
        for spec, line in banded.draw(ax, rows, MAIN_SERIES + DONOR_SERIES, missing):
            unbanded = line.layers[np.isnan(line.low)]
            if len(unbanded):
                banded.notes.append(
                    f"{model}: no band for {spec.label} at layer {', '.join(map(str, unbanded))} "
                    f"(one seed cannot show the spread between seeds)"
                )
        banded.close_panel(ax, model, rows, missing, ylabel="accuracy")
    return banded.finish(
        fig,
        axes,
        name,
        "Label information in CLS: decodable vs used (dotted: output = the donor's own prediction).",
        out_dir,
    )


class _Banded:
    """What the figures of banded series (main_result, readouts, tokens) share: each series
    drawn with its band where the rows have it, each panel closed with chance and the
    absent series named, and the figure titled with what its bands resample."""

    def __init__(self, outcomes: Mapping[str, pd.DataFrame] | None) -> None:
        self.outcomes = outcomes
        self.panels: list[Panel] = []
        self.notes: list[str] = []
        self.bands: set[str | None] = set()

    def draw(
        self, ax: Any, rows: pd.DataFrame, specs: Sequence[SeriesSpec], missing: list[str] | None = None
    ) -> list[tuple[SeriesSpec, Line]]:
        """Each spec's banded line where `rows` have it; the others' labels go to `missing`."""
        drawn = []
        for spec in specs:
            selected = spec.select(rows)
            if selected.empty:
                if missing is not None:
                    missing.append(spec.label)
                continue
            line = banded_line(selected, spec, self.outcomes)
            _plot(ax, line, color=spec.color, linestyle=spec.linestyle)
            self.bands.add(line.band)
            drawn.append((spec, line))
        return drawn

    def close_panel(self, ax: Any, model: str, rows: pd.DataFrame, missing: list[str], *, ylabel: str) -> None:
        _chance(ax, rows)
        _style(ax, model, rows, ylabel=ylabel)
        self.panels.append(_panel(ax, missing))
        if missing:
            self.notes.append(f"{model}: no cells for {', '.join(missing)}")

    def finish(self, fig: Figure, axes: list[Any], name: str, title: str, out_dir: Path) -> FigureResult:
        band_text = _band_text(self.bands - {None})
        self.notes.insert(0, band_text)
        _suptitle(fig, f"{title} Mean over seeds; {band_text}")
        return _finish(fig, axes, name, self.panels, self.notes, out_dir)


def _band_text(kinds: set[str]) -> str:
    what = f"bands: {LEVEL:.0%} CI over permutation draws (seeds) and examples"
    if kinds == {"records"}:
        return f"{what}, the examples' part bounded by p(1-p)/n (no per-example outcomes)"
    if kinds == {"outcomes"} or not kinds:
        return what
    return f"{what}, the examples' part bounded by p(1-p)/n where per-example outcomes are missing"


@FIGURES.register("identifiability")
def identifiability(complete: pd.DataFrame, outcomes: Mapping[str, pd.DataFrame] | None, out_dir: Path) -> FigureResult:
    """The class-embedding view (Vilas et al. 2023): what layer L's CLS says through the
    model's own final norm and head, beside the per-layer and last-layer probes."""
    name = "identifiability"
    none = complete[
        (complete["intervention"] == "none")
        & complete[["probe_accuracy", "projection_accuracy", "identifiability"]].notna().any(axis=1)
    ]
    if none.empty:
        return _skipped(name, "no complete intervention=none cells (they carry the probe and projection metrics)")
    series = (
        (PROBE, "probe_accuracy", {"color": "C0"}),
        (LAST_PROBE, "last_probe_accuracy", {"color": "C0", "linestyle": ":"}),
        (PROJECTION, "projection_accuracy", {"color": "C3"}),
        (IDENTIFIABILITY, "identifiability", {"color": "C4", "linestyle": "--"}),
    )
    models = list(dict.fromkeys(none["model"]))
    fig, axes = _panels(len(models))
    panels, notes = [], []
    for ax, model in zip(axes, models):
        rows = none[none["model"] == model]
        missing = []
        for label, metric, style in series:
            line = mean_line(rows, metric, label)
            if len(line.layers) == 0:
                missing.append(label)
                continue
            _plot(ax, line, **style)
        _style(ax, model, rows, ylabel="accuracy / identifiability")
        panels.append(_panel(ax, missing))
        if missing:
            notes.append(f"{model}: no values for {', '.join(missing)}")
    _suptitle(fig, "Class-embedding projection of layer L's CLS (mean over seeds)")
    return _finish(fig, axes, name, panels, notes, out_dir)


@FIGURES.register("controls")
def controls(complete: pd.DataFrame, outcomes: Mapping[str, pd.DataFrame] | None, out_dir: Path) -> FigureResult:
    """Every intervention side by side (native readout): the other ways to destroy what
    CLS carries should bracket the shuffle."""
    name = "controls"
    native = on_cls(complete[complete["readout"] == "native"])
    if native.empty:
        return _skipped(name, "no complete cells with the native readout")
    native = native.assign(series=series_labels(native))  # each knockout (edge, span) its own line
    rank = {name: i for i, name in enumerate(INTERVENTIONS.names)}
    order = sorted(set(native["series"]), key=lambda label: (rank.get(label.partition("@")[0], len(rank)), label))
    spare = iter(SPARE_COLORS * len(order))
    colors = {i: INTERVENTION_COLORS.get(i) or next(spare) for i in order}
    models = list(dict.fromkeys(native["model"]))
    fig, axes = _panels(len(models))
    panels, notes = [], []
    for ax, model in zip(axes, models):
        rows = native[native["model"] == model]
        missing = []
        for intervention in order:
            line = mean_line(rows[rows["series"] == intervention], "accuracy", intervention)
            if len(line.layers) == 0:
                missing.append(intervention)
                continue
            _plot(ax, line, color=colors[intervention])
        _chance(ax, rows)
        _style(ax, model, rows, ylabel="accuracy")
        panels.append(_panel(ax, missing))
        if missing:
            notes.append(f"{model}: no cells for {', '.join(missing)}")
    _suptitle(fig, "Interventions on CLS at layer L, native readout (mean over seeds)")
    return _finish(fig, axes, name, panels, notes, out_dir)


@FIGURES.register("reaccumulation")
def reaccumulation(complete: pd.DataFrame, outcomes: Mapping[str, pd.DataFrame] | None, out_dir: Path) -> FigureResult:
    """Is the label information re-accumulated after an intervention at L? One panel per
    (model, intervention) with probe_after cells: per intervened layer L, the layer-L'
    probe's accuracy on the intervened CLS at each L' > L (mean over seeds; readouts share
    one branch, hence one value), beside the unmodified probe curve."""
    name = "reaccumulation"
    after = complete[(complete["intervention"] != "none") & complete["probe_after"].notna()]
    if after.empty:
        return _skipped(name, "no complete intervened cells with intervention.probe_after=true")
    labels = pd.Series(series_labels(after), index=after.index)
    pairs = list(dict.fromkeys(zip(after["model"], labels)))
    fig, axes = _panels(len(pairs))
    panels, notes = [], []
    for ax, (model, intervention) in zip(axes, pairs):
        rows = after[(after["model"] == model) & (labels == intervention)]
        unmodified = _probe_rows(complete[complete["model"] == model])
        missing = []
        if unmodified.empty:
            missing.append(UNMODIFIED_PROBE)
        else:
            _plot(ax, mean_line(unmodified, "probe_accuracy", UNMODIFIED_PROBE), color="C0", linestyle="--")
        for layer, line in probe_after_lines(rows, intervention).items():
            _plot(ax, line, color=_layer_color(layer, int(rows["n_layers"].max())))
        ax.set_title(f"{model}: {intervention}")
        _style(ax, ax.get_title(), rows, ylabel="probe accuracy at L'")
        ax.set_xlabel("probed layer L'")
        panels.append(_panel(ax, missing))
        if missing:
            notes.append(f"{model}: no intervention=none cells for the unmodified probe curve")
    _suptitle(
        fig,
        "Re-accumulation: layer-L' probes on the CLS after an intervention at L (one line per L, "
        "mean over seeds), beside the unmodified probes",
    )
    return _finish(fig, axes, name, panels, notes, out_dir)


def shuffle_pair(labels: tuple[str, str], color: str, readout: str, token: str = CLS) -> tuple[SeriesSpec, SeriesSpec]:
    """A shuffle's accuracy (solid) and donor_agreement (dotted), one readout and token."""
    return (
        SeriesSpec(labels[0], color, _shuffle_rows(readout, "accuracy", token), "accuracy", _correct),
        SeriesSpec(
            labels[1],
            color,
            _shuffle_rows(readout, "donor_agreement", token),
            "donor_agreement",
            _follows_donor,
            linestyle=":",
        ),
    )


def readout_series(readout: str, color: str) -> tuple[SeriesSpec, SeriesSpec]:
    """The CLS shuffle with one readout."""
    return shuffle_pair((f"shuffle ({readout})", f"follows donor ({readout})"), color, readout)


@FIGURES.register("readouts")
def readouts(complete: pd.DataFrame, outcomes: Mapping[str, pd.DataFrame] | None, out_dir: Path) -> FigureResult:
    """Which part of a readout follows the donor's CLS: per model with shuffle cells, every
    readout it was shuffled with (accuracy, donor_agreement, banded as in main_result),
    beside that readout's unmodified (`none`) accuracy. Drawn only when some readout goes
    beyond main_result's (DINOv2's patch_mean, DeiT's distillation head)."""
    name = "readouts"
    shuffled = on_cls(complete[complete["intervention"] == "shuffle"])
    extra = sorted(set(shuffled["readout"]) - set(MAIN_READOUTS))
    if not extra:
        return _skipped(
            name,
            "no complete intervention=shuffle cells with a readout other than "
            f"{' or '.join(MAIN_READOUTS)} (e.g. +experiment=readouts)",
        )
    order = [r for r in READOUT_COLORS if r in set(shuffled["readout"])] + [r for r in extra if r not in READOUT_COLORS]
    spare = iter(SPARE_COLORS * len(order))
    colors = {r: READOUT_COLORS.get(r) or next(spare) for r in order}
    models = list(dict.fromkeys(shuffled["model"]))
    fig, axes = _panels(len(models))
    banded = _Banded(outcomes)
    for ax, model in zip(axes, models):
        rows = complete[complete["model"] == model]
        missing: list[str] = []
        for readout in [r for r in order if r in set(shuffled.loc[shuffled["model"] == model, "readout"])]:
            banded.draw(ax, rows, readout_series(readout, colors[readout]), missing)
            none = rows[(rows["intervention"] == "none") & (rows["readout"] == readout)]
            line = mean_line(none, "accuracy", f"none ({readout})")
            if len(line.layers):
                ax.plot(line.layers, line.mean, color=colors[readout], linestyle="--", linewidth=0.8, label=line.label)
            else:
                missing.append(line.label)
        banded.close_panel(ax, model, rows, missing, ylabel="accuracy")
    return banded.finish(
        fig,
        axes,
        name,
        "Readouts under the CLS shuffle: accuracy (solid), output = the donor's "
        "own prediction (dotted), unmodified accuracy (thin dashed).",
        out_dir,
    )


TOKEN_COLORS = {"cls": "C1", "distillation": "C4", "registers": "C5", "patches": "C9"}
TOKEN_READOUT = "native"  # the model's own output: what each moved token does to it


@FIGURES.register("tokens")
def tokens(complete: pd.DataFrame, outcomes: Mapping[str, pd.DataFrame] | None, out_dir: Path) -> FigureResult:
    """Which token carries what the output uses? Per model, a shuffle of each token it has
    (intervention.token), native readout: accuracy against the image's own label (solid)
    and the share of outputs equal to the donor's own prediction (dotted), mean over seeds
    with the main result's bands. Drawn where a model has a shuffle of a token other than
    the CLS; the CLS shuffle is drawn beside it for reference."""
    name = "tokens"
    shuffles = complete[(complete["intervention"] == "shuffle") & (complete["readout"] == TOKEN_READOUT)]
    moved = shuffles[shuffles["token"].notna() & (shuffles["token"] != CLS)]
    if moved.empty:
        return _skipped(
            name,
            f"no complete shuffle cells of a token other than the CLS (intervention.token) "
            f"with readout={TOKEN_READOUT}",
        )
    models = list(dict.fromkeys(moved["model"]))
    fig, axes = _panels(len(models))
    banded = _Banded(outcomes)
    for ax, model in zip(axes, models):
        rows = complete[complete["model"] == model]
        banded.draw(ax, rows, [spec for token in TOKENS for spec in token_series(token)])
        banded.close_panel(ax, model, rows, [], ylabel=f"accuracy / follows donor ({TOKEN_READOUT} readout)")
    return banded.finish(
        fig,
        axes,
        name,
        f"Shuffling one token at layer L, {TOKEN_READOUT} readout: accuracy "
        "(solid) and output = the donor's own prediction (dotted).",
        out_dir,
    )


def token_series(token: str) -> tuple[SeriesSpec, SeriesSpec]:
    """The shuffle of `token` with the native readout."""
    return shuffle_pair(
        (f"shuffle {token}: accuracy", f"shuffle {token}: follows donor"), TOKEN_COLORS[token], TOKEN_READOUT, token
    )


def probe_after_lines(rows: pd.DataFrame, intervention: str) -> dict[int, Line]:
    """Intervened layer L -> the mean over seeds of probe_after at each later layer. The
    readouts of one (layer, seed) read one branch: one row each is kept."""
    lines = {}
    for layer, at_layer in rows.drop_duplicates(["layer", "seed"]).groupby("layer", sort=True):
        vectors = pd.DataFrame([parse_probe_after(text) for text in at_layer["probe_after"]])
        if vectors.empty or vectors.columns.empty:  # L = N: no later layer
            continue
        means = vectors.mean().sort_index()
        lines[int(layer)] = Line(
            f"{intervention} at L={int(layer)}", means.index.to_numpy(dtype=int), means.to_numpy(dtype=float)
        )
    return lines


def _layer_color(layer: int, n_layers: int) -> Any:
    from matplotlib import colormaps

    return colormaps[REACCUMULATION_CMAP](0.85 * layer / max(n_layers, 1))


# --------------------------------------------------------------------------- drawing helpers


def _panels(n: int) -> tuple[Figure, list[Any]]:
    columns = min(n, MAX_COLUMNS)
    rows = math.ceil(n / columns)
    fig = Figure(figsize=(PANEL_SIZE[0] * columns, PANEL_SIZE[1] * rows + 0.8), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.subplots(rows, columns, sharey=True, squeeze=False)
    axes = list(grid.flat)
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _suptitle(fig: Figure, text: str) -> None:
    """Wrapped to the figure's width: a one-panel figure must not cut its title off (the
    figure grows by the lines beyond the first, so the panels keep their height)."""
    width = max(20, int(fig.get_figwidth() * TITLE_CHARS_PER_INCH))
    wrapped = textwrap.fill(text, width)
    _grow(fig, wrapped.count("\n") * TEXT_LINE_IN)
    fig.suptitle(wrapped, fontsize=10)


def _grow(fig: Figure, inches: float) -> None:
    fig.set_figheight(fig.get_figheight() + inches)


def _plot(ax: Any, line: Line, **style: Any) -> None:
    ax.plot(line.layers, line.mean, marker="o", markersize=3, linewidth=1.5, label=line.label, **style)
    if line.low is not None and line.high is not None:
        ax.fill_between(line.layers, line.low, line.high, color=style.get("color"), alpha=0.2, linewidth=0)


def chance_level(rows: pd.DataFrame) -> float | None:
    """The chance accuracy the panel draws for these rows (their mean), or None without one."""
    chance = rows["chance"].dropna()
    return None if chance.empty else float(chance.mean())


def _chance(ax: Any, rows: pd.DataFrame) -> None:
    level = chance_level(rows)
    if level is not None:
        ax.axhline(level, label=CHANCE, **CHANCE_STYLE)


def _style(ax: Any, model: str, rows: pd.DataFrame, *, ylabel: str) -> None:
    ax.set_title(model)
    ax.set_xlabel("layer")
    if ax.get_subplotspec().is_first_col():
        ax.set_ylabel(ylabel)
    n_layers = rows["n_layers"].dropna()
    if not n_layers.empty:
        ax.set_xlim(-0.3, int(n_layers.max()) + 0.3)
    ax.set_ylim(0, 1.02)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3, linewidth=0.5)


def _panel(ax: Any, missing: list[str]) -> Panel:
    """The panel as drawn: series labels are read back from the Axes, not from our intent."""
    _, labels = ax.get_legend_handles_labels()
    return Panel(title=ax.get_title(), series=labels, missing=missing, xlabel=ax.get_xlabel(), ylabel=ax.get_ylabel())


def _finish(
    fig: Figure, axes: list[Any], name: str, panels: list[Panel], notes: list[str], out_dir: Path
) -> FigureResult:
    """One legend for the whole figure (every label once, in first-drawn order), then save."""
    handles: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    columns = _legend_columns(list(handles), fig.get_figwidth())
    _grow(fig, (math.ceil(len(handles) / columns) - 1) * TEXT_LINE_IN)  # legend rows beyond the first
    fig.legend(
        list(handles.values()), list(handles), loc="outside lower center", frameon=False, fontsize=9, ncol=columns
    )
    paths = _save(fig, out_dir, name)
    return FigureResult(name=name, paths=paths, skipped=None, panels=panels, notes=notes)


def _legend_columns(labels: list[str], width_in: float) -> int:
    """As many legend columns as fit the figure's width (a one-panel figure would otherwise
    cut its legend off), judged by the widest labels."""
    widths = sorted((LEGEND_ENTRY_IN + LEGEND_CHAR_IN * len(label) for label in labels), reverse=True)
    columns = len(labels)
    while columns > 1 and sum(widths[:columns]) > width_in:
        columns -= 1
    return max(columns, 1)


def _save(fig: Figure, out_dir: Path, name: str) -> list[Path]:
    paths = []
    for fmt in FORMATS:
        buffer = io.BytesIO()
        options = {"dpi": PNG_DPI} if fmt == "png" else {"metadata": {"CreationDate": None}}  # reproducible PDF
        fig.savefig(buffer, format=fmt, **options)
        path = out_dir / f"{name}.{fmt}"
        atomic_write_bytes(path, buffer.getvalue())
        paths.append(path)
    return paths


def _skipped(name: str, reason: str) -> FigureResult:
    return FigureResult(name=name, paths=[], skipped=reason, panels=[], notes=[])


def _write_index(out_dir: Path, results: Sequence[FigureResult]) -> None:
    figures: dict[str, Any] = {}
    for result in results:
        if result.skipped:
            figures[result.name] = {"skipped": result.skipped}
            continue
        figures[result.name] = {
            "files": [path.name for path in result.paths],
            "panels": [dataclasses.asdict(panel) for panel in result.panels],
            "notes": result.notes,
        }
    index = {"bands": {"level": LEVEL, "method": "sweep.intervals (docs/science.md, Error bars)"}, "figures": figures}
    atomic_write_text(out_dir / FIGURES_FILE, json.dumps(index, indent=2) + "\n")
