"""Regenerate tests/data/pinned_maps.pt (the reference maps of tests/test_pinned_maps.py).

Run ONLY when a change of the maps is intended (and say so in the commit message):

    PYTHONPATH=. python tests/data/make_pinned_maps.py

The pins were computed from the code before the issue-12 refactor (shared primitives moved out
of attr/engine.py), so the test proves that the refactor left every pinned map bit-identical.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ssl_widgets.explain import explain_pair
from ssl_widgets.models import load_model

SIZE = 64
#: (name in the pin file, model, method name, layer, overrides, seeded)
CASES = [
    ("conditional-occlusion", "tiny-simclr", "conditional-occlusion", None,
     {"sliding_window_shapes": 16, "strides": 8}, False),
    ("interaction-cam:max", "tiny-simclr", "interaction-cam:max", None, {}, False),
    ("input-x-gradient", "tiny-simclr", "input-x-gradient", None, {}, False),
    ("averaged-transforms:noise", "tiny-simclr", "averaged-transforms:noise", None, {"steps": 4}, True),
    ("pixel-invariance", "tiny-simclr", "pixel-invariance", None,
     {"n_samples": 16, "size": 8, "epochs": 5}, True),
    ("cls-attention", "tiny-dino-vit", "cls-attention", None, {}, False),
]


def pair(size: int = SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """A deterministic, smooth-but-structured image pair built from torch.arange (no files, no RNG)."""
    ramp = torch.arange(size * size, dtype=torch.float32).view(1, 1, size, size) / (size * size)
    yy = torch.arange(size, dtype=torch.float32).view(1, 1, size, 1)
    xx = torch.arange(size, dtype=torch.float32).view(1, 1, 1, size)
    x1 = torch.cat([ramp, (torch.sin(xx / 5) * torch.cos(yy / 7) + 1) / 2, (xx + yy).remainder(17) / 17], 1)
    x2 = torch.cat([(torch.cos(yy / 4) + 1) / 2 * torch.ones_like(xx), 1 - ramp, (xx * yy).remainder(23) / 23], 1)
    return x1.clamp(0, 1), x2.clamp(0, 1)


def compute(case) -> tuple[torch.Tensor, torch.Tensor]:
    _key, model_name, method, layer, overrides, seeded = case
    model = load_model(model_name)
    x1, x2 = pair()
    generator = torch.Generator().manual_seed(7919) if seeded else None
    result = explain_pair(model, method, x1, x2, layer=layer, generator=generator, **overrides)
    return result[0].clone(), result[1].clone()


if __name__ == "__main__":
    torch.set_num_threads(1)
    pins = {}
    for case in CASES:
        m1, m2 = compute(case)
        pins[case[0]] = torch.stack([m1, m2])
        print(case[0], tuple(m1.shape), float(m1.abs().sum()), float(m2.abs().sum()))
    torch.save(pins, Path(__file__).with_name("pinned_maps.pt"))
