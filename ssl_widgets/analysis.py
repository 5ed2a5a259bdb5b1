"""Model analyses the explorer plots: dense correspondence and similarity sweeps."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ._validation import check_images
from .core import captured_outputs, cosine, gaussian_blur, grayscale
from .models.state import check_model, preserved_model_state
from .models.wrapper import SSLModel

__all__ = ["dense_correspondence", "similarity_sweep", "SWEEPS", "sweep_view"]


def _layer_features(model: SSLModel, x: torch.Tensor, layer: str | None) -> torch.Tensor:
    if layer is None:
        return model.features(x)
    with captured_outputs(model.get_layer(layer)) as captured:
        model(x)
    return captured[-1]


def dense_correspondence(model: SSLModel, x_query: torch.Tensor, x_target: torch.Tensor,
                         point: tuple[float, float], layer: str | None = None) -> torch.Tensor:
    """Where does the target image answer a point of the query image?

    Cosine similarity between the layer's feature vector under ``point`` (``(y, x)`` pixel
    coordinates of ``x_query``) and every position of ``x_target``'s feature map.

    Args:
        model: the model.
        x_query, x_target: ``(1,3,H,W)`` images.
        point: ``(y, x)`` in query pixels.
        layer: trunk layer (``None`` = the trunk output).

    Returns:
        ``(h, w)`` map of cosine similarities in ``[-1, 1]`` at the layer's resolution.

    Examples:
        >>> heat = dense_correspondence(model, x1, x2, (40, 60))
    """
    check_model(model)
    x_query = check_images(x_query, "x_query", model.mean.dtype).detach()
    x_target = check_images(x_target, "x_target", model.mean.dtype).detach()
    y, x = point
    height, width = x_query.shape[2:]
    if not (0 <= y < height and 0 <= x < width):
        raise ValueError(f"point {point} is outside the query image of size {height}x{width}")
    with preserved_model_state(model, requires_grad=False), torch.no_grad():
        fq = _layer_features(model, x_query[:1].to(model.device), layer)[0]
        ft = _layer_features(model, x_target[:1].to(model.device), layer)[0]
    row = min(int(y * fq.shape[1] / height), fq.shape[1] - 1)
    col = min(int(x * fq.shape[2] / width), fq.shape[2] - 1)
    query = fq[:, row, col]
    return cosine(ft.permute(1, 2, 0), query.view(1, 1, -1).expand(ft.shape[1], ft.shape[2], -1))


SWEEPS: dict[str, str] = {
    "color-jitter": "brightness, contrast, saturation by +-s and hue by +-s/4 (fixed signs)",
    "blur": "Gaussian blur of sigma 3*s",
    "grayscale": "blend towards grayscale by s",
    "solarize": "solarize above the threshold 1 - s",
    "crop": "centre crop keeping 1 - 0.8*s of the side, resized back",
}


def sweep_view(x: torch.Tensor, kind: str, strength: float) -> torch.Tensor:
    """A deterministic transform of strength ``s`` in [0, 1] of ``(1,3,H,W)`` images (``s=0``: unchanged)."""
    from torchvision.transforms import functional as TF

    s = float(strength)
    if kind == "color-jitter":
        out = TF.adjust_brightness(x, 1 + s)
        out = TF.adjust_contrast(out, 1 - 0.8 * s)
        out = TF.adjust_saturation(out, 1 + s)
        return TF.adjust_hue(out, s / 4).clamp(0, 1)
    if kind == "blur":
        if s == 0:
            return x
        sigma = 3 * s
        kernel = max(3, int(2 * round(3 * sigma) + 1))
        return gaussian_blur(x, kernel, sigma)
    if kind == "grayscale":
        return (1 - s) * x + s * grayscale(x)
    if kind == "solarize":
        threshold = 1 - s
        return torch.where(x >= threshold, 1 - x, x) if s > 0 else x
    if kind == "crop":
        h, w = x.shape[2:]
        keep = max(2, round(h * (1 - 0.8 * s)))
        return TF.resize(TF.center_crop(x, [keep, keep]), [h, w], antialias=True)
    raise ValueError(f"unknown sweep {kind!r}; choose one of {', '.join(SWEEPS)}")


def similarity_sweep(model: SSLModel, x: torch.Tensor, kind: str,
                     strengths: Sequence[float] = tuple(i / 10 for i in range(11))) -> torch.Tensor:
    """``cos(f(x), f(T_s(x)))`` for each strength ``s``: how invariant the model is to a transform.

    Returns:
        ``(len(strengths),)`` similarities (the first is 1 for ``s = 0``).
    """
    check_model(model)
    x = check_images(x, dtype=model.mean.dtype).detach()
    views = torch.cat([sweep_view(x[:1], kind, s) for s in strengths]).to(model.device)
    with preserved_model_state(model, requires_grad=False), torch.no_grad():
        z = model(torch.cat([x[:1].to(model.device), views]))
    return cosine(z[:1].expand(len(strengths), -1), z[1:])
