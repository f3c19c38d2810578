"""sweep.plotting: the study's figures, checked through figures.json (panels and series
as drawn) rather than by reading pixels."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
from fake_sweep import make_sweep

from sweep.aggregate import SourceError, load_local
from sweep.intervals import outcome_interval
from sweep.plotting import (
    DONOR_SERIES,
    MAIN_SERIES,
    banded_line,
    draw_figures,
    main_result,
    probe_after_lines,
    readout_series,
)
from sweep.record import parse_probe_after

DONORS = ["shuffle follows donor (native)", "shuffle follows donor (CLS-only)"]
MAIN = ["probe", "shuffle (native readout)", "shuffle (CLS-only readout)", *DONORS, "chance"]


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    return load_local(make_sweep(tmp_path_factory.mktemp("sweeps")).sweep_dir)


@pytest.fixture(scope="module")
def drawn(table, tmp_path_factory):
    out = tmp_path_factory.mktemp("figures")
    return out, draw_figures(table, out)


def index(out):
    return json.loads((out / "figures.json").read_text())["figures"]


def test_every_figure_is_written_as_png_and_pdf(drawn):
    out, figures = drawn
    assert set(figures) == {"main_result", "identifiability", "controls", "reaccumulation", "readouts", "tokens"}
    assert figures.pop("tokens").skipped == (
        "no complete shuffle cells of a token other than the CLS (intervention.token) with readout=native"
    )
    assert figures.pop("readouts").skipped == (
        "no complete intervention=shuffle cells with a readout other than native or cls (e.g. +experiment=readouts)"
    )
    assert index(out)["readouts"] == {
        "skipped": "no complete intervention=shuffle cells with a readout other "
        "than native or cls (e.g. +experiment=readouts)"
    }
    for name, figure in figures.items():
        assert figure.skipped is None
        assert [p.name for p in figure.paths] == [f"{name}.png", f"{name}.pdf"]
        png, pdf = (p.read_bytes() for p in figure.paths)
        assert png.startswith(b"\x89PNG") and len(png) > 10_000
        assert pdf.startswith(b"%PDF") and len(pdf) > 5_000


def test_main_result_has_a_panel_per_model_with_the_studys_series(drawn):
    out, _ = drawn
    main = index(out)["main_result"]
    assert [panel["title"] for panel in main["panels"]] == ["tiny_a", "tiny_b"]
    for panel in main["panels"]:
        assert panel["series"] == MAIN and panel["missing"] == []
        assert panel["xlabel"] == "layer"
    assert main["panels"][0]["ylabel"] == "accuracy"
    assert "CI over permutation draws (seeds) and examples" in main["notes"][0]


def test_identifiability_and_controls_panels(drawn):
    out, _ = drawn
    figures = index(out)
    for panel in figures["identifiability"]["panels"]:
        assert panel["series"] == ["probe", "last-layer probe", "last-layer head (projection)", "identifiability"]
    controls = figures["controls"]["panels"]
    assert [panel["title"] for panel in controls] == ["tiny_a", "tiny_b"]
    # the failed noise cell has no data: only interventions with complete cells are drawn
    assert all(panel["series"] == ["none", "shuffle", "zero", "mean", "chance"] for panel in controls)


def test_a_sweep_of_none_cells_draws_what_it_has(tmp_path):
    sweep = make_sweep(tmp_path, models={"tiny_a": 3}, interventions=("none",), seeds=(0,), controls=(), problems=False)
    out = tmp_path / "figures"
    figures = draw_figures(load_local(sweep.sweep_dir), out)
    assert figures.pop("reaccumulation").skipped == "no complete intervened cells with intervention.probe_after=true"
    assert "intervention=shuffle" in figures.pop("readouts").skipped
    assert "intervention.token" in figures.pop("tokens").skipped
    assert not any(figure.skipped for figure in figures.values())
    main = index(out)["main_result"]
    assert all(panel["series"] == ["probe", "chance"] for panel in main["panels"])
    assert main["panels"][0]["missing"] == ["shuffle (native readout)", "shuffle (CLS-only readout)", *DONORS]
    assert (f"tiny_a: no cells for shuffle (native readout), shuffle (CLS-only readout), {', '.join(DONORS)}") in main[
        "notes"
    ]
    assert index(out)["identifiability"]["panels"][0]["series"][0] == "probe"


def test_reaccumulation_draws_each_intervened_layer_beside_the_unmodified_probe(drawn, table):
    """One line per intervened layer L over L' > L (L = N has no later layer), in a panel per
    (model, intervention); the line is the mean over seeds of the records' probe_after."""
    out, _ = drawn
    panels = index(out)["reaccumulation"]["panels"]
    assert [panel["title"] for panel in panels] == ["tiny_a: shuffle", "tiny_b: shuffle"]
    assert panels[0]["series"] == ["probe, unmodified", *(f"shuffle at L={layer}" for layer in range(3))]
    assert panels[0]["xlabel"] == "probed layer L'" and panels[0]["missing"] == []
    rows = table.complete[(table.complete["model"] == "tiny_b") & (table.complete["intervention"] == "shuffle")]
    line = probe_after_lines(rows, "shuffle")[1]
    assert list(line.layers) == [2, 3, 4]
    at_l1 = rows[rows["layer"] == 1].drop_duplicates("seed")["probe_after"].map(parse_probe_after)
    assert line.mean[0] == pytest.approx(np.mean([vector[2] for vector in at_l1]))


def test_a_sweep_without_complete_cells_skips_every_figure_and_says_why(table, tmp_path):
    (tmp_path / "main_result.png").write_bytes(b"stale")
    empty = dataclasses.replace(table, frame=table.frame[table.frame["status"] == "failed"])
    figures = draw_figures(empty, tmp_path)
    assert figures["main_result"].skipped == "no complete intervention=none or intervention=shuffle cells"
    assert "intervention=none" in figures["identifiability"].skipped
    assert index(tmp_path)["controls"] == {"skipped": figures["controls"].skipped}
    assert not (tmp_path / "main_result.png").exists(), "a skipped figure's old file would contradict figures.json"


def test_without_outcomes_the_examples_part_is_bounded_and_says_so(table, tmp_path):
    figure = main_result(table.complete, None, tmp_path)  # outcomes=None: the W&B source
    assert "the examples' part bounded by p(1-p)/n (no per-example outcomes)" in figure.notes[0]


def test_bands_contain_the_mean_line(table):
    rows = table.complete[table.complete["model"] == "tiny_b"]
    for spec in MAIN_SERIES + DONOR_SERIES:
        line = banded_line(spec.select(rows), spec, table.outcomes)
        assert list(line.layers) == [0, 1, 2, 3, 4] and line.band == "outcomes"
        assert np.all(line.low <= line.mean + 1e-12) and np.all(line.mean <= line.high + 1e-12)


def test_a_band_is_the_interval_of_the_seeds_outcomes_side_by_side(table):
    # the figure and the table share sweep.intervals: the band is its interval of the
    # seeds x examples outcomes of each layer's cells
    spec, rows = MAIN_SERIES[1], table.complete[table.complete["model"] == "tiny_a"]
    at_layer = spec.select(rows)[lambda r: r["layer"] == 2]
    outcomes = np.stack([spec.correct(table.outcomes[cell_id]) for cell_id in at_layer["cell_id"]])
    expected = outcome_interval(outcomes, seeded=True)
    line = banded_line(spec.select(rows), spec, table.outcomes)
    assert (line.low[2], line.mean[2], line.high[2]) == pytest.approx((expected.low, expected.mean, expected.high))
    assert expected.seeds == 2


def test_one_seed_of_a_seeded_series_draws_no_band_and_says_so(tmp_path):
    sweep = make_sweep(tmp_path, models={"tiny_a": 2}, seeds=(0,), controls=(), problems=False)
    figure = main_result(load_local(sweep.sweep_dir).complete, None, tmp_path)
    assert (
        "tiny_a: no band for shuffle (native readout) at layer 0, 1, 2 (one seed cannot show the spread between seeds)"
    ) in figure.notes


def test_outcomes_of_other_images_are_refused_naming_the_cells(tmp_path):
    sweep = make_sweep(tmp_path, models={"tiny_a": 2}, seeds=(0, 1), readouts=("native",), controls=(), problems=False)
    table = load_local(sweep.sweep_dir)
    shuffled = table.complete[(table.complete["intervention"] == "shuffle") & (table.complete["layer"] == 1)]
    path = table.outcomes.files[shuffled["cell_id"].iloc[1]]
    outcomes = pd.read_csv(path)
    outcomes["label"] = outcomes["label"].sample(frac=1, random_state=0).to_numpy()  # another image order
    outcomes.to_csv(path, index=False)
    with pytest.raises(
        SourceError,
        match=f"outcomes of cells {shuffled['cell_id'].iloc[0]} and "
        f"{shuffled['cell_id'].iloc[1]} .* list different images",
    ):
        banded_line(MAIN_SERIES[1].select(table.complete), MAIN_SERIES[1], table.outcomes)


def test_readouts_draws_every_readout_of_each_model_under_the_shuffle(tmp_path):
    """A readout beyond native and cls (here patch_mean) draws the figure: per model, per
    readout, the shuffle's accuracy and donor_agreement (banded like main_result) and the
    readout's unmodified accuracy; a readout without shuffle cells is not drawn."""
    sweep = make_sweep(tmp_path, readouts=("native", "cls", "patch_mean"), controls=(), problems=False)
    table = load_local(sweep.sweep_dir)
    figures = draw_figures(table, tmp_path / "figures")
    assert figures["readouts"].skipped is None
    assert [p.name for p in figures["readouts"].paths] == ["readouts.png", "readouts.pdf"]
    drawn = index(tmp_path / "figures")["readouts"]
    assert [panel["title"] for panel in drawn["panels"]] == ["tiny_a", "tiny_b"]
    expected = [
        f"{series} ({readout})"
        for readout in ("native", "cls", "patch_mean")
        for series in ("shuffle", "follows donor", "none")
    ] + ["chance"]
    assert all(panel["series"] == expected and panel["missing"] == [] for panel in drawn["panels"])
    assert "CI over permutation draws (seeds) and examples" in drawn["notes"][0]
    rows = table.complete[(table.complete["model"] == "tiny_b") & (table.complete["readout"] == "patch_mean")]
    shuffle, donor = readout_series("patch_mean", "C4")
    line = banded_line(shuffle.select(rows), shuffle, table.outcomes)
    at_l2 = rows[(rows["intervention"] == "shuffle") & (rows["layer"] == 2)]
    assert line.mean[2] == pytest.approx(at_l2["accuracy"].mean())
    assert banded_line(donor.select(rows), donor, table.outcomes).mean[2] == pytest.approx(
        at_l2["donor_agreement"].mean()
    )


def test_readouts_skips_a_model_without_shuffle_cells_of_its_readouts(tmp_path):
    sweep = make_sweep(tmp_path, readouts=("native", "cls", "distillation"), controls=(), problems=False)
    table = load_local(sweep.sweep_dir)
    shuffled_a = (table.complete["model"] == "tiny_a") & (table.complete["intervention"] == "shuffle")
    only_none_a = dataclasses.replace(table, frame=table.frame[~shuffled_a])
    draw_figures(only_none_a, tmp_path / "figures")
    panels = index(tmp_path / "figures")["readouts"]["panels"]
    assert [panel["title"] for panel in panels] == ["tiny_b"]
    assert panels[0]["series"][6:] == [
        "shuffle (distillation)",
        "follows donor (distillation)",
        "none (distillation)",
        "chance",
    ]


def test_tokens_draws_each_moved_token_beside_the_cls_shuffle_and_keeps_them_out_of_the_cls_figures(tmp_path):
    """A sweep with shuffles of the patches too: `tokens` draws per model the shuffle of each
    token (accuracy and follows donor, native readout), with the records' means; main_result,
    controls and the table keep the CLS shuffle apart from the patches' (`shuffle@patches`)."""
    from sweep.aggregate import accuracy_pivot

    sweep = make_sweep(tmp_path, models={"tiny_a": 3}, seeds=(0, 1), controls=(), tokens=("patches",), problems=False)
    table = load_local(sweep.sweep_dir)
    out = tmp_path / "figures"
    figures = draw_figures(table, out)
    assert figures["tokens"].skipped is None
    (panel,) = index(out)["tokens"]["panels"]
    assert panel["series"] == [
        "shuffle cls: accuracy",
        "shuffle cls: follows donor",
        "shuffle patches: accuracy",
        "shuffle patches: follows donor",
        "chance",
    ]
    main = index(out)["main_result"]["panels"][0]
    assert main["series"] == MAIN  # no patches series, and the CLS shuffle's lines are its own:
    cls_shuffle = table.complete[
        (table.complete["intervention"] == "shuffle")
        & (table.complete["token"] == "cls")
        & (table.complete["readout"] == "native")
    ]
    line = banded_line(cls_shuffle, MAIN_SERIES[1], table.outcomes)
    expected = cls_shuffle.groupby("layer")["accuracy"].mean().to_numpy()
    assert np.allclose(line.mean, expected)
    assert index(out)["controls"]["panels"][0]["series"] == ["none", "shuffle", "chance"]
    series = set(accuracy_pivot(table.complete).index.get_level_values("series"))
    assert {"shuffle/native", "shuffle@patches/native", "shuffle@patches/cls"} <= series
    patches = table.complete[table.complete["token"] == "patches"]
    assert accuracy_pivot(table.complete).loc[("tiny_a", "shuffle@patches/native"), 3] == pytest.approx(
        patches[(patches["readout"] == "native") & (patches["layer"] == 3)]["accuracy"].mean()
    )


def test_controls_draw_each_knockout_edge_as_its_own_line(tmp_path):
    knockouts = ("knockout@patches_to_cls+after", "knockout@cls_to_patches+after")
    sweep = make_sweep(tmp_path, models={"tiny_a": 3}, seeds=(0,), controls=("zero", *knockouts), problems=False)
    out = tmp_path / "figures"
    draw_figures(load_local(sweep.sweep_dir), out)
    (panel,) = index(out)["controls"]["panels"]
    assert panel["series"] == [
        "none",
        "shuffle",
        "zero",
        "knockout@cls_to_patches+after",
        "knockout@patches_to_cls+after",
        "chance",
    ]
