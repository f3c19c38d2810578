"""Data: class-balanced seeded subsets, the ImageNet folder layout through `datasets`'
imagefolder builder (on local files), and preprocessing to uint8."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

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
