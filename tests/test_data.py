"""Data: class-balanced seeded subsets, the ImageNet folder layout (listed per class folder,
only the sampled files decoded; the flat ILSVRC2012 validation folder sorted into it), the
images artifact's key, and preprocessing to uint8 pixel-equal to the HF image processors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hf_processors import HF_PROCESSORS, hf_processor, model_preprocess
from PIL import Image

from sweep.data import (
    DIGITS_PER_CLASS,
    CorruptImage,
    DataUnavailable,
    balanced_subset,
    check_data,
    imagenet_wnids,
    load_split,
    main,
    normalise,
    preprocess_split,
    to_uint8,
)

PREPROCESS = {
    "resize": 256,
    "resize_exact": False,
    "crop": 224,
    "interpolation": "bicubic",
    "mean": [0.5, 0.5, 0.5],
    "std": [0.5, 0.5, 0.5],
}


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
                Image.new("RGB", (40, 30), color=(chosen[wnid] % 256, i * 40, 0)).save(
                    tmp_path / split / wnid / f"{i}.JPEG"
                )
    data = {
        "source": "imagefolder",
        "root": str(tmp_path),
        "train_dir": "train",
        "val_dir": "val",
        "n_classes": 1000,
        "train_per_class": 2,
        "val_per_class": 2,
        "seed": 0,
    }
    # n_classes 1000 with two classes present: asking for all of them is a clear error
    with pytest.raises(DataUnavailable, match="class 0 has only 0 images"):
        load_split(data, "train")


def test_an_imagenet_folder_with_wrong_names_or_missing_is_a_clear_error(tmp_path):
    (tmp_path / "train" / "cats").mkdir(parents=True)
    (tmp_path / "val").mkdir()
    data = {
        "source": "imagefolder",
        "root": str(tmp_path),
        "train_dir": "train",
        "val_dir": "val",
        "n_classes": 1000,
        "train_per_class": 1,
        "val_per_class": 1,
        "seed": 0,
    }
    with pytest.raises(DataUnavailable, match="not ImageNet-1k synsets"):
        load_split(data, "train")
    with pytest.raises(DataUnavailable, match="does not exist"):
        load_split({**data, "root": str(tmp_path / "missing")}, "train")


# -- a local folder in ImageNet layout -----------------------------------------------------
# Each test image is one solid colour that encodes (class, file number), so a decoded image
# says which file it came from; JPEG keeps a solid colour to within a few levels.


def _colour(cls: int, k: int) -> tuple[int, int, int]:
    """Distinct for cls < 7 and k < 32."""
    return (cls * 40, k * 8, 128)


def _identity(image: Image.Image) -> tuple[int, int]:
    """(class, file number) of a `_colour` image."""
    red, green, _ = np.asarray(image.convert("RGB"))[8, 8].astype(int)
    return round(red / 40), round(green / 8)


def _solid_tree(split_folder: Path, n_classes: int, per_class: int, order: int = 1) -> None:
    """`split_folder/<wnid>/<wnid>_<k>.JPEG` for the first `n_classes` standard classes; `order`
    -1 writes the files in reverse, so the listing is not the order they were made in."""
    for cls, wnid in enumerate(imagenet_wnids()[:n_classes]):
        (split_folder / wnid).mkdir(parents=True, exist_ok=True)
        for k in list(range(per_class))[::order]:
            Image.new("RGB", (16, 16), _colour(cls, k)).save(split_folder / wnid / f"{wnid}_{k}.JPEG")


def _folder_data(root: Path, **settings) -> dict:
    return {
        "source": "imagefolder",
        "root": str(root),
        "train_dir": "train",
        "val_dir": "val",
        "n_classes": 3,
        "train_per_class": 2,
        "val_per_class": 2,
        "seed": 0,
        **settings,
    }


def test_an_image_folder_subset_is_balanced_seeded_and_labelled_in_the_standard_order(tmp_path):
    for split in ("train", "val"):
        _solid_tree(tmp_path / "a" / split, n_classes=3, per_class=12)
        _solid_tree(tmp_path / "b" / split, n_classes=3, per_class=12, order=-1)
    data = _folder_data(tmp_path / "a", train_per_class=4)
    train = load_split(data, "train")
    picked = [_identity(image) for image in train.images]
    assert sorted(np.bincount(train.labels).tolist()) == [4, 4, 4] and len(set(picked)) == 12
    # the label is the standard index of the folder the image came from (wnids[label])
    assert [cls for cls, _ in picked] == train.labels
    again = [_identity(image) for image in load_split(_folder_data(tmp_path / "b", train_per_class=4), "train").images]
    assert again == picked, "the same files, made in another order, give the same subset: listings are sorted"
    other = [_identity(image) for image in load_split({**data, "seed": 1}, "train").images]
    assert sorted(np.bincount([cls for cls, _ in other]).tolist()) == [4, 4, 4] and set(other) != set(picked)


def test_an_image_folder_decodes_only_the_sampled_files(tmp_path, monkeypatch):
    _solid_tree(tmp_path / "train", n_classes=3, per_class=30)
    _solid_tree(tmp_path / "val", n_classes=3, per_class=30)
    for wnid in imagenet_wnids()[:3]:  # not images: never listed, so never opened
        (tmp_path / "train" / wnid / f"._{wnid}_0.JPEG").write_bytes(b"macOS metadata, not a JPEG")
        (tmp_path / "train" / wnid / "boxes.xml").write_text("<annotation/>")
    opened: list[str] = []
    real_open = Image.open

    def counting_open(path, *args, **kwargs):
        opened.append(Path(path).name)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(Image, "open", counting_open)
    split = load_split(_folder_data(tmp_path, train_per_class=3), "train")
    assert len(opened) == len(set(opened)) == len(split.images) == 9  # 9 of 90 images
    assert sorted(opened) == sorted(f"{imagenet_wnids()[c]}_{k}.JPEG" for c, k in map(_identity, split.images))


def test_an_image_folder_with_too_few_images_or_a_damaged_one_is_a_clear_error(tmp_path):
    _solid_tree(tmp_path / "train", n_classes=3, per_class=4)
    _solid_tree(tmp_path / "val", n_classes=3, per_class=4)
    (tmp_path / "val" / imagenet_wnids()[2] / f"{imagenet_wnids()[2]}_0.JPEG").unlink()
    with pytest.raises(
        DataUnavailable,
        match=rf"class 2 has only 3 images in .*{imagenet_wnids()[2]}, 4 per class "
        r"were asked; lower data.val_per_class",
    ):
        load_split(_folder_data(tmp_path, val_per_class=4), "val")
    with pytest.raises(DataUnavailable, match="data.n_classes=1001 is more than the 1000 classes"):
        load_split(_folder_data(tmp_path, n_classes=1001), "val")
    damaged = tmp_path / "train" / imagenet_wnids()[1] / f"{imagenet_wnids()[1]}_3.JPEG"
    damaged.write_bytes(damaged.read_bytes()[:-2])  # its header intact, its end cut off
    check_data(_folder_data(tmp_path, train_per_class=4, val_per_class=3))  # a header is all the plan reads
    with pytest.raises(CorruptImage, match=rf"could not decode .*{imagenet_wnids()[1]}_3.JPEG"):
        load_split(_folder_data(tmp_path, train_per_class=4), "train")


def test_digits_has_the_images_per_class_the_plan_checks_against():
    from sklearn.datasets import load_digits

    assert tuple(np.bincount(load_digits().target).tolist()) == DIGITS_PER_CLASS


@pytest.mark.parametrize(
    "key, train, val, n_classes, fewest",
    [("data", 150, 70, 10, "174 of class 8"), ("toy_training.data", 100, 78, 3, "177 of class 2")],
)
def test_digits_subsets_larger_than_its_classes_are_refused_before_anything_trains(key, train, val, n_classes, fewest):
    data = {
        "source": "sklearn_digits",
        "name": "digits",
        "n_classes": n_classes,
        "train_per_class": train,
        "val_per_class": val,
        "seed": 0,
    }
    with pytest.raises(
        DataUnavailable,
        match=rf"{key}.train_per_class={train} and {key}.val_per_class={val} ask "
        rf"for {train + val} images of each class, and sklearn digits has "
        rf"{fewest}",
    ):
        check_data(data, key)
    check_data({**data, "train_per_class": int(fewest.split()[0]) - val}, key)  # exactly what it has


def _bad_tree(root: Path, damage) -> dict:
    for split in ("train", "val"):
        _solid_tree(root / split, n_classes=3, per_class=4)
    damage(root)
    return _folder_data(root, train_per_class=4, val_per_class=4)


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            lambda root: (root / "train" / "cats").mkdir(),
            r"train has folders that are not ImageNet-1k synsets: \['cats'\]",
        ),
        (
            lambda root: [p.unlink() for p in (root / "val" / imagenet_wnids()[1]).iterdir()],
            rf"class 1 has only 0 images in .*val/{imagenet_wnids()[1]}, 4 per class were asked; "
            r"lower data.val_per_class",
        ),
        (
            lambda root: (root / "val" / imagenet_wnids()[2] / f"{imagenet_wnids()[2]}_1.JPEG").write_bytes(b""),
            rf"{imagenet_wnids()[2]}_1.JPEG is one of the images the subset reads, and it is empty \(0 bytes\)",
        ),
        (
            lambda root: (root / "train" / imagenet_wnids()[0] / f"{imagenet_wnids()[0]}_2.JPEG").write_text("<html>"),
            rf"{imagenet_wnids()[0]}_2.JPEG is one of the images the subset reads, and it is not an image PIL reads",
        ),
    ],
)
def test_an_image_folders_contents_are_checked_without_decoding_it(tmp_path, damage, message):
    """What the plan finds by listing the folders and reading the sampled files' headers."""
    with pytest.raises(DataUnavailable, match=message):
        check_data(_bad_tree(tmp_path, damage))


def test_the_flat_ilsvrc2012_validation_folder_is_sorted_into_wnid_folders(tmp_path, capsys):
    """`python -m sweep.data sort-val FLAT LABELS OUT`, with either labels file."""
    wnids = imagenet_wnids()
    classes = [2, 0, 1, 1, 2, 0, 0, 1, 2]  # file i+1 is of class classes[i]
    flat = tmp_path / "download" / "val"
    flat.mkdir(parents=True)
    for i, cls in enumerate(classes):
        Image.new("RGB", (16, 16), _colour(cls, i)).save(flat / f"ILSVRC2012_val_{i + 1:08d}.JPEG")
    one_a_line = tmp_path / "val_wnids.txt"
    one_a_line.write_text("".join(f"{wnids[c]}\n" for c in classes))
    kaggle = tmp_path / "LOC_val_solution.csv"
    rows = [f"ILSVRC2012_val_{i + 1:08d},{wnids[c]} 1 2 30 40 {wnids[c]} 5 6 7 8" for i, c in enumerate(classes)]
    kaggle.write_text("ImageId,PredictionString\n" + "\n".join(rows[::-1]) + "\n")
    _solid_tree(tmp_path / "imagenet" / "train", n_classes=3, per_class=3)
    # unsorted, the loader says what to do
    flat_data = _folder_data(tmp_path / "download", train_dir=".", val_per_class=3)
    with pytest.raises(DataUnavailable, match="flat ILSVRC2012 validation layout.*python -m sweep.data sort-val"):
        load_split(flat_data, "val")
    for labels, root in ((one_a_line, tmp_path / "imagenet"), (kaggle, tmp_path / "kaggle")):
        assert main(["sort-val", str(flat), str(labels), str(root / "val")]) == 0
        assert "linked 9 images" in capsys.readouterr().out
        (root / "train").mkdir(exist_ok=True)
        val = load_split(_folder_data(root, val_per_class=3), "val")
        assert sorted(val.labels) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
        assert all(classes[k] == cls == label for (cls, k), label in zip(map(_identity, val.images), val.labels))


def test_sorting_the_flat_validation_folder_refuses_bad_labels_and_a_used_folder(tmp_path, capsys):
    flat = tmp_path / "val"
    flat.mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8)).save(flat / f"ILSVRC2012_val_{i + 1:08d}.JPEG")
    devkit = tmp_path / "ILSVRC2012_validation_ground_truth.txt"
    devkit.write_text("490\n361\n171\n")
    short = tmp_path / "two.txt"
    short.write_text("n01440764\nn01440764\n")
    used = tmp_path / "used"
    (used / "n01440764").mkdir(parents=True)
    good = tmp_path / "good.txt"
    good.write_text("n01440764\n" * 3)
    for labels, out, message in (
        (devkit, tmp_path / "out", "gives '490' for ILSVRC2012_val_00000001.JPEG, not an ImageNet-1k wnid"),
        (short, tmp_path / "out", "has 2 labels for 3 images"),
        (tmp_path / "missing.csv", tmp_path / "out", "missing.csv does not exist"),
        (good, used, "is not empty"),
    ):
        assert main(["sort-val", str(flat), str(labels), str(out)]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_images_key_depends_on_the_pixels_geometry_not_on_the_normalisation(tmp_path):
    """ViT and BEiT (same geometry, other mean/std) share one decode; another crop is another."""
    from sweep.artifacts import cached_images
    from sweep.cache import ArtifactCache

    cache = ArtifactCache(tmp_path)
    data = {
        "name": "digits",
        "source": "sklearn_digits",
        "n_classes": 2,
        "train_per_class": 2,
        "val_per_class": 2,
        "seed": 0,
    }
    key, splits = cached_images(cache, data, PREPROCESS)
    other_norm, again = cached_images(
        cache, data, {**PREPROCESS, "mean": [0.485, 0.456, 0.406], "std": [0.2, 0.2, 0.2]}
    )
    other_crop, _ = cached_images(cache, data, {**PREPROCESS, "crop": 192})
    assert other_norm == key != other_crop
    assert torch.equal(again["val"].images, splits["val"].images)
    assert len(list((tmp_path / "images").iterdir())) == 2


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
# the shipped model/<name>.yaml (nothing is fetched); the hub checkpoints' preprocessor_config.json
# say the same. The PIL classes are the slow path every install has (no torchvision needed).

# name -> (PIL mode, (width, height), file format). Random-noise pixels, so any off-by-one in
# the resized size or the crop offset shows. JPEG cannot hold transparency, so the RGBA case
# and a palette image with a transparent colour are PNGs.
IMAGES = {
    "500x375": ("RGB", (500, 375), "JPEG"),
    "375x500": ("RGB", (375, 500), "JPEG"),
    "333x500": ("RGB", (333, 500), "JPEG"),
    "224x224": ("RGB", (224, 224), "JPEG"),
    "1x1000": ("RGB", (1, 1000), "JPEG"),
    "1000x1": ("RGB", (1000, 1), "JPEG"),
    "grayscale-640x427": ("L", (640, 427), "JPEG"),
    "rgba-481x360": ("RGBA", (481, 360), "PNG"),
    "cmyk-500x353": ("CMYK", (500, 353), "JPEG"),
    "palette-transparent-301x250": ("P", (301, 250), "PNG"),
}


def _image_file(tmp_path: Path, name: str) -> Path:
    mode, (width, height), fmt = IMAGES[name]
    channels = len(Image.new(mode, (1, 1)).getbands())
    rng = np.random.default_rng(list(IMAGES).index(name))
    image = Image.frombytes(
        mode, (width, height), rng.integers(0, 256, (height, width, channels), dtype=np.uint8).tobytes()
    )
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


SCIENCE = Path(__file__).resolve().parents[1] / "docs" / "science.md"


@pytest.mark.parametrize("model", list(HF_PROCESSORS))
def test_the_pixels_are_hfs_pil_processor_which_docs_say_how_to_load(model, tmp_path):
    # transformers 5 loads its torchvision ("fast") processor by default wherever
    # torchvision is installed, and those pixels differ by a few uint8 levels: the sweep
    # matches the PIL one, docs/science.md names it, and the call it gives a user
    # (backend="pil") loads that class from a checkpoint's folder and gives the sweep's pixels
    from transformers import AutoImageProcessor
    from transformers.image_processing_backends import PilBackend

    preprocess = model_preprocess(model)
    processor = hf_processor(model, preprocess)
    assert isinstance(processor, PilBackend)
    processor.save_pretrained(tmp_path)  # a checkpoint's preprocessor_config.json names the base class
    loaded = AutoImageProcessor.from_pretrained(tmp_path, backend="pil")
    assert type(loaded) is type(processor)
    with Image.open(_image_file(tmp_path, "500x375")) as image:
        expected = loaded(image, return_tensors="np")["pixel_values"][0]
        ours = normalise(torch.from_numpy(to_uint8(image, preprocess))[None], preprocess)[0].numpy()
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6)
    science = " ".join(SCIENCE.read_text().split())
    assert f"`{type(processor).__name__}`" in science
    assert 'AutoImageProcessor.from_pretrained(name, backend="pil")' in science
