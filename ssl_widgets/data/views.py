"""The paper's view transforms (its SimCLR-style augmentations and photometric-only variants) as named, seeded transforms.

``make_pair(image, "aug", size=224, seed=0)`` gives ``(x1, x2)``: the plain centre crop and a
second view made by the named transform. Sizes other than 224 scale the crop and blur kernels.

| name | pipeline (PIL, then ``ToTensor``) |
|---|---|
| ``pure`` | Resize(size*8/7), CenterCrop(size) |
| ``aug`` | RandomResizedCrop(size), flip 0.5, ColorJitter(0.8,0.8,0.8,0.2) p 0.8, grayscale 0.2, GaussianBlur(21, 0.1-2) p 0.5 |
| ``no-shift`` | Resize((size, size)) |
| ``no-shift-aug`` | Resize((size, size)), ColorJitter(0.8,0.8,0.8,0.2) p 0.8, grayscale 0.2 |
| ``color-jitter`` | pure, then ColorJitter(0.8,0.8,0.8,0.4) |
| ``blur`` | pure, then GaussianBlur(11, sigma 5) |
| ``grayscale`` | pure, then Grayscale (3 channels) |
| ``solarize`` | pure, then solarize at 128 |
| ``combine`` | pure, then jitter(0.8,0.8,0.8,0.2) p 0.8, grayscale 0.2, GaussianBlur(21, 0.1-2) p 0.5 |

The last five are photometric only (same geometry as ``pure``), as averaged transforms and
pixel invariance need.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torchvision import transforms as T

from ..core import PAPER_INPUT_SIZE
from .images import ImageLike, to_pil

__all__ = ["VIEW_TRANSFORMS", "PHOTOMETRIC_TRANSFORMS", "custom_view", "view_transform", "make_view", "make_pair"]


def _kernel(size: int, at_224: int) -> int:
    return max(3, int(round(at_224 * size / PAPER_INPUT_SIZE)) | 1)


def _pure(size: int) -> list:
    return [T.Resize(round(size * 8 / 7)), T.CenterCrop(size)]


def _blur_random(size: int) -> T.RandomApply:
    return T.RandomApply([T.GaussianBlur(_kernel(size, 21), sigma=(0.1, 2.0))], p=0.5)


_BUILDERS: dict[str, Callable[[int], list]] = {
    "pure": _pure,
    "aug": lambda s: [T.RandomResizedCrop(s), T.RandomHorizontalFlip(0.5),
                      T.RandomApply([T.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8), T.RandomGrayscale(0.2),
                      _blur_random(s)],
    "no-shift": lambda s: [T.Resize((s, s))],
    "no-shift-aug": lambda s: [T.Resize((s, s)), T.RandomApply([T.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8),
                               T.RandomGrayscale(0.2)],
    "color-jitter": lambda s: _pure(s) + [T.ColorJitter(0.8, 0.8, 0.8, 0.4)],
    "blur": lambda s: _pure(s) + [T.GaussianBlur(_kernel(s, 11), sigma=5.0)],
    "grayscale": lambda s: _pure(s) + [T.Grayscale(num_output_channels=3)],
    "solarize": lambda s: _pure(s) + [T.RandomSolarize(128, p=1.0)],
    "combine": lambda s: _pure(s) + [T.RandomApply([T.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8),
                                     T.RandomGrayscale(0.2), _blur_random(s)],
}

VIEW_TRANSFORMS: tuple[str, ...] = tuple(_BUILDERS)
PHOTOMETRIC_TRANSFORMS: tuple[str, ...] = ("color-jitter", "blur", "grayscale", "solarize", "combine")


def view_transform(name: str, size: int = PAPER_INPUT_SIZE) -> T.Compose:
    """The named transform as a torchvision ``Compose`` (PIL in, ``(3,size,size)`` tensor out).

    Raises:
        ValueError: unknown name.
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown view transform {name!r}; available: {', '.join(VIEW_TRANSFORMS)}")
    return T.Compose(_BUILDERS[name](size) + [T.ToTensor()])


def make_view(image: ImageLike, name: str = "pure", size: int = PAPER_INPUT_SIZE, seed: int | None = 0) -> torch.Tensor:
    """One view ``(1,3,size,size)`` of ``image`` by the named transform.

    ``seed`` makes random transforms reproducible without touching the global RNG state
    (``None`` draws from the global RNG).

    Examples:
        >>> make_view("chelsea", "aug", 112, seed=3).shape
        torch.Size([1, 3, 112, 112])
    """
    transform = view_transform(name, size)
    pil = to_pil(image)
    if seed is None:
        return transform(pil).unsqueeze(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return transform(pil).unsqueeze(0)


def make_pair(image: ImageLike, transform: str = "aug", size: int = PAPER_INPUT_SIZE, seed: int | None = 0,
              image2: ImageLike | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The two views of a pair: ``x1 = pure(image)`` and ``x2 = transform(image2 or image)``.

    Photometric transforms keep the geometry, so ``x1`` and ``x2`` are pixel-aligned.

    Examples:
        >>> x1, x2 = make_pair("coffee", "grayscale", 112)
        >>> x1.shape == x2.shape
        True
    """
    x1 = make_view(image, "no-shift" if transform.startswith("no-shift") else "pure", size, seed=None)
    x2 = make_view(image if image2 is None else image2, transform, size, seed)
    return x1, x2


def custom_view(image: ImageLike, size: int, crop_scale: tuple[float, float] = (0.3, 1.0), flip: bool = True,
                jitter: float = 0.4, grayscale: bool = False, blur_sigma: float = 0.0, seed: int = 0) -> torch.Tensor:
    """A seeded augmented view with explicit strengths (the explorer's view-2 controls).

    RandomResizedCrop(size, crop_scale), a random horizontal flip if ``flip``, ColorJitter(jitter,
    jitter, jitter, jitter/4) if ``jitter > 0``, grayscale if ``grayscale``, Gaussian blur of
    ``blur_sigma`` if positive. Returns ``(1,3,size,size)``.
    """
    steps = [T.RandomResizedCrop(size, scale=tuple(crop_scale))]
    if flip:
        steps.append(T.RandomHorizontalFlip(0.5))
    if jitter > 0:
        steps.append(T.ColorJitter(jitter, jitter, jitter, min(0.5, jitter / 4)))
    if grayscale:
        steps.append(T.Grayscale(num_output_channels=3))
    if blur_sigma > 0:
        steps.append(T.GaussianBlur(max(3, int(2 * round(3 * blur_sigma) + 1)), sigma=float(blur_sigma)))
    transform = T.Compose(steps + [T.ToTensor()])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return transform(to_pil(image)).unsqueeze(0)
