"""Sweep compute against its lower bound, and how cost grows with the validation set.

    python benchmarks/bench_sweep_compute.py --models toy_vit --layers 0,1,2,-1 --seeds 0,1   # the issue's toy grid
    python benchmarks/bench_sweep_compute.py --experiment toy   # the toy study (+experiment=toy)
    python benchmarks/bench_sweep_compute.py            # toy main_result grid
    python benchmarks/bench_sweep_compute.py --scaling  # toy grid at 1x, 2x, 4x validation images (40k-160k, ~25 min)
    python benchmarks/bench_sweep_compute.py --scaling --val-per-class 200  # the same at 2k-8k (~4 min)

Block applications come from each cell's `compute.block_calls` in result.json: its share
of its work unit's blocks (shared work split over the cells that used it, so the records
of a sweep add up to what it ran). For one model with N blocks:

* shared-suffix bound: one unmodified pass over train + val (features and heads) plus,
  per distinct (model, L, intervention, seed), N - L blocks over the validation set;
* donor-aware bound: the same plus one unmodified prefix over the validation set up to the
  deepest intervened layer below N. A shuffle's donor may be any validation image (its
  groups are drawn with the seed over the whole set), so its CLS at L must be known before
  the recipient's suffix runs: it comes from the cached features, and the recipient's
  hidden state at L from a second prefix pass; keeping hidden states instead would cost
  memory (or disk) in proportion to the validation set;
* naive: every cell recomputing everything (the unmodified pass, plus a full pass for an
  intervention).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

TOYS = "toy_vit,toy_deit,toy_beit,toy_dinov2,toy_clip"


def sweep(args: list[str], cwd: Path, cache: Path) -> float:
    env = {**os.environ, "SWEEP_CACHE_DIR": str(cache), "WANDB_MODE": "offline", "SWEEP_PROGRESS": "0"}
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "sweep.run", "-m", *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    if result.returncode != 0:
        sys.exit(f"sweep failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def tally(sweep_dir: Path) -> dict[str, float]:
    """Block applications of a finished sweep (from its records) and what they compare with."""
    used = naive = cells = 0.0
    per_model: dict[str, dict] = defaultdict(dict)
    branches: dict[tuple, int] = {}  # (model, layer, intervention, seed) -> its suffix over val
    prefix: dict[str, int] = defaultdict(int)  # model -> deepest intervened layer below N
    for path in sweep_dir.rglob("result.json"):
        record = json.loads(path.read_text())
        used += record["compute"]["block_calls"]
        n, counts, layer = record["n_layers"], record["counts"], record["layer"]
        per_model[record["model"]] = {"n": n, "images": counts["n_train"] + counts["n_val"], "val": counts["n_val"]}
        naive += n * (counts["n_train"] + counts["n_val"])
        if record["intervention"] != "none":
            branch = (
                record["model"],
                layer,
                json.dumps(record["config"]["intervention"], sort_keys=True),
                record["seed"],
            )
            branches[branch] = (n - layer) * counts["n_val"]
            naive += n * counts["n_val"]
            if layer < n:
                prefix[record["model"]] = max(prefix[record["model"]], layer)
        cells += 1
    unmodified = sum(m["n"] * m["images"] for m in per_model.values())
    shared_suffix = sum(branches.values()) + unmodified
    donor_aware = shared_suffix + sum(prefix[model] * m["val"] for model, m in per_model.items())
    return {
        "used": used,
        "naive": naive,
        "cells": cells,
        "shared_suffix_bound": shared_suffix,
        "donor_aware_bound": donor_aware,
    }


def report(label: str, t: dict[str, float], seconds: float) -> None:
    print(
        f"[{label}] {t['cells']:.0f} cells in {seconds:.0f} s: block applications naive {t['naive']:,.0f}, "
        f"this project {t['used']:,.0f}"
    )
    print(
        f"    this project / shared-suffix bound ({t['shared_suffix_bound']:,.0f}: one unmodified pass over train + "
        f"val, then N - L blocks once per distinct (model, layer, intervention, seed), every readout on that one "
        f"output) = {t['used'] / t['shared_suffix_bound']:.3f} (target <= 1.02): "
        f"{'PASS' if t['used'] <= 1.02 * t['shared_suffix_bound'] else 'FAIL'}"
    )
    print(
        f"    this project / donor-aware bound ({t['donor_aware_bound']:,.0f}: the same plus one unmodified prefix "
        f"over val up to the deepest intervened layer below N) = {t['used'] / t['donor_aware_bound']:.3f};  "
        f"naive / shared-suffix bound = {t['naive'] / t['shared_suffix_bound']:.1f}"
    )


def compute_vs_bound(models: str, seeds: str, layers: str) -> None:
    grid = [
        f"model={models}",
        f"layer={layers}",
        "intervention=none,shuffle",
        "readout=native,cls",
        f"seed={seeds}",
        "logger=none",
    ]
    measure_grid(grid, f"{models} x layers {layers} x none,shuffle x native,cls x seeds {seeds}", models)


def experiment(name: str) -> None:
    measure_grid([f"+experiment={name}", "logger=none"], f"+experiment={name}", TOYS)


def measure_grid(grid: list[str], label: str, models: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        sweep(
            [
                f"model={models}",
                "sweep.name=warmup",
                "layer=0",
                "intervention=none",
                "readout=native",
                "seed=0",
                "logger=none",
            ],
            Path(tmp),
            cache,
        )  # trains the toys once, so the run below starts from trained weights
        for kind in ("features", "probes", "head"):  # a fresh unmodified pass, as a first sweep of a model has
            subprocess.run(["rm", "-rf", str(cache / kind)])
        seconds = sweep([*grid, "sweep.name=measured"], Path(tmp), cache)
        report(label, tally(Path(tmp) / "multirun" / "measured"), seconds)


SCALES = (1, 2, 4)
VAL_PER_CLASS = 4000  # at 1x: 40,000 validation images (ImageNet's validation set has 50,000); 4x is 160,000
TRAIN_PER_CLASS = 20  # the same at every scale


def scaling(models: str, val_per_class: int) -> None:
    """The toy grid at 1x, 2x and 4x the validation images, each scale with its own data
    folder and fresh data artifacts (the toys are trained once beforehand, on digits).

    Digits has about 180 images per class, too few to scale, so each scale gets a local
    image folder (ImageNet layout, read through `data=imagefolder` and `datasets`): the
    digits themselves for training and, for validation, digits shifted by up to a pixel
    with a little noise. Only time is measured here, not accuracy.

    Wall-clock time includes costs that do not depend on the validation set: imports,
    composing each cell's config, loading the model per cell, the train split's pass and
    the probe fits. The time that does is measured where it is spent: decoding the
    validation images, the unmodified pass over them (both from the artifacts' meta.json)
    and every cell's measurement (`timings.measure_s`). The fixed cost weighs less the more
    images there are: at 1x = 40,000 it is a small part of the sweep, at 1x = 2,000 most of it.

    "Within ±15 %" is checked as a band around the mean of the three per-image ratios; the
    largest / smallest ratio is printed beside it for readers who want the stricter spread.

    Each scale's data artifacts and image folder are deleted once measured, so the disk holds
    one scale at a time (4x at 40,000 per 1x: about 24 GiB of cache)."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        os.environ["HF_DATASETS_CACHE"] = str(Path(tmp) / "hf-datasets")  # each folder is converted once, here
        sweep(
            [f"model={models}", "layer=0", "intervention=none", "logger=none", "sweep.name=warmup"], Path(tmp), cache
        )  # trains the toys on digits
        for factor in SCALES:
            root = Path(tmp) / f"images-x{factor}"
            print(f"{factor}x: writing {10 * val_per_class * factor:,} validation images ...", flush=True)
            write_image_folder(root, TRAIN_PER_CLASS, val_per_class * factor, seed=factor)
            before = _size(cache)
            seconds = sweep(
                [
                    f"model={models}",
                    "layer=range(0,7)",
                    "intervention=none,shuffle",
                    "readout=native,cls",
                    "seed=0",
                    "logger=none",
                    "data=imagefolder",
                    f"data.root={root}",
                    "data.n_classes=10",
                    f"data.train_per_class={TRAIN_PER_CLASS}",
                    f"data.val_per_class={val_per_class * factor}",
                    f"sweep.name=x{factor}",
                ],
                Path(tmp),
                cache,
            )
            rows.append(
                _scale_row(factor, seconds, _size(cache) - before, Path(tmp) / "multirun" / f"x{factor}", cache)
            )
            print(f"{factor}x: {seconds:.1f} s", flush=True)
            _drop_scale(rows[-1]["entries"], cache, root)

    print(f"models {models}; {TRAIN_PER_CLASS * 10} training images at every scale\n")
    print("scale | val images | cells | sweep wall | of which val-dependent | cache added | val-dependent cache")
    for r in rows:
        print(
            f"  {r['factor']}x | {r['n']:>10} | {r['cells']:>5} | {r['wall']:8.1f} s | {r['val_s']:20.2f} s "
            f"| {r['added'] / 2**20:8.1f} MiB | {r['val_bytes'] / 2**20:8.1f} MiB"
        )
    print("\nper 1,000 validation images:")
    for r in rows:
        print(
            f"  {r['factor']}x: wall {1000 * r['wall'] / r['n']:6.2f} s, val-dependent {1000 * r['val_s'] / r['n']:6.3f} s "
            f"(decoding {1000 * r['images_val_s'] / r['n']:.2f} s, unmodified pass {1000 * r['features_val_s'] / r['n']:.2f} s, "
            f"cells {1000 * r['measure_s'] / r['n']:.2f} s), "
            f"val-dependent cache {1000 * r['val_bytes'] / r['n'] / 2**20:6.2f} MiB"
        )
    n = [r["n"] for r in rows]
    slope, intercept = _line(n, [r["wall"] for r in rows])
    print(
        f"\nwall = {intercept:.1f} s fixed + {1000 * slope:.2f} s per 1,000 images (least squares over the three scales)"
    )
    steps = [(b["wall"] - a["wall"]) / (b["n"] - a["n"]) for a, b in zip(rows, rows[1:])]
    step_spread = abs(steps[0] / steps[-1] - 1)
    print(
        "marginal wall time per 1,000 images, "
        + ", ".join(f"{a['factor']}x->{b['factor']}x {1000 * step:.2f} s" for a, b, step in zip(rows, rows[1:], steps))
        + f": they differ by {step_spread * 100:.0f} % (within 15 %: {'PASS' if step_spread <= 0.15 else 'FAIL'})"
    )
    print("each ratio to images against the mean of the three (the target: within ±15 %):")
    for label, key, unit, scale in (
        ("val-dependent time", "val_s", "s", 1000),
        ("val-dependent cache", "val_bytes", "MiB", 1000 / 2**20),
        ("wall time", "wall", "s", 1000),
    ):
        ratios = [r[key] / r["n"] for r in rows]
        mean = sum(ratios) / len(ratios)
        deviation = max(abs(x / mean - 1) for x in ratios)
        verdict = "PASS" if deviation <= 0.15 else "FAIL"
        note = f"; includes the {intercept:.0f} s fixed cost above" if key == "wall" else ""
        print(
            f"  {label} per 1,000 images: "
            + ", ".join(f"{x * scale:.2f} {unit}" for x in ratios)
            + f": within ±{deviation * 100:.0f} % of their mean: {verdict}"
            + f" (largest / smallest = {max(ratios) / min(ratios):.2f}{note})"
        )


def write_image_folder(root: Path, train_per_class: int, val_per_class: int, seed: int) -> None:
    """<root>/{train,val}/<wnid>/*.png for the ten digit classes, named by the first ten
    ImageNet wnids (so their standard indices are 0..9)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    from sweep.data import imagenet_wnids

    digits = load_digits()
    pixels = (digits.images * (255.0 / 16.0)).round()
    rng = np.random.default_rng(seed)
    for label, wnid in enumerate(imagenet_wnids()[:10]):
        pool = pixels[digits.target == label]
        for split, count in (("train", train_per_class), ("val", val_per_class)):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for i in range(count):
                image = pool[i % len(pool)]
                if split == "val":
                    image = np.roll(image, tuple(rng.integers(-1, 2, size=2)), axis=(0, 1)) + rng.normal(
                        0, 8, image.shape
                    )
                Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(folder / f"{i:05d}.png")


def _scale_row(factor: int, wall: float, added: int, sweep_dir: Path, cache: Path) -> dict:
    records = [json.loads(p.read_text()) for p in sweep_dir.rglob("result.json")]
    images = {r["artifacts"]["images"] for r in records}
    features = {r["artifacts"]["features"] for r in records}
    images_val_s = sum(_split_seconds(cache / "images" / key)["val"] for key in images)
    features_val_s = sum(_split_seconds(cache / "features" / key)["val"] for key in features)
    measure_s = sum(r["timings"]["measure_s"] for r in records)
    val_bytes = sum((cache / "images" / key / "val.safetensors").stat().st_size for key in images)
    for key in features:
        folder = cache / "features" / key
        val_bytes += (folder / "val.safetensors").stat().st_size
    entries = {
        f"{kind}/{key}"
        for r in records
        for kind, key in r["artifacts"].items()
        if kind != "model" and isinstance(key, str)
    }
    return {
        "factor": factor,
        "n": records[0]["counts"]["n_val"],
        "cells": len(records),
        "wall": wall,
        "added": added,
        "entries": entries,
        "val_s": images_val_s + features_val_s + measure_s,
        "images_val_s": images_val_s,
        "features_val_s": features_val_s,
        "measure_s": measure_s,
        "val_bytes": val_bytes,
    }


def _drop_scale(entries: set[str], cache: Path, root: Path) -> None:
    """Frees the disk a measured scale used: its data artifacts, image folder and `datasets` cache."""
    for entry in entries:
        shutil.rmtree(cache / entry, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(os.environ["HF_DATASETS_CACHE"], ignore_errors=True)


def _split_seconds(entry: Path) -> dict[str, float]:
    return json.loads((entry / "meta.json").read_text())["seconds"]


def _line(x: list[float], y: list[float]) -> tuple[float, float]:
    mean_x, mean_y = sum(x) / len(x), sum(y) / len(y)
    slope = sum((a - mean_x) * (b - mean_y) for a, b in zip(x, y)) / sum((a - mean_x) ** 2 for a in x)
    return slope, mean_y - slope * mean_x


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=TOYS)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--layers", default="range(0,7)", help="the grid's layers, e.g. 0,1,2,-1")
    parser.add_argument("--experiment", help="measure a shipped preset instead of the grid, e.g. toy")
    parser.add_argument("--scaling", action="store_true")
    parser.add_argument(
        "--val-per-class",
        type=int,
        default=VAL_PER_CLASS,
        help="validation images per class at 1x (--scaling; ten classes)",
    )
    args = parser.parse_args()
    if args.scaling:
        scaling(args.models, args.val_per_class)
    elif args.experiment:
        experiment(args.experiment)
    else:
        compute_vs_bound(args.models, args.seeds, args.layers)


if __name__ == "__main__":
    main()
