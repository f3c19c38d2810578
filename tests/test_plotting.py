"""sweep.plotting: the study's figures, checked through figures.json (panels and series
as drawn) rather than by reading pixels."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from fake_sweep import make_sweep

from sweep.aggregate import load_local
from sweep.record import parse_probe_after
from sweep.plotting import (DONOR_SERIES, MAIN_SERIES, banded_line, draw_figures, hierarchical_interval, main_result,
                            probe_after_lines, seed_interval)

DONORS = ["shuffle follows donor (native)", "shuffle follows donor (CLS-only)"]
MAIN = ["probe", "shuffle (native readout)", "shuffle (CLS-only readout)", *DONORS, "chance"]
N_BOOT = 200


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    return load_local(make_sweep(tmp_path_factory.mktemp("sweeps")).sweep_dir)


@pytest.fixture(scope="module")
def drawn(table, tmp_path_factory):
    out = tmp_path_factory.mktemp("figures")
    return out, draw_figures(table, out, n_boot=N_BOOT, seed=0)


def index(out):
    return json.loads((out / "figures.json").read_text())["figures"]


def test_every_figure_is_written_as_png_and_pdf(drawn):
    out, figures = drawn
    assert set(figures) == {"main_result", "identifiability", "controls", "reaccumulation"}
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
    assert "over seeds and examples" in main["notes"][0]


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
    sweep = make_sweep(tmp_path, models={"tiny_a": 3}, interventions=("none",), seeds=(0,), controls=(),
                       problems=False)
    out = tmp_path / "figures"
    figures = draw_figures(load_local(sweep.sweep_dir), out, n_boot=N_BOOT, seed=0)
    assert figures.pop("reaccumulation").skipped == "no complete intervened cells with intervention.probe_after=true"
    assert not any(figure.skipped for figure in figures.values())
    main = index(out)["main_result"]
    assert all(panel["series"] == ["probe", "chance"] for panel in main["panels"])
    assert main["panels"][0]["missing"] == ["shuffle (native readout)", "shuffle (CLS-only readout)", *DONORS]
    assert ("tiny_a: no cells for shuffle (native readout), shuffle (CLS-only readout), "
            f"{', '.join(DONORS)}") in main["notes"]
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
    figures = draw_figures(empty, tmp_path, n_boot=N_BOOT, seed=0)
    assert figures["main_result"].skipped == "no complete intervention=none or intervention=shuffle cells"
    assert "intervention=none" in figures["identifiability"].skipped
    assert index(tmp_path)["controls"] == {"skipped": figures["controls"].skipped}
    assert not (tmp_path / "main_result.png").exists(), "a skipped figure's old file would contradict figures.json"


def test_without_outcomes_the_band_is_over_seeds_only_and_says_so(table, tmp_path):
    figure = main_result(table.complete, None, tmp_path, n_boot=N_BOOT, seed=0)  # outcomes=None: the W&B source
    assert "over seeds only (no per-example outcomes)" in figure.notes[0]


def test_bands_contain_the_mean_line(table):
    rows = table.complete[table.complete["model"] == "tiny_b"]
    for spec in MAIN_SERIES + DONOR_SERIES:
        line = banded_line(spec.select(rows), spec, table.outcomes, n_boot=N_BOOT, seed=0, model="tiny_b")
        assert list(line.layers) == [0, 1, 2, 3, 4] and line.band == "examples"
        assert np.all(line.low <= line.mean + 1e-12) and np.all(line.mean <= line.high + 1e-12)


def test_identical_seeds_give_a_narrow_band_around_the_mean():
    rng = np.random.default_rng(0)
    correct = rng.random(5000) < 0.7
    mean = correct.mean()
    low, high = hierarchical_interval([correct, correct, correct], n_boot=1000, rng=np.random.default_rng(1))
    assert low <= mean <= high
    assert high - low < 0.03  # only example resampling is left: about ±1.96 * sqrt(.21 / 15000)
    spread = [rng.random(5000) < p for p in (0.4, 0.7, 0.95)]
    wide_low, wide_high = hierarchical_interval(spread, n_boot=1000, rng=np.random.default_rng(1))
    assert wide_high - wide_low > 5 * (high - low)


def test_a_perfect_series_has_a_zero_width_band():
    perfect = np.ones(100, dtype=bool)
    assert hierarchical_interval([perfect, perfect], n_boot=100, rng=np.random.default_rng(0)) == (1.0, 1.0)
    assert seed_interval([0.5], n_boot=100, rng=np.random.default_rng(0)) == (0.5, 0.5)


def test_seeded_bootstrap_is_deterministic(table):
    seeds = [np.random.default_rng(s).random(300) < 0.5 for s in range(3)]
    first = hierarchical_interval(seeds, n_boot=500, rng=np.random.default_rng(7))
    assert hierarchical_interval(seeds, n_boot=500, rng=np.random.default_rng(7)) == first
    assert hierarchical_interval(seeds, n_boot=500, rng=np.random.default_rng(8)) != first

    spec, rows = MAIN_SERIES[1], table.complete[table.complete["model"] == "tiny_a"]
    once, again, other = (banded_line(spec.select(rows), spec, table.outcomes, n_boot=N_BOOT, seed=seed, model="tiny_a")
                          for seed in (3, 3, 4))
    assert np.array_equal(once.low, again.low) and np.array_equal(once.high, again.high)
    assert not np.array_equal(once.low, other.low)
