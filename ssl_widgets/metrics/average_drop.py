"""Average drop and increase in confidence for pairs (the Grad-CAM++ metrics of Chattopadhay et al. 2018, adapted to pairs)."""
from __future__ import annotations

import torch

from ..core import cosine, normalize_map
from ..models.state import check_model, preserved_model_state
from ..models.wrapper import SSLModel
from .common import MetricResult, checked_pair, maps_to_image_size

__all__ = ["average_drop_increase"]


def average_drop_increase(model: SSLModel, x1: torch.Tensor, x2: torch.Tensor, map1: torch.Tensor,
                          map2: torch.Tensor | None = None) -> MetricResult:
    """Average drop ``max(0, base - score) / base`` and increase ``1[score > base]``.

    Each map is min-max normalised (at image size) and multiplies its image in model input space.
    ``map2=None`` is the conditional form (``score = cos(f(m1 * x1), f(x2))``); with ``map2`` both
    images are masked (``score = cos(f(m1 * x1), f(m2 * x2))``). Average over a data set for the
    paper's numbers (reported as fractions).

    Args:
        model: the model.
        x1: ``(B,3,H,W)`` image 1.
        x2: ``(B,3,H,W)`` image 2.
        map1: ``(B,h,w)`` explanation of image 1, resized bilinearly to the image size; Captum-shaped
            ``(B,1,h,w)`` and ``(B,3,H,W)`` attributions are accepted (channels summed).
        map2: the same for image 2, or ``None`` (the conditional form: image 2 stays intact).

    Returns:
        :class:`MetricResult` with ``drop``, ``increase`` (0/1 floats) and ``base``, each ``(B,)``.

    Examples:
        >>> r = average_drop_increase(model, x1, x2, m1)
        >>> r.drop.shape, r.increase.shape
        (torch.Size([1]), torch.Size([1]))
    """
    check_model(model)
    x1, x2 = checked_pair(x1, x2, model.mean.dtype)
    device = model.device
    x1, x2 = x1.to(device), x2.to(device)
    e1 = normalize_map(maps_to_image_size(map1, x1, "map1"))[:, None]
    e2 = normalize_map(maps_to_image_size(map2, x2, "map2"))[:, None] if map2 is not None else None
    with preserved_model_state(model, requires_grad=False), torch.no_grad():
        x1_n, x2_n = model.normalize(x1), model.normalize(x2)
        z1, z2 = model.forward_normalized(x1_n), model.forward_normalized(x2_n)
        base = cosine(z1, z2)
        masked1 = model.forward_normalized(e1 * x1_n)
        masked2 = model.forward_normalized(e2 * x2_n) if e2 is not None else z2
        score = cosine(masked1, masked2)
    drop = (base - score).clamp(min=0) / base
    increase = (score > base).float()
    return MetricResult(drop=drop, increase=increase, base=base, score=score)
