"""Probe fitting at the study's shape: ridge's time, and the torch logistic solver's time and
validation accuracy against scikit-learn's at the same C, tol and max_iter.

    PYTHONPATH=src python benchmarks/bench_probes.py            # 10,000 x 768, 1000 classes, 13 layers
    PYTHONPATH=src python benchmarks/bench_probes.py --quick    # a small shape, for a smoke run

Features are synthetic: per layer, x = s_layer · μ_class + ε, with μ and ε Gaussian in a
shared random basis with power-law spectra (ε: variance ∝ 1/k, like the fast-decaying
spectra of real CLS features; μ: ∝ 1/k^mean_decay), plus a large offset on a few
dimensions, like ViT's outlier features. s grows over the layers, so the probes' accuracy
climbs from layer to layer as in the study. Train and validation sets are separate draws.

scikit-learn fits layers one at a time, so it is timed on a few layers (--sklearn-layers)
and its time per layer extrapolated to all of them; the output says which. Times are wall
clock; the CPU time of this process is printed beside them, because on a shared machine
other processes inflate wall time (CPU time is the fairer ratio there).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable

import torch

from sweep.linear_heads import LinearHead
from sweep.probes import fit_probes

RIDGE_TARGET_S = 30.0
SPEEDUP_TARGET = 10.0
ACCURACY_GAP_TARGET = 0.5  # points


def synthetic_features(
    n_train: int, n_val: int, dim: int, n_classes: int, strengths: list[float], *, mean_decay: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train (L, n_train, D), train labels, val (L, n_val, D), val labels), class-balanced."""
    g = torch.Generator().manual_seed(seed)
    train_labels = torch.arange(n_train) % n_classes
    val_labels = torch.arange(n_val) % n_classes
    k = torch.arange(1, dim + 1, dtype=torch.float32)
    basis, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g))
    means = torch.randn(n_classes, dim, generator=g) * k.pow(-mean_decay / 2)
    noise_sd = k.pow(-0.5)
    offset = torch.zeros(dim)
    offset[: max(1, dim // 200)] = 50.0

    def draw(labels: torch.Tensor, strength: float) -> torch.Tensor:
        signal = strength * means[labels] + torch.randn(len(labels), dim, generator=g) * noise_sd
        return signal @ basis.T + offset

    train = torch.stack([draw(train_labels, s) for s in strengths])
    val = torch.stack([draw(val_labels, s) for s in strengths])
    return train, train_labels, val, val_labels


def accuracy(head: LinearHead, features: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent."""
    return 100.0 * float((head.logits(features).argmax(dim=1) == labels).double().mean())


def timed(fit: Callable[[], list[LinearHead]]) -> tuple[list[LinearHead], float, float]:
    """fit()'s result, its wall-clock seconds and this process's CPU seconds."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fit()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="training examples")
    parser.add_argument("--n-val", type=int, default=5_000, help="validation examples")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--layers", type=int, default=13)
    parser.add_argument(
        "--strength",
        type=float,
        nargs=2,
        default=(1.9, 2.6),
        metavar=("FIRST", "LAST"),
        help="class-signal scale at the first and last layer",
    )
    parser.add_argument("--mean-decay", type=float, default=2.0, help="class means' spectrum exponent")
    parser.add_argument("--alpha", type=float, default=1.0, help="ridge alpha")
    parser.add_argument("--C", type=float, default=0.01, help="logistic C (both solvers)")
    parser.add_argument("--tol", type=float, default=1e-4, help="logistic tol (both solvers)")
    parser.add_argument("--max-iter", type=int, default=500, help="logistic max_iter (both solvers)")
    parser.add_argument(
        "--sklearn-layers",
        type=int,
        nargs="+",
        default=None,
        help="layers scikit-learn is timed on (default: first and last)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a small shape: 2000 x 128, 100 classes, 3 layers")
    parser.add_argument("--skip-sklearn", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.n, args.n_val, args.dim, args.classes, args.layers = 2000, 1000, 128, 100, 3

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(cores)
    # The probes module logs iteration counts at INFO; show them.
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("  [%(name)s] %(message)s"))
    logging.getLogger("sweep.linear_heads").addHandler(handler)
    logging.getLogger("sweep.linear_heads").setLevel(logging.INFO)

    first, last = args.strength
    strengths = [first + (last - first) * i / max(args.layers - 1, 1) for i in range(args.layers)]
    train, train_labels, val, val_labels = synthetic_features(
        args.n, args.n_val, args.dim, args.classes, strengths, mean_decay=args.mean_decay, seed=args.seed
    )
    print(
        f"shape: train {args.n} x {args.dim}, val {args.n_val}, {args.classes} classes, {args.layers} layers; "
        f"torch {torch.__version__} on {cores} CPU threads"
    )

    # -- ridge --
    settings = {"alpha": args.alpha, "standardize": True, "fit_intercept": True}
    heads, wall, cpu = timed(
        lambda: fit_probes(train, train_labels, args.classes, method="ridge", settings=settings, progress=False)
    )
    print(
        f"ridge: {args.layers} layers in {wall:.1f} s (target <= {RIDGE_TARGET_S:.0f} s, {wall / RIDGE_TARGET_S:.2f} "
        f"of it; CPU {cpu:.1f} s): {verdict(wall <= RIDGE_TARGET_S)}"
    )
    print(
        "ridge: val accuracy per layer (%): "
        + " ".join(f"{accuracy(h, v, val_labels):.1f}" for h, v in zip(heads, val))
    )

    # -- logistic, torch: all layers as one batched problem --
    settings = {"C": args.C, "max_iter": args.max_iter, "tol": args.tol, "standardize": True}
    print(f"logistic: C={args.C}, tol={args.tol}, max_iter={args.max_iter}, standardize=True (both solvers)")
    torch_heads, torch_wall, torch_cpu = timed(
        lambda: fit_probes(
            train,
            train_labels,
            args.classes,
            method="logistic",
            settings={**settings, "solver": "torch"},
            progress=False,
        )
    )
    torch_acc = [accuracy(h, v, val_labels) for h, v in zip(torch_heads, val)]
    print(
        f"logistic torch: {args.layers} layers in {torch_wall:.1f} s ({torch_wall / args.layers:.1f} s per layer; "
        f"CPU {torch_cpu:.0f} s)"
    )
    print("logistic torch: val accuracy per layer (%): " + " ".join(f"{a:.1f}" for a in torch_acc))
    if args.skip_sklearn:
        return

    # -- logistic, scikit-learn: a few layers, extrapolated --
    layers = args.sklearn_layers if args.sklearn_layers is not None else sorted({0, args.layers - 1})
    walls, cpus, gaps = [], [], []
    for layer in layers:
        (head,), wall, cpu = timed(
            lambda: fit_probes(
                train[layer],
                train_labels,
                args.classes,
                method="logistic",
                settings={**settings, "solver": "sklearn"},
                progress=False,
            )
        )
        walls.append(wall)
        cpus.append(cpu)
        sk_acc = accuracy(head, val[layer], val_labels)
        gaps.append(abs(torch_acc[layer] - sk_acc))
        print(
            f"logistic sklearn: layer {layer} in {wall:.1f} s (CPU {cpu:.0f} s); val accuracy sklearn {sk_acc:.2f}% "
            f"vs torch {torch_acc[layer]:.2f}% (torch - sklearn = {torch_acc[layer] - sk_acc:+.2f} points)"
        )
    wall_total = sum(walls) / len(walls) * args.layers
    cpu_total = sum(cpus) / len(cpus) * args.layers
    print(
        f"logistic sklearn: timed on layers {layers} only ({sum(walls):.0f} s); {sum(walls) / len(walls):.0f} s per "
        f"layer x {args.layers} layers = {wall_total:.0f} s extrapolated (CPU {cpu_total:.0f} s)"
    )
    speedup = wall_total / torch_wall
    print(
        f"logistic speed-up: sklearn {wall_total:.0f} s (extrapolated) / torch {torch_wall:.0f} s = {speedup:.1f}x "
        f"(target >= {SPEEDUP_TARGET:.0f}x; CPU-time ratio {cpu_total / torch_cpu:.1f}x): "
        f"{verdict(speedup >= SPEEDUP_TARGET)}"
    )
    print(
        f"logistic accuracy: max |torch - sklearn| = {max(gaps):.2f} points on layers {layers} "
        f"(target <= {ACCURACY_GAP_TARGET} points): {verdict(max(gaps) <= ACCURACY_GAP_TARGET)}"
    )


if __name__ == "__main__":
    main()
