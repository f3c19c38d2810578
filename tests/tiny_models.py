"""Tiny random configs of the five real HF classes, shared by the tests."""

from __future__ import annotations

import torch
import transformers

from sweep.adapters import Adapter, make_adapter

SIZE = dict(
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=2,
    intermediate_size=64,
    image_size=32,
    patch_size=8,
    num_channels=3,
)
N_CLASSES = 7


def tiny_config(kind: str) -> transformers.PretrainedConfig:
    if kind == "vit":
        return transformers.ViTConfig(**SIZE, num_labels=N_CLASSES)
    if kind == "deit":
        return transformers.DeiTConfig(**SIZE, num_labels=N_CLASSES)
    if kind == "beit":
        # BeitConfig() has no position embeddings unless asked for; the real BEiT uses relative bias.
        return transformers.BeitConfig(
            **SIZE,
            num_labels=N_CLASSES,
            use_mean_pooling=True,
            use_absolute_position_embeddings=True,
            use_relative_position_bias=True,
        )
    if kind == "dinov2":
        return transformers.Dinov2Config(**SIZE, num_labels=N_CLASSES)
    if kind == "dinov2_reg":
        return transformers.Dinov2WithRegistersConfig(**SIZE, num_labels=N_CLASSES, num_register_tokens=3)
    if kind == "clip":
        return transformers.CLIPConfig(
            vision_config=SIZE,
            num_labels=N_CLASSES,
            text_config=dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32),
        )
    raise ValueError(kind)


HF_CLASSES = {
    "vit": transformers.ViTForImageClassification,
    "deit": transformers.DeiTForImageClassificationWithTeacher,
    "beit": transformers.BeitForImageClassification,
    "dinov2": transformers.Dinov2ForImageClassification,
    "dinov2_reg": transformers.Dinov2WithRegistersForImageClassification,
    "clip": transformers.CLIPForImageClassification,
}
KINDS = tuple(HF_CLASSES)


def tiny_adapter(kind: str, seed: int = 0, attn: str | None = None) -> Adapter:
    """`attn`: the attention implementation (compute.attn_implementation); None: HF's default."""
    torch.manual_seed(seed)
    config = tiny_config(kind)
    if attn is not None:
        config._attn_implementation = attn
    model = HF_CLASSES[kind](config)  # starts in train mode; the adapter sets eval
    return make_adapter(kind, model)


def pixels(n: int = 5, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, SIZE["image_size"], SIZE["image_size"], generator=torch.Generator().manual_seed(seed))
