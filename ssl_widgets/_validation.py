"""Input checks shared by models, methods and metrics.

Every public entry point runs its image arguments through :func:`check_images` so that a
wrong shape, dtype or value range is reported with a message that names the problem, instead
of surfacing as an obscure error deep inside a convolution.
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["PIXEL_TOLERANCE", "check_autograd_available", "check_images", "check_materialized", "check_number",
           "check_pair", "BeyondRangePair"]

#: how far pixel values may lie outside ``[0, 1]``: resampling overshoots a little and Captum's
#: perturbation tools add small noise (``sensitivity_max`` uses a radius of 0.02); images in 0..255
#: or -1..1 are far beyond it and are refused.
PIXEL_TOLERANCE = 0.05


class BeyondRangePair(tuple):
    """A pair ``(x1, x2)`` whose values may leave ``[0, 1]`` on purpose: :func:`check_pair` checks it in
    every other way. The exemption travels in the value itself (no hidden state).

    For metrics that perturb valid images beyond the range (max-sensitivity adds input-space noise, as
    the paper does).

    Examples:
        >>> x1, x2 = check_pair(BeyondRangePair((torch.full((1, 3, 4, 4), 1.2), torch.zeros(1, 3, 4, 4))))
    """


def check_images(x: object, name: str = "x", dtype: torch.dtype | None = None,
                 value_range: bool = True) -> torch.Tensor:
    """Validate a batch of RGB images in pixel space.

    Args:
        x: candidate tensor, expected shape ``(B, 3, H, W)``, floating point, finite, values in
            ``[0, 1]`` (up to :data:`PIXEL_TOLERANCE`).
        name: argument name used in error messages.
        dtype: the model's dtype, if given: float tensors of another precision (``float64``,
            ``float16``, ``bfloat16``) are converted to it.
        value_range: refuse values outside ``[0, 1]`` (more than :data:`PIXEL_TOLERANCE`).

    Returns:
        ``x`` (converted to ``dtype`` if needed; the autograd graph is kept).

    Raises:
        TypeError: ``x`` is not a tensor or is not floating point (e.g. ``uint8``).
        ValueError: wrong rank, channel count, empty batch, non-finite values, or values
            clearly outside ``[0, 1]`` (the message says how to convert).

    Examples:
        >>> check_images(torch.zeros(1, 3, 8, 8)).shape
        torch.Size([1, 3, 8, 8])
        >>> check_images(torch.zeros(1, 3, 8, 8, dtype=torch.float64), dtype=torch.float32).dtype
        torch.float32
        >>> check_images(torch.full((1, 3, 8, 8), 255.0))
        Traceback (most recent call last):
        ...
        ValueError: x has values in [255, 255], outside the pixel range [0, 1]: divide images in 0..255 by 255 (x / 255), map images in -1..1 with (x + 1) / 2, or undo a normalisation with x * std + mean (the model normalises internally)
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
    low, high = float(x.detach().min()), float(x.detach().max())
    if value_range and (low < -PIXEL_TOLERANCE or high > 1 + PIXEL_TOLERANCE):
        raise ValueError(
            f"{name} has values in [{low:.4g}, {high:.4g}], outside the pixel range [0, 1]: divide images in "
            f"0..255 by 255 (x / 255), map images in -1..1 with (x + 1) / 2, or undo a normalisation with "
            f"x * std + mean (the model normalises internally)"
        )
    if dtype is not None and x.dtype != dtype:
        x = x.to(dtype)
    return x


def check_pair(inputs: object, names: tuple[str, str] = ("x1", "x2"),
               dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a pair ``(x1, x2)`` of image batches with equal batch size.

    Args:
        inputs: a tuple or list of two image tensors.
        names: argument names for error messages.
        dtype: the model's dtype (inputs of another float precision are converted to it).

    Returns:
        The two validated tensors (detached, converted to ``dtype`` if given).

    Raises:
        TypeError / ValueError: as :func:`check_images`, or when ``inputs`` is not a pair or the
        batch sizes differ.

    Examples:
        >>> x1, x2 = check_pair((torch.zeros(2, 3, 8, 8), torch.ones(2, 3, 8, 8)))
    """
    if not isinstance(inputs, (tuple, list)) or len(inputs) != 2:
        raise TypeError("inputs must be a pair (x1, x2) of image tensors of shape (B, 3, H, W)")
    in_range = not isinstance(inputs, BeyondRangePair)
    x1 = check_images(inputs[0], names[0], dtype, in_range).detach()  # methods never differentiate through their inputs
    x2 = check_images(inputs[1], names[1], dtype, in_range).detach()
    if x1.shape[0] != x2.shape[0]:
        raise ValueError(f"batch size mismatch: {names[0]} has {x1.shape[0]} images, {names[1]} has {x2.shape[0]}")
    return x1, x2


def check_number(value: object, name: str, minimum: float | None = None, maximum: float | None = None,
                 above_minimum: bool = False) -> float:
    """``value`` as a finite float within the bounds; a clear error naming ``name`` otherwise.

    Args:
        value: the candidate (an int or float; not a bool).
        name: the argument's name, for the message.
        minimum, maximum: inclusive bounds (``None``: unbounded).
        above_minimum: the value must be strictly greater than ``minimum`` (e.g. a learning rate).

    Returns:
        ``float(value)``.

    Raises:
        TypeError: not a real number. ValueError: NaN, infinite or out of bounds.

    Examples:
        >>> check_number(0.15, "stdev", minimum=0)
        0.15
        >>> check_number(float("nan"), "stdev", minimum=0)
        Traceback (most recent call last):
        ...
        ValueError: stdev must be a finite number, got nan
        >>> check_number(0, "lr", minimum=0, above_minimum=True)
        Traceback (most recent call last):
        ...
        ValueError: lr must be > 0, got 0
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if minimum is not None and (number < minimum or (above_minimum and number == minimum)):
        raise ValueError(f"{name} must be {'>' if above_minimum else '>='} {minimum:g}, got {value!r}")
    if maximum is not None and number > maximum:
        raise ValueError(f"{name} must be <= {maximum:g}, got {value!r}")
    return number


def check_materialized(model: nn.Module) -> None:
    """A clear ``ValueError`` when ``model`` has parameters or buffers on the meta device (no values).

    A model built under ``torch.device("meta")`` (or with ``init_empty_weights``) computes shapes only:
    every map would be empty, so every method refuses it up front.

    Examples:
        >>> check_materialized(nn.Linear(2, 2))
        >>> check_materialized(nn.Linear(2, 2, device="meta"))
        Traceback (most recent call last):
        ...
        ValueError: model parameters are on the meta device: load weights first (e.g. model.load_state_dict(state, assign=True) or model.to_empty(device="cpu") followed by loading), then explain it
    """
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        raise ValueError(
            "model parameters are on the meta device: load weights first (e.g. model.load_state_dict(state, "
            "assign=True) or model.to_empty(device=\"cpu\") followed by loading), then explain it"
        )


def check_autograd_available(method: str) -> None:
    """A clear ``RuntimeError`` when a gradient method is called under ``torch.inference_mode()``.

    Inference mode cannot be left for a block whose results it hands back, and gradients cannot be taken
    inside it, so a method that needs gradients refuses before touching anything (``torch.no_grad()``
    blocks are fine: the methods enable gradients themselves).

    Examples:
        >>> with torch.inference_mode():
        ...     check_autograd_available("grad-cam")
        Traceback (most recent call last):
        ...
        RuntimeError: grad-cam needs gradients, which torch.inference_mode() disables: call it outside the inference_mode block (inside torch.no_grad() is fine); the forward-only methods (occlusion, pairwise occlusion, joint occlusion, feature PCA, attention maps) work under inference mode
    """
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            f"{method} needs gradients, which torch.inference_mode() disables: call it outside the inference_mode "
            f"block (inside torch.no_grad() is fine); the forward-only methods (occlusion, pairwise occlusion, "
            f"joint occlusion, feature PCA, attention maps) work under inference mode"
        )
