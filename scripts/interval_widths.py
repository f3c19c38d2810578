"""How many seeds a claim needs: the width and coverage of sweep.intervals' 95 % interval
vs the number of seeds, on simulated toy-study cells (docs/science.md, "Error bars").

A cell of the toy study scores 700 digits images; its per-seed accuracy varies between
permutation draws with a spread `sd` (the true value differs per cell and layer: read it off
a sweep's table as the seeds' standard deviation). Each simulated sweep draws the seeds'
accuracies, then Bernoulli outcomes; the interval is computed from the outcomes as the
figures do. Prints, per spread and number of seeds, the median half-width in points and the
share of sweeps whose interval holds the true mean.

    python scripts/interval_widths.py [replications]
"""

from __future__ import annotations

import sys

import numpy as np

from sweep.intervals import outcome_interval

N_EXAMPLES, TRUE_MEAN = 700, 0.6
SPREADS = (0.0, 0.02, 0.05)
SEEDS = (2, 3, 5, 10, 20)


def main(replications: int = 1000) -> None:
    rng = np.random.default_rng(0)
    print(f"{N_EXAMPLES} images, accuracy {TRUE_MEAN:.0%}, {replications} simulated sweeps per row")
    print("seed sd (points)  seeds  median half-width (points)  coverage")
    for sd in SPREADS:
        for seeds in SEEDS:
            per_seed = TRUE_MEAN + sd * rng.standard_normal((replications, seeds, 1))
            outcomes = rng.random((replications, seeds, N_EXAMPLES)) < per_seed
            intervals = [outcome_interval(sweep, seeded=True) for sweep in outcomes]
            half = np.median([i.half_width for i in intervals])
            covered = np.mean([i.low <= TRUE_MEAN <= i.high for i in intervals])
            print(f"{100 * sd:16.0f}  {seeds:5d}  {100 * half:26.1f}  {covered:8.1%}")


if __name__ == "__main__":
    main(*(int(arg) for arg in sys.argv[1:]))
