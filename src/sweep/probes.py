"""Linear probes and heads fitted on features: closed-form ridge and logistic regression.

One call fits every layer at once ((n_layers, n, D) features), because the study needs
a probe per layer and batching is what makes 13 layers × 1000 classes cheap. Heads act
on *raw* features: any standardisation is folded into the weights, so a fitted head can
be installed as the model's own classifier.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as F

from sweep.progress import progress_bar

METHODS = {
    "ridge": ("alpha", "standardize", "fit_intercept"),
    "logistic": ("C", "max_iter", "tol", "standardize", "solver"),
}
SOLVERS = ("torch", "sklearn")


@dataclass(frozen=True)
class LinearHead:
    """logits = X @ weight.T + bias, on raw features. weight (C, D), bias (C,)."""

    weight: torch.Tensor
    bias: torch.Tensor

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return features.to(self.weight.dtype) @ self.weight.T + self.bias

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight.contiguous(), "bias": self.bias.contiguous()}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor]) -> LinearHead:
        return cls(state["weight"].float(), state["bias"].float())


def _check(method: str, settings: Mapping[str, Any]) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown probe method '{method}'; choose one of {', '.join(METHODS)}")
    expected = set(METHODS[method])
    given = set(settings)
    if given != expected:
        missing, unknown = sorted(expected - given), sorted(given - expected)
        raise ValueError(f"probe '{method}' settings must be exactly {', '.join(sorted(expected))}"
                         + (f"; missing: {', '.join(missing)}" if missing else "")
                         + (f"; unknown: {', '.join(unknown)}" if unknown else ""))
    if method == "logistic" and settings["solver"] not in SOLVERS:
        raise ValueError(f"unknown logistic solver '{settings['solver']}'; choose one of {', '.join(SOLVERS)}")


def fit_probes(features: torch.Tensor, labels: torch.Tensor, n_classes: int, *, method: str,
               settings: Mapping[str, Any], device: str = "cpu", progress: bool = True) -> list[LinearHead]:
    """Fit one head per layer. `features` is (n_layers, n, D) or (n, D)."""
    _check(method, settings)
    stacked = features if features.dim() == 3 else features.unsqueeze(0)
    stacked = stacked.to(device=device, dtype=torch.float32)
    labels = labels.to(device).long()
    mean, scale = _standardiser(stacked, bool(settings["standardize"]))
    z = (stacked - mean) / scale
    if method == "ridge":
        weight, bias = _ridge(z, labels, n_classes, float(settings["alpha"]), bool(settings["fit_intercept"]))
    elif settings["solver"] == "torch":
        weight, bias = _logistic_torch(z, labels, n_classes, C=float(settings["C"]),
                                       max_iter=int(settings["max_iter"]), tol=float(settings["tol"]))
    else:
        weight, bias = _logistic_sklearn(z, labels, C=float(settings["C"]), max_iter=int(settings["max_iter"]),
                                         tol=float(settings["tol"]), progress=progress)
    # Fold the standardisation in: W z + b = (W / s) x + (b - (W / s) m).
    raw_weight = weight / scale                                 # (L, C, D)
    raw_bias = bias - (raw_weight * mean).sum(dim=-1)           # (L, C)
    return [LinearHead(w.float().cpu(), b.float().cpu()) for w, b in zip(raw_weight, raw_bias)]


def _standardiser(x: torch.Tensor, standardize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if not standardize:
        shape = (x.shape[0], 1, x.shape[2])
        return x.new_zeros(shape), x.new_ones(shape)
    mean = x.mean(dim=1, keepdim=True)
    std = x.std(dim=1, keepdim=True)
    return mean, torch.where(std > 1e-8, std, torch.ones_like(std))


def _ridge(z: torch.Tensor, labels: torch.Tensor, n_classes: int, alpha: float,
           fit_intercept: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve (ZᵀZ + αI) W = ZᵀY for ±1 one-hot Y, all layers in one batched Cholesky."""
    n_layers, n, dim = z.shape
    z64 = z.double()
    z_mean = z64.mean(dim=1, keepdim=True) if fit_intercept else torch.zeros_like(z64[:, :1])
    zc = z64 - z_mean
    # Y = 2·onehot − 1, so ZᵀY = 2·(class sums of Z) − (column sums of Z); then centre Y's columns.
    class_sums = torch.zeros(n_layers, n_classes, dim, dtype=torch.float64, device=z.device)
    class_sums.index_add_(1, labels, zc)
    counts = torch.bincount(labels, minlength=n_classes).double()
    y_mean = (2 * counts / n - 1) if fit_intercept else torch.zeros_like(counts)
    zty = (2 * class_sums - zc.sum(dim=1, keepdim=True)).transpose(1, 2)  # (L, D, C); Zc centred
    gram = zc.transpose(1, 2) @ zc + alpha * torch.eye(dim, dtype=torch.float64, device=z.device)
    weight = torch.cholesky_solve(zty, torch.linalg.cholesky(gram)).transpose(1, 2)  # (L, C, D)
    bias = y_mean - (weight * z_mean).sum(dim=-1)
    return weight, bias


def _logistic_torch(z: torch.Tensor, labels: torch.Tensor, n_classes: int, *, C: float, max_iter: int,
                    tol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression with scikit-learn's objective
    (C · Σ CE + ½‖W‖², bias unpenalised), every layer as one batched L-BFGS problem."""
    n_layers, n, dim = z.shape
    weight = torch.zeros(n_layers, n_classes, dim, device=z.device, requires_grad=True)
    bias = torch.zeros(n_layers, n_classes, device=z.device, requires_grad=True)
    optimiser = torch.optim.LBFGS([weight, bias], lr=1, max_iter=max_iter, history_size=20,
                                  tolerance_grad=tol, tolerance_change=1e-10, line_search_fn="strong_wolfe")
    targets = labels.expand(n_layers, n).reshape(-1)

    def objective() -> torch.Tensor:
        optimiser.zero_grad()
        logits = torch.baddbmm(bias.unsqueeze(1), z, weight.transpose(1, 2))  # (L, n, C)
        loss = F.cross_entropy(logits.reshape(-1, n_classes), targets, reduction="sum")
        # Divided by C·n so the scale (and L-BFGS' tolerances) do not grow with n.
        total = (loss + 0.5 / C * weight.pow(2).sum()) / n
        total.backward()
        return total

    optimiser.step(objective)
    return weight.detach(), bias.detach()


def _logistic_sklearn(z: torch.Tensor, labels: torch.Tensor, *, C: float, max_iter: int, tol: float,
                      progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.linear_model import LogisticRegression

    y = labels.cpu().numpy()
    weights, biases = [], []
    bar = progress_bar(total=z.shape[0], desc="logistic probes (sklearn)", unit="layer",
                       file=sys.stderr) if progress else None
    for layer in z.cpu().numpy():
        model = LogisticRegression(C=C, max_iter=max_iter, tol=tol, solver="lbfgs").fit(layer, y)
        weights.append(torch.from_numpy(model.coef_).float())
        biases.append(torch.from_numpy(model.intercept_).float())
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    return torch.stack(weights).to(z.device), torch.stack(biases).to(z.device)
