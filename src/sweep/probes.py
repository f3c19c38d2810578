"""Linear probes on CLS features: which methods exist, the settings each declares, and the
one entry point that fits a head per layer.

One class per method, registered under its `probe.method`; adding a method is one class
here, its solver (`sweep.linear_heads`) and its `conf/probe/<name>.yaml`. Torch is
imported when a probe is fitted, not here: the planner reads the registry (names,
settings) for thousands of cells without it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from sweep.registry import Registry
from sweep.rules import Flag, Integer, OneOf, Real, Rule, checked

if TYPE_CHECKING:
    import torch

    from sweep.linear_heads import LinearHead

SOLVERS = ("torch", "sklearn")


class ProbeMethod:
    """`fit` gets every layer at once, (n_layers, n, D), labels on the same device, and
    the method's checked settings."""

    settings: ClassVar[Mapping[str, Rule]] = {}

    def fit(
        self, stacked: torch.Tensor, labels: torch.Tensor, n_classes: int, values: Mapping[str, Any], progress: bool
    ) -> list[LinearHead]:
        raise NotImplementedError


PROBES: Registry[type[ProbeMethod]] = Registry("probe.method")


@PROBES.register("ridge")
class Ridge(ProbeMethod):
    """Closed-form ridge on ±1 one-hot targets. alpha > 0: at 0 the normal equations of
    standardised features with more dimensions than examples are singular."""

    settings = {"alpha": Real(0, low_open=True), "standardize": Flag(), "fit_intercept": Flag()}

    def fit(self, stacked, labels, n_classes, values, progress):
        from sweep.linear_heads import ridge_heads

        return ridge_heads(
            stacked,
            labels,
            n_classes,
            alpha=float(values["alpha"]),
            standardize=bool(values["standardize"]),
            fit_intercept=bool(values["fit_intercept"]),
            progress=progress,
        )


@PROBES.register("logistic")
class Logistic(ProbeMethod):
    """Multinomial logistic regression with sklearn's objective; `solver`: the batched torch
    L-BFGS, or sklearn's own (the reference, one layer at a time)."""

    settings = {
        "C": Real(0, low_open=True),
        "max_iter": Integer(1),
        "tol": Real(0, low_open=True),
        "standardize": Flag(),
        "solver": OneOf(*SOLVERS),
    }

    def fit(self, stacked, labels, n_classes, values, progress):
        from sweep.linear_heads import logistic_heads

        return logistic_heads(
            stacked,
            labels,
            n_classes,
            solver=str(values["solver"]),
            C=float(values["C"]),
            max_iter=int(values["max_iter"]),
            tol=float(values["tol"]),
            standardize=bool(values["standardize"]),
            progress=progress,
        )


def fit_probes(
    features: torch.Tensor,
    labels: torch.Tensor,
    n_classes: int,
    *,
    method: str,
    settings: Mapping[str, Any],
    device: str = "cpu",
    progress: bool = True,
) -> list[LinearHead]:
    """Fit one head per layer and return them in layer order, on the CPU.

    features: (n_layers, n, D), or (n, D) for a single layer (still a list of one).
    labels: (n,) class indices in [0, n_classes).
    method, settings: a registered method and exactly its settings (checked here too:
    a typo in a YAML file must not silently become a default).
    device: where the arithmetic runs ("cpu", "cuda", ...).
    progress: a tqdm bar, shown only when stderr is a terminal.
    """
    import torch

    probe = PROBES[method]
    values = checked("probe.settings", settings, probe.settings)
    stacked = features if features.dim() == 3 else features.unsqueeze(0)
    if stacked.dim() != 3 or labels.shape != (stacked.shape[1],):
        raise ValueError(
            f"features must be (n_layers, n, D) or (n, D) and labels (n,); got features "
            f"{tuple(features.shape)} and labels {tuple(labels.shape)}"
        )
    labels = labels.to(device=device, dtype=torch.long)
    if labels.numel() and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes}); got [{int(labels.min())}, {int(labels.max())}]")
    return probe().fit(stacked.to(device), labels, n_classes, values, progress)
