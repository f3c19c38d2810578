"""Scores computed from logits: accuracy, top-k, and identifiability (Vilas et al. 2023).

Everything derives from the 0-based rank of the true class among the C logits, which is
also what the per-example outcomes file stores, so users can recompute any of these.
"""

from __future__ import annotations

import torch


class NonFiniteLogits(ValueError):
    """Logits with NaN or inf: no rank is defined, and comparisons with NaN are all false,
    which would rank a row of NaNs first and score a broken model perfectly."""


def require_finite(logits: torch.Tensor, what: str) -> None:
    bad = ~torch.isfinite(logits).all(dim=1)
    if bool(bad.any()):
        raise NonFiniteLogits(
            f"{what}: {int(bad.sum())} of {len(logits)} rows of logits are not finite "
            f"(NaN or inf; first bad row {int(bad.nonzero()[0])}); no score is recorded"
        )


def true_class_ranks(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Rank of the true class (0 = best). Ties break as `argmax` does, lower class index
    first, so rank 0 means exactly "argmax is the label": a constant predictor scores at
    chance, not perfectly. Non-finite logits are refused (`NonFiniteLogits`)."""
    require_finite(logits, "true_class_ranks")
    labels = labels.view(-1, 1).long()
    true_logit = logits.gather(1, labels)
    classes = torch.arange(logits.shape[1], device=logits.device).view(1, -1)
    return ((logits > true_logit) | ((logits == true_logit) & (classes < labels))).sum(dim=1)


def top_k_accuracy(ranks: torch.Tensor, k: int) -> float:
    return float((ranks < k).double().mean())  # a float sum of 0s and 1s is exact in any order


def _mean_rank_share(ranks: torch.Tensor, denominator: int) -> float:
    """mean(r) / denominator from the exact integer sum of the ranks: a float mean over
    32,768 or more examples is summed in parts, one per thread, so its last digits would
    depend on the thread count (issue 29). NaN for no examples, as a float mean gives."""
    return int(ranks.sum()) / (len(ranks) * denominator) if len(ranks) else float("nan")


def identifiability(ranks: torch.Tensor, n_classes: int) -> float:
    """mean(1 - r / C): Vilas' and the seed's formula (1.0 at top-1, 1/C above zero at worst)."""
    return 1.0 - _mean_rank_share(ranks, n_classes)


def identifiability_exact(ranks: torch.Tensor, n_classes: int) -> float:
    """mean(1 - r / (C - 1)): the variant that spans exactly [0, 1]."""
    return 1.0 - _mean_rank_share(ranks, n_classes - 1)


def rank_metrics(logits: torch.Tensor, labels: torch.Tensor, prefix: str = "") -> dict[str, float]:
    """Accuracy, top-5 and both identifiabilities of `logits`, keys prefixed by `prefix`."""
    ranks = true_class_ranks(logits, labels)
    n_classes = logits.shape[1]
    return {
        f"{prefix}accuracy": top_k_accuracy(ranks, 1),
        f"{prefix}top5": top_k_accuracy(ranks, min(5, n_classes)),
        f"{prefix}identifiability": identifiability(ranks, n_classes),
        f"{prefix}identifiability_exact": identifiability_exact(ranks, n_classes),
    }
