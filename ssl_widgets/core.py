"""Primitives shared by every layer of the package, with one home each.

Pure tensor code (``torch`` only: no model, no method, no widget), imported by ``models``,
``attr``, ``metrics``, ``analysis`` and ``data`` alike:

* the paper's numbers as named constants (:data:`PAPER_INPUT_SIZE`, :data:`SEED_MULTIPLIER`, ...);
* :func:`cosine`, the similarity every method explains;
* :func:`grayscale` (:data:`GRAYSCALE_WEIGHTS`) and :func:`gaussian_blur`;
* :func:`module_hooks` / :func:`captured_outputs`: hooks that are always removed;
* :func:`upsample` and :func:`normalize_map` for ``(B, h, w)`` maps.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "COSINE_EPS",
    "GRAYSCALE_WEIGHTS",
    "MAP_BLUR_KERNEL",
    "MAP_BLUR_SIGMA",
    "PAPER_INPUT_SIZE",
    "PAPER_INSERTION_STEP",
    "PAPER_OCCLUSION_STRIDE",
    "PAPER_OCCLUSION_WINDOW",
    "SEED_MULTIPLIER",
    "as_pair",
    "as_window",
    "captured_outputs",
    "cosine",
    "gaussian_blur",
    "grayscale",
    "module_hooks",
    "normalize_map",
    "upsample",
]

#: The paper's input size (pixels per side); settings given "at 224 px" scale by ``size / 224``.
PAPER_INPUT_SIZE = 224
#: The paper's occlusion window and stride at :data:`PAPER_INPUT_SIZE`.
PAPER_OCCLUSION_WINDOW = 64
PAPER_OCCLUSION_STRIDE = 8
#: Pixels per insertion/deletion step in the paper (224 steps at 224 px).
PAPER_INSERTION_STEP = 224
#: Multiplier of the evaluation's per-image seeds (``seed * 7919 + index``; a prime, so that
#: the seeds of different runs and images do not collide).
SEED_MULTIPLIER = 7919
#: ``eps`` of the cosine similarity (the paper's, as in ``F.cosine_similarity``).
COSINE_EPS = 1e-8
#: The map smoothing of the paper's gradient methods and of the insertion start image.
MAP_BLUR_KERNEL = 11
MAP_BLUR_SIGMA = 5.0
#: Luma weights (ITU-R BT.601) for grayscale.
GRAYSCALE_WEIGHTS = (0.299, 0.587, 0.114)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity along the last dimension, with the paper's ``eps`` (:data:`COSINE_EPS`).

    Args:
        a, b: tensors of broadcastable shapes ``(..., D)``.

    Returns:
        ``(...)`` similarities in ``[-1, 1]``.

    Examples:
        >>> cosine(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]]))
        tensor([0.7071])
    """
    return F.cosine_similarity(a, b, dim=-1, eps=COSINE_EPS)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """Luma ``(B, 1, H, W)`` of RGB images ``(B, 3, H, W)`` with :data:`GRAYSCALE_WEIGHTS`.

    Args:
        x: ``(B, 3, H, W)`` RGB images.

    Returns:
        ``(B, 1, H, W)`` in ``x``'s dtype and device.

    Examples:
        >>> grayscale(torch.ones(1, 3, 2, 2)).shape
        torch.Size([1, 1, 2, 2])
        >>> round(float(grayscale(torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1))), 3)
        0.299
    """
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"grayscale expects (B, 3, H, W) images, got shape {tuple(x.shape)}")
    weights = torch.tensor(GRAYSCALE_WEIGHTS, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * weights).sum(1, keepdim=True)


def _gaussian_kernel1d(kernel_size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    half = (kernel_size - 1) * 0.5
    pos = torch.linspace(-half, half, steps=kernel_size, dtype=dtype, device=device)
    pdf = torch.exp(-0.5 * (pos / sigma).pow(2))
    return pdf / pdf.sum()


def gaussian_blur(x: torch.Tensor, kernel_size: int | None = None, sigma: float = MAP_BLUR_SIGMA) -> torch.Tensor:
    """Gaussian blur of ``(B, C, H, W)`` with reflect padding, on ``x``'s device.

    The arithmetic is torchvision's ``gaussian_blur`` (the same 2-D kernel, the outer product of
    two normalised 1-D kernels, and one grouped convolution), so its results are bit-identical.

    Args:
        x: ``(B, C, H, W)`` float tensor.
        kernel_size: odd side of the kernel; ``None`` truncates at 4 sigma
            (``2 * max(1, round(4 * sigma)) + 1``), shrunk to fit the image (reflect padding
            needs a radius below each side).
        sigma: standard deviation in pixels (> 0).

    Returns:
        The blurred tensor, same shape and dtype (``x`` itself for a 1-pixel image).

    Examples:
        >>> from torchvision.transforms.functional import gaussian_blur as tv_blur
        >>> x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
        >>> torch.equal(gaussian_blur(x, 11, 5.0), tv_blur(x, [11, 11], [5.0, 5.0]))
        True
    """
    if x.dim() != 4 or not torch.is_floating_point(x):
        raise ValueError(f"gaussian_blur expects a float (B, C, H, W) tensor, got {x.dtype} {tuple(x.shape)}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    if kernel_size is None:
        radius = max(1, int(4 * sigma + 0.5))
        radius = min(radius, x.shape[2] - 1, x.shape[3] - 1)
        if radius < 1:
            return x
        kernel_size = 2 * radius + 1
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
    k1 = _gaussian_kernel1d(kernel_size, float(sigma), x.dtype, x.device)
    kernel = torch.mm(k1[:, None], k1[None, :]).expand(x.shape[1], 1, kernel_size, kernel_size)
    pad = kernel_size // 2
    out = F.pad(x, [pad, pad, pad, pad], mode="reflect")
    return F.conv2d(out, kernel, groups=x.shape[1])


@contextlib.contextmanager
def module_hooks(forward: Iterable[tuple[nn.Module, Callable[..., Any]]] = (),
                 backward: Iterable[tuple[nn.Module, Callable[..., Any]]] = ()) -> Iterator[None]:
    """Register forward hooks and full backward hooks for the block; remove them all on exit.

    The hooks are removed on every exit path (also when the block or a hook raises).

    Args:
        forward: ``(module, hook)`` pairs for ``register_forward_hook`` (``hook(module, inputs, output)``).
        backward: ``(module, hook)`` pairs for ``register_full_backward_hook``
            (``hook(module, grad_inputs, grad_outputs)``).

    Examples:
        >>> layer = nn.Linear(2, 2)
        >>> seen = []
        >>> with module_hooks(forward=[(layer, lambda m, i, o: seen.append(o.shape))]):
        ...     _ = layer(torch.zeros(1, 2))
        >>> seen, len(layer._forward_hooks)
        ([torch.Size([1, 2])], 0)
    """
    handles = []
    try:
        for module, hook in forward:
            handles.append(module.register_forward_hook(hook))
        for module, hook in backward:
            handles.append(module.register_full_backward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def captured_outputs(module: nn.Module, keep: Callable[[Any], Any] | None = None) -> Iterator[list[Any]]:
    """Collect ``module``'s outputs during the block (one entry per forward); the hook is then removed.

    Args:
        module: the module whose forward outputs are recorded.
        keep: what to store for an output (default: the output itself).

    Returns:
        A context manager yielding the list the outputs are appended to.

    Examples:
        >>> layer = nn.Linear(2, 3)
        >>> with captured_outputs(layer) as outs:
        ...     _ = layer(torch.zeros(4, 2))
        >>> outs[0].shape, len(layer._forward_hooks)
        (torch.Size([4, 3]), 0)
    """
    captured: list[Any] = []

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
        captured.append(keep(output) if keep is not None else output)

    with module_hooks(forward=[(module, hook)]):
        yield captured


def as_pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    """``value`` as a pair of ints (an int ``n`` gives ``(n, n)``); a ``TypeError`` naming ``name`` otherwise.

    Examples:
        >>> as_pair(3, "window"), as_pair((2, 5), "window")
        ((3, 3), (2, 5))
    """
    def is_int(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    pair = (value, value) if is_int(value) else tuple(value) if isinstance(value, (tuple, list)) else None
    if pair is None or len(pair) != 2 or not all(is_int(v) for v in pair):
        raise TypeError(f"{name} must be an int or a pair of ints (pixels), got {value!r}")
    return pair  # type: ignore[return-value]


def as_window(value: int | tuple[int, ...], name: str) -> tuple[int, int]:
    """An occlusion window or stride as ``(h, w)``, accepting Captum's spelling ``(3, h, w)``.

    Captum's ``Occlusion`` takes ``sliding_window_shapes=(3, h, w)`` for RGB inputs (a window over
    all channels); ``(h, w)`` and an int ``n`` (``(n, n)``) are accepted too. For a window the
    channel count must be 3 (the methods occlude whole pixels); for a stride (``name`` starting with
    ``"stride"``) any positive channel step is accepted and ignored (one window spans the channels).

    Args:
        value: ``n``, ``(h, w)`` or ``(c, h, w)``.
        name: the argument's name, for the error messages.

    Returns:
        ``(h, w)``.

    Examples:
        >>> as_window((3, 16, 8), "sliding_window_shapes"), as_window(16, "sliding_window_shapes")
        ((16, 8), (16, 16))
        >>> as_window((1, 16, 16), "sliding_window_shapes")
        Traceback (most recent call last):
        ...
        ValueError: sliding_window_shapes=(1, 16, 16) covers 1 channel(s); the occlusion methods occlude all 3 colour channels of a pixel: give (3, h, w), (h, w) or an int
    """
    if isinstance(value, (tuple, list)) and len(value) == 3:
        channels, *spatial = value
        if isinstance(channels, bool) or not isinstance(channels, int):
            raise TypeError(f"{name} must be an int, (h, w) or (3, h, w) of ints, got {value!r}")
        if name.startswith("stride"):
            if channels < 1:
                raise ValueError(f"{name}={tuple(value)!r}: the channel stride must be positive")
        elif channels != 3:
            raise ValueError(f"{name}={tuple(value)!r} covers {channels} channel(s); the occlusion methods occlude "
                             f"all 3 colour channels of a pixel: give (3, h, w), (h, w) or an int")
        return as_pair(tuple(spatial), name)
    return as_pair(value, name)


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
    out_h, out_w = as_pair(size, "size")
    grid = grid.float()
    if window is None:
        out = F.interpolate(grid[:, None], size=(out_h, out_w), mode="bilinear", align_corners=False)[:, 0]
    else:
        (wh, ww), (sh, sw) = as_pair(window, "window"), as_pair(stride if stride is not None else window, "stride")
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


def normalize_map(maps: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each map of ``(B,h,w)`` to ``[0,1]`` (constant maps become 0).

    Args:
        maps: ``(B, ...)`` maps (each item normalised on its own).

    Returns:
        The normalised maps, same shape.

    Examples:
        >>> normalize_map(torch.tensor([[[1.0, 3.0], [2.0, 5.0]]]))
        tensor([[[0.0000, 0.5000],
                 [0.2500, 1.0000]]])
    """
    flat = maps.flatten(1)
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - low) / (high - low).clamp(min=1e-12)).view_as(maps)
