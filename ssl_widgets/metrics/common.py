"""Shared pieces of the pair metrics."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .._validation import check_images
from ..core import upsample
from ..models.wrapper import SSLModel

__all__ = ["MetricResult", "maps_to_image_size", "embed"]


@dataclass
class MetricResult:
    """Result of a pair metric.

    Attributes:
        score: ``(B,)`` area under the curve (insertion / deletion).
        curve: ``(B, T+1)`` similarity after each step (insertion / deletion).
        drop: ``(B,)`` average-drop term ``max(0, base - score) / base``.
        increase: ``(B,)`` 0/1 increase-in-confidence indicator.
        base: ``(B,)`` the unperturbed similarity.
    """

    score: torch.Tensor | None = None
    curve: torch.Tensor | None = None
    drop: torch.Tensor | None = None
    increase: torch.Tensor | None = None
    base: torch.Tensor | None = None


def maps_to_image_size(maps: torch.Tensor, like: torch.Tensor, name: str) -> torch.Tensor:
    """Maps brought to ``like``'s size ``(B, H, W)`` with bilinear interpolation.

    Accepts this package's ``(B, h, w)`` maps (``(h, w)`` for one image) and Captum-shaped
    attributions: ``(B, 1, h, w)`` (a layer or upsampled CAM) and ``(B, 3, H, W)`` (an input
    attribution such as ``IntegratedGradients``'), reduced to one value per pixel by summing
    over the channels (Captum's ``visualization`` convention: a pixel's attribution is the sum of
    its channels').

    Args:
        maps: ``(B, h, w)``, ``(h, w)``, ``(B, 1, h, w)`` or ``(B, 3, h, w)`` float tensor.
        like: ``(B, 3, H, W)`` images whose batch size and size the maps must match.
        name: the argument's name, for the error messages.

    Returns:
        ``(B, H, W)`` maps on ``like``'s device and dtype.

    Examples:
        >>> images = torch.zeros(2, 3, 8, 8)
        >>> maps_to_image_size(torch.ones(2, 3, 4, 4), images, "map1")[0, 0, :3]
        tensor([3., 3., 3.])
        >>> maps_to_image_size(torch.ones(2, 5, 4, 4), images, "map1")
        Traceback (most recent call last):
        ...
        ValueError: map1 must have shape (B, h, w), (B, 1, h, w) or (B, 3, h, w) with B=2; got (2, 5, 4, 4)
    """
    shapes = "(B, h, w), (B, 1, h, w) or (B, 3, h, w)"
    if not isinstance(maps, torch.Tensor) or not torch.is_floating_point(maps):
        raise TypeError(f"{name} must be a float tensor of shape {shapes}")
    if maps.dim() == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    elif maps.dim() == 4 and maps.shape[1] == 3:
        maps = maps.sum(1)
    if maps.dim() == 2:
        maps = maps[None]
    if maps.dim() != 3 or maps.shape[0] != like.shape[0]:
        raise ValueError(f"{name} must have shape {shapes} with B={like.shape[0]}; got {tuple(maps.shape)}")
    if not bool(torch.isfinite(maps).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    maps = maps.to(like.device, like.dtype)
    if maps.shape[1:] != like.shape[2:]:
        maps = upsample(maps, tuple(like.shape[2:]))
    return maps


def embed(model: SSLModel, x_n: torch.Tensor, chunk: int) -> torch.Tensor:
    """Embeddings of model-input-space images in chunks, without autograd."""
    return torch.cat([model.forward_normalized(x_n[i:i + chunk]) for i in range(0, x_n.shape[0], chunk)])


def checked_pair(x1: torch.Tensor, x2: torch.Tensor,
                 dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The validated pair (in ``dtype``, detached: metrics never differentiate through their inputs)."""
    x1, x2 = check_images(x1, "x1", dtype).detach(), check_images(x2, "x2", dtype).detach()
    if x1.shape[0] != x2.shape[0]:
        raise ValueError(f"batch size mismatch: x1 has {x1.shape[0]} images, x2 has {x2.shape[0]}")
    return x1, x2
