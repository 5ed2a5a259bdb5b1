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
    """A ``(B,h,w)`` (or ``(B,1,h,w)``) map brought to ``like``'s size with bilinear interpolation."""
    if not isinstance(maps, torch.Tensor) or not torch.is_floating_point(maps):
        raise TypeError(f"{name} must be a float tensor of shape (B, h, w)")
    if maps.dim() == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    if maps.dim() == 2:
        maps = maps[None]
    if maps.dim() != 3 or maps.shape[0] != like.shape[0]:
        raise ValueError(f"{name} must have shape (B, h, w) with B={like.shape[0]}; got {tuple(maps.shape)}")
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
