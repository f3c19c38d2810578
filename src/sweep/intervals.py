"""How uncertain a mean over seeds is: the 95 % interval of the table and the figures.

A series' value at one layer (say shuffle/native at L = 3) is the mean over its seeds of a
per-seed accuracy on the validation images. It varies for two reasons: which images were
drawn (example sampling; the same images for every seed) and which permutations were drawn
(the seed). The interval covers both, by a variance decomposition of the seeds x examples
outcome matrix rather than a bootstrap: with the 2-5 seeds a sweep affords, resampling
seeds cannot show a spread the few seeds did not happen to hit (a bootstrap over 3 values
has 10 distinct means), so its intervals are too narrow. docs/science.md ("Error bars")
states the estimator, its assumptions and the coverage check (tests/test_intervals.py).

    var(mean) = s2_seeds / S  +  s2_images / n
    s2_seeds  = variance of the S per-seed accuracies: permutation draws, plus the example
                noise that differs between seeds; S - 1 degrees of freedom. Seeds that
                agree by chance more closely than that noise allows get the noise (the
                seed x image interaction / n, many degrees of freedom) instead
    s2_images = what the n images share across seeds: the variance of the per-example
                means less the seed x image interaction's share (two-way ANOVA; p(1 - p)
                for one seed, and at most p(1 - p) where only accuracies are known);
                n - 1 degrees of freedom
    interval  = mean -+ t(df) * sqrt(var(mean)), df by Welch-Satterthwaite

so with few seeds and a large spread between them the interval is Student's t on the
per-seed accuracies (S - 1 degrees of freedom), and where the images' own spread dominates
it narrows to their normal interval. A seedless cell (seed null: none, zero, mean, reset)
has the example part only. One seed of a seeded series cannot show the spread between
seeds: it has no interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import stdtrit

LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A mean over seeds with its LEVEL interval and the two variance parts it adds up.

    low/high are NaN where no honest interval exists (one seed of a seeded series)."""

    mean: float
    low: float
    high: float
    seeds: int
    seed_variance: float     # of the mean: s2_seeds / S (0 for a seedless cell, NaN for one seed)
    example_variance: float  # of the mean: s2_images / n
    df: float

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


def outcome_interval(outcomes: Sequence[np.ndarray] | np.ndarray, *, seeded: bool,
                     level: float = LEVEL) -> Interval:
    """The interval of the mean accuracy over seeds from per-example outcomes (0/1 or any
    per-example score): one row per seed, the same examples in the same order in every row
    (as every cell of a sweep scores the same validation images). `seeded`: the rows are
    draws of a random intervention; a seedless cell is one row."""
    matrix = np.asarray(outcomes, dtype=float)
    if matrix.ndim != 2 or matrix.shape[1] == 0:
        raise ValueError(f"outcomes must be seeds x examples with at least one example, not shape {matrix.shape}")
    seeds, examples = matrix.shape
    per_seed, per_example, mean = matrix.mean(axis=1), matrix.mean(axis=0), float(matrix.mean())
    if seeds == 1:
        return _combine(mean, 1, (0.0, 0), (float(per_example.var()) / examples, examples - 1), seeded=seeded,
                        level=level)
    # the per-seed accuracies show the seeds' spread and the example noise that differs
    # between seeds; what every seed shares is the images' own spread: the spread of the
    # per-example means less the seed-by-image interaction's share (two-way ANOVA)
    residual = matrix - per_seed[:, None] - per_example[None, :] + mean
    interaction = float((residual ** 2).sum()) / ((seeds - 1) * max(examples - 1, 1))
    seed_variance, seed_df = float(per_seed.var(ddof=1)) / seeds, seeds - 1
    noise = interaction / (examples * seeds)
    if seed_variance < noise:  # seeds that agree by chance: their examples' noise, well known, is the floor
        seed_variance, seed_df = noise, (seeds - 1) * (examples - 1)
    shared = float(per_example.var(ddof=1)) - interaction / seeds if examples > 1 else 0.0
    example_variance = max(shared, 0.0) / examples
    return _combine(mean, seeds, (seed_variance, seed_df), (example_variance, examples - 1), seeded=seeded,
                    level=level)


def summary_interval(accuracies: Sequence[float] | np.ndarray, n_examples: int, *, seeded: bool,
                     level: float = LEVEL) -> Interval:
    """The same interval from the per-seed accuracies alone (a W&B summary, the results
    table): the example part is bounded by the binomial p(1 - p) / n, which is never below
    what the images share across seeds (`outcome_interval`'s example part on the same
    cells)."""
    accuracies = np.asarray(accuracies, dtype=float)
    if n_examples < 1:
        raise ValueError(f"n_examples must be >= 1, not {n_examples}")
    if len(accuracies) == 0:
        raise ValueError("no seed to average over")
    mean = float(accuracies.mean())
    seed_variance = float(accuracies.var(ddof=1)) / len(accuracies) if len(accuracies) > 1 else 0.0
    return _combine(mean, len(accuracies), (seed_variance, len(accuracies) - 1),
                    (mean * (1 - mean) / n_examples, max(n_examples - 1, 1)), seeded=seeded, level=level)


def _combine(mean: float, seeds: int, seed_part: tuple[float, int], example_part: tuple[float, int], *,
             seeded: bool, level: float) -> Interval:
    """parts: (variance of the mean, degrees of freedom of its estimate)."""
    (seed_variance, _), (example_variance, _) = seed_part, example_part
    if not seeded and seeds > 1:
        raise ValueError(f"a seedless cell is one measurement, not {seeds}")
    if seeded and seeds == 1:
        return Interval(mean, math.nan, math.nan, 1, math.nan, example_variance, math.nan)
    total = seed_variance + example_variance
    if total == 0:  # every outcome equal (a perfect or a constant series): nothing varies
        return Interval(mean, mean, mean, seeds, 0.0, 0.0, math.inf)
    df = total ** 2 / sum(v ** 2 / d for v, d in (seed_part, example_part) if v > 0)  # Welch-Satterthwaite
    half = float(stdtrit(df, 0.5 + level / 2)) * math.sqrt(total)
    return Interval(mean, mean - half, mean + half, seeds, seed_variance, example_variance, float(df))
