"""Insertion and deletion AUC for pairs, batched over curve steps.

Petsiuk et al. (2018)'s metrics as the paper adapts them to pairs: simultaneous (both images
perturbed, each by its own map) and conditional (one image perturbed, the other fixed).
"""
from __future__ import annotations

import torch

from ..core import MAP_BLUR_KERNEL, MAP_BLUR_SIGMA, PAPER_INSERTION_STEP, cosine, gaussian_blur
from ..models.state import check_model, preserved_model_state
from ..models.wrapper import SSLModel
from .common import MetricResult, checked_pair, embed, maps_to_image_size

__all__ = ["insertion_deletion", "simultaneous_and_conditional", "trapezoid_auc"]


def trapezoid_auc(curve: torch.Tensor) -> torch.Tensor:
    """``(sum_t s_t - s_0/2 - s_T/2) / T`` along the last dimension: the trapezoid rule on [0, 1]."""
    steps = curve.shape[-1] - 1
    return (curve.sum(-1) - curve[..., 0] / 2 - curve[..., -1] / 2) / steps


def _ranks(maps: torch.Tensor) -> torch.Tensor:
    """Rank of each pixel in descending order of the map (0 = most important), ``(B,H*W)``."""
    order = torch.argsort(maps.flatten(1), dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.shape[1], device=maps.device).expand_as(order))
    return ranks


def _step_images(start: torch.Tensor, target: torch.Tensor, ranks: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """For one image: ``start`` with its ``counts[t]`` highest-ranked pixels taken from ``target``, per step."""
    h, w = start.shape[-2:]
    take = (ranks.view(1, 1, h, w) < counts.view(-1, 1, 1, 1))
    return torch.where(take, target[None], start[None])


def insertion_deletion(model: SSLModel, x1: torch.Tensor, x2: torch.Tensor, map1: torch.Tensor,
                       map2: torch.Tensor | None = None, *, mode: str = "deletion", step: int = PAPER_INSERTION_STEP,
                       steps_per_eval: int = 32) -> MetricResult:
    """RISE-style insertion or deletion curve and AUC of a pair explanation.

    Pixels are taken in descending order of the map, ``step`` at a time. Deletion sets them to the
    neutral fill (0 in model input space), starting from the image; insertion copies them into a
    Gaussian blur (11x11, sigma 5) of the image. ``map2=None`` is the conditional form (only ``x1``
    is perturbed; ``f(x2)`` is computed once); with ``map2`` both images are perturbed at once (the
    simultaneous form) and each step scores ``cos(f(x1_t), f(x2_t))``.

    Args:
        model: the model.
        x1: ``(B,3,H,W)`` image 1.
        x2: ``(B,3,H,W)`` image 2.
        map1: ``(B,h,w)`` explanation of image 1, resized bilinearly to the image size; Captum-shaped
            ``(B,1,h,w)`` and ``(B,3,H,W)`` attributions are accepted (channels summed).
        map2: the same for image 2, or ``None`` (the conditional form: image 2 stays intact).
        mode: ``"deletion"`` (lower AUC is better) or ``"insertion"`` (higher is better).
        step: pixels per step (224 in the paper: T = ceil(H*W / step) steps, T+1 scores).
        steps_per_eval: curve steps per forward pass (bounds the memory).

    Returns:
        :class:`MetricResult` with ``score`` ``(B,)``, ``curve`` ``(B, T+1)`` and ``base``.

    Examples:
        >>> result = insertion_deletion(model, x1, x2, m1, m2, mode="insertion")
    """
    x1, x2, maps, counts_all = _checked(model, x1, x2, map1, map2, mode, step)
    curves = []
    with preserved_model_state(model, requires_grad=False), torch.no_grad():
        images_n = [model.normalize(x1), model.normalize(x2)]
        intact = [model.forward_normalized(images_n[0]), model.forward_normalized(images_n[1])]
        base = cosine(intact[0], intact[1])
        z_cond = intact[1] if map2 is None else None
        for b in range(x1.shape[0]):
            z1 = _curve_embeddings(model, images_n[0][b], maps[0][b], mode, counts_all, steps_per_eval)
            if z_cond is not None:
                z2 = z_cond[b:b + 1].expand_as(z1)
            else:
                z2 = _curve_embeddings(model, images_n[1][b], maps[1][b], mode, counts_all, steps_per_eval)
            curves.append(cosine(z1, z2))
    curve = torch.stack(curves)
    return MetricResult(score=trapezoid_auc(curve), curve=curve, base=base)


def simultaneous_and_conditional(model: SSLModel, x1: torch.Tensor, x2: torch.Tensor, map1: torch.Tensor,
                                 map2: torch.Tensor, *, mode: str = "deletion", step: int = PAPER_INSERTION_STEP,
                                 steps_per_eval: int = 32) -> tuple[MetricResult, MetricResult, MetricResult]:
    """The simultaneous curve and both conditional curves of a pair, from one pass over each perturbed image.

    The conditional form perturbs the same images as the simultaneous one (``x1`` by ``map1``, ``x2`` by
    ``map2``) and compares them with the other image intact, so each perturbed image is embedded once
    instead of twice: the three results equal :func:`insertion_deletion`'s (up to float rounding) at half
    its cost when all three are wanted (the evaluation driver).

    Args:
        model, x1, x2, map1, mode, step, steps_per_eval: as in :func:`insertion_deletion`.
        map2: the explanation of image 2 (required).

    Returns:
        ``(simultaneous, x1_given_x2, x2_given_x1)``: ``insertion_deletion(model, x1, x2, map1, map2)``,
        ``insertion_deletion(model, x1, x2, map1)`` and ``insertion_deletion(model, x2, x1, map2)``
        (each with this ``mode`` and ``step``).

    Examples:
        >>> both, first, second = simultaneous_and_conditional(model, x1, x2, m1, m2, mode="deletion")
    """
    if map2 is None:
        raise ValueError("map2 is required: the simultaneous form perturbs both images")
    x1, x2, maps, counts_all = _checked(model, x1, x2, map1, map2, mode, step)
    curves: list[list[torch.Tensor]] = [[], [], []]
    with preserved_model_state(model, requires_grad=False), torch.no_grad():
        images_n = [model.normalize(x1), model.normalize(x2)]
        intact = [model.forward_normalized(images_n[0]), model.forward_normalized(images_n[1])]
        for b in range(x1.shape[0]):
            z1, z2 = (_curve_embeddings(model, images_n[k][b], maps[k][b], mode, counts_all, steps_per_eval)
                      for k in (0, 1))
            curves[0].append(cosine(z1, z2))
            curves[1].append(cosine(z1, intact[1][b:b + 1].expand_as(z1)))
            curves[2].append(cosine(z2, intact[0][b:b + 1].expand_as(z2)))
    bases = (cosine(intact[0], intact[1]), cosine(intact[0], intact[1]), cosine(intact[1], intact[0]))
    stacked = [torch.stack(c) for c in curves]
    return tuple(MetricResult(score=trapezoid_auc(c), curve=c, base=base) for c, base in zip(stacked, bases))


def _checked(model: SSLModel, x1: torch.Tensor, x2: torch.Tensor, map1: torch.Tensor, map2: torch.Tensor | None,
             mode: str, step: int) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """The validated pair on the model's device, the maps at image size and the pixel count of each step."""
    check_model(model)
    x1, x2 = checked_pair(x1, x2, model.mean.dtype)
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode must be 'deletion' or 'insertion', got {mode!r}")
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    device = model.device
    x1, x2 = x1.to(device), x2.to(device)
    maps = [maps_to_image_size(map1, x1, "map1")]
    if map2 is not None:
        if x1.shape != x2.shape:
            raise ValueError("the simultaneous form needs x1 and x2 of the same shape")
        maps.append(maps_to_image_size(map2, x2, "map2"))
    h, w = x1.shape[2:]
    total = -(-h * w // step)
    return x1, x2, maps, torch.clamp(torch.arange(total + 1, device=device) * step, max=h * w)


def _curve_embeddings(model: SSLModel, x_n: torch.Tensor, single_map: torch.Tensor, mode: str,
                      counts_all: torch.Tensor, steps_per_eval: int) -> torch.Tensor:
    """``(T+1, D)`` embeddings of one model-input-space image ``(3,H,W)`` along its deletion or insertion steps:
    deletion sets the top-ranked pixels to 0 (the neutral fill), insertion copies them into the blurred image."""
    if mode == "deletion":
        start, target = x_n, torch.zeros_like(x_n)
    else:
        start, target = gaussian_blur(x_n[None], MAP_BLUR_KERNEL, MAP_BLUR_SIGMA)[0], x_n
    ranks = _ranks(single_map[None])[0]
    return torch.cat([embed(model, _step_images(start, target, ranks, counts_all[s:s + steps_per_eval]),
                            steps_per_eval) for s in range(0, counts_all.shape[0], steps_per_eval)])
