"""Interventions at one layer: 'a replacement CLS for each example', or a cut in attention.

One class per intervention, registered under its `intervention.name`, declares its
settings (checked when a cell is specified) and whether it draws random numbers (then its
seed is part of what it measures; otherwise a grid over seeds measures it once), and
whether each example's new CLS comes from another example, its *donor* (`donors`: then the
cell also scores how much of the output follows the donor). Settings every intervention
takes (`COMMON_SETTINGS`: `probe_after`) are added to each class's own. Adding an
intervention is one class here and its `conf/intervention/<name>.yaml`.

Every intervention is computed from the unmodified model's CLS tokens of the validation
set at layer L (and at layer 0 for `reset`), which the features pass has already cached.
That makes the shuffle's groups of 128 independent of the compute batch size. A shuffle of
another token (`token`: distillation, registers, patches) moves that token from the donor's
own unmodified hidden state at L, which the engine recomputes batch by batch. `knockout`
replaces no CLS: it names the attention edges to cut in the blocks after L (an
`AttentionCut`, applied by the adapter through transformers' attention interface).

Torch is imported where a replacement is computed, not here: the planner reads the
registry (names, settings) for thousands of cells without it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar

from sweep.registry import Registry
from sweep.rules import Flag, Integer, OneOf, Rule

if TYPE_CHECKING:
    import torch

#: the choice that leaves the model alone: its cells read the unmodified pass
NONE = "none"
PERMUTATIONS = ("derangement", "randperm", "identity")
#: attention edges a knockout cuts: the CLS query reading every other token's key, or every
#: other token's query reading the CLS key ("patches": every token but the CLS, so DeiT's
#: distillation token too)
EDGES = ("patches_to_cls", "cls_to_patches")
#: which blocks after layer L a knockout cuts: block L + 1 alone, or every block L + 1..N
SPANS = ("single", "after")
#: the tokens a shuffle can move from the donor image (`intervention.token`); which of them a
#: model has is its adapter's `supported_tokens`, where they sit its `token_slots`
TOKENS = ("cls", "distillation", "registers", "patches")
#: the token every other intervention edits
CLS = "cls"


@dataclass(frozen=True)
class AttentionCut:
    """Attention edges cut in some blocks: `blocks` are block indices (block k + 1 at index
    k, as `Adapter.blocks`). `edge` None cuts nothing: the attention function runs as
    installed, only routed through the knockout wrapper (its bit-for-bit control)."""

    edge: str | None
    blocks: tuple[int, ...]


#: settings of every intervention: `probe_after` also scores the later layers' probes on the
#: intervened CLS (re-accumulation; docs/results.md)
COMMON_SETTINGS: Mapping[str, Rule] = {"probe_after": Flag()}


class Intervention:
    """One intervention as a cell configures it: built once from the registry with its
    checked settings (`configured`), then asked what it does. `replacement` gives the CLS
    each validation example carries after the edit, (n, D), or None where no CLS is
    replaced; `attention_cut` the attention edges cut after layer L, or None where attention
    is left alone."""

    #: the settings of `intervention.<key>` besides its name
    settings: ClassVar[Mapping[str, Rule]] = {}
    #: draws random numbers: the seed is part of the cell's identity
    seeded: ClassVar[bool] = False
    #: acts in the blocks after layer L, so at L = N (no block after it) it has nothing to do
    needs_a_block: ClassVar[bool] = False
    #: settings that make another series of this intervention in one table (see `variant`),
    #: each with the value that goes unnamed (None: every value is named). Any other setting
    #: must agree within a sweep's table.
    labelled: ClassVar[Mapping[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Each class's declared settings, and the settings every intervention takes."""
        super().__init_subclass__(**kwargs)
        cls.settings = {**COMMON_SETTINGS, **cls.settings}

    def __init__(self, name: str, values: Mapping[str, Any]) -> None:
        self.name, self.values = name, MappingProxyType(dict(values))

    def replacement(
        self, *, cls_at_layer: torch.Tensor, cls_at_embedding: torch.Tensor, seed: int | None
    ) -> torch.Tensor | None:
        raise NotImplementedError

    def attention_cut(self, *, layer: int, n_layers: int) -> AttentionCut | None:
        return None

    @property
    def token(self) -> str:
        """The token(s) this intervention edits at layer L (one of TOKENS): the CLS, unless the
        intervention declares a `token` setting. Only the CLS is replaced from the cached
        features (`replacement`); any other token comes from the donor's own hidden state."""
        return CLS

    def donors(self, *, n: int, seed: int | None) -> torch.Tensor | None:
        """donors[i] = the example whose CLS example i receives, or None when the new CLS
        comes from no other example. An intervention that declares donors gets the donor
        metrics (donor_accuracy, donor_agreement) and the outcomes' donor columns."""
        return None

    @property
    def variant(self) -> str | None:
        """The values of its labelled settings that are named, joined by "+" (`patches`,
        `patches_to_cls+after`), or None: what tells its series apart in one table."""
        named = [
            str(self.values[key])
            for key, unnamed in self.labelled.items()
            if key in self.values and self.values[key] != unnamed
        ]
        return "+".join(named) or None

    @property
    def label(self) -> str:
        return intervention_label(self.name, self.variant)


INTERVENTIONS: Registry[type[Intervention]] = Registry("intervention.name")


def configured(name: str, values: Mapping[str, Any]) -> Intervention:
    """Intervention `name` with its checked settings `values` (`settings.CellSettings.edit`
    holds the cell's, built once)."""
    return INTERVENTIONS[name](name, values)


@INTERVENTIONS.register(NONE)
class Unmodified(Intervention):
    def replacement(self, *, cls_at_layer, cls_at_embedding, seed):
        return None


@INTERVENTIONS.register("shuffle")
class Shuffle(Intervention):
    """The study's in-batch CLS shuffle, in groups of `group_size` (see shuffle_donors).
    `group_size` >= 2: a group of one has nobody to swap with. `token` names what moves from
    the donor image: the CLS (the study's shuffle), DeiT's distillation token, DINOv2's
    register tokens, or every patch token together."""

    settings = {"group_size": Integer(2), "permutation": OneOf(*PERMUTATIONS), "token": OneOf(*TOKENS)}
    seeded = True
    labelled = {"token": CLS}  # the study's shuffle moves the CLS: `shuffle`; `shuffle@patches`

    def replacement(self, *, cls_at_layer, cls_at_embedding, seed):
        if self.token != CLS:
            return None  # moved from the donors' hidden states, not from the cached CLS
        return cls_at_layer[self.donors(n=cls_at_layer.shape[0], seed=seed)]

    @property
    def token(self):
        return str(self.values["token"])

    def donors(self, *, n, seed):
        return shuffle_donors(
            n, group_size=int(self.values["group_size"]), permutation=str(self.values["permutation"]), seed=seed
        )


@INTERVENTIONS.register("zero")
class Zero(Intervention):
    def replacement(self, *, cls_at_layer, cls_at_embedding, seed):
        import torch

        return torch.zeros_like(cls_at_layer)


@INTERVENTIONS.register("mean")
class Mean(Intervention):
    """Every example gets the validation set's mean CLS at the layer."""

    def replacement(self, *, cls_at_layer, cls_at_embedding, seed):
        n, dim = cls_at_layer.shape
        return cls_at_layer.mean(dim=0, keepdim=True).expand(n, dim).clone()


@INTERVENTIONS.register("noise")
class Noise(Intervention):
    """Gaussian noise with the layer's per-dimension spread, around its mean or zero."""

    settings = {"center": OneOf("mean", "zero")}
    seeded = True

    def replacement(self, *, cls_at_layer, cls_at_embedding, seed):
        import torch

        n, dim = cls_at_layer.shape
        centre = cls_at_layer.mean(dim=0) if self.values["center"] == "mean" else torch.zeros(dim)
        std = cls_at_layer.std(dim=0)
        noise = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=cls_at_layer.dtype)
        return centre + std * noise


@INTERVENTIONS.register("reset")
class Reset(Intervention):
    """The CLS goes back to what it was at the embedding (layer 0)."""

    def replacement(self, *, cls_at_layer, cls_at_embedding, seed):
        return cls_at_embedding.clone()


@INTERVENTIONS.register("knockout")
class Knockout(Intervention):
    """Attention knockout (as Vilas et al.): cut `edge` between the CLS and every other token
    in block L + 1 (`span=single`) or in every block after L (`span=after`). The CLS of
    hidden state L is left as it is; nothing is drawn at random."""

    settings = {"edge": OneOf(*EDGES), "span": OneOf(*SPANS)}
    needs_a_block = True
    labelled = {"edge": None, "span": None}  # `knockout@patches_to_cls+after`

    def replacement(self, *, cls_at_layer, cls_at_embedding, seed):
        return None

    def attention_cut(self, *, layer, n_layers):
        stop = layer + 1 if self.values["span"] == "single" else n_layers
        return AttentionCut(str(self.values["edge"]), tuple(range(layer, stop)))


def variant(name: str, settings: Mapping[str, Any]) -> str | None:
    """The variant (`Intervention.variant`) of a record's intervention: `settings` as its
    record's config has them; None for a name this version does not know."""
    return configured(name, settings).variant if name in INTERVENTIONS else None


def intervention_label(name: str, variant: str | None) -> str:
    """How cell names, the table's series and the figures name an intervention: its name, and
    its variant after an @ (`shuffle`, `shuffle@patches`, `knockout@cls_to_patches+single`)."""
    return f"{name}@{variant}" if variant else name


def shuffle_donors(n: int, *, group_size: int, permutation: str, seed: int) -> torch.Tensor:
    """donors[i] = the example whose CLS example i receives.

    The validation order is shuffled with `seed` first, so that each group of
    `group_size` mixes labels; then each group is permuted on its own. A trailing group
    of one cannot be deranged and is merged into the group before it.
    """
    import torch

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
    import torch

    if permutation == "identity" or size == 1:
        return torch.arange(size)
    if permutation == "randperm":
        return torch.randperm(size, generator=generator)
    # Rejection sampling draws uniformly among derangements; about e tries on average.
    while True:
        candidate = torch.randperm(size, generator=generator)
        if not bool((candidate == torch.arange(size)).any()):
            return candidate
