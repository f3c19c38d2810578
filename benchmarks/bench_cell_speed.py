"""A cell's throughput against the bare HF model, on the same pre-made tensors.

    python benchmarks/bench_cell_speed.py                      # CPU: toy_vit and tiny configs of the 5 classes
    python benchmarks/bench_cell_speed.py --device cuda --dtype bfloat16 --base   # GPU: ViT-B/16 shape

"cell" = the cell's own loop for an intervention at layer L (uint8 images normalised on
the device, the CLS-replacement hook, the readout, top-1/top-5 metrics) with a full pass;
"resumed" = the same cell starting from cached hidden states (blocks L+1..N only).
"bare" = `model(pixel_values=x).logits` over pre-normalised float batches. Best of
--repeats runs each; the ratio is cell / bare (target >= 0.85).
"""

from __future__ import annotations

import argparse
import time

import torch
import transformers

from sweep.adapters import make_adapter
from sweep.data import batches, normalise
from sweep.metrics import rank_metrics

PREPROCESS = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}


def configs(base: bool) -> dict[str, tuple[type, transformers.PretrainedConfig]]:
    size = (dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                 image_size=224, patch_size=16) if base else
            dict(hidden_size=192, num_hidden_layers=6, num_attention_heads=3, intermediate_size=768,
                 image_size=64, patch_size=8))
    found = {"vit": (transformers.ViTForImageClassification, transformers.ViTConfig(**size, num_labels=1000))}
    if not base:
        found.update({
            "deit": (transformers.DeiTForImageClassificationWithTeacher, transformers.DeiTConfig(**size, num_labels=1000)),
            "beit": (transformers.BeitForImageClassification, transformers.BeitConfig(
                **size, num_labels=1000, use_mean_pooling=True, use_relative_position_bias=True)),
            "dinov2": (transformers.Dinov2ForImageClassification, transformers.Dinov2Config(**size, num_labels=1000)),
            "clip": (transformers.CLIPForImageClassification, transformers.CLIPConfig(vision_config=size, num_labels=1000)),
        })
    return found


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return min(times)


def bench(kind: str, model: torch.nn.Module, args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    adapter = make_adapter(kind, model.to(device).eval())
    size = model.config.vision_config.image_size if kind == "clip" else model.config.image_size
    images = torch.randint(0, 256, (args.images, 3, size, size), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 1000, (args.images,), device=device)
    pixels = normalise(images, PREPROCESS)
    replacement = torch.randn(args.images, adapter.hidden_size, device=device)
    layer = adapter.n_layers // 2
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")

    def bare() -> None:
        with torch.inference_mode(), autocast:
            for part in batches(args.images, args.batch_size):
                model(pixel_values=pixels[part]).logits.float()

    def cell() -> None:  # the loop of sweep.cell._intervened_logits without cached hidden states
        out = []
        with torch.inference_mode(), autocast:
            for part in batches(args.images, args.batch_size):
                with adapter.cls_edit(layer, lambda _cls, part=part: replacement[part]):
                    *_, hidden = adapter.hidden_states(normalise(images[part], PREPROCESS))
                out.append(adapter.logits(hidden, "native").float())
        rank_metrics(torch.cat(out), labels)

    with torch.inference_mode(), autocast:
        hidden_at_layer = torch.cat([adapter.run_blocks(adapter.embed(pixels[p]), 0, layer)
                                     for p in batches(args.images, args.batch_size)]).float()

    def resumed() -> None:
        out = []
        with torch.inference_mode(), autocast:
            for part in batches(args.images, args.batch_size):
                hidden = adapter.with_cls(hidden_at_layer[part], replacement[part])
                out.append(adapter.logits(adapter.run_blocks(hidden, layer, adapter.n_layers), "native").float())
        rank_metrics(torch.cat(out), labels)

    bare(), cell()  # warm-up
    t_bare, t_cell, t_resumed = (best_of(args.repeats, f) for f in (bare, cell, resumed))
    rate = lambda t: args.images / t  # noqa: E731
    ratio = t_bare / t_cell
    print(f"{kind:<7} bare {rate(t_bare):8.1f} img/s | cell {rate(t_cell):8.1f} img/s | ratio {ratio:.3f} "
          f"(target >= 0.85): {'PASS' if ratio >= 0.85 else 'FAIL'} | resumed at L={layer} {rate(t_resumed):8.1f} img/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--base", action="store_true", help="ViT-B/16 shape (use on a GPU)")
    parser.add_argument("--no-flush-denormal", action="store_true",
                        help="keep subnormal floats (cells flush them by default: compute.flush_denormal)")
    args = parser.parse_args()
    torch.set_flush_denormal(not args.no_flush_denormal)  # for both paths, as a cell does
    torch.manual_seed(0)
    print(f"device {args.device}, dtype {args.dtype}, batch {args.batch_size}, {args.images} images, "
          f"{torch.get_num_threads()} threads")
    for kind, (cls, config) in configs(args.base).items():
        config._attn_implementation = "sdpa"
        bench(kind, cls(config), args)


if __name__ == "__main__":
    main()
