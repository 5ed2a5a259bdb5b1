"""A coarse first occlusion frame from inside the refined call (the Explorer's preview).

An interactive caller wants a quick coarse map (windows at a large stride) before the refined one.
Two separate calls evaluate the coarse windows twice and pay the call's setup twice. With
``on_partial=`` (and ``partial_strides=``), an occlusion call instead evaluates the windows of the
coarse grid first, hands their map to the callback (in the calling thread, while the remaining
windows are being evaluated), and then finishes the refined map, which is the same as without it.
Where the coarse grid is not part of the refined one (its stride not a multiple of the call's), or for
a batch of several pairs, the coarse map is computed by a separate call first, so the callback is
always called once, before the refined result.
"""
from __future__ import annotations

import torch

__all__ = ["coarse_indices", "preview_stride"]


def preview_stride(window: int, sizes: list[int], multiple_of: int = 1) -> int:
    """The stride of a quick first occlusion frame: the largest multiple of ``multiple_of`` in
    ``[window // 2, window]`` whose windows tile every image side in ``sizes`` exactly (no uncovered
    margin), else the smallest multiple of ``multiple_of`` from ``window // 2`` on.

    Args:
        window: the window side.
        sizes: the image sides the windows slide along.
        multiple_of: the refined call's stride: a multiple of it puts every coarse window among the
            refined call's, so that they are evaluated once.

    Examples:
        >>> preview_stride(28, [112, 112]), preview_stride(32, [112, 112]), preview_stride(22, [112, 112])
        (28, 20, 18)
        >>> preview_stride(32, [112, 112], multiple_of=8), preview_stride(28, [112, 112], multiple_of=4)
        (16, 28)
    """
    if min(window, multiple_of) < 1:
        raise ValueError(f"window {window} and multiple_of {multiple_of} must be positive")
    low = max(1, window // 2)
    candidates = [s for s in range(window, low - 1, -1) if s % multiple_of == 0]
    for stride in candidates:
        if all(side >= window and (side - window) % stride == 0 for side in sizes):
            return stride
    return candidates[-1] if candidates else low


def coarse_indices(corners: torch.Tensor, stride: tuple[int, int], coarse: tuple[int, int]) -> torch.Tensor | None:
    """Positions, among ``corners`` (the row-major grid at ``stride``), of the windows of the grid at
    ``coarse``, row-major; ``None`` where that grid is not part of this one (``coarse`` not a multiple
    of ``stride``).

    Examples:
        >>> from ssl_widgets.attr.occlusion import window_grid
        >>> coarse_indices(window_grid((8, 8), (4, 4), (2, 2)), (2, 2), (4, 4)).tolist()
        [0, 2, 6, 8]
        >>> coarse_indices(window_grid((8, 8), (4, 4), (2, 2)), (2, 2), (3, 3)) is None
        True
    """
    if coarse[0] % stride[0] or coarse[1] % stride[1]:
        return None
    on_grid = (corners[:, 0] % coarse[0] == 0) & (corners[:, 1] % coarse[1] == 0)
    return on_grid.nonzero().flatten()
