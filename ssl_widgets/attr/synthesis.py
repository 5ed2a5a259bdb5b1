"""Shared pieces of the image-synthesis methods (feature visualisation, model difference)."""
from __future__ import annotations

import torch

from ..core import gaussian_blur, module_hooks
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

    try:
        with module_hooks(forward=[(module, hook)]):
            model.run_trunk(model.normalize(x))
    except _Stop:
        pass
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
    """Gaussian blur of ``(B,C,H,W)`` truncated at 4 sigma (reflect padding): :func:`ssl_widgets.core.gaussian_blur`.

    Args:
        x: ``(B, C, H, W)`` images or gradients.
        sigma: standard deviation in pixels.

    Returns:
        The blurred tensor (``x`` itself when the image is too small to blur).

    Examples:
        >>> gaussian_blur_image(torch.ones(1, 3, 8, 8), 1.0).allclose(torch.ones(1, 3, 8, 8))
        True
    """
    return gaussian_blur(x, None, sigma)
