"""Map utilities of the occlusion methods: window grids to pixel maps.

:func:`upsample` and :func:`normalize_map` live in :mod:`ssl_widgets.core` (the metrics use them
without importing ``attr``); they are re-exported here so that existing imports keep working.
"""
from __future__ import annotations

import torch

from ..core import as_pair as _pair  # noqa: F401  (re-exported for older imports)
from ..core import normalize_map, upsample

__all__ = ["upsample", "window_mean_map", "normalize_map"]


def _window_sums(values: torch.Tensor, span: tuple[int, int], window: tuple[int, int],
                 stride: tuple[int, int]) -> torch.Tensor:
    """``(B,*span)``: at each pixel, the sum of ``values[:, i, j]`` over the windows covering it.

    Each value is placed at its window's top-left corner, then a running sum along each axis minus
    the running sum ``window`` pixels earlier adds up the corners within one window's reach: memory
    is a few image-size buffers, whatever the number of windows.
    """
    (wh, ww), (sh, sw) = window, stride
    b, n_h, n_w = values.shape
    corners = values.new_zeros(b, *span)
    corners[:, : (n_h - 1) * sh + 1: sh, : (n_w - 1) * sw + 1: sw] = values
    for dim, width in ((1, wh), (2, ww)):
        running = corners.cumsum(dim)
        corners = running.clone()
        corners.narrow(dim, width, span[dim - 1] - width).sub_(running.narrow(dim, 0, span[dim - 1] - width))
    return corners


def window_mean_map(grid: torch.Tensor, size: tuple[int, int], window: tuple[int, int],
                    stride: tuple[int, int]) -> torch.Tensor:
    """Pixel map ``(B,H,W)``: each pixel the mean of the grid values of the windows covering it.

    Pixels that no window covers (when the windows do not tile the image exactly) are 0. Memory is
    a few image-size buffers (the window values are accumulated, never expanded per pixel).

    Examples:
        >>> window_mean_map(torch.tensor([[[1.0, 3.0]]]), (1, 3), (1, 2), (1, 1))
        tensor([[[1., 2., 3.]]])
    """
    b, n_h, n_w = grid.shape
    (wh, ww), (sh, sw) = window, stride
    span = ((n_h - 1) * sh + wh, (n_w - 1) * sw + ww)
    total = _window_sums(grid.double(), span, window, stride)
    count = _window_sums(torch.ones(1, n_h, n_w, dtype=torch.float64, device=grid.device), span, window, stride)
    mean = (total / count.clamp(min=1)).to(grid.dtype)
    out = grid.new_zeros(b, *size)
    out[:, : span[0], : span[1]] = mean
    return out
