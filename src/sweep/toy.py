"""Toy models: the real HF classes at a small size, trained on digits on first use.

They stand in for the hub checkpoints on machines without hub access. Architecture
(`model.toy`) and training recipe (`toy_training`) come from the config; the result is a
`save_pretrained` folder, loaded afterwards exactly like a downloaded model.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from sweep.data import batches, normalise
from sweep.models import hf_class, transformers_class
from sweep.progress import progress_bar
from sweep.settings import Model, ToyTraining


def build_toy(model: Model, seed: int) -> torch.nn.Module:
    """A freshly initialised toy of `model.hf_class` from `model.toy.config`."""
    assert model.toy is not None, "only a toy's model config says how to build one"
    config = transformers_class("model.toy.config_class", model.toy["config_class"])(**dict(model.toy["config"]))
    torch.manual_seed(seed)
    return hf_class(model)(config)


def train_toy(
    model: Model, training: ToyTraining, images: torch.Tensor, labels: torch.Tensor, out_dir: Path
) -> dict[str, Any]:
    """Train with cross-entropy on the model's own logits (for DeiT, the average of its
    two heads, which trains both) and `save_pretrained` into `out_dir`."""
    started = time.perf_counter()
    # One toy for every cell's compute settings: it is keyed by the model and toy_training
    # alone, so its training must not read compute.flush_denormal (set per cell afterwards).
    torch.set_flush_denormal(True)
    seed, epochs, batch_size = training.seed, training.epochs, training.batch_size
    toy = build_toy(model, seed).train()
    optimiser = torch.optim.AdamW(toy.parameters(), lr=training.lr, weight_decay=training.weight_decay)
    steps = epochs * -(-len(labels) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=training.lr, total_steps=steps)
    pixels = normalise(images, model.preprocess)
    generator = torch.Generator().manual_seed(seed)
    bar = progress_bar(total=epochs, desc=f"training {model.name}", unit="epoch")
    for _ in range(epochs):
        order = torch.randperm(len(labels), generator=generator)
        for part in batches(len(labels), batch_size):
            index = order[part]
            loss = F.cross_entropy(toy(pixel_values=pixels[index]).logits, labels[index])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        bar.update()
    bar.close()
    toy.eval()
    with torch.no_grad():
        train_accuracy = float((toy(pixel_values=pixels).logits.argmax(1) == labels).float().mean())
    toy.save_pretrained(out_dir)
    log = {
        "train_accuracy": train_accuracy,
        "train_seconds": time.perf_counter() - started,
        "epochs": epochs,
        "n_train": len(labels),
    }
    (out_dir / "training.json").write_text(json.dumps(log, indent=2))
    return log
