"""A small ImageNet-layout folder of real JPEGs, for tests of `data=imagefolder`.

`<root>/{train,val}/<wnid>/*.JPEG`, the first `n_classes` synsets of the standard order
(so their labels are 0..n_classes-1), files named as ImageNet names them
(`n01440764_0.JPEG`, `ILSVRC2012_val_00000001.JPEG`), images of varied shapes and modes — the common
500×375 and 375×500, a square, a thin strip, grayscale and CMYK JPEGs — with seeded noise
content, so any misalignment of resize or crop shows in the pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from sweep.data import imagenet_wnids

SHAPES = (
    (500, 375, "RGB"),
    (375, 500, "RGB"),
    (333, 500, "RGB"),
    (224, 224, "RGB"),
    (1000, 40, "RGB"),
    (640, 427, "L"),
    (500, 353, "CMYK"),
)


def make_imagenet_folder(root: Path, *, n_classes: int, per_class: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for index, wnid in enumerate(imagenet_wnids()[:n_classes]):
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                width, height, mode = SHAPES[(index + k) % len(SHAPES)]
                channels = {"RGB": 3, "L": 1, "CMYK": 4}[mode]
                pixels = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
                image = Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode=mode)
                name = f"{wnid}_{k}" if split == "train" else f"ILSVRC2012_val_{index * per_class + k + 1:08d}"
                image.save(folder / f"{name}.JPEG", format="JPEG", quality=90)
    return root
