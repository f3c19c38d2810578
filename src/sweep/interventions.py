"""Interventions on the CLS token at one layer, as 'a replacement CLS for each example'.

Every intervention is computed from the unmodified model's CLS tokens of the validation
set at layer L (and at layer 0 for `reset`), which the features pass has already cached.
That makes the shuffle's groups of 128 independent of the compute batch size and lets a
cell start from a cached hidden state L instead of re-running the prefix.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from sweep.settings import INTERVENTIONS, PERMUTATIONS


def shuffle_donors(n: int, *, group_size: int, permutation: str, seed: int) -> torch.Tensor:
    """donors[i] = the example whose CLS example i receives.

    The validation order is shuffled with `seed` first, so that each group of
    `group_size` mixes labels; then each group is permuted on its own. A trailing group
    of one cannot be deranged and is merged into the group before it.
    """
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 (a group of one has nobody to swap with); got {group_size}")
    if permutation not in PERMUTATIONS:
        raise ValueError(f"unknown permutation '{permutation}'; choose one of {', '.join(PERMUTATIONS)}")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator)
    starts = list(range(0, n, group_size))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    donors = torch.empty(n, dtype=torch.long)
    for start, stop in zip(starts, starts[1:] + [n]):
        members = order[start:stop]
        donors[members] = members[_permute(stop - start, permutation, generator)]
    return donors


def _permute(size: int, permutation: str, generator: torch.Generator) -> torch.Tensor:
    if permutation == "identity" or size == 1:
        return torch.arange(size)
    if permutation == "randperm":
        return torch.randperm(size, generator=generator)
    # Rejection sampling draws uniformly among derangements; about e tries on average.
    while True:
        candidate = torch.randperm(size, generator=generator)
        if not bool((candidate == torch.arange(size)).any()):
            return candidate


def replacement_cls(name: str, settings: Mapping[str, Any], *, cls_at_layer: torch.Tensor,
                    cls_at_embedding: torch.Tensor, seed: int | None) -> torch.Tensor | None:
    """The CLS token each validation example carries after the intervention, shape (n, D).

    `cls_at_layer` is the unmodified CLS at the intervened layer for every validation
    example; `None` means "leave the model alone".
    """
    n, dim = cls_at_layer.shape
    if name == "none":
        return None
    if name == "shuffle":
        donors = shuffle_donors(n, group_size=int(settings["group_size"]),
                                permutation=str(settings["permutation"]), seed=seed)
        return cls_at_layer[donors]
    if name == "zero":
        return torch.zeros_like(cls_at_layer)
    if name == "mean":
        return cls_at_layer.mean(dim=0, keepdim=True).expand(n, dim).clone()
    if name == "noise":
        centre = cls_at_layer.mean(dim=0) if settings["center"] == "mean" else torch.zeros(dim)
        std = cls_at_layer.std(dim=0)
        noise = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=cls_at_layer.dtype)
        return centre + std * noise
    if name == "reset":
        return cls_at_embedding.clone()
    raise ValueError(f"unknown intervention '{name}'; choose one of {', '.join(INTERVENTIONS)}")
