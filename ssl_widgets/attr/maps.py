"""Map utilities: window grids to pixel maps, and aligned upsampling."""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["upsample", "window_mean_map", "normalize_map"]


def _pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    def is_int(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    pair = (value, value) if is_int(value) else tuple(value) if isinstance(value, (tuple, list)) else None
    if pair is None or len(pair) != 2 or not all(is_int(v) for v in pair):
        raise TypeError(f"{name} must be an int or a pair of ints (pixels), got {value!r}")
    return pair  # type: ignore[return-value]


def upsample(maps: torch.Tensor, size: int | tuple[int, int], *, window: int | tuple[int, int] | None = None,
             stride: int | tuple[int, int] | None = None) -> torch.Tensor:
    """Bring ``(B,h,w)`` maps to image size with bilinear interpolation, centre-aligned.

    Without ``window``, each cell of the map is taken to tile the image (a CAM cell of a stride-32
    layer covers 32x32 pixels) and its value lands on the centre of that tile (``align_corners=False``).
    With ``window`` and ``stride`` (an occlusion grid), cell ``(i, j)`` lands on the centre of its
    window, ``(stride*i + (window-1)/2, ...)``, and values beyond the outermost centres are held
    constant; the paper's code instead stretched the grid over the image, misplacing the border
    windows by up to ~27 px.

    Args:
        maps: ``(B,h,w)`` or ``(h,w)``.
        size: output ``(H, W)`` or side length.
        window: the occlusion window that produced a grid.
        stride: the occlusion stride that produced a grid.

    Returns:
        ``(B,H,W)`` (or ``(H,W)`` for a 2-D input).

    Examples:
        >>> upsample(torch.arange(4.).view(1, 2, 2), 4)[0, 0]
        tensor([0.0000, 0.2500, 0.7500, 1.0000])
    """
    squeeze = maps.dim() == 2
    grid = maps[None] if squeeze else maps
    if grid.dim() != 3:
        raise ValueError(f"maps must have shape (B, h, w) or (h, w); got {tuple(maps.shape)}")
    out_h, out_w = _pair(size, "size")
    grid = grid.float()
    if window is None:
        out = F.interpolate(grid[:, None], size=(out_h, out_w), mode="bilinear", align_corners=False)[:, 0]
    else:
        (wh, ww), (sh, sw) = _pair(window, "window"), _pair(stride if stride is not None else window, "stride")
        n_h, n_w = grid.shape[1:]

        def coords(n_out, n_cells, win, step):
            t = (torch.arange(n_out, dtype=torch.float32, device=grid.device) - (win - 1) / 2) / step
            t = t.clamp(0, max(n_cells - 1, 0))
            return 2 * t / max(n_cells - 1, 1) - 1 if n_cells > 1 else torch.zeros_like(t)

        gy, gx = coords(out_h, n_h, wh, sh), coords(out_w, n_w, ww, sw)
        sample = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)  # (H, W, 2) as (x, y)
        sample = sample[None].expand(grid.shape[0], -1, -1, -1)
        out = F.grid_sample(grid[:, None], sample, mode="bilinear", padding_mode="border", align_corners=True)[:, 0]
    return out[0] if squeeze else out


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


def normalize_map(maps: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each map of ``(B,h,w)`` to ``[0,1]`` (constant maps become 0)."""
    flat = maps.flatten(1)
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - low) / (high - low).clamp(min=1e-12)).view_as(maps)
