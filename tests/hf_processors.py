"""HF's own image processors, built locally from the values in the shipped model/<name>.yaml
(nothing is fetched; the hub checkpoints' preprocessor_config.json say the same). The PIL
classes are the slow path every install has (no torchvision needed)."""

from __future__ import annotations

from typing import Any

HF_PROCESSORS = {
    "vit": "ViTImageProcessorPil",
    "deit": "DeiTImageProcessorPil",
    "beit": "BeitImageProcessorPil",
    "dinov2": "BitImageProcessorPil",
    "clip": "CLIPImageProcessorPil",
    "dinov2_reg": "BitImageProcessorPil",
}  # DINOv2's processor (its own config not fetched here)


def model_preprocess(model: str) -> dict[str, Any]:
    import yaml

    from sweep.conf_path import CONF_DIR

    return yaml.safe_load((CONF_DIR / "model" / f"{model}.yaml").read_text())["preprocess"]


def hf_processor(model: str, preprocess: dict[str, Any]) -> Any:
    import transformers
    from transformers.image_utils import PILImageResampling

    resize, crop = int(preprocess["resize"]), int(preprocess["crop"])
    return getattr(transformers, HF_PROCESSORS[model])(
        size={"height": resize, "width": resize} if preprocess["resize_exact"] else {"shortest_edge": resize},
        # ViT and BEiT do not crop; there crop == resize on an exact resize, so the crop is the identity
        do_center_crop=True,
        crop_size={"height": crop, "width": crop},
        resample=PILImageResampling[str(preprocess["interpolation"]).upper()],
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(preprocess["mean"]),
        image_std=list(preprocess["std"]),
        # ViT, DeiT and BEiT leave non-RGB inputs alone (and then fail on them); sweep converts all
        do_convert_rgb=True,
    )
