"""Matplotlib helpers that take CHW / BCHW tensors directly."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

__all__ = ["to_image", "overlay", "pair_figure"]


def to_image(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """An ``(H,W,3)`` float array in [0,1] from a ``(3,H,W)``, ``(1,3,H,W)`` or ``(H,W,3)`` input."""
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu()
        if x.dim() == 4:
            x = x[0]
        if x.dim() == 3 and x.shape[0] in (1, 3):
            x = x.permute(1, 2, 0)
        x = x.numpy()
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 3 and x.shape[2] == 1:
        x = np.repeat(x, 3, axis=2)
    return np.clip(x, 0, 1)


def _map(m: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(m, torch.Tensor):
        m = m.detach().float().cpu()
        while m.dim() > 2:
            m = m[0]
        m = m.numpy()
    return np.asarray(m, dtype=np.float32)


def _is_rgb(m: torch.Tensor | np.ndarray) -> bool:
    """A ``(B,3,H,W)`` map (feature PCA's RGB result), as opposed to ``(B,H,W)`` heat maps."""
    return isinstance(m, torch.Tensor) and m.dim() == 4 and m.shape[1] == 3


def overlay(ax, image: torch.Tensor | np.ndarray, heatmap: torch.Tensor | np.ndarray | None = None,
            alpha: float = 0.5, cmap: str = "jet", vmin: float | None = None, vmax: float | None = None):
    """Draw ``image`` and, over it, ``heatmap`` (any size; stretched to the image extent).

    Returns:
        The heatmap's ``AxesImage`` (for a colour bar), or ``None`` without a heatmap.
    """
    img = to_image(image)
    ax.imshow(img, extent=(0, img.shape[1], img.shape[0], 0))
    ax.set_axis_off()
    if heatmap is None:
        return None
    if _is_rgb(heatmap):  # an RGB map (feature PCA): drawn as colours, no colour map
        ax.imshow(to_image(heatmap), alpha=max(alpha, 0.85), extent=(0, img.shape[1], img.shape[0], 0),
                  interpolation="nearest")
        return None
    return ax.imshow(_map(heatmap), cmap=cmap, alpha=alpha, vmin=vmin, vmax=vmax,
                     extent=(0, img.shape[1], img.shape[0], 0), interpolation="bilinear")


def pair_figure(x1: torch.Tensor, x2: torch.Tensor, map1: torch.Tensor, map2: torch.Tensor | None,
                similarity: float, title: str = "", settings: dict[str, Any] | None = None,
                alpha: float = 0.5, cmap: str = "jet", labels: Sequence[str] = ("view 1", "view 2")):
    """The explain figure: both views, both maps overlaid with colour bars, similarity and settings.

    Returns:
        The matplotlib ``Figure``.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(13, 3.9), gridspec_kw={"width_ratios": [1, 1, 1.12, 1.12]})
    overlay(axes[0], x1)
    axes[0].set_title(labels[0])
    overlay(axes[1], x2)
    axes[1].set_title(labels[1])
    for ax, x, m, label in ((axes[2], x1, map1, labels[0]), (axes[3], x2, map2, labels[1])):
        if m is None or float(_map(m).max() - _map(m).min()) == 0 and float(_map(m).max()) == 0:
            overlay(ax, x)
            ax.set_title(f"{label}: no map")
            continue
        image = overlay(ax, x, m, alpha=alpha, cmap=cmap)
        if image is not None:
            fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02)
        ax.set_title(f"{label}: map")
    text = f"{title}   cos similarity = {similarity:+.3f}"
    if settings:
        shown = ", ".join(f"{k}={v}" for k, v in settings.items() if k not in ("method",) and v is not None)
        text += "\n" + shown
    fig.suptitle(text, fontsize=9)
    fig.tight_layout()
    return fig
