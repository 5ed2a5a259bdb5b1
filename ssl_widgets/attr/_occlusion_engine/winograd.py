"""Winograd convolution (F(4x4, 3x3) and F(7x7, 3x3)) for the deep 3x3 convolutions of the incremental engine, on CPU.

A 3x3 convolution (stride 1, no dilation, one group) computes each ``m x m`` block of outputs from the
``(m+2) x (m+2)`` block of inputs under it. Winograd's minimal filtering algorithm (Lavin and Gray,
"Fast Algorithms for Convolutional Neural Networks", CVPR 2016) does that with ``(m+2)^2``
multiply-adds per input/output channel pair instead of ``9 m^2``: the input tile ``d`` and the filter
``g`` are mapped to ``B^T d B`` and ``G g G^T``, multiplied elementwise and summed over input channels
(one matrix product per tile position) and mapped back with ``A^T (.) A``. Only those products scale
with the channel counts; the transforms are memory passes.

Two tile sizes are used. F(4x4, 3x3) (6x6 tiles, 36 products for 16 outputs; Lavin and Gray's
matrices) differs from the direct convolution by typically 6e-6 of the output's largest magnitude.
F(7x7, 3x3) (9x9 tiles, 81 products for 49 outputs) fits the 7x7 and 14x14 maps of a ResNet's last
two stages exactly, with fewer products per output and less transform traffic than F(4x4): its
matrices are built here (Toom-Cook) from the interpolation points :data:`F7_POINTS`, the set of
eight from a search over small fractions that gave the smallest float32 error, about 1.5e-5 (rms)
and 5e-5 (largest) of the output's magnitude on random 128-channel inputs, against 1e-6 for the
direct kernel.

On the CPUs this was measured on (2-core AVX2), oneDNN's direct kernels stay faster for few channels
and for large maps. :func:`conv_runner` chooses per call between the direct kernel and the two tile
sizes by the products each needs (:func:`choose_tile`); with at least 128 channels in and out, F(7x7)
ran 1.5x faster than oneDNN on 14x14 outputs and 2.7x on 7x7 (F(4x4): 1.0x and 1.35x).

Buffers are kept only while a :func:`workspace` context is open in the calling thread (the evaluator
opens one per run, so each batch after the first reuses them and nothing is kept after the run).
"""
from __future__ import annotations

import contextlib
import math
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from fractions import Fraction

import torch
import torch.nn.functional as F

from .._model_state import private_tensor_version

__all__ = ["choose_tile", "conv_runner", "eligible", "tile_of", "toom_cook", "transform_weight",
           "winograd_conv3x3", "workspace"]

F7_POINTS = ("0", "1", "-1", "1/2", "4/3", "-4/3", "-3", "-1/3")  #: finite points of F(7x7, 3x3), with infinity
MIN_CHANNELS = 128  # fewer input or output channels: the direct kernel wins
MAX_OUTPUT_SIDE = 14  # larger output maps: the transforms' memory traffic outweighs the saved products
#: cost of one Winograd product per tile position and channel pair against one multiply-add of the direct
#: kernel (batched products over 128 to 256 channels and the transforms, against oneDNN's direct kernel;
#: measured 1.75 to 3.5 on 3x3 to 14x14 outputs)
PRODUCT_COST = 2.5

_LOCAL = threading.local()
# id(weight) -> (weak reference to it, its version counter, {tile: transformed weight}); an entry goes
# with its weight (the engine's weights are those of the cached private trunk copy)
_TRANSFORMED: dict[int, tuple[weakref.ref, int | None, dict[int, torch.Tensor]]] = {}
_TRANSFORMED_LOCK = threading.Lock()


def toom_cook(points: Sequence[str | Fraction], m: int, r: int = 3
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(B^T, G, A^T)`` of Winograd's F(m, r) from ``m + r - 2`` distinct finite points and infinity.

    With ``M(x)`` the product of ``x - a`` over the points: row ``j`` of ``B^T`` holds the coefficients
    of ``M(x) / (x - a_j)`` (its last row those of ``M(x)``), ``G[j, k] = a_j^k / prod_(l != j) (a_j - a_l)``
    and ``A^T[i, j] = a_j^i``; infinity contributes the leading coefficients. Exact (fractions), returned
    in float64.

    Examples:
        >>> bt, g, at = toom_cook(["0", "1", "-1"], 2)  # F(2, 3)
        >>> d, w = torch.tensor([1., 2, 3, 4], dtype=torch.float64), torch.tensor([1., 0, -1], dtype=torch.float64)
        >>> (at @ ((g @ w) * (bt @ d))).tolist()  # d[i] - d[i + 2]
        [-2.0, -2.0]
    """
    a = [Fraction(p) for p in points]
    n = m + r - 1
    if len(a) != n - 1 or len(set(a)) != len(a):
        raise ValueError(f"F({m}, {r}) needs {n - 1} distinct finite points, got {list(points)}")

    def times_linear(poly: list[Fraction], root: Fraction) -> list[Fraction]:  # poly(x) * (x - root)
        return [-root * poly[0]] + [poly[i - 1] - root * poly[i] for i in range(1, len(poly))] + [poly[-1]]

    bt, g = [], []
    for j, aj in enumerate(a):
        poly, denominator = [Fraction(1)], Fraction(1)
        for other, al in enumerate(a):
            if other != j:
                poly, denominator = times_linear(poly, al), denominator * (aj - al)
        bt.append(poly + [Fraction(0)])
        g.append([aj ** k / denominator for k in range(r)])
    whole = [Fraction(1)]
    for al in a:
        whole = times_linear(whole, al)
    bt.append(whole)
    g.append([Fraction(int(k == r - 1)) for k in range(r)])
    at = [[aj ** i for aj in a] + [Fraction(int(i == m - 1))] for i in range(m)]
    return tuple(torch.tensor([[float(v) for v in row] for row in mat], dtype=torch.float64) for mat in (bt, g, at))


# Lavin & Gray's F(4x4, 3x3) matrices, interpolation points 0, 1, -1, 2, -2 and infinity
_F4 = (torch.tensor([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                     [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], dtype=torch.float64),
       torch.tensor([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                     [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], dtype=torch.float64),
       torch.tensor([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
                     [0, 1, -1, 8, -8, 1]], dtype=torch.float64))
_MATRICES = {4: _F4, 7: toom_cook(F7_POINTS, 7)}  # output tile side -> (B^T, G, A^T)
TILES = tuple(_MATRICES)  #: output tile sides available


@contextlib.contextmanager
def workspace(winograd: bool = True) -> Iterator[None]:
    """Keep the convolutions' buffers for reuse in this thread until the context closes; ``winograd=False``:
    the runners use PyTorch's direct kernel inside the block (the evaluator's switch)."""
    outer, outer_enabled = getattr(_LOCAL, "buffers", None), getattr(_LOCAL, "winograd", True)
    _LOCAL.buffers = {} if outer is None else outer
    _LOCAL.winograd = winograd
    try:
        yield
    finally:
        _LOCAL.winograd = outer_enabled
        if outer is None:
            _LOCAL.buffers = None


def _buffer(name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """A tensor of ``shape``: the front of this thread's buffer ``name``, grown to the largest size asked."""
    size = math.prod(shape)
    buffers = getattr(_LOCAL, "buffers", None)
    if buffers is None:
        return torch.empty(shape, dtype=like.dtype, device=like.device)
    found = buffers.get(name)
    if found is None or found.numel() < size or found.dtype != like.dtype or found.device != like.device:
        found = buffers[name] = torch.empty(size, dtype=like.dtype, device=like.device)
    return found[:size].view(shape)


def transform_weight(weight: torch.Tensor, tile: int = 4) -> torch.Tensor:
    """The filters in the Winograd domain: ``((tile+2)^2, C_in, C_out)`` for a ``(C_out, C_in, 3, 3)`` weight.

    Args:
        weight: the convolution's weight.
        tile: output tile side, one of :data:`TILES`.

    Examples:
        >>> transform_weight(torch.ones(2, 5, 3, 3)).shape
        torch.Size([36, 5, 2])
        >>> transform_weight(torch.ones(2, 5, 3, 3), tile=7).shape
        torch.Size([81, 5, 2])
    """
    g = _MATRICES[tile][1]
    u = torch.einsum("ik,ockl,jl->ijco", g, weight.detach().double().cpu(), g)
    return u.reshape(-1, weight.shape[1], weight.shape[0]).to(weight.dtype).to(weight.device).contiguous()


def tile_of(u: torch.Tensor) -> int:
    """The output tile side ``m`` of a :func:`transform_weight` result (``(m+2)^2`` tile positions).

    Examples:
        >>> tile_of(transform_weight(torch.ones(2, 5, 3, 3), tile=7))
        7
    """
    return math.isqrt(u.shape[0]) - 2


def _transformed(weight: torch.Tensor, tile: int) -> torch.Tensor:
    """:func:`transform_weight`, computed once per weight tensor, tile size and in-place version."""
    key, version = id(weight), private_tensor_version(weight)
    with _TRANSFORMED_LOCK:
        entry = _TRANSFORMED.get(key)
        if entry is None or entry[0]() is not weight or entry[1] != version:
            entry = _TRANSFORMED[key] = (weakref.ref(weight, lambda _, key=key: _forget(key)), version, {})
        found = entry[2].get(tile)
    if found is None:
        found = transform_weight(weight, tile)
        with _TRANSFORMED_LOCK:
            entry[2][tile] = found
    return found


def _forget(key: int) -> None:  # a weight died (no lock: this may run inside the locked block, from the collector)
    entry = _TRANSFORMED.get(key)
    if entry is not None and entry[0]() is None:
        _TRANSFORMED.pop(key, None)


def winograd_conv3x3(x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.conv2d(x, weight, bias)`` (3x3, stride 1, no padding) by Winograd F(4x4, 3x3) or F(7x7, 3x3).

    Args:
        x: ``(N, C_in, H, W)`` input, ``H, W >= 3``, any memory format.
        u: :func:`transform_weight` of the ``(C_out, C_in, 3, 3)`` weight; its tile size is the one used.
        bias: ``(C_out,)`` or ``None``.

    Returns:
        ``(N, C_out, H - 2, W - 2)`` in channels-last memory format.

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> x, w = torch.randn(2, 4, 9, 7, generator=g), torch.randn(3, 4, 3, 3, generator=g)
        >>> out = winograd_conv3x3(x, transform_weight(w), None)
        >>> torch.allclose(out, F.conv2d(x, w), atol=1e-4)
        True
        >>> out = winograd_conv3x3(x, transform_weight(w, tile=7), None)
        >>> torch.allclose(out, F.conv2d(x, w), atol=1e-3)
        True
    """
    n, c, h, w = x.shape
    c_out, m = u.shape[2], tile_of(u)
    side = m + 2
    bt, _, at = _MATRICES[m]
    h_out, w_out = h - 2, w - 2
    ty, tx = -(-h_out // m), -(-w_out // m)
    hp, wp = m * ty + 2, m * tx + 2
    nhwc = x.permute(0, 2, 3, 1)
    if (hp, wp) != (h, w):  # zero rows/columns so that the last tiles are whole (their extra outputs are dropped)
        padded = _buffer("padded", (n, hp, wp, c), x)
        padded[:, h:].zero_()
        padded[:, :h, w:].zero_()
        padded[:, :h, :w].copy_(nhwc)
        nhwc = padded
    s_n, s_h, s_w, s_c = nhwc.stride()
    tiles = nhwc.as_strided((side, side, n, ty, tx, c), (s_h, s_w, s_n, m * s_h, m * s_w, s_c))
    count = n * ty * tx
    bt, at = bt.to(x), at.to(x)
    d = _buffer("d", (side, side, n, ty, tx, c), x)
    d.copy_(tiles)
    rows = _buffer("rows", (side, side * count * c), x)
    torch.mm(bt, d.view(side, -1), out=rows)  # B^T d
    v = d.view(side, side, -1)
    torch.matmul(bt, rows.view(side, side, -1), out=v)  # v[i, j] = (B^T d B)[i, j]
    products = _buffer("m", (side * side, count, c_out), x)
    torch.bmm(v.view(side * side, count, c), u, out=products)  # sum over input channels, per tile position
    back = _buffer("back", (m, side * count * c_out), x)
    torch.mm(at, products.view(side, -1), out=back)
    y = _buffer("y", (m, m, count * c_out), x)
    torch.matmul(at, back.view(m, side, -1), out=y)  # y[p, q] = (A^T products A)[p, q], the output tile
    y = y.view(m, m, n, ty, tx, c_out).permute(2, 3, 0, 4, 1, 5)
    out = torch.empty((n, ty, m, tx, m, c_out), dtype=x.dtype, device=x.device)
    if bias is None:
        out.copy_(y)
    else:
        torch.add(y, bias, out=out)
    out = out.view(n, m * ty, m * tx, c_out)
    if (m * ty, m * tx) != (h_out, w_out):
        out = out[:, :h_out, :w_out].contiguous()
    return out.permute(0, 3, 1, 2)


def eligible(weight: torch.Tensor, stride, dilation, groups: int) -> bool:
    """Whether a convolution may run by Winograd: 3x3, stride 1, no dilation, one group, float32 on CPU,
    at least :data:`MIN_CHANNELS` channels in and out."""
    return (tuple(weight.shape[2:]) == (3, 3) and tuple(stride) == (1, 1) and tuple(dilation) == (1, 1)
            and groups == 1 and weight.device.type == "cpu" and weight.dtype == torch.float32
            and min(weight.shape[0], weight.shape[1]) >= MIN_CHANNELS)


def choose_tile(h_out: int, w_out: int) -> int | None:
    """The output tile side for an ``h_out x w_out`` output of an eligible convolution, or ``None`` for the
    direct kernel: the fewest products, each Winograd product counted :data:`PRODUCT_COST` multiply-adds of
    the direct kernel; ties go to the more accurate (direct, then the smaller tile).

    Examples:
        >>> [choose_tile(s, s) for s in (3, 4, 7, 8, 9, 12, 14, 15)]
        [None, 4, 7, 4, None, 4, 7, None]
    """
    if max(h_out, w_out) > MAX_OUTPUT_SIDE or min(h_out, w_out) < 1:
        return None
    best, best_cost = None, 9 * h_out * w_out
    for m in TILES:
        cost = PRODUCT_COST * (m + 2) ** 2 * -(-h_out // m) * -(-w_out // m)
        if cost < best_cost:
            best, best_cost = m, cost
    return best


def conv_runner(weight: torch.Tensor, bias: torch.Tensor | None, stride, dilation,
                groups: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function computing ``F.conv2d(x, weight, bias, stride, 0, dilation, groups)`` on unpadded crops:
    by Winograd where :func:`eligible` and :func:`choose_tile` picks a tile size for the output, else by
    PyTorch's kernel. The weight's Winograd transforms are kept while the weight lives (and is not
    changed in place), so runners built again for the same weight (one per engine run) reuse them.

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> w = torch.randn(128, 128, 3, 3, generator=g)
        >>> run = conv_runner(w, None, (1, 1), (1, 1), 1)
        >>> x = torch.randn(2, 128, 9, 9, generator=g)
        >>> exact = F.conv2d(x, w)
        >>> bool((run(x) - exact).abs().max() < 1e-4 * exact.abs().max())
        True
    """
    def direct(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, weight, bias, stride, 0, dilation, groups)

    if not eligible(weight, stride, dilation, groups):
        return direct

    def run(x: torch.Tensor) -> torch.Tensor:
        tile = choose_tile(x.shape[2] - 2, x.shape[3] - 2) if x.dim() == 4 else None
        if tile is None or x.dtype != weight.dtype or x.device != weight.device \
                or not getattr(_LOCAL, "winograd", True):
            return direct(x)
        return winograd_conv3x3(x, _transformed(weight, tile), bias)  # transformed once per weight

    return run
