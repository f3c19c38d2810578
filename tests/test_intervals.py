"""sweep.intervals: the table's and the figures' 95 % interval of a mean over seeds, checked
for coverage on simulated sweeps whose true mean is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import expit, logit
from scipy.stats import binomtest

from sweep.intervals import LEVEL, outcome_interval, summary_interval

# A toy-study cell: 700 validation images (digits), accuracy 60 %, and a spread (sd) of 5
# points between the per-seed accuracies that permutation draws give (an accuracy's own
# binomial noise on 700 images is 1.9 points).
N_EXAMPLES, TRUE_MEAN, SEED_SD = 700, 0.6, 0.05
REPLICATIONS = 2000
REQUIRED = 0.9 * LEVEL  # >= 90 % of nominal: 85.5 % of replications


def simulated_sweeps(seeds: int, *, seed_sd: float = SEED_SD, shared: float = 0.0, seed: int = 0) -> np.ndarray:
    """REPLICATIONS x seeds x examples 0/1 outcomes of one cell. Seed s of a sweep has
    accuracy TRUE_MEAN + N(0, seed_sd); `shared` adds a per-image difficulty -+shared that
    every seed of the sweep sees (the same validation images for every seed), mean zero over
    images, so TRUE_MEAN stays the mean over images and permutations."""
    rng = np.random.default_rng(seed)
    per_seed = TRUE_MEAN + seed_sd * rng.standard_normal((REPLICATIONS, seeds, 1))
    per_image = shared * rng.choice([-1.0, 1.0], size=(REPLICATIONS, 1, N_EXAMPLES))
    return rng.random((REPLICATIONS, seeds, N_EXAMPLES)) < np.clip(per_seed + per_image, 0, 1)


def coverage(bounds: np.ndarray) -> float:
    """Share of replications whose (low, high) holds the true mean."""
    return float(np.mean((bounds[:, 0] <= TRUE_MEAN) & (TRUE_MEAN <= bounds[:, 1])))


def new_bounds(sweeps: np.ndarray) -> np.ndarray:
    return np.array([(i.low, i.high) for i in (outcome_interval(s, seeded=True) for s in sweeps)])


def old_bootstrap_bounds(sweeps: np.ndarray, n_boot: int = 1000, seed: int = 1) -> np.ndarray:
    """The band sweep.plotting drew before: resample seeds, then each drawn seed's examples
    (a Binomial draw), percentile interval; vectorised over replications."""
    rng = np.random.default_rng(seed)
    accuracy = sweeps.mean(axis=2)
    replications, seeds = accuracy.shape
    picks = rng.integers(0, seeds, size=(replications, n_boot, seeds))
    drawn = np.take_along_axis(accuracy[:, None, :].repeat(n_boot, axis=1), picks, axis=2)
    means = (rng.binomial(N_EXAMPLES, drawn) / N_EXAMPLES).mean(axis=2)
    tail = (1 - LEVEL) / 2
    return np.quantile(means, [tail, 1 - tail], axis=1).T


def examples_only_bounds(sweeps: np.ndarray) -> np.ndarray:
    """Every outcome as an independent Bernoulli: the normal interval of example sampling."""
    mean = sweeps.mean(axis=(1, 2))
    half = 1.96 * np.sqrt(mean * (1 - mean) / sweeps[0].size)
    return np.stack([mean - half, mean + half], axis=1)


@pytest.mark.parametrize("seeds", [3, 5])
def test_the_interval_covers_the_true_mean_at_few_seeds_where_the_old_bands_did_not(seeds):
    sweeps = simulated_sweeps(seeds)
    assert coverage(new_bounds(sweeps)) >= REQUIRED
    # the reason for the change: both earlier readings of "the error" miss the seeds' spread
    assert coverage(examples_only_bounds(sweeps)) < REQUIRED
    if seeds == 3:  # a bootstrap over 3 seeds has 10 distinct means: too narrow
        assert coverage(old_bootstrap_bounds(sweeps)) < REQUIRED


@pytest.mark.parametrize("seeds", [3, 5])
def test_images_shared_by_every_seed_are_covered_too(seeds):
    # a per-image difficulty that every seed sees does not average out over seeds: the
    # spread between seeds cannot show it, the spread between images does
    sweeps = simulated_sweeps(seeds, seed_sd=0.0, shared=0.4, seed=2)
    assert coverage(new_bounds(sweeps)) >= REQUIRED
    seeds_only = np.array([_seeds_only_t(s.mean(axis=1)) for s in sweeps])
    assert coverage(seeds_only) < REQUIRED


def _seeds_only_t(accuracies: np.ndarray) -> tuple[float, float]:
    """Student's t on the per-seed accuracies alone (what the table would give from them)."""
    from scipy.special import stdtrit

    half = stdtrit(len(accuracies) - 1, 0.5 + LEVEL / 2) * accuracies.std(ddof=1) / math.sqrt(len(accuracies))
    return accuracies.mean() - half, accuracies.mean() + half


def test_a_seedless_cell_has_the_example_part_only():
    correct = np.random.default_rng(0).random(N_EXAMPLES) < TRUE_MEAN
    interval = outcome_interval([correct], seeded=False)
    p = correct.mean()
    assert interval.seed_variance == 0 and interval.seeds == 1
    assert interval.half_width == pytest.approx(1.96 * math.sqrt(p * (1 - p) / N_EXAMPLES), rel=0.01)
    assert summary_interval([p], N_EXAMPLES, seeded=False).half_width == pytest.approx(interval.half_width, rel=0.01)


def test_one_seed_of_a_seeded_series_has_no_interval():
    interval = summary_interval([0.6], N_EXAMPLES, seeded=True)
    assert interval.mean == 0.6 and math.isnan(interval.low) and math.isnan(interval.high)


def test_the_records_alone_bound_the_example_part_from_above():
    # per-seed accuracies (a W&B summary) do not show what the images share across seeds:
    # the binomial bound stands in for it
    for sweep in simulated_sweeps(3, shared=0.2)[:50]:
        from_outcomes = outcome_interval(sweep, seeded=True)
        from_means = summary_interval(sweep.mean(axis=1), N_EXAMPLES, seeded=True)
        assert from_means.mean == pytest.approx(from_outcomes.mean)
        assert from_means.example_variance >= from_outcomes.example_variance


def test_few_seeds_widen_the_interval_like_students_t():
    # two seeds 4 points apart: t on 1 degree of freedom (12.7), not the normal 1.96
    interval = summary_interval([0.58, 0.62], 10**9, seeded=True)
    assert interval.df == pytest.approx(1, rel=1e-3)
    assert interval.half_width == pytest.approx(12.706 * 0.02, rel=1e-3)


@pytest.mark.parametrize("correct,examples", [(1, 10_000), (0, 10_000), (10, 10_000), (5, 700), (420, 700), (700, 700)])
def test_a_seedless_cell_has_wilsons_interval(correct, examples):
    # the normal approximation gives [-0.0001, 0.0003] at 1 in 10,000 and a zero-width
    # interval at none or all correct; the score interval is scipy's Wilson interval
    outcomes = np.zeros(examples)
    outcomes[:correct] = 1
    wilson = binomtest(correct, examples).proportion_ci(confidence_level=LEVEL, method="wilson")
    for interval in (
        outcome_interval([outcomes], seeded=False),
        summary_interval([correct / examples], examples, seeded=False),
    ):
        assert (interval.low, interval.high) == pytest.approx((wilson.low, wilson.high), rel=1e-9, abs=1e-15)


def test_constant_outcomes_still_have_an_interval():
    # every seed right on 100 images: the images' part is at most p(1 - p) / 100, so the
    # interval is Wilson's on the 100 images, not the point 1.0
    interval = outcome_interval(np.ones((2, 100)), seeded=True)
    assert interval.high == 1.0
    assert interval.low == pytest.approx(binomtest(100, 100).proportion_ci(method="wilson").low, rel=1e-9)


# Cells where a normal interval fails: near 0, at chance on ImageNet (1000 classes, 10,000
# images: where late-layer shuffles sit) and on the toys' digits, near 1. Outcomes are
# Bernoulli with a per-image difficulty and a per-seed shift on the logit scale, so an
# accuracy stays in [0, 1]: name -> (accuracy of the median image and seed, images).
EDGE_CELLS = {
    "near 0": (0.001, 1000),
    "chance, ImageNet": (0.001, 10_000),
    "chance, digits": (0.1, 700),
    "near 1": (0.998, 700),
}
IMAGE_SD, EDGE_SEED_SD, EDGE_REPLICATIONS = 1.0, 0.3, 1000


def edge_sweeps(cell: str, seeds: int, *, resample_images: bool, seed: int = 3):
    """(true mean, iterator of seeds x examples outcomes). With `resample_images` every
    sweep draws new images and the truth is the mean over all images (Gauss-Hermite over
    the logit-normal); with fixed images every sweep scores the same images and the truth
    is their mean over permutation draws. A seedless cell (seeds=1) has no seed shift."""
    accuracy, examples = EDGE_CELLS[cell]
    rng = np.random.default_rng(seed)
    seed_sd = EDGE_SEED_SD if seeds > 1 else 0.0
    nodes, weights = np.polynomial.hermite_e.hermegauss(60)
    weights = weights / weights.sum()
    fixed = IMAGE_SD * rng.standard_normal(examples)
    if resample_images:
        truth = float(weights @ expit(logit(accuracy) + math.hypot(IMAGE_SD, seed_sd) * nodes))
    else:
        truth = float((expit(logit(accuracy) + fixed[:, None] + seed_sd * nodes[None, :]) @ weights).mean())

    def sweeps():
        for _ in range(EDGE_REPLICATIONS):
            images = IMAGE_SD * rng.standard_normal(examples) if resample_images else fixed
            shift = seed_sd * rng.standard_normal((seeds, 1))
            yield rng.random((seeds, examples)) < expit(logit(accuracy) + images[None, :] + shift)

    return truth, sweeps()


@pytest.mark.parametrize("resample_images", [False, True], ids=["fixed images", "images resampled"])
@pytest.mark.parametrize("seeds", [1, 2, 3, 5])
@pytest.mark.parametrize("cell", list(EDGE_CELLS))
def test_the_interval_covers_near_0_chance_and_1_within_0_and_1(cell, seeds, resample_images):
    # the figures' bands (from outcomes) and the table's (from per-seed accuracies) both
    truth, sweeps = edge_sweeps(cell, seeds, resample_images=resample_images)
    seeded = seeds > 1
    bands, table = [], []
    for sweep in sweeps:
        bands.append(outcome_interval(sweep, seeded=seeded))
        table.append(summary_interval(sweep.mean(axis=1), sweep.shape[1], seeded=seeded))
    for intervals in (bands, table):
        bounds = np.array([(i.low, i.high) for i in intervals])
        assert ((bounds >= 0) & (bounds <= 1)).all()
        assert float(np.mean((bounds[:, 0] <= truth) & (truth <= bounds[:, 1]))) >= REQUIRED


def test_bad_input_is_refused_naming_what_was_given():
    with pytest.raises(ValueError, match="seedless cell is one measurement, not 3"):
        summary_interval([0.5, 0.6, 0.7], 100, seeded=False)
    with pytest.raises(ValueError, match=r"seeds x examples.*shape \(5,\)"):
        outcome_interval(np.ones(5), seeded=True)
    with pytest.raises(ValueError, match="n_examples must be >= 1, not 0"):
        summary_interval([0.5], 0, seeded=True)
