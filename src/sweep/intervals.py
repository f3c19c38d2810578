"""How uncertain a mean over seeds is: the 95 % interval of the table and the figures.

A series' value at one layer (say shuffle/native at L = 3) is the mean over its seeds of a
per-seed accuracy on the validation images. It varies for two reasons: which images were
drawn (example sampling; the same images for every seed) and which permutations were drawn
(the seed). The interval covers both, by a variance decomposition of the seeds x examples
outcome matrix rather than a bootstrap: with the 2-5 seeds a sweep affords, resampling
seeds cannot show a spread the few seeds did not happen to hit (a bootstrap over 3 values
has 10 distinct means), so its intervals are too narrow. docs/science.md ("Error bars")
states the estimator, its assumptions and the coverage check (tests/test_intervals.py).

    var(mean | p) = s2_seeds / S  +  s2_images / n
    s2_seeds  = variance of the S per-seed accuracies: permutation draws, plus the example
                noise that differs between seeds; S - 1 degrees of freedom. Seeds that
                agree by chance more closely than that noise allows get the noise (the
                seed x image interaction / n, many degrees of freedom) instead
    s2_images = what the n images share across seeds: the variance of the per-example
                means less the seed x image interaction's share (two-way ANOVA; p(1 - p)
                for one seed, and at most p(1 - p) where only accuracies are known);
                n - 1 degrees of freedom
    interval  = every p with (mean - p)^2 <= t(df)^2 * var(mean | p),  df by Welch-Satterthwaite

The interval is a score interval, not mean -+ t * sqrt(var): the per-example parts (s2_images
and the seeds' noise floor) are binomial-shaped, k * p(1 - p) with k read off at the mean,
and are taken at each candidate p rather than at the mean. For one seedless 0/1 cell that is
Wilson's interval: 1 correct in 10,000 gives [0.00002, 0.00057], where the normal
approximation gives [-0.0001, 0.0003], and 0 or all correct still have an interval. Near
0, chance on ImageNet (0.001) and 1 -- where late-layer shuffles sit -- the normal
approximation under-covers; the score interval does not, and it lies within [0, 1] (it is
clipped there where the seeds' spread alone reaches past it).

So with few seeds and a large spread between them the interval is Student's t on the
per-seed accuracies (S - 1 degrees of freedom), and where the images' own spread dominates
it narrows to their Wilson interval. A seedless cell (seed null: its intervention draws no
random numbers) has the example part only. One seed of a seeded series cannot show the spread between
seeds: it has no interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtri, stdtrit

LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A mean over seeds with its LEVEL interval and the two variance parts it adds up.

    low/high are NaN where no honest interval exists (one seed of a seeded series); they are
    not symmetric about the mean near 0 and 1 (a score interval), so half_width is half the
    interval's width, not a distance from the mean."""

    mean: float
    low: float
    high: float
    seeds: int
    seed_variance: float  # of the mean, at p = mean: s2_seeds / S (0 for a seedless cell, NaN for one seed)
    example_variance: float  # of the mean, at p = mean: s2_images / n (0 at a mean of 0 or 1)
    df: float

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


def outcome_interval(outcomes: Sequence[np.ndarray] | np.ndarray, *, seeded: bool, level: float = LEVEL) -> Interval:
    """The interval of the mean accuracy over seeds from per-example outcomes (0/1, or any
    per-example score in [0, 1]): one row per seed, the same examples in the same order in
    every row (as every cell of a sweep scores the same validation images). `seeded`: the
    rows are draws of a random intervention; a seedless cell is one row."""
    matrix = np.asarray(outcomes, dtype=float)
    if matrix.ndim != 2 or matrix.shape[1] == 0:
        raise ValueError(f"outcomes must be seeds x examples with at least one example, not shape {matrix.shape}")
    if not ((matrix >= 0) & (matrix <= 1)).all():
        raise ValueError(
            f"outcomes must be scores in [0, 1] (0/1 for correct), not {matrix.min():g} to {matrix.max():g}"
        )
    seeds, examples = matrix.shape
    per_seed, per_example, mean = matrix.mean(axis=1), matrix.mean(axis=0), float(matrix.mean())
    spread = mean * (1 - mean)  # p(1 - p) at the mean: what a binomial part is scaled by
    if seeds == 1:  # the examples' variance, as a share of p(1 - p): 1 for 0/1 outcomes (Wilson)
        binary = bool(np.isin(matrix, (0.0, 1.0)).all())
        share = 1.0 if binary or spread == 0 else float(per_example.var()) / spread
        return _combine(
            mean,
            1,
            _Part(0.0, 0.0, 0),
            _Part(0.0, share / examples, math.inf if binary else examples - 1),
            seeded=seeded,
            level=level,
        )
    # the per-seed accuracies show the seeds' spread and the example noise that differs
    # between seeds; what every seed shares is the images' own spread: the spread of the
    # per-example means less the seed-by-image interaction's share (two-way ANOVA)
    residual = matrix - per_seed[:, None] - per_example[None, :] + mean
    interaction = float((residual**2).sum()) / ((seeds - 1) * max(examples - 1, 1))
    seed_part = _Part(float(per_seed.var(ddof=1)) / seeds, 0.0, seeds - 1)
    noise = interaction / (examples * seeds)
    if seed_part.variance(mean) < noise:  # seeds that agree by chance: their examples' noise, well known, is the floor
        seed_part = _Part(0.0, noise / spread, (seeds - 1) * (examples - 1))
    if spread == 0:  # every outcome equal: the images' part is at most p(1 - p) / n, and p is not known
        return _combine(mean, seeds, seed_part, _Part(0.0, 1 / examples, math.inf), seeded=seeded, level=level)
    shared = float(per_example.var(ddof=1)) - interaction / seeds if examples > 1 else 0.0
    return _combine(
        mean,
        seeds,
        seed_part,
        _Part(0.0, max(shared, 0.0) / spread / examples, examples - 1),
        seeded=seeded,
        level=level,
    )


def summary_interval(
    accuracies: Sequence[float] | np.ndarray, n_examples: int, *, seeded: bool, level: float = LEVEL
) -> Interval:
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
    return _combine(
        mean,
        len(accuracies),
        _Part(seed_variance, 0.0, len(accuracies) - 1),
        _Part(0.0, 1 / n_examples, math.inf),
        seeded=seeded,
        level=level,
    )


@dataclass(frozen=True)
class _Part:
    """One part of var(mean) at a true accuracy p: fixed + binomial * p(1 - p), estimated
    with df degrees of freedom (inf: the binomial form itself, nothing estimated)."""

    fixed: float
    binomial: float
    df: float

    def variance(self, p: float) -> float:
        return self.fixed + self.binomial * p * (1 - p)


def _combine(mean: float, seeds: int, seed_part: _Part, example_part: _Part, *, seeded: bool, level: float) -> Interval:
    """Solve (mean - p)^2 <= q^2 (a + b p (1 - p)) for p, the parts added up; q is the
    t quantile on their Welch-Satterthwaite degrees of freedom at the mean."""
    if not seeded and seeds > 1:
        raise ValueError(f"a seedless cell is one measurement, not {seeds}")
    if seeded and seeds == 1:
        return Interval(mean, math.nan, math.nan, 1, math.nan, example_part.variance(mean), math.nan)
    parts = (seed_part, example_part)
    at_mean = [(part.variance(mean), part.df) for part in parts]
    total = sum(v for v, _ in at_mean)
    if total > 0:  # Welch-Satterthwaite (a binomial form, df inf, adds nothing to the denominator)
        denominator = sum(v**2 / d for v, d in at_mean if v > 0)
        df = total**2 / denominator if denominator > 0 else math.inf
    else:  # 0 or every example right: only the binomial parts, which vanish at the mean, remain
        df = min((part.df for part in parts if part.binomial > 0), default=math.inf)
    q = float(ndtri(0.5 + level / 2) if math.isinf(df) else stdtrit(df, 0.5 + level / 2))
    a, b = (sum(part.fixed for part in parts) * q**2, sum(part.binomial for part in parts) * q**2)
    centre, root = mean + b / 2, math.sqrt(b * mean * (1 - mean) + b * b / 4 + a * (1 + b))
    low, high = (max((centre - root) / (1 + b), 0.0), min((centre + root) / (1 + b), 1.0))
    return Interval(
        mean, min(low, mean), max(high, mean), seeds, seed_part.variance(mean), example_part.variance(mean), float(df)
    )
