"""Linear heads on features, and the solvers that fit them: closed-form ridge and
multinomial logistic regression (`sweep.probes` declares the methods and their settings).

The study needs one probe per layer (13 layers x 1000 classes), so the solvers take
every layer at once, (n_layers, n, D), and the logistic solver fits them as one batched
problem. Heads act on *raw* features: any standardisation is folded into the weights, so
a fitted head can be installed as a model's own classifier and scored without knowing how
it was fitted.

Every setting comes from the caller (the probe's YAML config, checked by its method in
`sweep.probes`); nothing here has a default. The few fixed numbers of the torch solver
(history size, line-search constants) are named constants below, with the reason for each.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from sweep.progress import progress_bar

logger = logging.getLogger(__name__)

# The torch L-BFGS. 10 correction pairs is scipy's default, i.e. what sklearn's lbfgs uses;
# Armijo 1e-4 and curvature 0.9 are the textbook strong-Wolfe constants for quasi-Newton
# steps (Nocedal & Wright, ch. 3); sklearn gives scipy's line search 50 trial steps.
# Near the optimum the loss cannot resolve Armijo's decrease, so a step is also sufficient
# when the loss rose by no more than VALUE_RESOLUTION relative (Hager & Zhang's "approximate
# Wolfe" conditions); the curvature test, on an accurately computed derivative, must still
# pass. 1e-7 is ~20x the rounding noise measured on the loss (a float64 mean of float32
# per-example losses) at the study's shape.
LBFGS_HISTORY = 10
ARMIJO = 1e-4
CURVATURE = 0.9
LINE_SEARCH_STEPS = 50
VALUE_RESOLUTION = 1e-7
# The whitening's damping is δ = WHITENING_DAMPING · λ · n_classes (see _logistic_torch).
# 1 matches the curvature at the start; 10 matches it later, once the softmax is peaked,
# and took ~1.5x fewer iterations to a given objective at the study's shape (3 and 30 were
# within 10% of 10).
WHITENING_DAMPING = 10.0


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


def ridge_heads(
    stacked: torch.Tensor,
    labels: torch.Tensor,
    n_classes: int,
    *,
    alpha: float,
    standardize: bool,
    fit_intercept: bool,
    progress: bool,
) -> list[LinearHead]:
    """Closed-form ridge, one layer of `stacked` (n_layers, n, D) at a time."""
    bar = _bar(progress, total=stacked.shape[0], desc="ridge probes", unit="layer")
    heads = []
    for layer in stacked:
        heads.append(
            _ridge(layer, labels, n_classes, alpha=alpha, standardize=standardize, fit_intercept=fit_intercept)
        )
        bar.update()
    bar.close()
    return heads


def logistic_heads(
    stacked: torch.Tensor,
    labels: torch.Tensor,
    n_classes: int,
    *,
    solver: str,
    C: float,
    max_iter: int,
    tol: float,
    standardize: bool,
    progress: bool,
) -> list[LinearHead]:
    """Multinomial logistic regression on every layer of `stacked` (n_layers, n, D):
    batched L-BFGS in torch, or sklearn's lbfgs one layer at a time (the reference)."""
    missing = torch.bincount(labels, minlength=n_classes) == 0
    if missing.any():
        raise ValueError(
            f"logistic probes need every class in the training labels (an absent class's bias "
            f"has no finite optimum); missing: {missing.nonzero().flatten().tolist()[:10]}"
        )
    fit = _logistic_torch if solver == "torch" else _logistic_sklearn
    return fit(stacked, labels, n_classes, C=C, max_iter=max_iter, tol=tol, standardize=standardize, progress=progress)


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the enclosed torch CPU arithmetic on one thread, then restore the thread count.

    A fitted head must be a function of its inputs alone, not of the machine's thread count
    (issue 29). Most of the arithmetic already is: matrix products split their *outputs*
    between threads, and so do reductions with more than one output, so every number is
    summed in the same order whatever the count. Three kinds of step are not, and run
    under this: LAPACK (Cholesky, triangular solves), BLAS dots (`torch.dot` splits the
    vector above ~16,000 entries), and reductions to a single number over 32,768 entries
    or more (torch gives each thread a part and adds the parts; the per-feature moments and
    matrix products of a probe on a single feature would be such, and are not covered).
    They are cheap (D³ or elementwise), so one thread costs little; see docs/science.md,
    "Thread counts"."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


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


def _ridge(
    x: torch.Tensor, labels: torch.Tensor, n_classes: int, *, alpha: float, standardize: bool, fit_intercept: bool
) -> LinearHead:
    """Closed-form ridge on ±1 one-hot targets for one layer: (ZᵀZ + αI) W = ZᵀY.

    Float64 throughout: ZᵀZ of real features is badly conditioned and float32 would cost
    digits in W for a ~2x saving on a step that takes well under a second per layer.
    Layers go one after another: each layer's matrix products already use every core (its
    Cholesky solve runs on one thread, `one_thread`), and batching would only multiply the
    peak memory (a float64 copy per layer).
    With fit_intercept, Z and Y are centred so the intercept is not penalised (as sklearn's
    Ridge); the intercept is then Y's column means."""
    n = x.shape[0]
    shift, scale = _moments(x, centre=fit_intercept, standardize=standardize)
    z = (x.double() - shift) / scale
    # Y = 2·onehot − 1, so ZᵀY = 2·(per-class sums of Z) − (column sums of Z); never build Y.
    class_sums = torch.zeros(n_classes, z.shape[1], dtype=z.dtype, device=z.device).index_add_(0, labels, z)
    zty = 2 * class_sums.T - z.sum(dim=0, keepdim=True).T  # (D, C)
    gram = z.T @ z
    gram.diagonal().add_(alpha)
    with one_thread():  # LAPACK: see one_thread
        weight = torch.cholesky_solve(zty, torch.linalg.cholesky(gram)).T  # (C, D)
    counts = torch.bincount(labels, minlength=n_classes).to(z.dtype)
    # With centred Z the intercept is mean(Y) − mean(Z)·W = mean(Y) per class: 2·count/n − 1.
    bias = 2 * counts / n - 1 if fit_intercept else torch.zeros_like(counts)
    return _fold(weight, bias, shift, scale)


# -- logistic ------------------------------------------------------------------------------


def _logistic_sklearn(
    x: torch.Tensor,
    labels: torch.Tensor,
    n_classes: int,
    *,
    C: float,
    max_iter: int,
    tol: float,
    standardize: bool,
    progress: bool,
) -> list[LinearHead]:
    """scikit-learn's LogisticRegression (lbfgs, multinomial), one layer at a time: the
    reference the torch solver is checked against. With exactly 2 classes sklearn fits
    the binary model (one weight vector); it becomes the head [0, w]."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    y = labels.cpu().numpy()
    heads, iterations = [], []
    bar = _bar(progress, total=x.shape[0], desc="logistic probes (sklearn)", unit="layer")
    for layer in x:
        shift, scale = _moments(layer, centre=True, standardize=standardize)
        z = ((layer.double() - shift) / scale).cpu().numpy()
        with threadpool_limits(1):  # numpy's BLAS, as `one_thread` does torch's
            model = LogisticRegression(C=C, max_iter=max_iter, tol=tol, solver="lbfgs").fit(z, y)
        weight, bias = torch.from_numpy(model.coef_), torch.from_numpy(model.intercept_)
        if n_classes == 2:
            weight, bias = torch.cat([torch.zeros_like(weight), weight]), torch.cat([torch.zeros_like(bias), bias])
        heads.append(_fold(weight, bias, shift.cpu(), scale.cpu()))
        iterations.append(int(model.n_iter_.max()))
        bar.update()
    bar.close()
    logger.info("logistic probes (sklearn): L-BFGS iterations per layer %s", iterations)
    return heads


def _logistic_torch(
    x: torch.Tensor,
    labels: torch.Tensor,
    n_classes: int,
    *,
    C: float,
    max_iter: int,
    tol: float,
    standardize: bool,
    progress: bool,
) -> list[LinearHead]:
    """Multinomial logistic regression with sklearn's objective, every layer at once.

    Objective per layer (sklearn's, divided by C·n): mean cross-entropy + ‖W‖² / (2·C·n),
    bias unpenalised. A layer stops when max |∇_W, ∇_b| <= tol (scipy's test for sklearn)
    AND its last step lowered the objective by <= tol·max(|objective|, 1). The second test
    is ours: along the whitened path the max-norm of ~10⁶ gradient entries can dip below
    tol while the objective is still falling fast (in a trial at the study's shape with
    lighter whitening, 15 steps met tol = 1e-4 with the objective 0.015 above its minimum
    and validation accuracy 1.5 points short). Where the gradient test is the later one,
    the second costs nothing.

    Why it is faster than sklearn: float32; one batched L-BFGS in which every layer keeps
    its own history and step (so a batch fit equals separate fits); line searches that cost
    no matrix products (see `_lbfgs`); layers leave the batch as they converge;
    and the L-BFGS runs in whitened coordinates (below), which removes most of the
    ill-conditioning that makes plain L-BFGS take hundreds of steps on correlated features.

    Whitening: with Σ the features' covariance and L Lᵀ = Σ + δI its (damped) Cholesky
    factor, solve for V where W = P V, P = L⁻ᵀ, so the L-BFGS sees features F = Z P whose
    covariance is ≈ I. The penalty stays ½λ‖W‖² = ½ Vᵀ(λ PᵀP)V, so the optimum is exactly
    sklearn's; only the path changes. δ = λ·n_classes would make the Hessian ≈ I / n_classes
    at the start: there the cross-entropy's curvature is ≈ Σ / K per class, the penalty's λ,
    and Pᵀ(Σ/K + λ)P = I/K exactly when δ = λK; later the curvature is lower, hence
    δ = WHITENING_DAMPING·λK. (Cholesky, not an eigendecomposition: MKL's
    eigh on AMD CPUs takes anywhere from 0.4 to 12 s for one 768 x 768 matrix.)"""
    n_layers, n, dim = x.shape
    lam = 1.0 / (C * n)
    eye = torch.eye(dim, dtype=torch.float64, device=x.device)
    # The bias is θ's last row: a feature of ones, unpenalised, and its own gradient.
    features = torch.ones(n_layers, n, dim + 1, device=x.device)
    penalty = torch.zeros(n_layers, dim + 1, dim + 1, device=x.device)
    to_w = torch.zeros_like(penalty)
    to_w[:, dim, dim] = 1
    folds = []
    for layer, f, q, g in zip(x, features, penalty, to_w):
        shift, scale = _moments(layer, centre=True, standardize=standardize)
        z = ((layer.double() - shift) / scale).float()
        covariance = (z.T @ z).double() / n + WHITENING_DAMPING * lam * n_classes * eye
        with one_thread():  # LAPACK: see one_thread
            chol = torch.linalg.cholesky(covariance)
            inverse = torch.linalg.solve_triangular(chol, eye, upper=False)  # L⁻¹ = Pᵀ
        f[:, :dim] = z @ inverse.T.float()
        q[:dim, :dim] = lam * inverse @ inverse.T
        g[:dim, :dim] = chol  # ∇_W = P⁻ᵀ ∇_V = L ∇_V
        folds.append((inverse.T, shift, scale))
        del z
    theta, converged, iterations = _lbfgs(
        features, labels, n_classes, penalty, to_w, max_iter=max_iter, tol=tol, progress=progress
    )
    logger.info("logistic probes (torch): L-BFGS iterations per layer %s", iterations.tolist())
    if not converged.all():
        logger.warning(
            "logistic probes (torch): layers %s stopped before converging to tol=%g: max_iter=%d reached, "
            "or float32 precision exhausted",
            (~converged).nonzero().flatten().tolist(),
            tol,
            max_iter,
        )
    heads = []
    for (whiten, shift, scale), t in zip(folds, theta.double()):
        heads.append(_fold((whiten @ t[:-1]).T, t[-1], shift, scale))
    return heads


def _lbfgs(
    features: torch.Tensor,
    labels: torch.Tensor,
    n_classes: int,
    penalty: torch.Tensor,
    to_w: torch.Tensor,
    *,
    max_iter: int,
    tol: float,
    progress: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """L-BFGS on many independent problems of one shape, one per layer:
    minimise mean_i CE(F θ)_i + ½ θᵀQθ, with F (n, D1) features, θ (D1, K), Q (D1, D1).

    Layers share tensors, not arithmetic: dot products, steps and histories are per layer,
    so a batch gives each layer's own L-BFGS run, and a layer leaves the batch as soon as
    max |to_w @ ∇| <= tol (to_w maps the gradient back to the coordinates `tol` is meant
    in) and its last step lowered the objective by <= tol·max(|objective|, 1).
    Returns θ (L, D1, K), whether each layer converged, and its iteration count.

    The only big matrix products per iteration are F·d (for the line search) and
    Fᵀ(p − y) (the gradient), n·D1·K each per layer; the rest is elementwise on (n, K).
    The (layers, n, K) buffers are allocated once per batch size and reused: on a CPU a
    fresh half-gigabyte tensor costs more in page faults than the arithmetic done on it.
    Tensors are float32; the per-layer scalars (loss, slopes) are float64, so the line
    search can still tell steps apart near the optimum."""
    n_layers, n, d1 = features.shape
    device = features.device
    theta_out = features.new_zeros(n_layers, d1, n_classes)
    converged = torch.zeros(n_layers, dtype=torch.bool, device=device)
    iterations = torch.zeros(n_layers, dtype=torch.long, device=device)
    # Everything per layer lives batch-first in one dict, so dropping finished layers is one indexing.
    # ½θᵀQθ is carried along as a float64 sum of the line searches' own increments: recomputing it
    # as a float32 dot over ~10⁶ entries would be off by more than the decrease of a late step.
    batch = {
        "layer": torch.arange(n_layers, device=device),
        "features": features,
        "penalty": penalty,
        "to_w": to_w,
        "index": labels.view(1, n, 1).expand(n_layers, n, 1),
        "theta": torch.zeros_like(theta_out),
        "q_theta": torch.zeros_like(theta_out),
        "half_theta_q_theta": torch.zeros(n_layers, dtype=torch.float64, device=device),
        "logits": features.new_zeros(n_layers, n, n_classes),
        "stalled": torch.zeros(n_layers, dtype=torch.bool, device=device),
    }
    history: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (s, y, 1/sᵀy) per pair
    buffers = _Buffers(batch["logits"])
    batch["loss"] = _softmax_cross_entropy(batch["logits"], batch["index"], buffers.probs)
    batch["decrease"] = torch.zeros_like(batch["loss"])  # of the last step; none yet
    batch["grad"] = _gradient(batch, buffers.probs)
    bar = _bar(progress, total=max_iter, desc="logistic probes (torch L-BFGS)", unit="it")
    for step in range(max_iter + 1):
        finished = (torch.bmm(batch["to_w"], batch["grad"]).abs().amax(dim=(1, 2)) <= tol) & (
            batch["decrease"] <= tol * batch["loss"].abs().clamp_min(1)
        )
        leaving = finished | batch["stalled"] | (step == max_iter)
        if leaving.any():
            rows = batch["layer"][leaving]
            theta_out[rows], converged[rows], iterations[rows] = batch["theta"][leaving], finished[leaving], step
            keep = ~leaving
            if not keep.any():
                break
            batch = {key: value[keep] for key, value in batch.items()}
            history = [(s[keep], y[keep], rho[keep]) for s, y, rho in history]
            buffers = _Buffers(batch["logits"])
        direction = _two_loop(batch["grad"], history)
        q_direction = torch.bmm(batch["penalty"], direction)
        torch.bmm(batch["features"], direction, out=buffers.along)
        quadratic = (
            batch["half_theta_q_theta"],
            _dot(direction, batch["q_theta"]).double(),
            _dot(direction, q_direction).double(),
        )
        t, loss = _line_search(
            batch["logits"],
            buffers,
            batch["index"],
            batch["loss"],
            _dot(batch["grad"], direction).double(),
            quadratic,
            newton_start=not history,
        )
        batch["loss"], batch["decrease"] = loss, batch["loss"] - loss
        batch["half_theta_q_theta"] = quadratic[0] + t * quadratic[1] + 0.5 * t * t * quadratic[2]
        t = t.float().view(-1, 1, 1)
        s = direction * t
        batch["theta"] = batch["theta"] + s
        batch["q_theta"] = batch["q_theta"] + q_direction * t
        batch["logits"], buffers.trial = buffers.trial, batch["logits"]  # accepted logits; old ones are scratch
        grad = _gradient(batch, buffers.probs)
        y = grad - batch["grad"]
        sy = _dot(s, y)
        history = (history + [(s, y, torch.where(sy > 0, 1 / sy, torch.zeros_like(sy)))])[-LBFGS_HISTORY:]
        batch["grad"], batch["stalled"] = grad, t.view(-1) == 0
        bar.update()
        bar.set_postfix(layers_left=len(batch["layer"]))
    bar.close()
    return theta_out, converged.cpu(), iterations.cpu()


class _Buffers:
    """Scratch (layers, n, K) tensors for the line search: the logits' change along the
    direction, the trial logits, their softmax, and a product."""

    def __init__(self, like: torch.Tensor) -> None:
        self.along, self.trial, self.probs, self.work = (torch.empty_like(like) for _ in range(4))


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-layer inner product of two (L, ...) tensors. A loop of BLAS dots: a batched
    (L, 1, N) @ (L, N, 1) product is 10-40x slower on CPU once L > 1. On one thread, so
    the sum's order does not depend on the thread count (`one_thread`)."""
    with one_thread():
        return torch.stack([torch.dot(x.reshape(-1), y.reshape(-1)) for x, y in zip(a, b)])


def _layer_mean(values: torch.Tensor) -> torch.Tensor:
    """Float64 mean over the examples of (L, n) per-example values: one number per layer,
    on one thread, since for a single layer it is a reduction to one number (`one_thread`)."""
    with one_thread():
        return values.mean(dim=1, dtype=torch.float64)


def _softmax_cross_entropy(logits: torch.Tensor, index: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy per layer (float64); the softmax is left in `probs`.
    CE = logsumexp − logit_y, and logsumexp = max logit − log(max prob): the largest
    probability is ≥ 1/K, so unlike log p_y it never underflows."""
    torch.softmax(logits, dim=-1, out=probs)
    log_sum_exp = logits.amax(dim=-1) - probs.amax(dim=-1).log()
    return _layer_mean(log_sum_exp - logits.gather(2, index).squeeze(2))


def _gradient(batch: dict[str, torch.Tensor], probs: torch.Tensor) -> torch.Tensor:
    """∇ = Fᵀ(p − onehot) / n + Qθ. Overwrites `probs` with p − onehot."""
    probs.scatter_add_(2, batch["index"], probs.new_full(batch["index"].shape, -1.0))
    return torch.baddbmm(batch["q_theta"], batch["features"].transpose(1, 2), probs, alpha=1.0 / probs.shape[1])


def _two_loop(grad: torch.Tensor, history: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """The L-BFGS direction −H∇ (Nocedal & Wright, algorithm 7.4), every scalar per layer.
    Pairs with 1/sᵀy = 0 (no positive curvature seen) drop out by themselves."""
    q = grad.clone()
    alphas = []
    for s, y, rho in reversed(history):
        alpha = rho * _dot(s, q)
        q.addcmul_(y, alpha.view(-1, 1, 1), value=-1)
        alphas.append(alpha)
    if history:  # H₀ = γI with γ = sᵀy / yᵀy of the newest pair
        s, y, rho = history[-1]
        sy, yy = _dot(s, y), _dot(y, y)
        q.mul_(torch.where((sy > 0) & (yy > 0), sy / yy, torch.ones_like(sy)).view(-1, 1, 1))
    for (s, y, rho), alpha in zip(history, reversed(alphas)):
        beta = rho * _dot(y, q)
        q.addcmul_(s, (alpha - beta).view(-1, 1, 1))
    return q.neg_()


def _line_search(
    logits: torch.Tensor,
    buffers: _Buffers,
    index: torch.Tensor,
    loss0: torch.Tensor,
    slope0: torch.Tensor,
    quadratic: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    *,
    newton_start: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A step t per layer (float64, a float32 value) satisfying the strong Wolfe conditions
    along the direction whose logit change is `buffers.along` (B); returns t and φ(t), and
    leaves the logits and the softmax at t in the buffers.

    φ(t) = CE(A + tB) + q₀ + t·q₁ + ½t²·q₂ is convex, and φ, φ′ and φ″ cost only
    elementwise passes over (n, K), so this is a safeguarded Newton iteration on φ′ = 0
    inside a bracket, starting from t = 1 (the quasi-Newton step) or, on the first
    iteration, from the Newton step at 0. A layer whose direction is not a descent
    direction, or whose bracket shrinks to float32 resolution, gets t = 0 (stalled)."""
    q0, q1, q2 = quadratic
    along, trial, probs, work = buffers.along, buffers.trial, buffers.probs, buffers.work
    along_true = along.gather(2, index).squeeze(2)

    def evaluate(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        torch.addcmul(logits, along, t.float().view(-1, 1, 1), out=trial)
        value = _softmax_cross_entropy(trial, index, probs) + q0 + t * q1 + 0.5 * t * t * q2
        expected_along = torch.mul(probs, along, out=work).sum(dim=-1)  # E_p[B] per example
        return value, _layer_mean(expected_along - along_true) + q1 + t * q2, expected_along

    def curvature(expected_along: torch.Tensor) -> torch.Tensor:
        # φ″ = mean Var_p[B] + q₂; `work` still holds p·B from the last evaluate.
        second = torch.mul(work, along, out=work).sum(dim=-1)
        return _layer_mean(second - expected_along.square()).add(q2).clamp_min(1e-300)

    def representable(t: torch.Tensor) -> torch.Tensor:
        return t.float().double()  # the step the float32 logits actually take

    descent = slope0 < 0
    accepted = ~descent
    zero = torch.zeros_like(slope0)
    if newton_start:
        _, slope, expected = evaluate(zero)
        t = representable((-slope / curvature(expected)).clamp(max=torch.finfo(torch.float32).max))
    else:
        t = torch.ones_like(slope0)
    t = torch.where(descent, t, zero)
    low, high = zero.clone(), torch.full_like(slope0, torch.inf)
    for _ in range(LINE_SEARCH_STEPS):
        value, slope, expected = evaluate(t)
        # Armijo, or (where the loss can no longer resolve Armijo's decrease) no rise beyond rounding.
        sufficient = (value <= loss0 + ARMIJO * t * slope0) | (value <= loss0 + VALUE_RESOLUTION * loss0.abs())
        accepted |= sufficient & (slope.abs() <= CURVATURE * slope0.abs())
        if accepted.all():
            return t, value
        # Shrink the bracket around the minimiser, then try Newton's step inside it.
        beyond = ~sufficient | (slope > 0)
        high = torch.where(beyond & ~accepted, t, high)
        low = torch.where(~beyond & ~accepted, t, low)
        newton = t - slope / curvature(expected)
        fallback = torch.where(high.isinf(), 2 * t, 0.5 * (low + high))
        proposal = representable(torch.where((newton > low) & (newton < high), newton, fallback))
        exhausted = ~accepted & ((proposal <= low) | (proposal >= high))  # nothing left between them in float32
        t = torch.where(accepted, t, torch.where(exhausted, low, proposal))
        accepted |= exhausted  # evaluated at `low` on the next pass
    t = torch.where(accepted, t, low)
    value, _, _ = evaluate(t)
    return t, value
