"""A coarse first occlusion frame from inside the refined call (the Explorer's preview).

An interactive caller wants a quick coarse map (windows at a large stride) before the refined one.
Two separate calls evaluate the coarse windows twice and pay the call's setup twice. Inside
:func:`previewing_occlusion`, an occlusion call instead evaluates the windows of the coarse grid
first, hands their map to a callback (in the calling thread, while the remaining windows are being
evaluated), and then finishes the refined map, which is the same as without the preview. Where the
coarse grid is not part of the refined one (its stride not a multiple of the call's), or for a batch
of several pairs, the coarse map is computed by a separate call first, so the callback is always
called once, before the refined result.
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from ..core import as_window
from ._thread_local import lent_to_thread

__all__ = ["PreviewRequest", "active_preview", "coarse_indices", "preview_stride", "previewing_occlusion"]

_LOCAL = threading.local()


@dataclass(frozen=True)
class PreviewRequest:
    """A coarse frame asked of the occlusion calls of one thread.

    Attributes:
        strides: the coarse grid's stride (int or ``(h, w)``), at least the call's.
        on_preview: called once with the coarse :class:`~ssl_widgets.attr.engine.PairAttribution` (the same
            form as the call's result: maps of the images' size, or window grids with ``grid=True``).
    """

    strides: Any
    on_preview: Callable[[Any], None]


@contextlib.contextmanager
def previewing_occlusion(strides: Any, on_preview: Callable[[Any], None]) -> Iterator[PreviewRequest]:
    """Let the occlusion calls made in this thread inside the block hand a coarse frame to ``on_preview`` first.

    Args:
        strides: the coarse frame's window stride (the window is the call's); pick it with
            :func:`preview_stride` and ``multiple_of=`` the call's stride, so that the coarse windows are
            among the refined ones and are evaluated only once.
        on_preview: called in the calling thread with the coarse result, before the call returns; an
            exception it raises (e.g. :class:`~ssl_widgets.attr.engine.Cancelled`) ends the call.

    Returns:
        A context manager giving the :class:`PreviewRequest`; other threads, and this one after the
        block, see none.

    Examples:
        >>> from ssl_widgets.models.zoo import build_tiny_model
        >>> from ssl_widgets.attr import ConditionalOcclusion
        >>> model = build_tiny_model({"width": 8, "head_dims": [32, 16], "input_size": 32}).eval()
        >>> g = torch.Generator().manual_seed(0)
        >>> x1, x2 = torch.rand(1, 3, 32, 32, generator=g), torch.rand(1, 3, 32, 32, generator=g)
        >>> frames = []
        >>> with previewing_occlusion(8, frames.append):
        ...     refined = ConditionalOcclusion(model).attribute((x1, x2), 16, 4, grid=True)
        >>> [tuple(m.shape) for m in frames[0]], [tuple(m.shape) for m in refined]
        ([(1, 3, 3), (1, 3, 3)], [(1, 5, 5), (1, 5, 5)])
        >>> coarse = ConditionalOcclusion(model).attribute((x1, x2), 16, 8, grid=True)
        >>> bool((frames[0][0] - coarse[0]).abs().max() < 1e-5), bool((refined[0][:, ::2, ::2] - coarse[0]).abs().max() < 1e-5)
        (True, True)
    """
    if min(as_window(strides, "strides")) < 1:  # a clear error now, not inside the occlusion call
        raise ValueError(f"strides (the preview's coarse stride) must be positive, got {strides!r}")
    if not callable(on_preview):
        raise TypeError(f"on_preview must be callable, got {type(on_preview).__name__}")
    with lent_to_thread(_LOCAL, "request", PreviewRequest(strides, on_preview)) as request:
        yield request


def no_preview() -> contextlib.AbstractContextManager:
    """No preview for the calls inside the block (the separate coarse call of the fallback)."""
    return lent_to_thread(_LOCAL, "request", None)


def active_preview() -> PreviewRequest | None:
    """The request of the innermost :func:`previewing_occlusion` block of this thread, if any."""
    return getattr(_LOCAL, "request", None)


def preview_stride(window: int, sizes: list[int], multiple_of: int = 1) -> int:
    """The stride of a quick first occlusion frame: the largest multiple of ``multiple_of`` in
    ``[window // 2, window]`` whose windows tile every image side in ``sizes`` exactly (no uncovered
    margin), else the smallest multiple of ``multiple_of`` from ``window // 2`` on.

    Args:
        window: the window side.
        sizes: the image sides the windows slide along.
        multiple_of: the refined call's stride: a multiple of it puts every coarse window among the
            refined call's, so that :func:`previewing_occlusion` evaluates them once.

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
