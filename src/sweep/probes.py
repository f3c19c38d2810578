"""Linear probes fitted on features: closed-form ridge and multinomial logistic regression.

The study needs one probe per layer (13 layers x 1000 classes), so `fit_probes` takes
every layer at once, (n_layers, n, D), and the logistic solver fits them as one batched
problem. Heads act on *raw* features: any standardisation is folded into the weights, so
a fitted head can be installed as a model's own classifier and scored without knowing how
it was fitted.

Every setting comes from the caller (the probe's YAML config); nothing here has a
default. The few fixed numbers of the torch solver (history size, line-search constants)
are named constants below, with the reason for each.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from sweep.errors import ConfigError
from sweep.progress import progress_bar

METHODS: dict[str, tuple[str, ...]] = {
    "ridge": ("alpha", "standardize", "fit_intercept"),
    "logistic": ("C", "max_iter", "tol", "standardize", "solver"),
}
SOLVERS = ("torch", "sklearn")

# The torch L-BFGS. 10 correction pairs is scipy's default, i.e. what sklearn's lbfgs uses;
# Armijo 1e-4 and curvature 0.9 are the textbook strong-Wolfe constants for quasi-Newton
# steps (Nocedal & Wright, ch. 3); sklearn gives scipy's line search 50 trial steps.
LBFGS_HISTORY = 10
ARMIJO = 1e-4
CURVATURE = 0.9
LINE_SEARCH_STEPS = 50


@dataclass(frozen=True)
class LinearHead:
    """A linear map on RAW features: logits = X @ weight.T + bias.

    weight is (C, D) and bias (C,), both float32. Raw, because the head must work wherever
    the features come from (a cache, or a live model) without a separate scaler."""

    weight: torch.Tensor
    bias: torch.Tensor

    def logits(self, X: torch.Tensor) -> torch.Tensor:
        """(n, D) features -> (n, C) logits, in the head's dtype and on X's device."""
        return torch.addmm(self.bias.to(X.device), X.to(self.weight.dtype), self.weight.to(X.device).T)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Plain tensors (safetensors needs them contiguous)."""
        return {"weight": self.weight.contiguous(), "bias": self.bias.contiguous()}

    @classmethod
    def from_state_dict(cls, d: Mapping[str, torch.Tensor]) -> LinearHead:
        return cls(d["weight"].float(), d["bias"].float())


def fit_probes(features: torch.Tensor, labels: torch.Tensor, n_classes: int, *, method: str,
               settings: Mapping[str, Any], device: str = "cpu", progress: bool = True) -> list[LinearHead]:
    """Fit one head per layer and return them in layer order, on the CPU.

    features: (n_layers, n, D), or (n, D) for a single layer (still a list of one).
    labels: (n,) class indices in [0, n_classes).
    method: "ridge" or "logistic"; settings: exactly that method's keys in METHODS.
    device: where the arithmetic runs ("cpu", "cuda", ...).
    progress: a tqdm bar, shown only when stderr is a terminal.
    """
    _check(method, settings)
    stacked = features if features.dim() == 3 else features.unsqueeze(0)
    if stacked.dim() != 3 or labels.shape != (stacked.shape[1],):
        raise ValueError(f"features must be (n_layers, n, D) or (n, D) and labels (n,); got features "
                         f"{tuple(features.shape)} and labels {tuple(labels.shape)}")
    labels = labels.to(device=device, dtype=torch.long)
    if labels.numel() and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes}); got [{labels.min()}, {labels.max()}]")
    stacked = stacked.to(device)
    standardize = bool(settings["standardize"])

    if method == "ridge":
        bar = _bar(progress, total=stacked.shape[0], desc="ridge probes", unit="layer")
        heads = []
        for layer in stacked:
            heads.append(_ridge(layer, labels, n_classes, alpha=float(settings["alpha"]),
                                standardize=standardize, fit_intercept=bool(settings["fit_intercept"])))
            bar.update()
        bar.close()
        return heads

    missing = torch.bincount(labels, minlength=n_classes) == 0
    if missing.any():
        raise ValueError(f"logistic probes need every class in the training labels (an absent class's bias "
                         f"has no finite optimum); missing: {missing.nonzero().flatten().tolist()[:10]}")
    fit = _logistic_torch if settings["solver"] == "torch" else _logistic_sklearn
    return fit(stacked, labels, n_classes, C=float(settings["C"]), max_iter=int(settings["max_iter"]),
               tol=float(settings["tol"]), standardize=standardize, progress=progress)


def _check(method: str, settings: Mapping[str, Any]) -> None:
    """Reject unknown methods, and settings that are missing, unknown or out of range,
    naming the valid choices: a typo in a YAML file must not silently become a default."""
    if method not in METHODS:
        raise ConfigError(f"unknown probe method {method!r}; choose one of: {', '.join(METHODS)}")
    expected, given = set(METHODS[method]), set(settings)
    if given != expected:
        missing, unknown = sorted(expected - given), sorted(given - expected)
        raise ConfigError(f"probe {method!r} takes exactly the settings {', '.join(METHODS[method])}"
                          + (f"; missing: {', '.join(missing)}" if missing else "")
                          + (f"; unknown: {', '.join(unknown)}" if unknown else ""))
    if method == "ridge" and not float(settings["alpha"]) >= 0:
        raise ConfigError(f"ridge alpha must be >= 0; got {settings['alpha']!r}")
    if method == "logistic":
        if settings["solver"] not in SOLVERS:
            raise ConfigError(f"unknown logistic solver {settings['solver']!r}; choose one of: {', '.join(SOLVERS)}")
        if not float(settings["C"]) > 0 or not int(settings["max_iter"]) >= 1 or not float(settings["tol"]) >= 0:
            raise ConfigError(f"logistic needs C > 0, max_iter >= 1 and tol >= 0; got C={settings['C']!r}, "
                              f"max_iter={settings['max_iter']!r}, tol={settings['tol']!r}")


def _bar(progress: bool, **kwargs: Any) -> tqdm:
    """The project's bar (quiet unless stderr is a terminal), or a silent one."""
    return progress_bar(**kwargs) if progress else tqdm(disable=True, **kwargs)


def _moments(x: torch.Tensor, *, centre: bool, standardize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature shift and scale (float64), so that z = (x - shift) / scale.

    Population std (ddof=0, like sklearn's StandardScaler); constant features keep scale 1
    instead of dividing by zero. Computed in float64 because ViT features can have a few
    dimensions with huge means, where float32 loses the variance to cancellation."""
    x = x.double()
    shift = x.mean(dim=0) if centre or standardize else x.new_zeros(x.shape[1])
    if not standardize:
        return shift, x.new_ones(x.shape[1])
    std = x.std(dim=0, correction=0)
    return shift, torch.where(std > 1e-12 * std.max().clamp_min(1e-300), std, torch.ones_like(std))


def _fold(weight: torch.Tensor, bias: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> LinearHead:
    """Turn a head on z = (x - shift) / scale into one on x:
    z @ W.T + b = x @ (W / scale).T + (b - (W / scale) @ shift)."""
    raw = weight.double() / scale
    return LinearHead(raw.float().cpu(), (bias.double() - raw @ shift).float().cpu())


# -- ridge ---------------------------------------------------------------------------------

def _ridge(x: torch.Tensor, labels: torch.Tensor, n_classes: int, *, alpha: float, standardize: bool,
           fit_intercept: bool) -> LinearHead:
    """Closed-form ridge on ±1 one-hot targets for one layer: (ZᵀZ + αI) W = ZᵀY.

    Float64 throughout: ZᵀZ of real features is badly conditioned and float32 would cost
    digits in W for a ~2x saving on a step that takes well under a second per layer.
    Layers go one after another: each solve is BLAS calls that already use every core,
    and batching would only multiply the peak memory (a float64 copy per layer).
    With fit_intercept, Z and Y are centred so the intercept is not penalised (as sklearn's
    Ridge); the intercept is then Y's column means."""
    n = x.shape[0]
    shift, scale = _moments(x, centre=fit_intercept, standardize=standardize)
    z = (x.double() - shift) / scale
    if fit_intercept and standardize is False:
        pass  # shift already holds the means: z is centred
    # Y = 2·onehot − 1, so ZᵀY = 2·(per-class sums of Z) − (column sums of Z); never build Y.
    class_sums = torch.zeros(n_classes, z.shape[1], dtype=z.dtype, device=z.device).index_add_(0, labels, z)
    zty = 2 * class_sums.T - z.sum(dim=0, keepdim=True).T                      # (D, C)
    gram = z.T @ z
    gram.diagonal().add_(alpha)
    weight = torch.cholesky_solve(zty, torch.linalg.cholesky(gram)).T          # (C, D)
    counts = torch.bincount(labels, minlength=n_classes).to(z.dtype)
    # With centred Z the intercept is mean(Y) − mean(Z)·W = mean(Y) per class: 2·count/n − 1.
    bias = 2 * counts / n - 1 if fit_intercept else torch.zeros_like(counts)
    return _fold(weight, bias, shift, scale)


# -- logistic ------------------------------------------------------------------------------

def _logistic_sklearn(x: torch.Tensor, labels: torch.Tensor, n_classes: int, *, C: float, max_iter: int,
                      tol: float, standardize: bool, progress: bool) -> list[LinearHead]:
    """scikit-learn's LogisticRegression (lbfgs, multinomial), one layer at a time: the
    reference the torch solver is checked against. With exactly 2 classes sklearn fits
    the binary model (one weight vector); it becomes the head [0, w]."""
    from sklearn.linear_model import LogisticRegression

    y = labels.cpu().numpy()
    heads = []
    bar = _bar(progress, total=x.shape[0], desc="logistic probes (sklearn)", unit="layer")
    for layer in x:
        shift, scale = _moments(layer, centre=True, standardize=standardize)
        z = ((layer.double() - shift) / scale).cpu().numpy()
        model = LogisticRegression(C=C, max_iter=max_iter, tol=tol, solver="lbfgs").fit(z, y)
        weight, bias = torch.from_numpy(model.coef_), torch.from_numpy(model.intercept_)
        if n_classes == 2:
            weight, bias = torch.cat([torch.zeros_like(weight), weight]), torch.cat([torch.zeros_like(bias), bias])
        heads.append(_fold(weight, bias, shift.cpu(), scale.cpu()))
        bar.update()
    bar.close()
    return heads


def _logistic_torch(x: torch.Tensor, labels: torch.Tensor, n_classes: int, *, C: float, max_iter: int,
                    tol: float, standardize: bool, progress: bool) -> list[LinearHead]:
    """Multinomial logistic regression with sklearn's objective, every layer at once.

    Objective per layer (sklearn's, divided by C·n): mean cross-entropy + ‖W‖² / (2·C·n),
    bias unpenalised; `tol` bounds max |gradient| of it, as scipy's lbfgs does for sklearn.

    Why it is faster than sklearn: float32; one batched L-BFGS in which every layer keeps
    its own history and step (so a batch fit equals separate fits); line searches that cost
    no matrix products (see `_BatchedLogistic`); layers leave the batch as they converge;
    and the L-BFGS runs in whitened coordinates (below), which removes most of the
    ill-conditioning that makes plain L-BFGS take hundreds of steps on correlated features.

    Whitening: with Σ the features' covariance, solve for V where W = P V and
    P = (Σ + δI)^(-1/2). The penalty stays ½λ‖W‖² = ½λ‖PV‖², so the optimum is exactly
    sklearn's; only the path changes. δ = λ·n_classes makes the Hessian close to a multiple
    of I at the start: there the cross-entropy's curvature is ≈ Σ / n_classes per class,
    the penalty's λ, and P(Σ/K + λ)P = I/K exactly when δ = λK."""
    n_layers, n, dim = x.shape
    lam = 1.0 / (C * n)
    features, penalty, to_w, moments = [], [], [], []
    for layer in x:
        shift, scale = _moments(layer, centre=True, standardize=standardize)
        z = (layer.double() - shift) / scale
        evals, evecs = torch.linalg.eigh(z.T @ z / n)
        root = (evals.clamp_min(0) + lam * n_classes).sqrt()
        whiten = (evecs / root) @ evecs.T                                    # P
        # Bias as an extra feature of ones: θ = [V; b], unpenalised and untransformed.
        features.append(torch.cat([z @ whiten, z.new_ones(n, 1)], dim=1).float())
        penalty.append(torch.block_diag(lam * (evecs / root.square()) @ evecs.T, z.new_zeros(1, 1)).float())
        to_w.append(torch.block_diag((evecs * root) @ evecs.T, z.new_ones(1, 1)).float())  # P⁻¹: ∇_W = P⁻¹ ∇_V
        moments.append((whiten, shift, scale))
        del z
    problem = _BatchedLogistic(torch.stack(features), labels, n_classes, torch.stack(penalty), torch.stack(to_w))
    theta, converged = problem.solve(max_iter=max_iter, tol=tol, progress=progress)
    if not converged.all():
        warnings.warn(f"logistic probes: layers {(~converged).nonzero().flatten().tolist()} did not reach "
                      f"tol={tol} within max_iter={max_iter} (float32 precision or too few iterations)",
                      RuntimeWarning, stacklevel=3)
    heads = []
    for (whiten, shift, scale), t in zip(moments, theta.double()):
        heads.append(_fold((whiten @ t[:-1]).T, t[-1], shift, scale))
    return heads


