"""Model adapters: where each architecture keeps its blocks, tokens, norms and heads.

The science code (features, interventions, cells) talks only to `Adapter`. Every
difference between ViT, DeiT, BEiT, DINOv2 (with or without registers) and CLIP lives here
(which readouts and tokens each has, and where its tokens sit), or in the model configs,
`model/*.yaml` (which adapter, which readouts exist, which heads are fitted).

Layer indexing (docs/science.md): hidden state L = 0 is the embedding output (the
input of block 1), L = k is the output of block k. `module_producing(L)` is the module
whose forward output *is* hidden state L, so a forward hook there (registered with
``prepend=True``) edits the tensor that HF records as ``hidden_states[L]`` and that
block L + 1 consumes.

Torch is imported where a model is touched, not at import: the planner checks a model
config's `adapter` and `readouts` against the registry (`check_readouts`) when a cell is
specified, for thousands of cells, without it.

Attention knockout goes through transformers' attention interface, the one place where all
five HF classes compute attention (`ALL_ATTENTION_FUNCTIONS.get_interface(config.
_attn_implementation, <the modeling file's eager_attention_forward>)`): `attention_cut`
(with `sweep.attention`) points the attention modules of the cut blocks at `KNOCKOUT_ATTENTION`, which adds the cut
to whatever mask the block passes (BEiT's relative position bias, else none) and calls the
configured implementation (sdpa or that file's eager function) with it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

from sweep.errors import ConfigError, SweepError
from sweep.registry import Registry
from sweep.rules import OneOf

if TYPE_CHECKING:
    import torch
    from torch import nn

    from sweep.interventions import AttentionCut
    from sweep.linear_heads import LinearHead

HeadFn = Callable[["torch.Tensor"], "torch.Tensor"]
#: where a readout's head comes from (`model.readouts.<name>.head`)
HEADS = ("native", "fitted")


class ReadoutUnavailable(SweepError):
    """Raised when a model has no readout of the requested kind, or no native head for it."""


class TokenUnavailable(SweepError):
    """Raised when a model has no token of the kind an intervention moves (`intervention.token`)."""


class Adapter(ABC):
    """Uniform view of one HF image classifier.

    Subclasses name the submodules; the shared code runs blocks one by one so that a
    cell can start from a cached hidden state and skip the unmodified prefix.
    """

    #: readouts this architecture can express; model/*.yaml picks among them
    supported_readouts: tuple[str, ...] = ("native", "cls")
    #: top-level modules of the HF model that hold its head(s): the only weights a checkpoint
    #: may lack or have in another shape (and only where every head is fitted here)
    head_modules: tuple[str, ...] = ("classifier",)
    #: settings a readout may have in model/*.yaml, besides where its head comes from
    readout_options: tuple[str, ...] = ()
    #: tokens an intervention can move in this architecture (`intervention.token`, one of
    #: sweep.interventions.TOKENS); `token_slots` says where each sits
    supported_tokens: tuple[str, ...] = ("cls", "patches")
    cls_index: int = 0

    def __init__(
        self,
        model: nn.Module,
        readouts: Mapping[str, Any] | None = None,
        tensors: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        """`readouts`: the model config's `readouts` (their settings); `tensors`: what
        `checkpoint_tensors` asked for, read from the checkpoint by the loader."""
        self.model = model.eval()
        self._fitted: dict[str, nn.Linear] = {}
        self.readout_settings = {str(name): dict(settings or {}) for name, settings in (readouts or {}).items()}
        self.check_readouts(self.readout_settings)

    @classmethod
    def check_readouts(cls, readouts: Mapping[str, Any]) -> None:
        """Refuse a model config's `readouts` this architecture cannot express: cheap and
        torch-free, so `cell_spec` runs it when the cell is specified."""
        valid = ("head", *cls.readout_options)
        for name, settings in readouts.items():
            if name not in cls.supported_readouts:
                raise ConfigError(
                    f"model.readouts.{name} is not a readout of {cls.__name__}; it supports "
                    f"{', '.join(cls.supported_readouts)}"
                )
            if not isinstance(settings, Mapping):
                raise ConfigError(
                    f"model.readouts.{name} must be a group of settings ({{head: native|fitted}}), not {settings!r}"
                )
            for key in settings:
                if key not in valid:
                    raise ConfigError(
                        f"model.readouts.{name}.{key} is not a setting of {cls.__name__}; "
                        f"valid settings: {', '.join(valid)}"
                    )
            OneOf(*HEADS).check(f"model.readouts.{name}.head", settings.get("head"))

    @classmethod
    def checkpoint_tensors(cls, readouts: Mapping[str, Any]) -> dict[str, str]:
        """Tensors to read from the checkpoint's files that the HF class does not load
        (name -> why), for these readout settings."""
        return {}

    # -- structure -------------------------------------------------------------
    @property
    @abstractmethod
    def stem(self) -> nn.Module:
        """Module whose output is hidden state 0."""

    @property
    @abstractmethod
    def blocks(self) -> nn.ModuleList:
        """The transformer blocks, block k + 1 at index k."""

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def hidden_size(self) -> int:
        return int(
            self.model.config.hidden_size
            if hasattr(self.model.config, "hidden_size")
            else self.model.config.vision_config.hidden_size
        )

    def module_producing(self, layer: int) -> nn.Module:
        return self.stem if layer == 0 else self.blocks[layer - 1]

    @property
    def first_patch(self) -> int:
        """Position of the first patch token: the tokens before it are the CLS (and, where an
        architecture has them, its distillation or register tokens)."""
        return 1

    def token_slots(self, token: str) -> slice:
        """Where `token` sits in a hidden state (the positions a shuffle of it moves)."""
        if token not in self.supported_tokens:
            raise TokenUnavailable(
                f"{type(self).__name__} has no '{token}' token; intervention.token can be "
                f"{', '.join(self.supported_tokens)}"
            )
        if token == "cls":
            return slice(self.cls_index, self.cls_index + 1)
        if token == "patches":
            return slice(self.first_patch, None)
        return self._special_slots(token)

    def _special_slots(self, token: str) -> slice:
        """Slots of the tokens an architecture adds to `supported_tokens` besides cls and patches."""
        raise TokenUnavailable(f"{type(self).__name__} declares a '{token}' token but does not say where it sits")

    # -- forward, piece by piece ----------------------------------------------
    @abstractmethod
    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """Hidden state 0 from normalised pixels (through `stem`, so hooks fire)."""

    def run_block(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        return self.blocks[index](hidden)

    def run_blocks(self, hidden: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Take hidden state `start` to hidden state `stop`."""
        for index in range(start, stop):
            hidden = self.run_block(index, hidden)
        return hidden

    def hidden_states(self, pixels: torch.Tensor) -> Iterator[torch.Tensor]:
        """Yield hidden states 0..N of the (possibly hooked) model."""
        hidden = self.embed(pixels)
        yield hidden
        for index in range(self.n_layers):
            hidden = self.run_block(index, hidden)
            yield hidden

    # -- readouts --------------------------------------------------------------
    @abstractmethod
    def readout_features(self, last_hidden: torch.Tensor, readout: str) -> torch.Tensor:
        """What the head of `readout` sees, from hidden state N (before the final norm)."""

    @abstractmethod
    def native_head(self, readout: str) -> HeadFn:
        """The model's own head for `readout` (used when the head is not fitted here)."""

    @abstractmethod
    def projection_features(self, cls: torch.Tensor) -> torch.Tensor:
        """Final norm applied to a lone CLS vector, for the class-embedding projection."""

    def check_readout(self, readout: str) -> None:
        if readout not in self.supported_readouts:
            raise ReadoutUnavailable(
                f"{type(self).__name__} has no '{readout}' readout; it supports {', '.join(self.supported_readouts)}"
            )

    def head(self, readout: str) -> HeadFn:
        """The head of `readout`. A head fitted here was fitted on flattened features, so it
        flattens what it is given (DeiT's native features are (n, 2, D))."""
        self.check_readout(readout)
        if readout in self._fitted:
            fitted = self._fitted[readout]
            return lambda features: fitted(features.flatten(1))
        return self.native_head(readout)

    # Readouts, heads and projections run in float32 on float32 features, outside any
    # autocast: a 1000-way head in bf16 ties and reorders the top classes of many images.
    def float_readout_features(self, last_hidden: torch.Tensor, readout: str) -> torch.Tensor:
        with _full_precision(last_hidden):
            return self.readout_features(last_hidden.float(), readout)

    def apply_head(self, readout: str, features: torch.Tensor) -> torch.Tensor:
        with _full_precision(features):
            return self.head(readout)(features.float())

    def logits(self, last_hidden: torch.Tensor, readout: str) -> torch.Tensor:
        return self.apply_head(readout, self.float_readout_features(last_hidden, readout))

    def features_with_cls(self, unmodified: torch.Tensor, cls: torch.Tensor, readout: str) -> torch.Tensor:
        """`readout`'s features of hidden state N with its CLS token replaced by `cls`, from
        the unmodified model's features of that readout: an intervention at L = N then runs
        no block and needs no hidden state. A readout of the CLS alone reads a one-token
        hidden state; subclasses whose readouts read other tokens too combine the two."""
        with _full_precision(cls):
            return self.readout_features(cls.float()[:, None], readout)

    def projection_logits(self, cls: torch.Tensor, readout: str) -> torch.Tensor:
        """The class-embedding projection: the final norm and `readout`'s head on a lone CLS."""
        with _full_precision(cls):
            return self.apply_head(readout, self.projection_features(cls.float()))

    def install_head(self, readout: str, head: LinearHead) -> None:
        """Use a head fitted here for `readout`; the native readout's goes into the HF
        classifier itself so that the HF model's own forward uses it too."""
        self.check_readout(readout)
        import torch

        linear = self._fitted_slot(readout, head.weight.shape[1], head.weight.shape[0])
        with torch.no_grad():
            linear.weight.copy_(head.weight)
            linear.bias.copy_(head.bias)
        self._fitted[readout] = linear

    def _fitted_slot(self, readout: str, in_features: int, n_classes: int) -> nn.Linear:
        slot = self._hf_classifier() if readout == "native" else None
        if slot is None or slot.in_features != in_features or slot.out_features != n_classes:
            from torch import nn

            param = next(self.model.parameters())
            slot = nn.Linear(in_features, n_classes).to(param.device, param.dtype)
            if readout == "native":
                self._set_hf_classifier(slot)
        return slot

    def _hf_classifier(self) -> nn.Linear | None:
        return getattr(self.model, "classifier", None)

    def _set_hf_classifier(self, linear: nn.Linear) -> None:
        self.model.classifier = linear

    # -- interventions ---------------------------------------------------------
    @contextmanager
    def cls_edit(self, layer: int, edit: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
        """Replace the CLS token of hidden state `layer` by ``edit(cls)`` while inside.

        The hook is prepended so that HF's own recording of ``hidden_states`` (also
        forward hooks) sees the edited tensor.
        """

        def hook(_module: nn.Module, _args: object, output: torch.Tensor) -> torch.Tensor:
            return self.with_cls(output, edit(output[:, self.cls_index]))

        handle = self.module_producing(layer).register_forward_hook(hook, prepend=True)
        try:
            yield
        finally:
            handle.remove()

    def with_cls(self, hidden: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        edited = hidden.clone()
        edited[:, self.cls_index] = cls.to(hidden.dtype)
        return edited

    def with_tokens(self, hidden: torch.Tensor, donor_hidden: torch.Tensor, token: str) -> torch.Tensor:
        """`hidden` with `token`'s positions taken from `donor_hidden` (row i from row i)."""
        slots = self.token_slots(token)
        edited = hidden.clone()
        edited[:, slots] = donor_hidden[:, slots].to(hidden.dtype)
        return edited

    def attention_module(self, index: int) -> nn.Module:
        """The module of block `index` that calls transformers' attention interface."""
        return self.blocks[index].attention

    def attention_cut(self, cut: AttentionCut | None) -> AbstractContextManager[None]:
        """Run the blocks of `cut` with its attention edges cut while inside (None: no cut);
        see `sweep.attention`."""
        from sweep.attention import cut_attention

        if cut is None:
            return nullcontext()
        return cut_attention([self.attention_module(index) for index in cut.blocks], cut.edge, self.cls_index)


def _full_precision(tensor: torch.Tensor) -> torch.autocast:
    import torch

    return torch.autocast(tensor.device.type, enabled=False)


#: model.adapter -> the class that knows that architecture
ADAPTERS: Registry[type[Adapter]] = Registry("model.adapter")


@ADAPTERS.register("vit")
class ViTAdapter(Adapter):
    """`ViTForImageClassification`: CLS readout through `vit.layernorm` and `classifier`."""

    @property
    def _base(self) -> nn.Module:
        return self.model.vit

    @property
    def stem(self) -> nn.Module:
        return self._base.embeddings

    @property
    def blocks(self) -> nn.ModuleList:
        return self._base.layers

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.stem(pixels)

    def readout_features(self, last_hidden: torch.Tensor, readout: str) -> torch.Tensor:
        self.check_readout(readout)
        return self._base.layernorm(last_hidden)[:, 0]

    def native_head(self, readout: str) -> HeadFn:
        return self.model.classifier

    def projection_features(self, cls: torch.Tensor) -> torch.Tensor:
        return self._base.layernorm(cls)


@ADAPTERS.register("deit")
class DeiTAdapter(ViTAdapter):
    """`DeiTForImageClassificationWithTeacher`: native logits average the CLS head and
    the distillation head; the CLS-only readout drops the distillation head, and the
    distillation readout is the distillation head alone on the final-normed distillation
    token (which reads the CLS only through attention, never directly)."""

    supported_readouts = ("native", "cls", "distillation")
    head_modules = ("cls_classifier", "distillation_classifier")
    supported_tokens = ("cls", "distillation", "patches")
    #: the distillation token's place in the sequence: CLS, distillation, patches
    distillation_index: int = 1

    @property
    def _base(self) -> nn.Module:
        return self.model.deit

    @property
    def first_patch(self) -> int:
        return self.distillation_index + 1

    def _special_slots(self, token: str) -> slice:
        return slice(self.distillation_index, self.distillation_index + 1)

    def readout_features(self, last_hidden: torch.Tensor, readout: str) -> torch.Tensor:
        self.check_readout(readout)
        normed = self._base.layernorm(last_hidden)
        if readout == "native":
            return normed[:, :2]
        return normed[:, self.distillation_index if readout == "distillation" else self.cls_index]

    def features_with_cls(self, unmodified: torch.Tensor, cls: torch.Tensor, readout: str) -> torch.Tensor:
        if readout == "distillation":
            return unmodified  # the distillation token alone: a CLS replaced at L = N is not read
        if readout != "native":
            return super().features_with_cls(unmodified, cls, readout)
        import torch

        with _full_precision(cls):  # native: the distillation token's features are unchanged
            return torch.stack([self._base.layernorm(cls.float()), unmodified[:, 1]], dim=1)

    def native_head(self, readout: str) -> HeadFn:
        if readout == "cls":
            return self.model.cls_classifier
        if readout == "distillation":
            return self.model.distillation_classifier

        def cls_and_distillation(features: torch.Tensor) -> torch.Tensor:
            return (self.model.cls_classifier(features[:, 0]) + self.model.distillation_classifier(features[:, 1])) / 2

        return cls_and_distillation

    def projection_features(self, cls: torch.Tensor) -> torch.Tensor:
        return self._base.layernorm(cls)

    def _hf_classifier(self) -> nn.Linear | None:
        return None


@ADAPTERS.register("beit")
class BeitAdapter(ViTAdapter):
    """`BeitForImageClassification`: native readout is the pooler (mean of patch tokens
    through its own norm when `use_mean_pooling`); the CLS readout takes CLS through
    the same norm. Blocks need the input's resolution for their relative position bias,
    and, where the checkpoint shares one bias table across layers, that bias as their mask."""

    def __init__(
        self,
        model: nn.Module,
        readouts: Mapping[str, Any] | None = None,
        tensors: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        super().__init__(model, readouts, tensors)
        self._resolution: tuple[int, int] | None = None  # of the last pixels embedded

    @property
    def _base(self) -> nn.Module:
        return self.model.beit

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        self._resolution = (int(pixels.shape[-2]), int(pixels.shape[-1]))
        return self.stem(pixels)

    def run_block(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        """What `BeitModel.forward` passes each layer: the pixels' resolution, and the shared
        relative position bias (if any) as the attention mask."""
        resolution = self._resolution_of(hidden)
        return self.blocks[index](
            hidden,
            attention_mask=self._shared_bias(resolution, hidden),
            interpolate_pos_encoding=False,
            resolution=resolution,
        )

    def _shared_bias(self, resolution: tuple[int, int], hidden: torch.Tensor) -> torch.Tensor | None:
        shared = getattr(self._base, "shared_position_bias", None)
        if shared is None:
            return None
        patch = int(self.model.config.patch_size)
        window = (resolution[0] // patch, resolution[1] // patch)
        return shared(window, interpolate_pos_encoding=False, dim_size=hidden.shape[1])

    def _resolution_of(self, hidden: torch.Tensor) -> tuple[int, int]:
        """The resolution of the pixels `hidden` came from: the last embedded one when its
        patch grid fits the token count (a cell resuming from cached hidden states has
        embedded an image of the same crop), else the square grid the tokens form."""
        patch, n_patches = int(self.model.config.patch_size), hidden.shape[1] - 1
        if (
            self._resolution is not None
            and (self._resolution[0] // patch) * (self._resolution[1] // patch) == n_patches
        ):
            return self._resolution
        side = math.isqrt(n_patches)
        if side * side != n_patches:
            raise SweepError(
                f"BEiT hidden states with {n_patches} patch tokens do not form a square grid; "
                "embed the pixels first so that their resolution is known"
            )
        return side * patch, side * patch

    def _cls_norm(self, cls: torch.Tensor) -> torch.Tensor:
        pool_norm = self._base.pooler.layernorm if self._base.pooler is not None else None
        return pool_norm(cls) if pool_norm is not None else cls

    def readout_features(self, last_hidden: torch.Tensor, readout: str) -> torch.Tensor:
        self.check_readout(readout)
        normed = self._base.layernorm(last_hidden)
        if readout == "native":
            return self._base.pooler(normed)
        return self._cls_norm(normed[:, 0])

    def features_with_cls(self, unmodified: torch.Tensor, cls: torch.Tensor, readout: str) -> torch.Tensor:
        if readout == "native" and self._base.pooler is not None and self._base.pooler.layernorm is not None:
            return unmodified  # mean pooling reads the patch tokens only
        return super().features_with_cls(unmodified, cls, readout)

    def native_head(self, readout: str) -> HeadFn:
        if readout == "cls":
            raise ReadoutUnavailable("BEiT has no native CLS head: set readouts.cls.head: fitted")
        return self.model.classifier

    def projection_features(self, cls: torch.Tensor) -> torch.Tensor:
        return self._cls_norm(self._base.layernorm(cls))


@ADAPTERS.register("dinov2")
class Dinov2Adapter(ViTAdapter):
    """`Dinov2ForImageClassification`: native head on CLS ‖ mean of patch tokens; the
    CLS-only readout and the patch-mean readout (the native features' second half alone)
    need heads of their own."""

    supported_readouts = ("native", "cls", "patch_mean")

    @property
    def _base(self) -> nn.Module:
        return self.model.dinov2

    @property
    def blocks(self) -> nn.ModuleList:
        return self._base.encoder.layer

    def _patch_mean(self, normed: torch.Tensor) -> torch.Tensor:
        return normed[:, self.first_patch :].mean(dim=1)

    def readout_features(self, last_hidden: torch.Tensor, readout: str) -> torch.Tensor:
        import torch

        self.check_readout(readout)
        normed = self._base.layernorm(last_hidden)
        if readout == "native":
            return torch.cat([normed[:, 0], self._patch_mean(normed)], dim=1)
        if readout == "patch_mean":
            return self._patch_mean(normed)
        return normed[:, 0]

    def features_with_cls(self, unmodified: torch.Tensor, cls: torch.Tensor, readout: str) -> torch.Tensor:
        if readout == "patch_mean":
            return unmodified  # the patch tokens alone: a CLS replaced at L = N is not read
        if readout != "native":
            return super().features_with_cls(unmodified, cls, readout)
        import torch

        with _full_precision(cls):  # native: the patch mean (the second half) is unchanged
            return torch.cat([self._base.layernorm(cls.float()), unmodified[:, self.hidden_size :]], dim=1)

    def native_head(self, readout: str) -> HeadFn:
        if readout in ("cls", "patch_mean"):
            raise ReadoutUnavailable(
                f"DINOv2 has no native head for the {readout} readout alone: set readouts.{readout}.head: fitted"
            )
        return self.model.classifier


@ADAPTERS.register("dinov2_reg")
class Dinov2WithRegistersAdapter(Dinov2Adapter):
    """`Dinov2WithRegistersForImageClassification` (DINOv2 trained with register tokens,
    Darcet et al. 2024): the registers sit between the CLS and the patches, and no readout
    reads them (the patch mean starts after them, as HF's head does)."""

    supported_tokens = ("cls", "registers", "patches")

    def __init__(
        self,
        model: nn.Module,
        readouts: Mapping[str, Any] | None = None,
        tensors: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        super().__init__(model, readouts, tensors)
        self.n_registers = int(getattr(model.config, "num_register_tokens", 0))
        if self.n_registers < 1:
            raise TokenUnavailable(
                f"the dinov2_reg adapter needs register tokens, but this "
                f"{type(model).__name__}'s config has num_register_tokens={self.n_registers}"
            )

    @property
    def _base(self) -> nn.Module:
        return self.model.dinov2_with_registers

    @property
    def first_patch(self) -> int:
        return 1 + self.n_registers

    def _special_slots(self, token: str) -> slice:
        return slice(1, 1 + self.n_registers)  # the registers


@ADAPTERS.register("clip")
class ClipAdapter(Adapter):
    """`CLIPForImageClassification` (vision tower): hidden state 0 is taken after
    `pre_layrnorm`; the native readout is the mean of the patch tokens of hidden state N
    (no final norm), as the HF class reads it. The CLS readout is CLIP's own trained image
    embedding path: `post_layernorm(CLS)`, then `visual_projection` when
    `readouts.cls.visual_projection` is true. The HF class has no `visual_projection`, so
    it is read from the (`CLIPModel`) checkpoint's weights. Both heads are fitted here."""

    readout_options = ("visual_projection",)
    _PROJECTION = "visual_projection.weight"

    def __init__(
        self,
        model: nn.Module,
        readouts: Mapping[str, Any] | None = None,
        tensors: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        import torch
        from torch import nn

        super().__init__(model, readouts, tensors)
        self._projection: nn.Linear | None = None
        if self._uses_projection(self.readout_settings):
            weight = (tensors or {}).get(self._PROJECTION)
            if weight is None:
                raise ReadoutUnavailable(
                    f"readouts.cls.visual_projection is true but no '{self._PROJECTION}' was read from the "
                    "checkpoint (CLIPForImageClassification has none; it comes from a CLIPModel checkpoint)"
                )
            param = next(model.parameters())
            self._projection = nn.Linear(weight.shape[1], weight.shape[0], bias=False).to(param.device, param.dtype)
            with torch.no_grad():
                self._projection.weight.copy_(weight)
            self._projection.eval().requires_grad_(False)

    @staticmethod
    def _uses_projection(readouts: Mapping[str, Any]) -> bool:
        return bool((readouts.get("cls") or {}).get("visual_projection", False))

    @classmethod
    def checkpoint_tensors(cls, readouts: Mapping[str, Any]) -> dict[str, str]:
        return {cls._PROJECTION: "readouts.cls.visual_projection: true"} if cls._uses_projection(readouts) else {}

    @property
    def _vision(self) -> nn.Module:
        return self.model.vision_model

    @property
    def stem(self) -> nn.Module:
        return self._vision.pre_layrnorm

    @property
    def blocks(self) -> nn.ModuleList:
        return self._vision.encoder.layers

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.vision_config.hidden_size)

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.stem(self._vision.embeddings(pixels))

    def run_block(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        return self.blocks[index](hidden, None)

    def attention_module(self, index: int) -> nn.Module:
        return self.blocks[index].self_attn

    def readout_features(self, last_hidden: torch.Tensor, readout: str) -> torch.Tensor:
        self.check_readout(readout)
        if readout == "native":
            return last_hidden[:, 1:].mean(dim=1)
        return self._cls_embedding(last_hidden[:, 0])

    def features_with_cls(self, unmodified: torch.Tensor, cls: torch.Tensor, readout: str) -> torch.Tensor:
        if readout == "native":
            return unmodified  # the mean of the patch tokens
        return super().features_with_cls(unmodified, cls, readout)

    def _cls_embedding(self, cls: torch.Tensor) -> torch.Tensor:
        pooled = self._vision.post_layernorm(cls)
        return self._projection(pooled) if self._projection is not None else pooled

    def native_head(self, readout: str) -> HeadFn:
        if readout == "cls":
            raise ReadoutUnavailable("CLIP has no native CLS head: set readouts.cls.head: fitted")
        return self.model.classifier

    def projection_features(self, cls: torch.Tensor) -> torch.Tensor:
        """The CLS readout's path (post_layernorm, projection): projection_readout is cls."""
        return self._cls_embedding(cls)


def make_adapter(
    kind: str,
    model: nn.Module,
    readouts: Mapping[str, Any] | None = None,
    tensors: Mapping[str, torch.Tensor] | None = None,
) -> Adapter:
    return ADAPTERS[kind](model, readouts, tensors)
