"""Image sources and preprocessing: class-balanced seeded subsets as uint8 tensors.

Three sources share one path from PIL images to tensors: ImageNet-1k from the hub
(`datasets` streaming), a local folder in ImageNet layout (listed per class folder, sampled,
and only the sampled files decoded), and scikit-learn's bundled digits (the offline
default). Decoding and resizing happen once per (data, pixel geometry) and are cached as
uint8; normalisation happens on the compute device (`normalise`).

`python -m sweep.data sort-val FLAT LABELS OUT` turns the official flat ILSVRC2012
validation folder into the per-class layout the image folder source reads (`sort_flat_val`).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from sweep.errors import DataUnavailable, brief

if TYPE_CHECKING:  # torch only where tensors are made: the planner checks data (`check_data`) without it
    import torch

SPLITS = ("train", "val")
# Part of the images artifact's key: bump it whenever `to_uint8` changes its pixels, so that
# images decoded by an older version are never reused. 2: HF's floor rounding of the long
# edge and its alpha blending onto white.
DECODER_VERSION = 2
# Part of the images artifact's key too: bump it whenever a source picks other images for
# the same settings, so that a subset drawn by an older sampler is never reused. 2: a local
# image folder is listed per class folder (sorted names) and sampled there, no longer
# through `datasets`' imagefolder builder (whose file order differed).
SAMPLER_VERSION = 2


@dataclass(frozen=True)
class LabelledImages:
    """One split: PIL images with their labels in the head's class index order."""

    images: list[Image.Image]
    labels: list[int]


def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet-1k synsets; their sorted order is the standard class index."""
    text = resources.files("sweep").joinpath("resources/imagenet1k_wnids.txt").read_text()
    return text.split()


def balanced_subset(
    labels: Iterable[int], per_class: int, n_classes: int, seed: int, exclude: set[int] = frozenset()
) -> list[int]:
    """Indices of `per_class` examples of each class, drawn with `seed`, in a seeded order."""
    labels = np.asarray(list(labels))
    pools = [[i for i in np.flatnonzero(labels == cls) if i not in exclude] for cls in range(n_classes)]
    for cls, pool in enumerate(pools):
        if len(pool) < per_class:
            raise DataUnavailable(
                f"class {cls} has only {len(pool)} images available, {per_class} per class were asked; "
                "lower data.train_per_class / data.val_per_class"
            )
    return _draw(pools, per_class, seed)


def _draw(pools: Sequence[Sequence[int]], per_class: int, seed: int) -> list[int]:
    """`per_class` items of each pool (each holds enough), drawn with `seed`, then shuffled
    with it: one draw for every source, so a folder and an index list sample alike."""
    rng = np.random.default_rng(seed)
    chosen = [item for pool in pools for item in rng.choice(pool, size=per_class, replace=False).tolist()]
    return [int(i) for i in rng.permutation(chosen)]


# -- sources ------------------------------------------------------------------------


def load_split(data: Mapping[str, Any], split: str) -> LabelledImages:
    """Read one split of the configured source (`data.source`)."""
    loaders = {"sklearn_digits": _digits, "imagefolder": _imagefolder, "hub": _hub}
    try:
        loader = loaders[data["source"]]
    except KeyError:
        raise ValueError(f"unknown data.source '{data['source']}'; choose one of {', '.join(loaders)}") from None
    return loader(data, split)


def _digits(data: Mapping[str, Any], split: str) -> LabelledImages:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = (bunch.images * (255.0 / 16.0)).round().astype(np.uint8)
    n_classes = int(data["n_classes"])
    train = balanced_subset(bunch.target, int(data["train_per_class"]), n_classes, int(data["seed"]))
    indices = (
        train
        if split == "train"
        else balanced_subset(
            bunch.target, int(data["val_per_class"]), n_classes, int(data["seed"]) + 1, exclude=set(train)
        )
    )
    return LabelledImages([Image.fromarray(pixels[i]) for i in indices], [int(bunch.target[i]) for i in indices])


def _imagefolder(data: Mapping[str, Any], split: str) -> LabelledImages:
    """`data.<split>_per_class` images of each of the first `data.n_classes` standard classes.

    Costs in proportion to the subset, not the tree: each class folder is listed (names
    only, no stat per file) and only the sampled files are decoded — a full ImageNet train
    tree has 1.28 M files. The listing and the sample are checked when a cell is specified,
    before any model loads (`check_data`, from `cell_spec`); the listing again here, for
    readers of a split outside a cell. A file that fails to decode fails the cells that
    read it (`CorruptImage`), not the sweep."""
    paths, labels = _sampled_files(data, split)
    return LabelledImages([_decoded(path) for path in paths], labels)


def _sampled_files(data: Mapping[str, Any], split: str) -> tuple[list[Path], list[int]]:
    """The files of `split` that the subset decodes, and their labels (the standard index)."""
    _check_split_folders(data)
    folder = Path(str(data["root"])).expanduser() / str(data[f"{split}_dir"])
    per_class, n_classes = int(data[f"{split}_per_class"]), int(data["n_classes"])
    _check_class_folders(folder)
    if n_classes > len(imagenet_wnids()):
        raise DataUnavailable(
            f"data.n_classes={n_classes} is more than the {len(imagenet_wnids())} classes of "
            "ImageNet-1k, which the class folders are named by"
        )
    wnids = imagenet_wnids()[:n_classes]
    names = [_class_files(folder, cls, wnid, per_class, split) for cls, wnid in enumerate(wnids)]
    # One pool of positions in the concatenated listing per class, so `_draw` samples it as
    # `balanced_subset` samples an index list; a position's class is found from the starts.
    starts = np.cumsum([0] + [len(files) for files in names])
    chosen = _draw([range(starts[cls], starts[cls + 1]) for cls in range(n_classes)], per_class, int(data["seed"]))
    labels = [int(np.searchsorted(starts, index, side="right")) - 1 for index in chosen]
    paths = [folder / wnids[cls] / names[cls][index - starts[cls]] for index, cls in zip(chosen, labels)]
    return paths, labels


def _check_split_folders(data: Mapping[str, Any]) -> None:
    """An image folder must exist with its split folders."""
    root = Path(str(data["root"])).expanduser()
    for split in SPLITS:
        folder = root / str(data[f"{split}_dir"])
        if not folder.is_dir():
            raise DataUnavailable(
                f"data folder {folder} does not exist; set data.root to a folder in ImageNet layout "
                f"({data['train_dir']}/<wnid>/*.JPEG and {data['val_dir']}/<wnid>/*.JPEG)"
            )


#: images of each class in scikit-learn's bundled digits (a test keeps it equal to load_digits):
#: the plan checks a subset against it without importing scikit-learn
DIGITS_PER_CLASS = (178, 182, 177, 183, 181, 182, 181, 179, 174, 180)


def check_data(data: Mapping[str, Any], key: str = "data") -> None:
    """What can be found wrong with the data without decoding it, checked when a cell is
    specified, so that a sweep refuses it at its plan rather than after toys trained and
    models loaded: digits' subsets within its ~180 images per class; an image folder's
    split and class folders (named by wnids, each with enough images) and every file its
    subsets will decode, non-empty and of an image format PIL reads (its header only). A
    file damaged further in is found while decoding and fails its cells. Once per data
    settings and process: a plan specifies thousands of cells."""
    _check_data(tuple(sorted((name, value) for name, value in data.items())), key)


@cache
def _check_data(items: tuple[tuple[str, Any], ...], key: str) -> None:
    data = dict(items)
    if data["source"] == "sklearn_digits":
        train, val, n_classes = int(data["train_per_class"]), int(data["val_per_class"]), int(data["n_classes"])
        fewest = min(range(n_classes), key=lambda cls: DIGITS_PER_CLASS[cls])
        if train + val > DIGITS_PER_CLASS[fewest]:
            raise DataUnavailable(
                f"{key}.train_per_class={train} and {key}.val_per_class={val} ask for {train + val} images of each "
                f"class, and sklearn digits has {DIGITS_PER_CLASS[fewest]} of class {fewest} (the fewest of its "
                f"first {n_classes}): lower them to add up to at most {DIGITS_PER_CLASS[fewest]}"
            )
    elif data["source"] == "imagefolder":
        for split in SPLITS:
            for path in _sampled_files(data, split)[0]:
                _check_header(path)


def _check_header(path: Path) -> None:
    """`path` is a non-empty file of an image format PIL reads (its header, not its pixels)."""
    try:
        with Image.open(path):
            pass
    except (OSError, SyntaxError, ValueError) as error:
        size = path.stat().st_size if path.exists() else 0
        what = "it is empty (0 bytes)" if size == 0 else f"it is not an image PIL reads ({type(error).__name__})"
        raise DataUnavailable(
            f"{path} is one of the images the subset reads, and {what}; remove or replace it (or change data.seed)"
        ) from None


@cache
def image_extensions() -> tuple[str, ...]:
    """The file extensions (lower case, with the dot) PIL can open: a class folder's other
    files (a README, a box annotation) are not images. Computed once: listing a tree checks
    every name against them."""
    Image.init()
    return tuple(sorted(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN))


def _image_names(folder: Path) -> list[str]:
    """The image files in `folder`, sorted so the listing (and so the sample) is the same on
    every file system. Dot files (macOS's `._name.JPEG`) are metadata, not images. Names
    only: the file type comes from the directory entry, with no stat per file."""
    extensions = image_extensions()
    with os.scandir(folder) as entries:
        return sorted(
            entry.name
            for entry in entries
            if entry.name.lower().endswith(extensions) and not entry.name.startswith(".") and entry.is_file()
        )


def _check_class_folders(folder: Path) -> None:
    """Every folder in a split folder must be named by its ImageNet-1k wnid: another name is
    a layout mistake, and its images would silently be left out."""
    standard = set(imagenet_wnids())
    with os.scandir(folder) as entries:
        unknown = sorted(entry.name for entry in entries if entry.is_dir() and entry.name not in standard)
    if unknown:
        raise DataUnavailable(
            f"{folder} has folders that are not ImageNet-1k synsets: {unknown[:5]}; "
            "each class folder must be named by its wnid (e.g. n01440764)"
        )


def _class_files(folder: Path, cls: int, wnid: str, per_class: int, split: str) -> list[str]:
    """The image names of class `cls` (standard index), checked to be at least `per_class`.
    A missing folder is the usual sign of `data.n_classes` above the classes present, or of
    the flat validation layout."""
    class_folder = folder / wnid
    if not class_folder.is_dir():
        flat = _image_names(folder)
        hint = (
            f"; {folder} holds {len(flat)} images directly, the flat ILSVRC2012 validation layout? "
            f"Sort them into wnid folders: python -m sweep.data sort-val {folder} <labels> <new folder>"
            if flat
            else ""
        )
        raise DataUnavailable(
            f"class {cls} has only 0 images: {class_folder} does not exist; each of the first data.n_classes "
            f"classes of the standard order needs its folder (lower data.n_classes){hint}"
        )
    names = _image_names(class_folder)
    if len(names) < per_class:
        raise DataUnavailable(
            f"class {cls} has only {len(names)} images in {class_folder}, {per_class} per class "
            f"were asked; lower data.{split}_per_class"
        )
    return names


class CorruptImage(RuntimeError):
    """An image file that failed to decode: a failed measurement of the cells that read it
    (each gets a record naming the file), not bad input that stops the sweep."""


def _decoded(path: Path) -> Image.Image:
    """The image, decoded now (its file closed): thousands of lazily opened files would run
    out of file handles."""
    try:
        image = Image.open(path)
        image.load()
    except (OSError, SyntaxError, ValueError) as error:  # PIL's errors for a damaged file
        raise CorruptImage(
            f"could not decode {path} ({type(error).__name__}: {error}); remove or replace it (or change data.seed)"
        ) from error
    return image


# -- the official flat validation folder ----------------------------------------------


def sort_flat_val(flat: Path, labels: Path, out: Path) -> int:
    """Link each image of the official flat ILSVRC2012 validation folder
    (`ILSVRC2012_val_00000001.JPEG`, ...) into `out/<wnid>/`, the layout `data=imagefolder`
    reads; returns how many were linked. Symbolic links, so the 6.4 GB are not copied, and
    a one-off step rather than a setting, so the loader knows one layout only."""
    names = _image_names(flat)
    if not names:
        raise DataUnavailable(f"{flat} holds no images; give the folder of ILSVRC2012_val_*.JPEG")
    wnid_of = _val_labels(labels, names)
    if out.exists() and any(out.iterdir()):
        raise DataUnavailable(f"{out} is not empty; give a new folder for the sorted layout")
    for wnid in set(wnid_of.values()):
        (out / wnid).mkdir(parents=True, exist_ok=True)
    for name in names:
        (out / wnid_of[name] / name).symlink_to((flat / name).resolve())
    return len(names)


def _val_labels(labels: Path, names: list[str]) -> dict[str, str]:
    """Image file name -> wnid, from Kaggle's LOC_val_solution.csv (ImageId,PredictionString;
    the prediction string's first word is the class) or from a text file with one wnid a
    line, for the images in sorted order."""
    if not labels.is_file():
        raise DataUnavailable(f"labels file {labels} does not exist")
    text = labels.read_text()
    if text.startswith("ImageId,"):
        by_id = {row["ImageId"]: row["PredictionString"].split()[0] for row in csv.DictReader(text.splitlines())}
        missing = [name for name in names if os.path.splitext(name)[0] not in by_id]
        if missing:
            raise DataUnavailable(f"{labels} has no row for {len(missing)} of the images, e.g. {missing[0]}")
        wnid_of = {name: by_id[os.path.splitext(name)[0]] for name in names}
    else:
        wnids = text.split()
        if len(wnids) != len(names):
            raise DataUnavailable(
                f"{labels} has {len(wnids)} labels for {len(names)} images; it must have "
                "one wnid a line, for the images in sorted order"
            )
        wnid_of = dict(zip(names, wnids))
    standard = set(imagenet_wnids())
    for name, wnid in wnid_of.items():
        if wnid not in standard:
            raise DataUnavailable(
                f"{labels} gives {wnid!r} for {name}, not an ImageNet-1k wnid; give one wnid a line (e.g. "
                "n01751748) or Kaggle's LOC_val_solution.csv (the devkit's ILSVRC2012_validation_ground_truth.txt "
                "numbers the classes in the devkit's own order, not by wnid)"
            )
    return wnid_of


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m sweep.data sort-val FLAT LABELS OUT` (see `sort_flat_val`)."""
    parser = argparse.ArgumentParser(prog="python -m sweep.data", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    sort_val = commands.add_parser("sort-val", help="link the flat ILSVRC2012 validation images into wnid folders")
    sort_val.add_argument("flat", type=Path, help="the folder of ILSVRC2012_val_*.JPEG")
    sort_val.add_argument(
        "labels", type=Path, help="LOC_val_solution.csv (Kaggle), or a text file with one wnid a line in file order"
    )
    sort_val.add_argument("out", type=Path, help="a new folder: it becomes <root>/<data.val_dir>")
    args = parser.parse_args(argv)
    try:
        count = sort_flat_val(args.flat, args.labels, args.out)
    except DataUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"linked {count} images into {args.out}/<wnid>/")
    return 0


def _hub(data: Mapping[str, Any], split: str) -> LabelledImages:
    import datasets
    from huggingface_hub import constants

    hub_split = str(data[f"{split}_split"])
    if constants.HF_HUB_OFFLINE:  # a compute node without internet: the subset had to be prepared
        raise DataUnavailable(
            f"data={data['name']} streams {data['hub_id']} from the hub, and HF_HUB_OFFLINE=1 forbids it: its "
            "images at this model's pixel geometry are not in cache.dir. Run `sweep-prepare` with this sweep's "
            "overrides on a machine with internet (a login node) that shares cache.dir (the dataset is gated: "
            f"accept its terms on the hub and export {data['token_env']}=<token> there), then run again "
            "(docs/sweeps.md, 'A cluster without internet'); or use local data: data=imagefolder "
            "data.root=/path/to/imagenet (train/<wnid>/*.JPEG, val/<wnid>/*.JPEG)"
        )
    token = os.environ.get(str(data["token_env"])) or None
    try:
        stream = datasets.load_dataset(str(data["hub_id"]), split=hub_split, streaming=True, token=token)
        stream = stream.shuffle(seed=int(data["seed"]), buffer_size=int(data["shuffle_buffer"]))
        return _stream_balanced(stream, data, split)
    except DataUnavailable:
        raise
    except Exception as error:  # the hub raises many types: offline, gated, not found
        raise DataUnavailable(
            f"could not read {data['hub_id']} ({hub_split}) from the hub ({type(error).__name__}: "
            f"{brief(error, 200)}). "
            f"It is gated: accept its terms on the hub and export {data['token_env']}=<token>, or use local "
            "data: data=imagefolder data.root=/path/to/imagenet (train/<wnid>/*.JPEG, val/<wnid>/*.JPEG)"
        ) from error


def _stream_balanced(stream: Iterable[Mapping[str, Any]], data: Mapping[str, Any], split: str) -> LabelledImages:
    per_class, n_classes = int(data[f"{split}_per_class"]), int(data["n_classes"])
    counts = [0] * n_classes
    images, labels = [], []
    for example in stream:
        label = int(example["label"])
        if counts[label] < per_class:
            counts[label] += 1
            images.append(example["image"])
            labels.append(label)
            if len(labels) == per_class * n_classes:
                return LabelledImages(images, labels)
    raise DataUnavailable(
        f"the stream ended with {len(labels)} of {per_class * n_classes} images; lower the per-class counts"
    )


# -- preprocessing --------------------------------------------------------------------

#: The preprocess settings applied on the compute device (`normalise`), after the cached
#: uint8 pixels: the only ones `to_uint8` may not read. Every other preprocess setting,
#: one added later included, reaches the pixels and the images artifact's key
#: (`pixel_settings`), while models that differ only in normalisation share one decode.
NORMALISATION_KEYS = ("mean", "std")


def pixel_settings(preprocess: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a model's `preprocess` that the cached uint8 pixels depend on."""
    return {key: value for key, value in preprocess.items() if key not in NORMALISATION_KEYS}


_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB as HF's `convert_to_rgb` makes it: transparency (an alpha band, or a palette or
    grey image with a transparent colour) is composited onto white, not dropped, so the
    colours hidden under transparent pixels never reach the model."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def resized_size(width: int, height: int, preprocess: Mapping[str, Any]) -> tuple[int, int]:
    """(width, height) after the resize. A shortest-edge resize sets the short edge to `resize`
    and truncates the long one, `int(resize * long / short)`, as HF's
    `get_resize_output_image_size` does (rounding instead gives 299 px, not 298, for a 500×375
    image at 224, and every pixel after it shifts)."""
    size = int(preprocess["resize"])
    if preprocess["resize_exact"]:
        return size, size
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def to_uint8(image: Image.Image, preprocess: Mapping[str, Any]) -> np.ndarray:
    """The pixels the model's HF image processor (its PIL path) gives, before rescaling and
    normalisation: RGB conversion (`to_rgb`), a PIL resize (`resized_size`), and a centre crop
    whose offsets are floored, `(width - crop) // 2`, as HF's `center_crop` does. Returns a
    (3, crop, crop) uint8 array; `normalise` finishes the job on the device. Reads only
    `pixel_settings` (reading the normalisation here fails, not silently beside the cache key)."""
    preprocess = pixel_settings(preprocess)
    image = to_rgb(image)
    image = image.resize(resized_size(*image.size, preprocess), _RESAMPLE[str(preprocess["interpolation"])])
    crop = int(preprocess["crop"])
    width, height = image.size
    left, top = (width - crop) // 2, (height - crop) // 2
    image = image.crop((left, top, left + crop, top + crop))  # zero-padded where the image is smaller, as HF's
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy()


def preprocess_split(split: LabelledImages, preprocess: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    images = torch.from_numpy(np.stack([to_uint8(image, preprocess) for image in split.images]))
    return images, torch.tensor(split.labels, dtype=torch.long)


def normalise(images: torch.Tensor, preprocess: Mapping[str, Any], dtype: torch.dtype | None = None) -> torch.Tensor:
    """uint8 (n, 3, H, W) on the device → normalised float pixels."""
    import torch

    dtype = torch.float32 if dtype is None else dtype
    mean = torch.tensor(list(preprocess["mean"]), device=images.device, dtype=dtype).view(1, 3, 1, 1)
    std = torch.tensor(list(preprocess["std"]), device=images.device, dtype=dtype).view(1, 3, 1, 1)
    return (images.to(dtype) / 255.0 - mean) / std


def batches(n: int, batch_size: int) -> Iterator[slice]:
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


if __name__ == "__main__":
    sys.exit(main())
