"""Attention knockout, implemented once for every architecture through transformers'
attention interface: the one place where all five HF classes compute attention
(`ALL_ATTENTION_FUNCTIONS.get_interface(config._attn_implementation, <the modeling file's
eager_attention_forward>)`). `cut_attention` points the attention modules of the cut blocks
at `KNOCKOUT_ATTENTION`, which adds the cut to whatever mask the block passes (BEiT's
relative position bias, else none) and calls the configured implementation (sdpa or that
file's eager function) with it. What is cut is `sweep.interventions.Knockout`'s.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from sweep.errors import SweepError

#: the name of the knockout's attention function in transformers' AttentionInterface
KNOCKOUT_ATTENTION = "sweep_knockout"
#: the implementations it wraps (compute.attn_implementation)
KNOCKOUT_INNER = ("sdpa", "eager")
_KNOCKOUT_STATE = "_sweep_knockout"


@dataclass(frozen=True)
class _Knockout:
    """What a cut attention module needs: the edge, the implementation it wraps, where the
    CLS sits, and the config to restore afterwards."""

    edge: str | None
    inner: str
    cls_index: int
    config: Any

    def mask(self, n_queries: int, n_keys: int, like: torch.Tensor) -> torch.Tensor | None:
        """Additive (1, 1, queries, keys) mask: -inf on the cut edges, 0 elsewhere. No row is
        cut whole (the CLS query keeps its own key; other queries keep each other's), so
        softmax stays finite, and a cut edge's weight is exactly zero."""
        if self.edge is None:
            return None
        mask = torch.zeros(n_queries, n_keys, dtype=like.dtype, device=like.device)
        if self.edge == "patches_to_cls":
            mask[self.cls_index] = float("-inf")  # the CLS query's row ...
        else:  # cls_to_patches
            mask[:, self.cls_index] = float("-inf")  # the CLS key's column ...
        mask[self.cls_index, self.cls_index] = 0.0  # ... but for the CLS reading itself
        return mask[None, None]


def knockout_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, Any]:
    """transformers' attention-function signature: the wrapped implementation, with the
    knockout's mask added to the block's own (BEiT's relative position bias; none elsewhere).
    With no edge the block's mask goes through untouched, so the output is bit for bit the
    wrapped implementation's."""
    state: _Knockout = module.__dict__[_KNOCKOUT_STATE]
    cut = state.mask(query.shape[-2], key.shape[-2], attention_mask if attention_mask is not None else query)
    if cut is not None:
        attention_mask = cut if attention_mask is None else attention_mask + cut
    return _implementation(module, state.inner)(module, query, key, value, attention_mask, **kwargs)


def _implementation(module: nn.Module, name: str) -> Callable[..., tuple[torch.Tensor, Any]]:
    """`name` as the module itself would dispatch it: eager is each modeling file's own
    `eager_attention_forward` (not in the interface's mapping), the rest come from the interface."""
    if name != "eager":
        return ALL_ATTENTION_FUNCTIONS[name]
    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if eager is None:
        raise SweepError(f"{type(module).__module__} has no eager_attention_forward for attention knockout to wrap")
    return eager


AttentionInterface.register(KNOCKOUT_ATTENTION, knockout_attention)


@contextmanager
def cut_attention(modules: Iterable[nn.Module], edge: str | None, cls_index: int) -> Iterator[None]:
    """Run `modules` (the attention modules of the cut blocks) with the `edge` cut while
    inside; `cls_index`: where the CLS sits among the tokens.

    Each module gets a config of its own (a shallow copy naming `KNOCKOUT_ATTENTION`) and
    the knockout's state; the shared config, and with it every other block, is left alone."""
    cut_modules: list[nn.Module] = []
    try:
        for module in modules:
            inner = module.config._attn_implementation
            if inner not in KNOCKOUT_INNER:
                raise SweepError(
                    f"attention knockout wraps {', '.join(KNOCKOUT_INNER)}; {type(module).__name__} "
                    f"runs config._attn_implementation={inner!r}"
                )
            own = copy.copy(module.config)  # a leaf config (no sub-configs): the copy shares nothing it sets
            own._attn_implementation = KNOCKOUT_ATTENTION
            module.__dict__[_KNOCKOUT_STATE] = _Knockout(edge, inner, cls_index, module.config)
            module.config = own
            cut_modules.append(module)
        yield
    finally:
        for module in cut_modules:
            module.config = module.__dict__.pop(_KNOCKOUT_STATE).config
