"""Input checks shared by models, methods and metrics.

Every public entry point runs its image arguments through :func:`check_images` so that a
wrong shape, dtype or value range is reported with a message that names the problem, instead
of surfacing as an obscure error deep inside a convolution.
"""
from __future__ import annotations

import torch

__all__ = ["check_images", "check_pair"]


def check_images(x: object, name: str = "x") -> torch.Tensor:
    """Validate a batch of RGB images in pixel space.

    Args:
        x: candidate tensor, expected shape ``(B, 3, H, W)``, floating point, finite.
        name: argument name used in error messages.

    Returns:
        ``x`` unchanged.

    Raises:
        TypeError: ``x`` is not a tensor or is not floating point (e.g. ``uint8``).
        ValueError: wrong rank, channel count, empty batch, or non-finite values.

    Examples:
        >>> check_images(torch.zeros(1, 3, 8, 8)).shape
        torch.Size([1, 3, 8, 8])
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, 3, H, W), got {type(x).__name__}")
    if not torch.is_floating_point(x):
        raise TypeError(
            f"{name} has dtype {x.dtype}; expected a float tensor in [0, 1] "
            f"(convert uint8 images with x.float() / 255)"
        )
    if x.dim() != 4:
        raise ValueError(f"{name} must have shape (B, 3, H, W); got {x.dim()} dimensions {tuple(x.shape)}")
    if x.shape[1] != 3:
        raise ValueError(f"{name} must have 3 (RGB) channels in dimension 1; got {x.shape[1]} in shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} has an empty batch")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def check_pair(inputs: object, names: tuple[str, str] = ("x1", "x2")) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a pair ``(x1, x2)`` of image batches with equal batch size.

    Args:
        inputs: a tuple or list of two image tensors.
        names: argument names for error messages.

    Returns:
        The two validated tensors.

    Raises:
        TypeError / ValueError: as :func:`check_images`, or when ``inputs`` is not a pair or the
        batch sizes differ.

    Examples:
        >>> x1, x2 = check_pair((torch.zeros(2, 3, 8, 8), torch.ones(2, 3, 8, 8)))
    """
    if not isinstance(inputs, (tuple, list)) or len(inputs) != 2:
        raise TypeError("inputs must be a pair (x1, x2) of image tensors of shape (B, 3, H, W)")
    x1 = check_images(inputs[0], names[0])
    x2 = check_images(inputs[1], names[1])
    if x1.shape[0] != x2.shape[0]:
        raise ValueError(f"batch size mismatch: {names[0]} has {x1.shape[0]} images, {names[1]} has {x2.shape[0]}")
    return x1, x2
