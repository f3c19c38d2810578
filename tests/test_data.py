"""Data: class-balanced seeded subsets, the ImageNet folder layout through `datasets`'
imagefolder builder (on local files), and preprocessing to uint8 pixel-equal to the HF image processors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hf_processors import HF_PROCESSORS, hf_processor, model_preprocess
from sweep.data import (DataUnavailable, balanced_subset, check_available, imagenet_wnids, load_split,
                        normalise, preprocess_split, to_uint8)

PREPROCESS = {"resize": 256, "resize_exact": False, "crop": 224, "interpolation": "bicubic",
              "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}


def test_the_standard_imagenet_order_is_the_sorted_wnids():
    wnids = imagenet_wnids()
    assert len(wnids) == 1000 and wnids == sorted(wnids) and wnids[0] == "n01440764"


def test_balanced_subsets_are_seeded_and_balanced():
    labels = np.repeat(np.arange(4), 10)
    picked = balanced_subset(labels, 3, 4, seed=0)
    assert sorted(np.bincount(labels[picked])) == [3, 3, 3, 3]
    assert picked == balanced_subset(labels, 3, 4, seed=0) != balanced_subset(labels, 3, 4, seed=1)
    with pytest.raises(DataUnavailable, match="lower data.train_per_class"):
        balanced_subset(labels, 11, 4, seed=0)


def test_digits_splits_do_not_overlap():
    data = {"source": "sklearn_digits", "n_classes": 10, "train_per_class": 100, "val_per_class": 70, "seed": 0}
    train, val = load_split(data, "train"), load_split(data, "val")
    assert len(train.labels) == 1000 and len(val.labels) == 700
    seen = {image.tobytes() + bytes([label]) for image, label in zip(train.images, train.labels)}
    overlap = sum(image.tobytes() + bytes([label]) in seen for image, label in zip(val.images, val.labels))
    assert overlap < 10  # digits has a few exact duplicate images, never the same example twice


def test_an_imagenet_folder_maps_wnids_to_the_standard_index(tmp_path):
    wnids = imagenet_wnids()
    chosen = {wnids[7]: 7, wnids[500]: 500}
    for split in ("train", "val"):
        for wnid in chosen:
            (tmp_path / split / wnid).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (40, 30), color=(chosen[wnid] % 256, i * 40, 0)).save(tmp_path / split / wnid / f"{i}.JPEG")
    data = {"source": "imagefolder", "root": str(tmp_path), "train_dir": "train", "val_dir": "val",
            "n_classes": 1000, "train_per_class": 2, "val_per_class": 2, "seed": 0}
    # n_classes 1000 with two classes present: asking for all of them is a clear error
    with pytest.raises(DataUnavailable, match="class 0 has only 0 images"):
        load_split(data, "train")


def test_an_imagenet_folder_with_wrong_names_or_missing_is_a_clear_error(tmp_path):
    (tmp_path / "train" / "cats").mkdir(parents=True)
    (tmp_path / "val").mkdir()
    data = {"source": "imagefolder", "root": str(tmp_path), "train_dir": "train", "val_dir": "val",
            "n_classes": 1000, "train_per_class": 1, "val_per_class": 1, "seed": 0}
    with pytest.raises(DataUnavailable, match="not ImageNet-1k synsets"):
        load_split(data, "train")
    with pytest.raises(DataUnavailable, match="does not exist"):
        check_available({**data, "root": str(tmp_path / "missing")})


def test_preprocessing_resizes_the_short_edge_crops_the_centre_and_normalises_on_device():
    image = Image.new("RGB", (400, 300), color=(255, 0, 0))
    array = to_uint8(image, PREPROCESS)
    assert array.shape == (3, 224, 224) and array.dtype == np.uint8
    images, labels = preprocess_split(type("S", (), {"images": [image], "labels": [3]})(), PREPROCESS)
    pixels = normalise(images, PREPROCESS)
    assert torch.allclose(pixels[0, 0], torch.ones(224, 224)) and torch.allclose(pixels[0, 1], -torch.ones(224, 224))
    assert labels.tolist() == [3]


# -- fidelity to the HF image processors ----------------------------------------------
# The real models were trained and evaluated on their image processor's pixels; `to_uint8`
# + `normalise` must give the same ones. Each processor is built here from the values in
# conf/model/<name>.yaml (nothing is fetched); the hub checkpoints' preprocessor_config.json
# say the same. The PIL classes are the slow path every install has (no torchvision needed).

# name -> (PIL mode, (width, height), file format). Random-noise pixels, so any off-by-one in
# the resized size or the crop offset shows. JPEG cannot hold transparency, so the RGBA case
# and a palette image with a transparent colour are PNGs.
IMAGES = {"500x375": ("RGB", (500, 375), "JPEG"), "375x500": ("RGB", (375, 500), "JPEG"),
          "333x500": ("RGB", (333, 500), "JPEG"), "224x224": ("RGB", (224, 224), "JPEG"),
          "1x1000": ("RGB", (1, 1000), "JPEG"), "1000x1": ("RGB", (1000, 1), "JPEG"),
          "grayscale-640x427": ("L", (640, 427), "JPEG"), "rgba-481x360": ("RGBA", (481, 360), "PNG"),
          "cmyk-500x353": ("CMYK", (500, 353), "JPEG"), "palette-transparent-301x250": ("P", (301, 250), "PNG")}


def _image_file(tmp_path: Path, name: str) -> Path:
    mode, (width, height), fmt = IMAGES[name]
    channels = len(Image.new(mode, (1, 1)).getbands())
    rng = np.random.default_rng(list(IMAGES).index(name))
    image = Image.frombytes(mode, (width, height), rng.integers(0, 256, (height, width, channels), dtype=np.uint8).tobytes())
    options = {}
    if mode == "P":
        image.putpalette(rng.integers(0, 256, 768, dtype=np.uint8).tobytes())
        options["transparency"] = 5  # palette index 5 is transparent
    path = tmp_path / f"{name}.{fmt.lower()}"
    image.save(path, fmt, **options)
    return path


@pytest.mark.parametrize("name", list(IMAGES))
@pytest.mark.parametrize("model", list(HF_PROCESSORS))
def test_preprocessing_gives_the_hf_image_processors_pixels(model, name, tmp_path):
    preprocess = model_preprocess(model)
    path = _image_file(tmp_path, name)
    with Image.open(path) as image:
        assert image.mode == IMAGES[name][0]
        expected = hf_processor(model, preprocess)(image, return_tensors="np")["pixel_values"][0]
    with Image.open(path) as image:
        ours = normalise(torch.from_numpy(to_uint8(image, preprocess))[None], preprocess)[0].numpy()
    assert ours.shape == expected.shape
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6)
