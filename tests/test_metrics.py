"""Accuracy, top-k and identifiability against hand-computed cases."""

import pytest
import torch

from sweep.metrics import identifiability, identifiability_exact, rank_metrics, top_k_accuracy, true_class_ranks


def test_ranks_count_the_classes_above_the_true_one_with_ties_broken_like_argmax():
    logits = torch.tensor(
        [
            [0.1, 0.9, 0.5, 0.2],  # true 1: best                   -> 0
            [0.1, 0.9, 0.5, 0.2],  # true 2: second                 -> 1
            [0.1, 0.9, 0.5, 0.2],  # true 0: worst                  -> 3
            [0.5, 0.5, 0.1, 0.1],  # true 1: tied with class 0      -> 1
            [0.5, 0.5, 0.1, 0.1],
        ]
    )  # true 0: tied, lower index wins -> 0
    ranks = true_class_ranks(logits, torch.tensor([1, 2, 0, 1, 0]))
    assert ranks.tolist() == [0, 1, 3, 1, 0]
    assert ((ranks == 0) == (logits.argmax(1) == torch.tensor([1, 2, 0, 1, 0]))).all()


def test_a_constant_predictor_scores_at_chance():
    labels = torch.arange(10).repeat(7)
    metrics = rank_metrics(torch.zeros(70, 10), labels)
    assert metrics["accuracy"] == pytest.approx(0.1)
    assert metrics["identifiability"] == pytest.approx(1 - 4.5 / 10)  # the mean rank is (C - 1) / 2


def test_identifiability_by_hand():
    ranks, n_classes = torch.tensor([0, 1, 3]), 4
    # Vilas' formula: mean(1 - r / C) = mean(1, 0.75, 0.25) = 2/3
    assert identifiability(ranks, n_classes) == pytest.approx(2 / 3)
    # exact variant: mean(1 - r / (C - 1)) = mean(1, 2/3, 0) = 5/9
    assert identifiability_exact(ranks, n_classes) == pytest.approx(5 / 9)


def test_identifiability_is_one_at_top1_and_the_exact_variant_spans_zero_to_one():
    assert identifiability(torch.zeros(5, dtype=torch.long), 10) == 1.0
    worst = torch.full((5,), 9)
    assert identifiability(worst, 10) == pytest.approx(0.1)
    assert identifiability_exact(worst, 10) == 0.0


def test_top_k_and_rank_metrics_with_prefix():
    logits = torch.eye(6)[[0, 1, 2]] + torch.arange(6) * 0.01  # rows prefer 0, 1, 2 (and then higher classes)
    metrics = rank_metrics(logits, torch.tensor([0, 5, 3]), prefix="projection_")
    assert metrics["projection_accuracy"] == pytest.approx(1 / 3)
    assert top_k_accuracy(true_class_ranks(logits, torch.tensor([0, 5, 3])), 2) == pytest.approx(2 / 3)
    assert metrics["projection_top5"] == 1.0


def test_non_finite_logits_are_refused_rather_than_ranked_first():
    """NaN compares false with everything, so a row of NaNs would get rank 0 (accuracy 1.0)."""
    from sweep.metrics import NonFiniteLogits

    logits = torch.tensor([[0.1, 0.9], [float("nan")] * 2, [float("inf"), 0.0]])
    with pytest.raises(NonFiniteLogits, match="2 of 3 rows of logits are not finite"):
        true_class_ranks(logits, torch.tensor([1, 0, 0]))
    with pytest.raises(NonFiniteLogits):
        rank_metrics(logits, torch.tensor([1, 0, 0]))


def test_scores_over_many_examples_do_not_depend_on_the_thread_count():
    """50,000 ranks (ImageNet's validation set): a float mean that long is summed in parts,
    one per thread; the old identifiability_exact differed in its last digit between 1 and
    2 threads."""
    ranks = torch.randint(0, 1000, (50_000,), generator=torch.Generator().manual_seed(0))
    logits = torch.randn(50_000, 10, generator=torch.Generator().manual_seed(1))
    labels = torch.randint(0, 10, (50_000,), generator=torch.Generator().manual_seed(2))
    before, scores = torch.get_num_threads(), []
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            scores.append(
                (
                    identifiability(ranks, 1000),
                    identifiability_exact(ranks, 1000),
                    top_k_accuracy(ranks, 5),
                    rank_metrics(logits, labels),
                )
            )
    finally:
        torch.set_num_threads(before)
    assert scores[0] == scores[1]
    assert scores[0][0] == 1 - int(ranks.sum()) / (50_000 * 1000)
