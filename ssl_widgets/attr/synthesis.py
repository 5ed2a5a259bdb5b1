"""Shared pieces of the image-synthesis methods (feature visualisation, model difference)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.wrapper import SSLModel

__all__ = ["partial_forward", "total_variation", "gaussian_blur_image"]


class _Stop(Exception):
    pass


def partial_forward(model: SSLModel, x: torch.Tensor, layer: str) -> torch.Tensor:
    """The output of trunk layer ``layer`` for pixel-space ``x`` (normalised inside), without
    running the rest of the network. ``layer="stem"`` is the output of the stem (after its max-pool)."""
    name = "maxpool" if layer == "stem" and "maxpool" in dict(model.trunk.named_modules()) else layer
    module = model.get_layer(name)
    captured: list[torch.Tensor] = []

    def hook(_module, _inputs, output):
        captured.append(output)
        raise _Stop

    handle = module.register_forward_hook(hook)
    try:
        model.run_trunk(model.normalize(x))
    except _Stop:
        pass
    finally:
        handle.remove()
    if not captured:
        raise ValueError(f"layer {layer!r} was not reached in the trunk's forward pass")
    out = captured[0]
    if model.is_token_model and isinstance(out, torch.Tensor) and out.dim() == 3:
        out = model.layer_map(out, x.shape[2:])  # a ViT token layer: its patch-token grid
    return out


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Squared total variation per image: sum of squared horizontal and vertical differences, ``(B,)``."""
    dh = (x[:, :, 1:, :] - x[:, :, :-1, :]).pow(2).flatten(1).sum(1)
    dw = (x[:, :, :, 1:] - x[:, :, :, :-1]).pow(2).flatten(1).sum(1)
    return dh + dw


def gaussian_blur_image(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur (reflect padding) of ``(B,C,H,W)`` on ``x``'s device, truncated at 4 sigma."""
    radius = max(1, int(4 * sigma + 0.5))
    radius = min(radius, x.shape[2] - 1, x.shape[3] - 1)
    if radius < 1:
        return x
    pos = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (pos / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    out = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
