"""Winograd F(4x4, 3x3) convolution for the deep 3x3 convolutions of the incremental engine, on CPU.

A 3x3 convolution (stride 1, no dilation, one group) computes each 4x4 block of outputs from the
6x6 block of inputs under it. Winograd's minimal filtering algorithm (Lavin and Gray, "Fast
Algorithms for Convolutional Neural Networks", CVPR 2016) does that with 36 multiply-adds per
input/output channel pair instead of 144: the input tile ``d`` and the filter ``g`` are mapped to
``B^T d B`` and ``G g G^T`` (6x6 each), multiplied elementwise and summed over input channels (36
matrix products, one per tile position) and mapped back with ``A^T (.) A``. Only the 36 products
scale with the channel counts; the transforms are memory passes.

On the CPUs this was measured on (2-core AVX2), oneDNN's direct kernels stay faster for large maps
and for few channels, but for the late stages of a CNN (maps of at most 8x8 outputs, at least 128
channels in and out: ResNet's last stage under occlusion) this ran 1.4x to 2.6x faster, with a
difference from the direct convolution of typically 6e-6 of the output's largest magnitude (at most
1.2e-5 in 150 random draws of 128-channel inputs).
:func:`conv_runner` chooses per call.

Buffers are kept only while a :func:`workspace` context is open in the calling thread (the engine
opens one per run, so each batch after the first reuses them and nothing is kept after the run).
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

__all__ = ["conv_runner", "eligible", "transform_weight", "winograd_conv3x3", "workspace"]

# Lavin & Gray's F(4x4, 3x3) matrices, interpolation points 0, 1, -1, 2, -2 and infinity
_BT = torch.tensor([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                    [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], dtype=torch.float64)
_G = torch.tensor([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                   [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], dtype=torch.float64)
_AT = torch.tensor([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
                    [0, 1, -1, 8, -8, 1]], dtype=torch.float64)

MIN_CHANNELS = 128  # fewer input or output channels: the direct kernel wins
MAX_OUTPUT_SIDE = 8  # larger output maps: the transforms' memory traffic outweighs the saved products

_LOCAL = threading.local()


@contextlib.contextmanager
def workspace() -> Iterator[None]:
    """Keep the convolutions' buffers for reuse in this thread until the context closes."""
    outer = getattr(_LOCAL, "buffers", None)
    _LOCAL.buffers = {} if outer is None else outer
    try:
        yield
    finally:
        if outer is None:
            _LOCAL.buffers = None


def _buffer(name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    buffers = getattr(_LOCAL, "buffers", None)
    if buffers is None:
        return torch.empty(shape, dtype=like.dtype, device=like.device)
    found = buffers.get(name)
    if found is None or found.shape != shape or found.dtype != like.dtype or found.device != like.device:
        found = buffers[name] = torch.empty(shape, dtype=like.dtype, device=like.device)
    return found


def transform_weight(weight: torch.Tensor) -> torch.Tensor:
    """The filters in the Winograd domain: ``(36, C_in, C_out)`` for a ``(C_out, C_in, 3, 3)`` weight.

    Examples:
        >>> transform_weight(torch.ones(2, 5, 3, 3)).shape
        torch.Size([36, 5, 2])
    """
    u = torch.einsum("ik,ockl,jl->ijco", _G, weight.detach().double().cpu(), _G)
    return u.reshape(36, weight.shape[1], weight.shape[0]).to(weight.dtype).to(weight.device).contiguous()


def winograd_conv3x3(x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.conv2d(x, weight, bias)`` (3x3, stride 1, no padding) by Winograd F(4x4, 3x3).

    Args:
        x: ``(N, C_in, H, W)`` input, ``H, W >= 3``, any memory format.
        u: :func:`transform_weight` of the ``(C_out, C_in, 3, 3)`` weight.
        bias: ``(C_out,)`` or ``None``.

    Returns:
        ``(N, C_out, H - 2, W - 2)`` in channels-last memory format.

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> x, w = torch.randn(2, 4, 9, 7, generator=g), torch.randn(3, 4, 3, 3, generator=g)
        >>> out = winograd_conv3x3(x, transform_weight(w), None)
        >>> torch.allclose(out, F.conv2d(x, w), atol=1e-4)
        True
    """
    n, c, h, w = x.shape
    c_out = u.shape[2]
    h_out, w_out = h - 2, w - 2
    ty, tx = -(-h_out // 4), -(-w_out // 4)
    hp, wp = 4 * ty + 2, 4 * tx + 2
    nhwc = x.permute(0, 2, 3, 1)
    if (hp, wp) != (h, w):  # zero rows/columns so that the last tiles are whole (their extra outputs are dropped)
        padded = _buffer("padded", (n, hp, wp, c), x)
        padded[:, h:].zero_()
        padded[:, :h, w:].zero_()
        padded[:, :h, :w].copy_(nhwc)
        nhwc = padded
    s_n, s_h, s_w, s_c = nhwc.stride()
    tiles = nhwc.as_strided((6, 6, n, ty, tx, c), (s_h, s_w, s_n, 4 * s_h, 4 * s_w, s_c))
    count = n * ty * tx
    bt, at = _BT.to(x), _AT.to(x)
    d = _buffer("d", (6, 6, n, ty, tx, c), x)
    d.copy_(tiles)
    rows = _buffer("rows", (6, 6 * count * c), x)
    torch.mm(bt, d.view(6, -1), out=rows)  # B^T d
    v = d.view(6, 6, -1)
    torch.matmul(bt, rows.view(6, 6, -1), out=v)  # v[i, j] = (B^T d B)[i, j]
    m = _buffer("m", (36, count, c_out), x)
    torch.bmm(v.view(36, count, c), u, out=m)  # sum over input channels, per tile position
    back = _buffer("back", (4, 6 * count * c_out), x)
    torch.mm(at, m.view(6, -1), out=back)
    y = _buffer("y", (4, 4, count * c_out), x)
    torch.matmul(at, back.view(4, 6, -1), out=y)  # y[p, q] = (A^T m A)[p, q], the output tile
    y = y.view(4, 4, n, ty, tx, c_out).permute(2, 3, 0, 4, 1, 5)
    out = torch.empty((n, ty, 4, tx, 4, c_out), dtype=x.dtype, device=x.device)
    if bias is None:
        out.copy_(y)
    else:
        torch.add(y, bias, out=out)
    out = out.view(n, 4 * ty, 4 * tx, c_out)
    if (4 * ty, 4 * tx) != (h_out, w_out):
        out = out[:, :h_out, :w_out].contiguous()
    return out.permute(0, 3, 1, 2)


def eligible(weight: torch.Tensor, stride, dilation, groups: int) -> bool:
    """Whether a convolution may run by Winograd: 3x3, stride 1, no dilation, one group, float32 on CPU,
    at least :data:`MIN_CHANNELS` channels in and out."""
    return (tuple(weight.shape[2:]) == (3, 3) and tuple(stride) == (1, 1) and tuple(dilation) == (1, 1)
            and groups == 1 and weight.device.type == "cpu" and weight.dtype == torch.float32
            and min(weight.shape[0], weight.shape[1]) >= MIN_CHANNELS)


def conv_runner(weight: torch.Tensor, bias: torch.Tensor | None, stride, dilation,
                groups: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function computing ``F.conv2d(x, weight, bias, stride, 0, dilation, groups)`` on unpadded crops:
    by Winograd where :func:`eligible` and the output is at most :data:`MAX_OUTPUT_SIDE` on each side,
    else by PyTorch's kernel.

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> w = torch.randn(128, 128, 3, 3, generator=g)
        >>> run = conv_runner(w, None, (1, 1), (1, 1), 1)
        >>> x = torch.randn(2, 128, 9, 9, generator=g)
        >>> exact = F.conv2d(x, w)
        >>> bool((run(x) - exact).abs().max() < 2e-5 * exact.abs().max())
        True
    """
    def direct(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, weight, bias, stride, 0, dilation, groups)

    if not eligible(weight, stride, dilation, groups):
        return direct
    transformed: list[torch.Tensor] = []  # computed on first use, then kept with the runner

    def run(x: torch.Tensor) -> torch.Tensor:
        if x.dtype != weight.dtype or x.device != weight.device or not (
                3 <= x.shape[2] <= MAX_OUTPUT_SIDE + 2 and 3 <= x.shape[3] <= MAX_OUTPUT_SIDE + 2):
            return direct(x)
        if not transformed:
            transformed.append(transform_weight(weight))
        return winograd_conv3x3(x, transformed[0], bias)

    return run
