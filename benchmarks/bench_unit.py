"""Work units at real shapes: the shared-suffix engine's speed, the per-cell bookkeeping,
and how many array tasks the study needs.

    OMP_NUM_THREADS=2 python benchmarks/bench_unit.py --part shapes        # a few minutes per model on CPU
    OMP_NUM_THREADS=2 python benchmarks/bench_unit.py --part bookkeeping   # two toy sweeps from one warm cache
    python benchmarks/bench_unit.py --part tasks                           # the study's dry run on SLURM
    OMP_NUM_THREADS=2 python benchmarks/bench_unit.py --part all

shapes: a unit of {13 layers (L = 0..12) x shuffle x {native, cls} x seed 0} over 128
  validation images, for randomly initialised ViT-B/16, BEiT-B/16 (the ft22k flags) and
  CLIP-ViT-B/32 (a full CLIPModel checkpoint, so `visual_projection` is read as for the hub
  model) at 224 px, each written with `save_pretrained` and loaded through its model config
  (`model.source=<folder> model.revision=null`), data from a local ImageNet-layout folder
  (`data=imagefolder`). `sweep.engine.prepare` fills the cache first (features, heads,
  probes: what a sweep's preparing unit does), then `measure_unit` runs on the cached
  artifacts; its `measure_s` is compared with a bare HF forward (`model(pixel_values=x)`,
  inference mode, the same batch size and threads, best of --bare-repeats) per image:
  ratio = bare s/img x F x n_val / measure_s, F = 1 + sum_L (N - L) / N forward-equivalents
  (one unmodified pass plus every branch's suffix; goal >= 0.85). F' is the engine's own
  count (prefix to layer N - 1, then the same suffixes; read from its block counter).
bookkeeping: the toy sweep `model=toy_vit layer=range(0,7) intervention=none,shuffle
  readout=native,cls seed=0,1,2` (56 cells, one unit; the toy trained for 2 epochs only,
  its accuracy does not matter here) twice from one warm cache, with
  minimal bookkeeping (logger=none outcomes.save=false) and with outcomes and an offline
  W&B run per cell; (difference of the units' wall_s) / cells = bookkeeping per cell (goal
  <= 0.1 s). Also `_write_cell`'s parts, timed directly on real results.
tasks: `sweep-run -m +experiment=main_result hydra/launcher=slurm sweep.dry_run=true`;
  work units per model (goal <= 2) and cells per unit.

Print the load average beside each figure: two torch processes on two cores slow each
other down many times over.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYERS = range(0, 13)
READOUTS = ("native", "cls")


def load() -> str:
    return "load avg " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


# -- part 1: real shapes ------------------------------------------------------------------


def write_models(root: Path, kinds: list[str]) -> dict[str, Path]:
    import torch
    import transformers

    base = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, image_size=224)
    folders = {}
    for kind in kinds:
        torch.manual_seed(0)
        if kind == "vit":
            model = transformers.ViTForImageClassification(
                transformers.ViTConfig(**base, patch_size=16, num_labels=1000)
            )
        elif kind == "beit":  # microsoft/beit-base-patch16-224-pt22k-ft22k's flags (a 1000-way head here)
            model = transformers.BeitForImageClassification(
                transformers.BeitConfig(
                    **base,
                    patch_size=16,
                    num_labels=1000,
                    use_relative_position_bias=True,
                    use_shared_relative_position_bias=False,
                    use_mean_pooling=True,
                    layer_scale_init_value=0.1,
                    use_absolute_position_embeddings=False,
                    use_mask_token=False,
                )
            )
        elif kind == "clip":  # the hub's format: the full two-tower CLIPModel (a small text tower)
            model = transformers.CLIPModel(
                transformers.CLIPConfig(
                    text_config=dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128),
                    vision_config=dict(**base, patch_size=32),
                    projection_dim=512,
                )
            )
        else:
            raise ValueError(kind)
        folders[kind] = root / kind
        model.save_pretrained(folders[kind], safe_serialization=True)
    return folders


def write_image_folder(root: Path, n_classes: int, train_per_class: int, val_per_class: int) -> Path:
    import numpy as np
    from PIL import Image

    from sweep.data import imagenet_wnids

    rng = np.random.default_rng(0)
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        for index, wnid in enumerate(imagenet_wnids()[:n_classes]):
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                pixels = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
                name = f"{wnid}_{k}" if split == "train" else f"ILSVRC2012_val_{index * per_class + k + 1:08d}"
                Image.fromarray(pixels).save(folder / f"{name}.JPEG", format="JPEG", quality=90)
    return root


def compose_unit(kind: str, source: Path, data_root: Path, cache_dir: Path, args: argparse.Namespace):
    from hydra import compose, initialize_config_module

    from sweep.cellspec import cell_spec
    from sweep.conf_path import CONF_PACKAGE

    common = [
        f"model={kind}",
        f"model.source={source}",
        "model.revision=null",
        "data=imagefolder",
        f"data.root={data_root}",
        f"data.n_classes={args.classes}",
        f"data.train_per_class={args.train_per_class}",
        f"data.val_per_class={args.val // args.classes}",
        "compute.device=cpu",
        "logger=none",
        f"cache.dir={cache_dir}",
        f"compute.batch_size={args.batch_size}",
    ]
    cfgs = []
    with initialize_config_module(config_module=CONF_PACKAGE, version_base="1.3"):
        for layer in LAYERS:
            for readout in READOUTS:
                cfgs.append(
                    compose(
                        "config",
                        overrides=[*common, f"layer={layer}", "intervention=shuffle", f"readout={readout}", "seed=0"],
                    )
                )
    return cfgs[0], [cell_spec(cfg) for cfg in cfgs]


def bare_seconds_per_image(kind: str, source: Path, cfg, images, repeats: int) -> float:
    """`model(pixel_values=x)` of the HF class the model config loads, on pre-normalised batches."""
    import torch

    from sweep.data import batches, normalise
    from sweep.models import hf_class
    from sweep.settings import Model

    model = (
        hf_class(Model.of(cfg.model))
        .from_pretrained(
            str(source), attn_implementation=str(cfg.compute.attn_implementation), **dict(cfg.model.load_kwargs or {})
        )
        .eval()
    )
    pixels = normalise(images, cfg.model.preprocess)
    batch = int(cfg.compute.batch_size)
    times = []
    with torch.inference_mode():
        model(pixel_values=pixels[:2]).logits.float()  # warm-up
        for _ in range(repeats):
            started = time.perf_counter()
            for part in batches(len(pixels), batch):
                model(pixel_values=pixels[part]).logits.float()
            times.append(time.perf_counter() - started)
    return min(times) / len(pixels)


def part_shapes(args: argparse.Namespace) -> bool:
    import torch
    import transformers

    from sweep.artifacts import ComputeLedger
    from sweep.cache import ArtifactCache
    from sweep.engine import measure_unit, prepare

    os.environ.setdefault("SWEEP_PROGRESS", "0")
    transformers.utils.logging.set_verbosity_error()  # CLIPModel's unused text tower: a long load report
    torch.manual_seed(0)
    kinds = args.models.split(",")
    work = Path(tempfile.mkdtemp(prefix="bench_unit_"))
    ok = True
    try:
        folders = write_models(work / "models", kinds)
        data_root = write_image_folder(work / "imagenet", args.classes, args.train_per_class, args.val // args.classes)
        print(
            f"part shapes: {len(LAYERS)} layers x shuffle x {len(READOUTS)} readouts x seed 0 = "
            f"{len(LAYERS) * len(READOUTS)} cells, {args.val} val images ({args.classes} classes), "
            f"{args.train_per_class * args.classes} train, batch {args.batch_size}, float32, "
            f"{torch.get_num_threads()} threads (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')})",
            flush=True,
        )
        for kind in kinds:
            cache = ArtifactCache(work / "cache")
            cfg, specs = compose_unit(kind, folders[kind], data_root, work / "cache", args)
            n_layers = specs[0].n_layers
            started = time.perf_counter()
            prepared = prepare(specs[0], specs, cache, ComputeLedger())  # fills the cache: features, heads, probes
            fill_s = time.perf_counter() - started
            val_images = prepared.val_images
            n_val = len(prepared.features.labels["val"])
            del prepared
            summaries = []
            for _ in range(args.repeats or 1):
                emitted = []
                before = os.getloadavg()[0]
                summary = measure_unit(specs, cache, lambda spec, result, error: emitted.append(error))
                assert len(emitted) == len(specs) and not any(emitted), emitted
                summaries.append((summary, before, os.getloadavg()[0]))
            summary, load_before, load_after = min(summaries, key=lambda s: s[0]["measure_s"])
            bare_load_before = os.getloadavg()[0]
            bare = bare_seconds_per_image(kind, folders[kind], cfg, val_images, args.bare_repeats)
            bare_load_after = os.getloadavg()[0]
            bound = 1 + sum(n_layers - layer for layer in LAYERS) / n_layers
            calls = summary["block_calls_by_purpose"]
            engine = (calls.get("unmodified", 0) + calls.get("branch", 0)) / (n_layers * n_val)
            measure_s = summary["measure_s"]
            ratio, ratio_engine = bare * bound * n_val / measure_s, bare * engine * n_val / measure_s
            ok &= ratio >= 0.85
            print(
                f"{kind:<5} cache filled in {fill_s:.1f} s; unit measure_s {measure_s:.1f} s (best of {args.repeats or 1}; "
                f"prepare_s {summary['prepare_s']:.1f} s), load avg 1-min {load_before:.2f} -> {load_after:.2f}\n"
                f"      bare HF forward {1 / bare:.2f} img/s ({bare * 1e3:.0f} ms/img, best of {args.bare_repeats}), "
                f"load avg 1-min {bare_load_before:.2f} -> {bare_load_after:.2f}\n"
                f"      unit {n_val * len(specs) / measure_s:.2f} cell-images/s, {n_val / measure_s:.3f} images/s "
                f"through all {len(specs)} cells; {n_val * bound / measure_s:.2f} forward-equivalent img/s "
                f"(bare {1 / bare:.2f})\n"
                f"      F = {bound:.3f}: ratio {ratio:.3f} (goal >= 0.85): {verdict(ratio >= 0.85)} | "
                f"F' (engine's count) = {engine:.3f}: ratio {ratio_engine:.3f}",
                flush=True,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ok


# -- part 2: bookkeeping per cell --------------------------------------------------------------

TOY_GRID = ["model=toy_vit", "layer=range(0,7)", "intervention=none,shuffle", "readout=native,cls", "seed=0,1,2"]
#: the toy's accuracy does not matter here: a short training keeps the warm-up short
TOY_TRAINING = ["toy_training.epochs=2"]


def toy_sweep(root: Path, name: str, cache_dir: Path, extra: list[str], env: dict[str, str]) -> dict:
    command = [
        sys.executable,
        "-m",
        "sweep.run",
        "-m",
        *TOY_GRID,
        f"sweep.root={root}",
        f"sweep.name={name}",
        f"cache.dir={cache_dir}",
        *TOY_TRAINING,
        *extra,
    ]
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    summaries = [json.loads(p.read_text()) for p in (root / name).glob("units/*/summary.json")]
    return {
        "wall_s": sum(s["wall_s"] for s in summaries),
        "cells": sum(s["cells"] for s in summaries),
        "units": len(summaries),
        "measure_s": sum(s["measure_s"] for s in summaries),
        "prepare_s": sum(s["prepare_s"] for s in summaries),
    }


def write_cell_parts(cache_dir: Path, work: Path, n: int) -> dict[str, list[float]]:
    """`_write_cell`'s parts on real results of a toy unit, each timed directly (per cell;
    the process's first W&B run also pays wandb's import and service start)."""
    from hydra import compose, initialize_config_module

    from sweep import record as rec
    from sweep.cache import ArtifactCache
    from sweep.cellspec import cell_spec
    from sweep.conf_path import CONF_PACKAGE
    from sweep.engine import measure_unit
    from sweep.layout import OUTCOMES_FILE
    from sweep.lease import Lease
    from sweep.tracking import tracker

    with initialize_config_module(config_module=CONF_PACKAGE, version_base="1.3"):
        cfgs = [
            compose(
                "config",
                overrides=[
                    "model=toy_vit",
                    f"layer={layer}",
                    "intervention=shuffle",
                    f"readout={readout}",
                    "seed=0",
                    f"cache.dir={cache_dir}",
                    *TOY_TRAINING,
                    "logger=wandb",
                    "wandb.mode=offline",
                    "sweep.id=bench-parts",
                    f"sweep.root={work}",
                ],
            )
            for layer in range(n)
            for readout in READOUTS
        ][:n]
    specs = [cell_spec(c) for c in cfgs]
    results = {}
    measure_unit(specs, ArtifactCache(cache_dir), lambda s, r, e: results.__setitem__(s.cell_id, r))
    parts: dict[str, list[float]] = {}
    for cfg, spec in zip(cfgs, specs):
        folder = work / spec.subdir
        result = results[spec.cell_id]
        t0 = time.perf_counter()
        lease = Lease.acquire(folder, stale_after_s=300, heartbeat_s=30)
        t1 = time.perf_counter()
        rec.write_outcomes(folder, result.outcomes)
        t2 = time.perf_counter()
        record = {
            **rec.cell_fields(spec, cfg, cfg.sweep.id),
            "unit": None,
            "status": "complete",
            "metrics": result.metrics,
            "counts": result.counts,
            "compute": result.compute,
            "timings": result.timings,
            "artifacts": result.artifacts,
            "versions": {**rec.versions(), "model_revision": result.model_revision},
            "outcomes_file": OUTCOMES_FILE,
        }
        t3 = time.perf_counter()
        with tracker(cfg, spec, cfg.sweep.id, folder) as track:
            t4 = time.perf_counter()
            track.log_record(record, folder / OUTCOMES_FILE)
            t5 = time.perf_counter()
            rec.write_record(folder, record)
            t6 = time.perf_counter()
        t7 = time.perf_counter()
        lease.release()
        t8 = time.perf_counter()
        for key, seconds in (
            ("lease acquire", t1 - t0),
            ("outcomes.csv", t2 - t1),
            ("record fields", t3 - t2),
            ("W&B init (offline)", t4 - t3),
            ("W&B log_record", t5 - t4),
            ("result.json", t6 - t5),
            ("W&B finish", t7 - t6),
            ("lease release", t8 - t7),
        ):
            parts.setdefault(key, []).append(seconds)
    return parts


def part_bookkeeping(args: argparse.Namespace) -> bool:
    work = Path(tempfile.mkdtemp(prefix="bench_unit_bk_"))
    env = {**os.environ, "WANDB_MODE": "offline", "SWEEP_PROGRESS": "0", "WANDB_SILENT": "true"}
    env.pop("SWEEP_TEST_PAUSE", None)
    cache_dir = Path(args.cache_dir) if args.cache_dir else work / "cache"
    ok = True
    try:
        print(
            f"part bookkeeping: {' '.join(TOY_GRID)} (56 cells), cache {cache_dir}, "
            f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}",
            flush=True,
        )
        started = time.perf_counter()
        toy_sweep(
            work, "warm", cache_dir, ["logger=none", "outcomes.save=false"], env
        )  # trains the toy, fills the cache
        print(f"warm-up sweep (fills the cache): {time.perf_counter() - started:.1f} s, {load()}", flush=True)
        minimal = ["logger=none", "outcomes.save=false"]
        full = ["logger=wandb", "wandb.mode=offline", "outcomes.save=true"]
        runs: dict[str, list[dict]] = {"minimal": [], "full": []}
        for repeat in range(args.repeats or 2):  # alternating, so a busy spell hits both
            for label, extra in (("minimal", minimal), ("full", full)):
                got = toy_sweep(work, f"{label}-{repeat}", cache_dir, extra, env)
                got["load"] = os.getloadavg()
                runs[label].append(got)
                print(
                    f"  {label:<7} (#{repeat + 1}) unit wall {got['wall_s']:6.2f} s, measure {got['measure_s']:5.2f} s, "
                    f"prepare {got['prepare_s']:5.2f} s, {got['cells']} cells in {got['units']} unit(s), "
                    f"{load()}",
                    flush=True,
                )
        best = {label: min(r["wall_s"] for r in rs) for label, rs in runs.items()}
        cells = runs["full"][0]["cells"]
        per_cell = (best["full"] - best["minimal"]) / cells
        measure = {label: min(r["measure_s"] for r in rs) for label, rs in runs.items()}
        ok = per_cell <= 0.1
        print(
            f"bookkeeping per cell (best unit wall, full {best['full']:.2f} s - minimal {best['minimal']:.2f} s) / "
            f"{cells} cells = {per_cell:.3f} s (goal <= 0.1 s): {verdict(ok)}  [best measure_s: full "
            f"{measure['full']:.2f} s, minimal {measure['minimal']:.2f} s], {load()}",
            flush=True,
        )
        parts = write_cell_parts(cache_dir, work / "parts", args.part_cells)
        print(f"_write_cell's parts, timed directly ({args.part_cells} toy_vit cells, W&B offline), {load()}:")
        print(f"  {'part':<20} {'1st cell':>9} {'median of the rest':>19}")
        for key, seconds in parts.items():
            print(f"  {key:<20} {seconds[0] * 1e3:6.1f} ms {statistics.median(seconds[1:]) * 1e3:16.1f} ms")
        first = sum(v[0] for v in parts.values())
        rest = sum(statistics.median(v[1:]) for v in parts.values())
        print(
            f"  {'total':<20} {first * 1e3:6.1f} ms {rest * 1e3:16.1f} ms "
            f"({verdict(rest <= 0.1)} against 0.1 s for the cells after the first)",
            flush=True,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ok


# -- part 3: array tasks -----------------------------------------------------------------------

UNIT_LINE = re.compile(r"^  unit (\S+): (\S+), (\d+) cells, (\d+) block applications")


def part_tasks(args: argparse.Namespace) -> bool:
    work = Path(tempfile.mkdtemp(prefix="bench_unit_tasks_"))
    command = [
        sys.executable,
        "-m",
        "sweep.run",
        "-m",
        "+experiment=main_result",
        "hydra/launcher=slurm",
        "sweep.dry_run=true",
    ]
    try:
        started = time.perf_counter()
        done = subprocess.run(
            command, cwd=work, capture_output=True, text=True, env={**os.environ, "SWEEP_PROGRESS": "0"}
        )
        seconds = time.perf_counter() - started
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"part tasks: sweep-run -m +experiment=main_result hydra/launcher=slurm sweep.dry_run=true "
        f"(exit {done.returncode}, {seconds:.1f} s, {load()})"
    )
    if done.returncode != 0:
        print(done.stdout[-2000:], done.stderr[-2000:], sep="\n")
        return False
    print(done.stdout.splitlines()[0])
    units = [m.groups() for m in map(UNIT_LINE.match, done.stdout.splitlines()) if m]
    per_model = Counter(model for _, model, _, _ in units)
    ok = bool(units) and max(per_model.values()) <= 2
    for model, count in per_model.items():
        cells = [int(n) for _, m, n, _ in units if m == model]
        costs = [int(c) for _, m, _, c in units if m == model]
        print(
            f"  {model:<7} {count} unit(s) (goal <= 2): {verdict(count <= 2)}; cells per unit {cells}; "
            f"block applications per val image {costs}"
        )
    print(f"{len(units)} array tasks for {sum(int(n) for _, _, n, _ in units)} cells: {verdict(ok)}")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["shapes", "bookkeeping", "tasks", "all"], default="all")
    parser.add_argument("--models", default="vit,clip,beit", help="shapes: which of vit, beit, clip")
    parser.add_argument("--val", type=int, default=128, help="shapes: validation images")
    parser.add_argument("--classes", type=int, default=2)
    parser.add_argument("--train-per-class", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="shapes: measure_unit runs per model, best of (default 1); bookkeeping: sweeps per setting (default 2)",
    )
    parser.add_argument("--bare-repeats", type=int, default=3)
    parser.add_argument("--cache-dir", default=None, help="bookkeeping: a cache to reuse (its toy already trained)")
    parser.add_argument("--part-cells", type=int, default=8, help="bookkeeping: cells for the direct timing")
    args = parser.parse_args()
    print(f"{load()}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}", flush=True)
    parts = {"shapes": part_shapes, "bookkeeping": part_bookkeeping, "tasks": part_tasks}
    chosen = list(parts) if args.part == "all" else [args.part]
    results = {}
    for name in chosen:
        results[name] = parts[name](args)
        print(flush=True)
    print(" ".join(f"{name}: {verdict(ok)}" for name, ok in results.items()), f"| {load()}")


if __name__ == "__main__":
    main()
