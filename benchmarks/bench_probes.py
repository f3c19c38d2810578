"""Probes and heads at the study's shape: closed-form ridge for 13 layers, and the batched
torch logistic solver against scikit-learn's LogisticRegression(lbfgs) at the same C.

    python benchmarks/bench_probes.py                 # 10,000 × 768, 1,000 classes, 13 layers
    python benchmarks/bench_probes.py --quick         # a smaller shape, seconds

Features are synthetic (class means + noise) with a held-out validation set, so the
probes reach moderate, not trivial, accuracy. scikit-learn is timed on --sklearn-layers
layers and extrapolated to all layers (printed as such).
"""

from __future__ import annotations

import argparse
import time

import torch

from sweep.probes import fit_probes


def synthetic(n: int, dim: int, classes: int, layers: int, noise_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class means shared by every call (seed 0); the noise is drawn with `noise_seed`."""
    means = torch.randn(layers, classes, dim, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(n) % classes
    signal = torch.linspace(0.05, 0.25, layers).view(layers, 1, 1)  # later layers carry more label information
    noise = torch.randn(layers, n, dim, generator=torch.Generator().manual_seed(noise_seed))
    return signal * means[:, labels] + noise, labels


def accuracy(heads, features, labels) -> list[float]:
    return [float((h.logits(f).argmax(1) == labels).double().mean()) for h, f in zip(heads, features)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--layers", type=int, default=13)
    parser.add_argument("--C", type=float, default=0.01, help="inverse L2 strength, as scikit-learn's C")
    parser.add_argument("--max-iter", type=int, default=100)
    parser.add_argument("--sklearn-layers", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="2,000 × 128, 100 classes, 4 layers")
    args = parser.parse_args()
    if args.quick:
        args.n, args.dim, args.classes, args.layers = 2000, 128, 100, 4
    print(f"shape: {args.layers} layers × {args.n} train × {args.dim} dims, {args.classes} classes; "
          f"{torch.get_num_threads()} threads")
    train, labels = synthetic(args.n, args.dim, args.classes, args.layers, noise_seed=1)
    val, val_labels = synthetic(args.n // 2, args.dim, args.classes, args.layers, noise_seed=2)

    started = time.perf_counter()
    ridge = fit_probes(train, labels, args.classes, method="ridge",
                       settings={"alpha": 1.0, "standardize": True, "fit_intercept": True}, progress=False)
    ridge_s = time.perf_counter() - started
    ridge_acc = accuracy(ridge, val, val_labels)
    print(f"ridge: {args.layers} layers in {ridge_s:.1f} s (target <= 30 s): {'PASS' if ridge_s <= 30 else 'FAIL'}; "
          f"val accuracy first/last layer {ridge_acc[0]:.3f}/{ridge_acc[-1]:.3f}")

    settings = {"C": args.C, "max_iter": args.max_iter, "tol": 1e-4, "standardize": True}
    started = time.perf_counter()
    torch_heads = fit_probes(train, labels, args.classes, method="logistic", settings={**settings, "solver": "torch"},
                             progress=False)
    torch_s = time.perf_counter() - started
    k = args.sklearn_layers
    started = time.perf_counter()
    sk_heads = fit_probes(train[-k:], labels, args.classes, method="logistic",
                          settings={**settings, "solver": "sklearn"}, progress=False)
    sk_s = (time.perf_counter() - started) / k * args.layers
    torch_acc, sk_acc = accuracy(torch_heads[-k:], val[-k:], val_labels), accuracy(sk_heads, val[-k:], val_labels)
    gap = max(abs(a - b) for a, b in zip(torch_acc, sk_acc)) * 100
    print(f"logistic torch (all {args.layers} layers, one batched L-BFGS): {torch_s:.1f} s")
    print(f"logistic sklearn lbfgs: {sk_s:.1f} s for {args.layers} layers (measured on {k}, extrapolated)")
    print(f"speed-up: {sk_s / torch_s:.1f}x (target >= 10x): {'PASS' if sk_s / torch_s >= 10 else 'FAIL'}")
    print(f"val accuracy on the last {k} layer(s): torch {torch_acc} vs sklearn {sk_acc}; max gap {gap:.2f} points "
          f"(target <= 0.5): {'PASS' if gap <= 0.5 else 'FAIL'}")


if __name__ == "__main__":
    main()
