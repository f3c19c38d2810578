"""A class-balanced subset of a local ImageNet tree costs in proportion to the subset, not the tree.

    OMP_NUM_THREADS=1 python benchmarks/bench_imagefolder.py                  # 1,000 classes x 100 and x 300 files
    OMP_NUM_THREADS=1 python benchmarks/bench_imagefolder.py --dir /tmp/trees  # keep the trees for the next run

Writes two trees in ImageNet layout (`val/<wnid>/*.JPEG`, every one of the 1,000 standard
wnids) of small JPEGs, then times `load_split(data, "val")` for a `--per-class` subset of
each: listing the class folders, sampling, and decoding the sampled files. The goals: the
two times differ by at most 1.5x (the subset is the same size, the tree 3x larger), and the
larger tree takes at most 60 s.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from sweep.data import imagenet_wnids, load_split

MAX_RATIO, MAX_SECONDS = 1.5, 60.0


def jpeg_variants(count: int, size: int) -> list[bytes]:
    """`count` distinct small noise JPEGs, encoded once: the trees are written from these
    bytes, as writing 400,000 files is the slow part and their pixels do not matter."""
    rng = np.random.default_rng(0)
    variants = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=90)
        variants.append(buffer.getvalue())
    return variants


def write_tree(root: Path, per_class: int, variants: list[bytes]) -> Path:
    """`root/val/<wnid>/<wnid>_<k>.JPEG` for the 1,000 wnids (and an empty `root/train`);
    kept when already complete, so `--dir` makes a second run start at the timing."""
    done = root / "complete"
    if done.exists():
        return root
    (root / "train").mkdir(parents=True, exist_ok=True)
    for index, wnid in enumerate(imagenet_wnids()):
        folder = root / "val" / wnid
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            (folder / f"{wnid}_{k}.JPEG").write_bytes(variants[(index + k) % len(variants)])
    done.touch()
    return root


def build_seconds(root: Path, per_class: int) -> tuple[float, int]:
    """Seconds to build the subset once, and its size."""
    data = {
        "source": "imagefolder",
        "root": str(root),
        "train_dir": "train",
        "val_dir": "val",
        "n_classes": 1000,
        "train_per_class": per_class,
        "val_per_class": per_class,
        "seed": 0,
    }
    started = time.perf_counter()
    count = len(load_split(data, "val").labels)
    return time.perf_counter() - started, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="where to write (and keep) the trees; default a temporary folder")
    parser.add_argument("--sizes", default="100,300", help="files per class of the two trees")
    parser.add_argument("--per-class", type=int, default=10, help="images per class in the subset")
    parser.add_argument("--image-size", type=int, default=32, help="the JPEGs' width and height")
    parser.add_argument("--repeats", type=int, default=3, help="builds per tree, alternating; the best is reported")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    base = args.dir or Path(tempfile.mkdtemp(prefix="bench_imagefolder_"))
    variants = jpeg_variants(64, args.image_size)
    try:
        roots, written = {}, {}
        for size in sizes:
            started = time.perf_counter()
            roots[size] = write_tree(base / f"per_class_{size}", size, variants)
            written[size] = time.perf_counter() - started
        os.sync()  # the trees' write-back must not land in a timing
        best, count = dict.fromkeys(sizes, float("inf")), 0
        for _ in range(args.repeats):  # alternating, so a busy spell on the machine hits both
            for size in sizes:
                seconds, count = build_seconds(roots[size], args.per_class)
                best[size] = min(best[size], seconds)
        for size in sizes:
            print(
                f"tree of 1000 classes x {size} files ({1000 * size} images, written in {written[size]:.1f} s): "
                f"{count}-image subset in {best[size]:.2f} s (best of {args.repeats})"
            )
        small, large = sizes
        ratio = best[large] / best[small]
        print(f"ratio {large}/{small}: {ratio:.2f}x (goal <= {MAX_RATIO}x): {'PASS' if ratio <= MAX_RATIO else 'FAIL'}")
        print(
            f"at {large} per class: {best[large]:.2f} s (goal <= {MAX_SECONDS:.0f} s): "
            f"{'PASS' if best[large] <= MAX_SECONDS else 'FAIL'}"
        )
    finally:
        if args.dir is None:
            shutil.rmtree(base)


if __name__ == "__main__":
    main()
