"""Linear probes: ridge against the normal equations, logistic against scikit-learn, and
the properties the study relies on (folding, batching over layers, determinism)."""

from contextlib import contextmanager

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from sweep.linear_heads import LinearHead
from sweep.metrics import rank_metrics
from sweep.probes import fit_probes

RIDGE = {"alpha": 0.5, "standardize": False, "fit_intercept": False}
LOGISTIC = {"C": 0.5, "max_iter": 1000, "tol": 1e-6, "standardize": True, "solver": "torch"}


def blobs(n_per_class: int, n_classes: int, dim: int, *, layers: int = 1, spread: float = 1.0, draw: int = 0):
    """Gaussian classes with a per-feature offset and scale (so standardising matters),
    as ((layers, n, dim) features, (n,) labels); each layer is a fresh draw. The classes
    are fixed; `draw` seeds the noise, so draw=1 is a validation set for draw=0."""
    classes, noise = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1 + draw)
    labels = torch.arange(n_classes).repeat_interleave(n_per_class)
    means = torch.randn(n_classes, dim, generator=classes) * 2
    scale, offset = torch.rand(dim, generator=classes) * 3 + 0.5, torch.randn(dim, generator=classes) * 5
    x = torch.stack(
        [
            (means[labels] + spread * torch.randn(len(labels), dim, generator=noise)) * scale + offset
            for _ in range(layers)
        ]
    )
    return x, labels


def accuracy(head: LinearHead, x: torch.Tensor, labels: torch.Tensor) -> float:
    return float((head.logits(x).argmax(1) == labels).double().mean())


# -- ridge --------------------------------------------------------------------------------


def test_ridge_solves_the_normal_equations_on_plus_minus_one_targets():
    x, labels = blobs(20, 4, 6)
    (head,) = fit_probes(x, labels, 4, method="ridge", settings=RIDGE)
    X = x[0].double().numpy()
    Y = 2 * np.eye(4)[labels.numpy()] - 1  # +1 for the true class, -1 otherwise
    W = np.linalg.solve(X.T @ X + 0.5 * np.eye(6), X.T @ Y)
    np.testing.assert_allclose(head.weight.numpy(), W.T, rtol=1e-5, atol=1e-6)
    assert not head.bias.any()


def test_ridge_with_an_intercept_centres_features_and_targets():
    x, labels = blobs(20, 4, 6)
    (head,) = fit_probes(x, labels, 4, method="ridge", settings={**RIDGE, "fit_intercept": True})
    X = x[0].double().numpy()
    Y = 2 * np.eye(4)[labels.numpy()] - 1
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    W = np.linalg.solve(Xc.T @ Xc + 0.5 * np.eye(6), Xc.T @ Yc)  # the intercept is not penalised
    np.testing.assert_allclose(head.weight.numpy(), W.T, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(head.bias.numpy(), Y.mean(0) - X.mean(0) @ W, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method, settings", [("ridge", {**RIDGE, "fit_intercept": True}), ("logistic", LOGISTIC)])
def test_standardisation_is_folded_into_a_head_on_raw_features(method, settings):
    x, labels = blobs(30, 3, 5)
    z = (x - x.mean(1, keepdim=True)) / x.std(1, correction=0, keepdim=True)  # population std, like sklearn
    (on_raw,) = fit_probes(x, labels, 3, method=method, settings={**settings, "standardize": True})
    (on_z,) = fit_probes(z, labels, 3, method=method, settings={**settings, "standardize": False})
    torch.testing.assert_close(on_raw.logits(x[0]), on_z.logits(z[0]), rtol=1e-4, atol=1e-4)


def test_ridge_separates_separable_classes():
    x, labels = blobs(25, 5, 10, spread=0.05)
    test_x, test_labels = blobs(10, 5, 10, spread=0.05, draw=1)
    (head,) = fit_probes(x, labels, 5, method="ridge", settings={**RIDGE, "fit_intercept": True})
    assert accuracy(head, x[0], labels) == 1.0
    assert accuracy(head, test_x[0], test_labels) == 1.0


# -- logistic -----------------------------------------------------------------------------


def test_logistic_torch_solver_matches_scikit_learn_at_the_same_C():
    x, labels = blobs(40, 4, 8, layers=2, spread=1.5)
    val_x, val_labels = blobs(40, 4, 8, layers=2, spread=1.5, draw=1)
    ours = fit_probes(x, labels, 4, method="logistic", settings=LOGISTIC)
    theirs = fit_probes(x, labels, 4, method="logistic", settings={**LOGISTIC, "solver": "sklearn"})
    for layer in range(2):
        torch.testing.assert_close(
            ours[layer].logits(x[layer]).softmax(1), theirs[layer].logits(x[layer]).softmax(1), rtol=0, atol=2e-4
        )
        torch.testing.assert_close(ours[layer].weight, theirs[layer].weight, rtol=2e-3, atol=2e-3)
        assert accuracy(ours[layer], val_x[layer], val_labels) == accuracy(theirs[layer], val_x[layer], val_labels)


def test_the_sklearn_solver_is_scikit_learn_on_standardised_features():
    x, labels = blobs(30, 3, 5, spread=2.0)
    (head,) = fit_probes(x, labels, 3, method="logistic", settings={**LOGISTIC, "solver": "sklearn"})
    z = ((x[0] - x[0].mean(0)) / x[0].std(0, correction=0)).double().numpy()
    model = LogisticRegression(C=0.5, max_iter=1000, tol=1e-6).fit(z, labels.numpy())
    np.testing.assert_allclose(head.logits(x[0]).softmax(1).numpy(), model.predict_proba(z), atol=1e-5)


def test_two_classes_through_sklearn_give_its_binary_probabilities():
    x, labels = blobs(30, 2, 4, spread=2.0)
    (head,) = fit_probes(x, labels, 2, method="logistic", settings={**LOGISTIC, "solver": "sklearn"})
    z = ((x[0] - x[0].mean(0)) / x[0].std(0, correction=0)).double().numpy()
    model = LogisticRegression(C=0.5, max_iter=1000, tol=1e-6).fit(z, labels.numpy())
    np.testing.assert_allclose(head.logits(x[0]).softmax(1).numpy(), model.predict_proba(z), atol=1e-5)


def test_logistic_needs_every_class_in_the_training_labels():
    x, labels = blobs(10, 3, 4)
    with pytest.raises(ValueError, match="missing: \\[3\\]"):
        fit_probes(x, labels, 4, method="logistic", settings=LOGISTIC)


# -- layers, heads, settings, determinism -------------------------------------------------


@pytest.mark.parametrize("method, settings", [("ridge", RIDGE), ("logistic", LOGISTIC)])
def test_a_batch_of_layers_gives_what_fitting_each_layer_alone_gives(method, settings):
    x, labels = blobs(20, 4, 6, layers=3, spread=1.5)
    together = fit_probes(x, labels, 4, method=method, settings=settings)
    for layer in range(3):
        (alone,) = fit_probes(x[layer], labels, 4, method=method, settings=settings)  # (n, D): one
        torch.testing.assert_close(together[layer].weight, alone.weight, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(together[layer].bias, alone.bias, rtol=1e-5, atol=1e-6)


def test_a_head_survives_a_state_dict_round_trip():
    head = LinearHead(torch.randn(3, 5), torch.randn(3))
    state = head.state_dict()
    assert set(state) == {"weight", "bias"}
    again = LinearHead.from_state_dict(state)
    assert torch.equal(again.weight, head.weight) and torch.equal(again.bias, head.bias)
    x = torch.randn(4, 5)
    torch.testing.assert_close(again.logits(x), x @ head.weight.T + head.bias)


@pytest.mark.parametrize(
    "method, settings, message",
    [
        ("lasso", RIDGE, "probe.method=lasso is invalid: it must be one of ridge, logistic"),
        ("ridge", {"alpha": 1.0, "standardize": True}, "probe.settings.fit_intercept is not set"),
        (
            "ridge",
            {**RIDGE, "lambda": 1.0},
            "probe.settings.lambda is not a setting of probe.settings; its settings "
            "are: alpha, standardize, fit_intercept",
        ),
        ("ridge", {**RIDGE, "alpha": 0.0}, r"probe.settings.alpha=0.0 is invalid: it must be a number > 0"),
        ("logistic", {**LOGISTIC, "solver": "saga"}, "must be one of torch, sklearn"),
        ("logistic", {**LOGISTIC, "C": 0.0}, "C=0.0 is invalid: it must be a number > 0"),
    ],
)
def test_a_bad_method_or_setting_names_the_valid_choices(method, settings, message):
    x, labels = blobs(5, 2, 3)
    with pytest.raises(ValueError, match=message):
        fit_probes(x, labels, 2, method=method, settings=settings)


@pytest.mark.parametrize("method, settings", [("ridge", {**RIDGE, "standardize": True}), ("logistic", LOGISTIC)])
def test_fitting_twice_gives_bit_identical_heads(method, settings):
    x, labels = blobs(20, 4, 6, layers=2, spread=1.5)
    first = fit_probes(x, labels, 4, method=method, settings=settings)
    second = fit_probes(x, labels, 4, method=method, settings=settings)
    for a, b in zip(first, second):
        assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)


@contextmanager
def threads(count: int):
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# Big enough that the old solvers differed between 1 and 2 threads: ridge's Cholesky of a
# 320 x 320 Gram matrix (MKL's LAPACK splits it from ~300 on; the float64 difference
# survives the rounding to float32 in some layers, not all, hence three), and L-BFGS dots
# over 201 x 100 weights (MKL's dot splits from ~16,000 entries).
@pytest.mark.parametrize(
    "method, settings, shape",
    [
        ("ridge", {**RIDGE, "standardize": True, "fit_intercept": True}, (2, 50, 320)),
        ("logistic", {**LOGISTIC, "max_iter": 30}, (4, 100, 200)),
    ],
)
def test_heads_and_their_scores_do_not_depend_on_the_thread_count(method, settings, shape):
    x, labels = blobs(*shape, layers=3, spread=3.0)
    val_x, val_labels = blobs(*shape, layers=3, spread=3.0, draw=1)
    runs = []
    for count in (1, 2):
        with threads(count):
            heads = fit_probes(x, labels, shape[1], method=method, settings=settings, progress=False)
            runs.append((heads, [rank_metrics(head.logits(v), val_labels) for head, v in zip(heads, val_x)]))
            assert torch.get_num_threads() == count  # the solver gave its threads back
    (one, one_scores), (two, two_scores) = runs
    for a, b in zip(one, two):
        assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    assert one_scores == two_scores
