"""Max-sensitivity of a pair explanation (Yeh et al. 2019): the largest change of the maps under small input noise."""
from __future__ import annotations

import inspect
from typing import Any

import torch

from .._validation import BeyondRangePair, check_pair

__all__ = ["max_sensitivity"]


def max_sensitivity(method: Any, inputs: tuple[torch.Tensor, torch.Tensor], *, n_samples: int = 10,
                    radius: float = 0.2, generator: torch.Generator | None = None,
                    **attribute_kwargs: Any) -> torch.Tensor:
    """``(max_trials r1 + max_trials r2) / 2`` with ``r_k = ||e_k - e'_k||_F / ||e_k||_F``.

    Each trial draws ``u ~ U[-radius, radius]`` of the image's shape and adds the *same* ``u`` to
    both images in the model's input space (as the paper's code, which works on normalised
    tensors), then recomputes the explanation. Methods with a ``blur`` option are run with
    ``blur=False`` unless told otherwise, as the paper's sensitivity recomputation.

    Args:
        method: an attribution object of this package (its ``attribute`` takes the pair).
        inputs: ``(x1, x2)`` of equal shape.
        n_samples: trials.
        radius: half-width of the uniform noise.
        generator: seeds the noise.
        attribute_kwargs: passed to ``method.attribute``.

    Returns:
        ``(B,)`` tensor; lower is more stable.

    Examples:
        >>> from ssl_widgets.attr import PairInputXGradient
        >>> ms = max_sensitivity(PairInputXGradient(model), (x1, x2), n_samples=2, guided=True)
        >>> ms.shape
        torch.Size([1])
    """
    x1, x2 = check_pair(inputs)
    if x1.shape != x2.shape:
        raise ValueError("max_sensitivity adds the same noise to both images: they need the same shape")
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if "blur" in inspect.signature(method.attribute).parameters:
        attribute_kwargs.setdefault("blur", False)
    model = getattr(method, "model", None)
    std = model.std.to(x1) if model is not None and getattr(model, "normalized", False) else torch.ones(1, 3, 1, 1).to(x1)
    base = method.attribute((x1, x2), **attribute_kwargs)
    norms = [m.flatten(1).norm(dim=1).clamp(min=1e-12) for m in base]
    worst = [torch.zeros(x1.shape[0], device=base[0].device) for _ in range(2)]
    for _ in range(n_samples):
        u = (torch.rand(x1.shape, generator=generator) * 2 - 1).to(x1) * radius * std  # input-space noise
        # the paper's noise may leave [0, 1] a little: the pair says so itself
        perturbed = method.attribute(BeyondRangePair((x1 + u, x2 + u)), **attribute_kwargs)
        for k in range(2):
            r = (perturbed[k] - base[k]).flatten(1).norm(dim=1) / norms[k]
            worst[k] = torch.maximum(worst[k], r)
    return (worst[0] + worst[1]) / 2
