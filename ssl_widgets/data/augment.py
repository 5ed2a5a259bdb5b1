"""Batched, device-agnostic SSL augmentations on image tensors.

torchvision's transforms draw parameters per image in Python; for training on a small CPU (or a
GPU that would sit idle waiting for PIL) this module draws all parameters at once and applies
each transform to the whole batch with tensor ops: random resized crops through
``torchvision.ops.roi_align``, colour jitter as per-image affine maps, per-image Gaussian blur as
a grouped convolution.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from ..core import grayscale as _gray

__all__ = ["AugmentConfig", "SIMCLR_AUGMENT", "BARLOW_VIEW1", "BARLOW_VIEW2", "augment_batch", "box_masks",
           "color_jitter", "random_erasing_boxes", "random_resized_boxes"]

@dataclass(frozen=True)
class AugmentConfig:
    """Parameters of one view's augmentation pipeline (SimCLR / Barlow Twins recipes)."""

    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0


SIMCLR_AUGMENT = AugmentConfig()
BARLOW_VIEW1 = AugmentConfig(saturation=0.2, blur_p=1.0, solarize_p=0.0)
BARLOW_VIEW2 = AugmentConfig(saturation=0.2, blur_p=0.1, solarize_p=0.2)


def random_resized_boxes(n: int, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
                         generator: torch.Generator | None = None, tries: int = 10) -> torch.Tensor:
    """Crop boxes ``(n, 4)`` as ``(x0, y0, x1, y1)`` drawn like torchvision's RandomResizedCrop.

    Ten candidates per image; the first that fits is used, else the central crop of the
    clamped aspect ratio (torchvision's fallback).
    """
    area = height * width
    target = area * torch.empty(n, tries).uniform_(scale[0], scale[1], generator=generator)
    log_ratio = torch.empty(n, tries).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = torch.exp(log_ratio)
    w = torch.sqrt(target * aspect).round()
    h = torch.sqrt(target / aspect).round()
    ok = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1))
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        fh, fw = height, round(height * ratio[1])
    else:
        fw, fh = width, height
    idx = first.clamp(min=0)
    cw = torch.where(first >= 0, w.gather(1, idx[:, None])[:, 0], torch.tensor(float(fw)))
    ch = torch.where(first >= 0, h.gather(1, idx[:, None])[:, 0], torch.tensor(float(fh)))
    x0 = torch.floor(torch.rand(n, generator=generator) * (width - cw + 1))
    y0 = torch.floor(torch.rand(n, generator=generator) * (height - ch + 1))
    x0 = torch.where(first >= 0, x0, torch.tensor(float((width - fw) // 2)))
    y0 = torch.where(first >= 0, y0, torch.tensor(float((height - fh) // 2)))
    return torch.stack([x0, y0, x0 + cw, y0 + ch], dim=1)


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    h = torch.where(maxc == r, ((g - b) / safe) % 6, torch.where(maxc == g, (b - r) / safe + 2, (r - g) / safe + 4))
    h = torch.where(delta > 0, h / 6, torch.zeros_like(h))
    s = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    return torch.stack([h, s, maxc], 1)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(1)
    i = torch.floor(h * 6) % 6
    f = h * 6 - torch.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = torch.zeros_like(x)
    for k, (rr, gg, bb) in enumerate(choices):
        mask = (i == k).unsqueeze(1)
        out = torch.where(mask, torch.stack([rr, gg, bb], 1), out)
    return out


def _per_image(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return values.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)


def _uniform(n: int, spread: float, generator: torch.Generator | None, center: float = 1.0) -> torch.Tensor:
    return torch.empty(n).uniform_(max(0.0, center - spread), center + spread, generator=generator)


def color_jitter(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Brightness, contrast, saturation and hue jitter with per-image factors (fixed order)."""
    n = x.shape[0]
    apply = _per_image(torch.rand(n, generator=generator) < cfg.jitter_p, x) > 0
    out = (x * _per_image(_uniform(n, cfg.brightness, generator), x)).clamp(0, 1)
    mean = _gray(out).mean(dim=(2, 3), keepdim=True)
    out = ((out - mean) * _per_image(_uniform(n, cfg.contrast, generator), x) + mean).clamp(0, 1)
    gray = _gray(out)
    out = ((out - gray) * _per_image(_uniform(n, cfg.saturation, generator), x) + gray).clamp(0, 1)
    if cfg.hue > 0:
        hsv = _rgb_to_hsv(out)
        shift = torch.empty(n).uniform_(-cfg.hue, cfg.hue, generator=generator).to(x.device, x.dtype)
        hsv = torch.cat([(hsv[:, :1] + shift.view(-1, 1, 1, 1)) % 1.0, hsv[:, 1:]], 1)
        out = _hsv_to_rgb(hsv).clamp(0, 1)
    return torch.where(apply, out, x)


def gaussian_blur_batch(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Blur image ``i`` with its own ``sigma[i]`` (separable, reflect padding)."""
    n, c, h, w = x.shape
    radius = kernel_size // 2
    pos = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (pos[None] / sigma.to(x.device, x.dtype)[:, None]) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (n*c, k)
    flat = F.pad(x.reshape(1, n * c, h, w), (radius, radius, radius, radius), mode="reflect")
    flat = F.conv2d(flat, kernel.view(n * c, 1, 1, -1), groups=n * c)
    flat = F.conv2d(flat, kernel.view(n * c, 1, -1, 1), groups=n * c)
    return flat.view(n, c, h, w)


def augment_batch(images: torch.Tensor, size: int, cfg: AugmentConfig,
                  generator: torch.Generator | None = None, sampling_ratio: int = 2) -> torch.Tensor:
    """One augmented view of every image: crop+resize, flip, jitter, grayscale, blur, solarize.

    Args:
        images: ``(N,3,H,W)`` float in ``[0,1]``, any device.
        size: output side length.
        cfg: the view's augmentation parameters.
        generator: a CPU generator for the random parameters (seeded training).
        sampling_ratio: bilinear samples per output pixel and axis in the crop (2 anti-aliases
            down-scaling; 1 samples at pixel centres, an exact copy for an un-scaled crop).

    Returns:
        ``(N,3,size,size)`` float in ``[0,1]`` on ``images.device``.
    """
    n, _, height, width = images.shape
    boxes = random_resized_boxes(n, height, width, cfg.scale, cfg.ratio, generator).to(images.device, images.dtype)
    rois = torch.cat([torch.arange(n, device=images.device, dtype=images.dtype)[:, None], boxes], 1)
    out = roi_align(images, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=sampling_ratio, aligned=True)
    flip = _per_image(torch.rand(n, generator=generator) < cfg.flip_p, out) > 0
    out = torch.where(flip, out.flip(3), out)
    out = color_jitter(out, cfg, generator)
    gray = _per_image(torch.rand(n, generator=generator) < cfg.grayscale_p, out) > 0
    out = torch.where(gray, _gray(out).expand_as(out), out)
    if cfg.blur_p > 0:
        sigma = torch.empty(n).uniform_(*cfg.blur_sigma, generator=generator)
        blur = _per_image(torch.rand(n, generator=generator) < cfg.blur_p, out) > 0
        kernel = max(3, (size // 10) | 1)
        out = torch.where(blur, gaussian_blur_batch(out, sigma, kernel), out)
    if cfg.solarize_p > 0:
        sol = _per_image(torch.rand(n, generator=generator) < cfg.solarize_p, out) > 0
        out = torch.where(sol & (out >= 0.5), 1.0 - out, out)
    return out.clamp(0, 1)


def random_erasing_boxes(n: int, height: int, width: int, scale: tuple[float, float] = (0.02, 0.33),
                         ratio: tuple[float, float] = (0.3, 3.3), generator: torch.Generator | None = None,
                         tries: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Rectangles drawn like torchvision's ``RandomErasing`` (area fraction, log-uniform aspect, 10 tries).

    Returns:
        ``(boxes, found)``: ``(n, 4)`` long boxes ``(y0, x0, y1, x1)`` and a bool mask of the images
        for which a rectangle fitted (torchvision leaves the others unchanged).
    """
    area = height * width
    target = area * torch.empty(n, tries).uniform_(scale[0], scale[1], generator=generator)
    aspect = torch.exp(torch.empty(n, tries).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator))
    h = torch.sqrt(target * aspect).round()
    w = torch.sqrt(target / aspect).round()
    ok = (h < height) & (w < width) & (h > 0) & (w > 0)
    found = ok.any(1)
    idx = ok.float().argmax(1, keepdim=True)
    h, w = h.gather(1, idx)[:, 0], w.gather(1, idx)[:, 0]
    y0 = torch.floor(torch.rand(n, generator=generator) * (height - h + 1))
    x0 = torch.floor(torch.rand(n, generator=generator) * (width - w + 1))
    boxes = torch.stack([y0, x0, y0 + h, x0 + w], 1).long()
    boxes[~found] = 0
    return boxes, found


def box_masks(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Boolean masks ``(n, 1, H, W)``, true inside each box ``(y0, x0, y1, x1)``."""
    rows = torch.arange(height, device=boxes.device)
    cols = torch.arange(width, device=boxes.device)
    in_rows = (rows[None] >= boxes[:, :1]) & (rows[None] < boxes[:, 2:3])
    in_cols = (cols[None] >= boxes[:, 1:2]) & (cols[None] < boxes[:, 3:4])
    return (in_rows[:, :, None] & in_cols[:, None, :])[:, None]
