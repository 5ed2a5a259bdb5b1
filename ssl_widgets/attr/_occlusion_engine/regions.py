"""Batches of activations that differ from cached base activations only inside per-copy boxes,
and the windowed operations (convolution, pooling) the incremental engine runs on crops of them."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx

from .winograd import conv_runner

__all__ = ["Region", "box_crops", "gather", "paste"]


@dataclass
class Region:
    """A batch of activations equal to ``base[bid]`` outside a per-copy box.

    Attributes:
        local: values over the box, ``(B, ...)`` with the two spatial dimensions at ``dims``.
        y0, x0: ``(B,)`` top-left corners of each copy's box.
        bid: ``(B,)`` index of each copy's base image.
        base: ``(n_bases, ...)`` the node's output for the base images.
        dims: positions of the height and width dimensions.
    """

    local: torch.Tensor
    y0: torch.Tensor
    x0: torch.Tensor
    bid: torch.Tensor
    base: torch.Tensor
    dims: tuple[int, int]

    @property
    def size(self) -> tuple[int, int]:
        return self.local.shape[self.dims[0]], self.local.shape[self.dims[1]]

    def full(self) -> torch.Tensor:
        """The whole activation ``(B, ...)`` (base values outside the boxes)."""
        h, w = self.base.shape[self.dims[0]], self.base.shape[self.dims[1]]
        if self.size == (h, w):
            return self.local
        out = self.base.index_select(0, self.bid.to(self.base.device))
        paste(out, self.local, self.y0, self.x0, self.dims)
        return out

    def grow(self, y0: torch.Tensor, x0: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Values over the boxes ``(y0, x0, h, w)``, which contain this region's boxes."""
        if self.size == (h, w) and bool((y0 == self.y0).all()) and bool((x0 == self.x0).all()):
            return self.local
        out = gather(self.base, self.bid, y0, x0, h, w, self.dims)
        paste(out, self.local, self.y0 - y0, self.x0 - x0, self.dims)
        return out


def _index(y0: torch.Tensor, x0: torch.Tensor, h: int, w: int, device: torch.device):
    rows = (y0[:, None] + torch.arange(h))[:, :, None]
    cols = (x0[:, None] + torch.arange(w))[:, None, :]
    return rows.to(device, non_blocking=True), cols.to(device, non_blocking=True)


def _flat_rows(view: torch.Tensor, first: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Indices of ``view[first, rows, cols]`` among the rows of ``view.reshape(-1, *view.shape[3:])``."""
    return ((first * view.shape[1] + rows) * view.shape[2] + cols).reshape(-1)


def box_crops(images: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(local, y0, x0)``: each image's crop over its box ``(y0, x0, y1, x1)`` (``boxes`` ``(B, 4)``), all of
    the largest box's size (a smaller box's crop moved inside the image), for :meth:`GraphIncremental.run`.

    Examples:
        >>> local, y0, x0 = box_crops(torch.arange(16.).view(1, 1, 4, 4), torch.tensor([[2, 3, 4, 4]]))
        >>> local.shape, y0.tolist(), x0.tolist()
        (torch.Size([1, 1, 2, 1]), [2], [3])
    """
    boxes = boxes.cpu().long()
    h = int((boxes[:, 2] - boxes[:, 0]).max())
    w = int((boxes[:, 3] - boxes[:, 1]).max())
    y0 = boxes[:, 0].clamp(max=images.shape[2] - h)
    x0 = boxes[:, 1].clamp(max=images.shape[3] - w)
    return gather(images, torch.arange(images.shape[0]), y0, x0, h, w, (2, 3)), y0, x0


def gather(src: torch.Tensor, bid: torch.Tensor, y0: torch.Tensor, x0: torch.Tensor, h: int, w: int,
            dims: tuple[int, int]) -> torch.Tensor:
    """``src[bid[b]]`` cropped to ``[y0[b]:y0[b]+h, x0[b]:x0[b]+w]`` for each ``b``."""
    rows, cols = _index(y0, x0, h, w, src.device)
    view = src.movedim(dims, (1, 2))
    bid = bid.to(src.device, non_blocking=True)[:, None, None]
    if view.is_contiguous():  # rows of the trailing (channel) values are contiguous: copy them whole
        flat = _flat_rows(view, bid, rows, cols)
        rest = view.shape[3:]
        out = view.reshape(-1, *rest).index_select(0, flat).view(bid.shape[0], h, w, *rest)
        return out.movedim((1, 2), dims)
    return view[bid, rows, cols].movedim((1, 2), dims)


def paste(dst: torch.Tensor, src: torch.Tensor, y0: torch.Tensor, x0: torch.Tensor, dims: tuple[int, int]) -> None:
    """Write ``src[b]`` into ``dst[b]`` at ``(y0[b], x0[b])`` (in place)."""
    rows, cols = _index(y0, x0, src.shape[dims[0]], src.shape[dims[1]], dst.device)
    batch = torch.arange(dst.shape[0], device=dst.device)[:, None, None]
    view = dst.movedim(dims, (1, 2))
    if view.is_contiguous():  # whole rows of trailing (channel) values, as in gather
        flat = _flat_rows(view, batch, rows, cols)
        values = src.movedim(dims, (1, 2)).reshape(flat.shape[0], *view.shape[3:])
        view.view(-1, *view.shape[3:]).index_copy_(0, flat, values.to(dst.dtype))
        return
    view[batch, rows, cols] = src.movedim(dims, (1, 2))


@dataclass(frozen=True)
class _Window:
    """A windowed node: kernel, stride, padding, dilation per axis, padding value and the op on a crop."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    pad_value: float
    run: Callable[[torch.Tensor], torch.Tensor]


def _pair(v: Any) -> tuple[int, int] | None:
    if isinstance(v, int):
        return (v, v)
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(i, int) for i in v):
        return (int(v[0]), int(v[1]))
    if isinstance(v, (tuple, list)) and len(v) == 1 and isinstance(v[0], int):
        return (int(v[0]), int(v[0]))
    return None


def _conv_padding(padding: Any, kernel: tuple[int, int], dilation: tuple[int, int]) -> tuple[int, int] | None:
    if padding == "valid":
        return (0, 0)
    if padding == "same":
        total = [d * (k - 1) for k, d in zip(kernel, dilation)]
        return None if any(t % 2 for t in total) else (total[0] // 2, total[1] // 2)
    return _pair(padding)


def _conv_window(weight, bias, stride, padding, dilation, groups) -> _Window | None:
    kernel = tuple(weight.shape[2:])
    stride, dilation = _pair(stride), _pair(dilation)
    if len(kernel) != 2 or stride is None or dilation is None:
        return None
    pad = _conv_padding(padding, kernel, dilation)
    if pad is None:
        return None
    return _Window(kernel, stride, pad, dilation, 0.0, conv_runner(weight, bias, stride, dilation, groups))


def _pool_window(kind: str, kernel, stride, padding, dilation=1, ceil_mode=False, extra_ok=True) -> _Window | None:
    kernel, padding, dilation = _pair(kernel), _pair(padding), _pair(dilation)
    stride = kernel if stride is None or stride == [] or stride == () else _pair(stride)
    if None in (kernel, stride, padding, dilation) or ceil_mode or not extra_ok:
        return None
    if kind == "max":
        return _Window(kernel, stride, padding, dilation, float("-inf"),
                       lambda x: F.max_pool2d(x, kernel, stride, 0, dilation))
    if dilation != (1, 1):
        return None
    return _Window(kernel, stride, padding, (1, 1), 0.0, lambda x: F.avg_pool2d(x, kernel, stride, 0))


def _arg(node: fx.Node, i: int, name: str, default: Any = None) -> Any:
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


class _LazyBase:
    """Placeholder for a base activation that was not stored (never needed by a gather)."""

    def __init__(self, node) -> None:
        self.node = node


def _resolve(base):
    if isinstance(base, _LazyBase):
        raise RuntimeError(f"base activation of {base.node.name} was not cached")  # noqa: TRY004
    return base


def _out_size(sizes_in, window: _Window) -> tuple[int, int]:
    return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1 for n, k, s, p, d in
                 zip(sizes_in, window.kernel, window.stride, window.padding, window.dilation))
