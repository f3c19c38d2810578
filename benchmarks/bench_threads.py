"""Does a number depend on the thread count? (issue 29; docs/science.md, "Thread counts")

    PYTHONPATH=src python benchmarks/bench_threads.py toys     # the five trained toys, digits
    PYTHONPATH=src python benchmarks/bench_threads.py base     # a random ViT-base, 8 images
    PYTHONPATH=src python benchmarks/bench_threads.py probes   # ImageNet-like probe fits

Each runs the same arithmetic under torch.set_num_threads(1) and (2) and prints the largest
absolute difference and how many predictions changed.
* toys: every hidden state of the train and validation images (`model=toy_*`, trained into
  $SWEEP_CACHE_DIR on first use), the native readout's logits, the CLS projection (final
  norm and head on the last CLS; a fitted head is fitted on each count's own features),
  and the layer probes (`probe=` default) fitted on each count's own features.
* base: HF's default ViTConfig (768-dim, 12 blocks, 1000 classes), randomly initialised.
* probes: ridge and torch-logistic heads on 2 layers of 10,000 x 768, 1000 classes
  (logistic: 10 L-BFGS steps); whether the heads are bit-identical, the wall time, and the
  share of it spent in `sweep.linear_heads.one_thread` (what more cores cannot speed up).
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager

import torch

COUNTS = (1, 2)


def largest(a: torch.Tensor, b: torch.Tensor) -> str:
    return f"{float((a - b).abs().max()):.1e}"


def changed(a: torch.Tensor, b: torch.Tensor) -> str:
    return f"{int((a.argmax(-1) != b.argmax(-1)).sum())} of {a.shape[0]} predictions changed"


def toys(names: list[str]) -> None:
    from hydra import compose, initialize_config_module

    from sweep.artifacts import Artifacts, ComputeLedger, Runtime
    from sweep.cache import ArtifactCache
    from sweep.cellspec import cell_spec
    from sweep.conf_path import CONF_PACKAGE
    from sweep.data import batches
    from sweep.metrics import rank_metrics
    from sweep.probes import fit_probes

    for name in names:
        with initialize_config_module(config_module=CONF_PACKAGE, version_base="1.3"):
            spec = cell_spec(compose("config", overrides=[f"model={name}", "logger=none", "compute.device=cpu"]))
        settings = spec.settings
        torch.set_num_threads(1)
        artifacts = Artifacts(
            spec,
            ArtifactCache(os.environ.get("SWEEP_CACHE_DIR", ".cache/sweep")),
            Runtime.of(settings.compute),
            ComputeLedger(),
        )
        _, loaded = artifacts.model()
        _, splits = artifacts.images()
        adapter, n_classes, probe = loaded.adapter, settings.data["n_classes"], settings.probe
        readouts = settings.model.readouts
        native = [r for r, s in readouts.items() if s["head"] != "fitted"]
        projection = settings.model.projection_readout
        runs = []
        for count in COUNTS:
            torch.set_num_threads(count)
            run: dict[str, torch.Tensor] = {}
            with torch.inference_mode():
                for split in ("train", "val"):
                    images = splits[split].images
                    run[split] = torch.cat(
                        [
                            torch.stack(list(adapter.hidden_states(artifacts.pixels(images[part]))))
                            for part in batches(len(images), settings.compute.batch_size)
                        ],
                        1,
                    )
                if native:
                    run["native logits"] = adapter.logits(run["val"][-1], native[0])
            if readouts[projection]["head"] == "fitted":
                with torch.inference_mode():
                    features = adapter.float_readout_features(run["train"][-1], projection)
                (head,) = fit_probes(
                    features,
                    splits["train"].labels,
                    n_classes,
                    method=probe.choice,
                    settings=probe.values,
                    progress=False,
                )
                adapter.install_head(projection, head)
            with torch.inference_mode():
                run["projection logits"] = adapter.projection_logits(run["val"][-1][:, adapter.cls_index], projection)
            heads = fit_probes(
                run["train"][:, :, adapter.cls_index],
                splits["train"].labels,
                n_classes,
                method=str(probe["method"]),
                settings=probe["settings"],
                progress=False,
            )
            val_cls = run["val"][:, :, adapter.cls_index]
            run["probe logits"] = torch.stack([h.logits(v) for h, v in zip(heads, val_cls)])
            run["probe accuracy"] = torch.tensor(
                [rank_metrics(h.logits(v), splits["val"].labels)["accuracy"] for h, v in zip(heads, val_cls)]
            )
            runs.append(run)
        one, two = runs
        print(f"{name} ({len(splits['train'])} train, {len(splits['val'])} val images):")
        for split in ("train", "val"):
            per_layer = (one[split] - two[split]).abs().amax(dim=(1, 2, 3))
            print(
                f"  {split} hidden states 0..N: max |difference| {float(per_layer.max()):.1e} "
                f"(max |h| {float(one[split].abs().max()):.1f}); {int((per_layer == 0).sum())} of "
                f"{len(per_layer)} layers bit-identical"
            )
        for key in ("native logits", "projection logits"):
            if key in one:
                print(f"  {key}: max |difference| {largest(one[key], two[key])}, {changed(one[key], two[key])}")
        flips = (one["probe logits"].argmax(-1) != two["probe logits"].argmax(-1)).sum(1).tolist()
        print(
            f"  layer probes: logits max |difference| {largest(one['probe logits'], two['probe logits'])}, "
            f"predictions changed per layer {flips}, accuracies equal: "
            f"{torch.equal(one['probe accuracy'], two['probe accuracy'])}"
        )


def base() -> None:
    import transformers

    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(transformers.ViTConfig(num_labels=1000)).eval()
    pixels = torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    runs = []
    for count in COUNTS:
        torch.set_num_threads(count)
        with torch.inference_mode():
            out = model(pixel_values=pixels, output_hidden_states=True)
            projection = model.classifier(model.vit.layernorm(out.hidden_states[-1][:, 0]))
        runs.append((torch.stack(out.hidden_states), out.logits, projection))
    (h1, l1, p1), (h2, l2, p2) = runs
    print(
        f"random ViT-base, 8 images: hidden states 0..12 max |difference| {largest(h1, h2)} "
        f"(max |h| {float(h1.abs().max()):.1f}); logits {largest(l1, l2)}, {changed(l1, l2)}; "
        f"CLS projection {largest(p1, p2)}, {changed(p1, p2)}"
    )


def probes() -> None:
    import sweep.linear_heads as linear_heads

    spent = [0.0]
    inner = linear_heads.one_thread

    @contextmanager
    def timed():
        started = time.perf_counter()
        with inner():
            yield
        spent[0] += time.perf_counter() - started

    linear_heads.one_thread = timed
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(1000).repeat_interleave(10)
    means = torch.randn(1000, 768, generator=g)
    x = torch.stack([means[labels] + 2 * torch.randn(len(labels), 768, generator=g) for _ in range(2)])
    fits = {
        "ridge": lambda: linear_heads.ridge_heads(
            x, labels, 1000, alpha=1.0, standardize=True, fit_intercept=True, progress=False
        ),
        "logistic (torch, 10 steps)": lambda: linear_heads.logistic_heads(
            x, labels, 1000, solver="torch", C=1.0, max_iter=10, tol=1e-4, standardize=True, progress=False
        ),
    }
    for method, fit in fits.items():
        heads = []
        for count in COUNTS:
            torch.set_num_threads(count)
            spent[0], started = 0.0, time.perf_counter()
            heads.append(fit())
            total = time.perf_counter() - started
            print(
                f"{method} on {tuple(x.shape)}, {count} thread(s): {total:.2f} s, of which "
                f"{spent[0]:.2f} s ({100 * spent[0] / total:.1f}%) on one thread"
            )
        same = all(torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias) for a, b in zip(*heads))
        print(f"  heads bit-identical at 1 and 2 threads: {same}")


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "toys"
    if what == "toys":
        toys(sys.argv[2:] or ["toy_vit", "toy_deit", "toy_beit", "toy_dinov2", "toy_clip"])
    elif what == "base":
        base()
    elif what == "probes":
        probes()
    else:
        sys.exit(f"usage: {sys.argv[0]} toys [model ...] | base | probes")
