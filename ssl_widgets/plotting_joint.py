"""Figures of joint explanations: the strongest patch pairs drawn as lines between the two images."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .attr.joint import JointAttribution, patch_boxes
from .plotting import to_image

__all__ = ["draw_top_matches", "remainder_note", "top_matches_figure"]


def _centres(size: tuple[int, int], grid: tuple[int, int]) -> np.ndarray:
    boxes = patch_boxes(size, grid).float()
    return torch.stack([(boxes[:, 1] + boxes[:, 3]) / 2, (boxes[:, 0] + boxes[:, 2]) / 2], 1).numpy()  # (P, 2) x, y


def draw_top_matches(ax, x1: torch.Tensor, x2: torch.Tensor, result: JointAttribution, k: int = 10, b: int = 0,
                     gap: int = 8, cmap: str = "autumn") -> list[tuple[int, int, float]]:
    """Draw both images side by side on ``ax`` and the ``k`` strongest pairs as lines between them.

    Line width and colour grow with the relevance (the strongest pair is the widest, yellow end
    of ``cmap``); each line ends at the centres of its two patches, which are outlined.

    Returns:
        The drawn pairs ``(i, j, value)``, strongest first.
    """
    import matplotlib

    img1, img2 = to_image(x1[b:b + 1]), to_image(x2[b:b + 1])
    h1, w1 = img1.shape[:2]
    h2, w2 = img2.shape[:2]
    offset = w1 + gap
    ax.imshow(img1, extent=(0, w1, h1, 0))
    ax.imshow(img2, extent=(offset, offset + w2, h2, 0))
    ax.set_xlim(0, offset + w2)
    ax.set_ylim(max(h1, h2), 0)
    ax.set_axis_off()
    pairs = result.top_matches(k, b)
    c1 = _centres(tuple(result.meta["size1"]), tuple(result.meta["grid1"]))
    c2 = _centres(tuple(result.meta["size2"]), tuple(result.meta["grid2"]))
    b1 = patch_boxes(tuple(result.meta["size1"]), tuple(result.meta["grid1"])).tolist()
    b2 = patch_boxes(tuple(result.meta["size2"]), tuple(result.meta["grid2"])).tolist()
    top = max(abs(pairs[0][2]), 1e-12) if pairs else 1.0
    colours = matplotlib.colormaps[cmap]
    for i, j, value in reversed(pairs):  # strongest drawn last (on top)
        strength = max(value, 0.0) / top
        colour = colours(0.25 + 0.75 * strength)
        for (y0, x0, y1, x1_), shift in ((b1[i], 0), (b2[j], offset)):
            ax.add_patch(matplotlib.patches.Rectangle((x0 + shift, y0), x1_ - x0, y1 - y0, fill=False,
                                                      edgecolor=colour, linewidth=1.0))
        ax.plot([c1[i, 0], c2[j, 0] + offset], [c1[i, 1], c2[j, 1]], color=colour,
                linewidth=0.8 + 2.7 * strength, alpha=0.9, solid_capstyle="round")
        ax.plot([c1[i, 0], c2[j, 0] + offset], [c1[i, 1], c2[j, 1]], "o", color=colour, markersize=3)
    return pairs


#: where the part of the similarity that no patch pair carries goes, by joint method
_REMAINDER = {
    "joint-gradient": "the bias and BatchNorm terms, which no pair carries (the pairs sum to the cosine only in a "
                      "bias-free ReLU model)",
    "joint-occlusion": "what single patches and groups of more than two patches carry (a pair scores only what "
                       "its two patches do together)",
}


def remainder_note(result: JointAttribution, b: int = 0) -> str:
    """The title lines of a joint explanation: the similarity, the pairs' share of it, and where the rest went.

    Examples:
        >>> from ssl_widgets.attr import JointGradient
        >>> print(remainder_note(JointGradient(model).attribute((x1, x2))))  # doctest: +ELLIPSIS
        cos similarity = +0... = sum of pair relevances ... + rest ...
        rest: the bias and BatchNorm terms, which no pair carries ...
    """
    similarity, pairs = float(result.similarity[b]), float(result.relevance[b].sum())
    where = _REMAINDER.get(str(result.meta.get("method", "")).split(":")[0], "not assigned to any patch pair")
    return (f"cos similarity = {similarity:+.3f} = sum of pair relevances {pairs:+.3f} + rest {similarity - pairs:+.3f}"
            f"\nrest: {where}")


def top_matches_figure(x1: torch.Tensor, x2: torch.Tensor, result: JointAttribution, k: int = 10, b: int = 0,
                       title: str = "", labels: Sequence[str] = ("view 1", "view 2"),
                       settings: dict[str, Any] | None = None):
    """The "top matches" figure of a joint explanation (as in BiLRP's figures).

    Left: the two images with the ``k`` strongest patch pairs joined by lines (wider and
    brighter = more relevant). Right: the two marginal maps (row and column sums of the joint
    relevance) over each image.

    Args:
        x1, x2: the explained pair, ``(B,3,H,W)``.
        result: the :class:`~ssl_widgets.attr.joint.JointAttribution` of the pair.
        k: number of pairs to draw.
        b: which item of the batch.
        title: first line of the figure title (the similarity is appended, split into the pairs' sum and the
            rest, with where the rest goes: :func:`remainder_note`).
        labels: names of the two images.
        settings: shown under the title.

    Returns:
        The matplotlib ``Figure`` (a :class:`~ssl_widgets.plotting.DisplayFigure`: it shows as an image when it
        is the last expression of a notebook cell).

    Examples:
        >>> from ssl_widgets.attr import JointGradient
        >>> fig = top_matches_figure(x1, x2, JointGradient(model).attribute((x1, x2)), k=8)
        >>> len(fig.axes[0].lines)  # the 8 strongest pairs: a joining line and its two end points each
        16
        >>> len(fig.axes[0].patches)  # and the two patches of each pair boxed
        16
    """
    from .plotting import DisplayFigure, overlay

    fig = DisplayFigure(figsize=(12, 3.9))  # shows itself as a PNG in Jupyter (a plain Figure shows as text)
    grid = fig.add_gridspec(1, 3, width_ratios=[2.1, 1.05, 1.05])
    ax = fig.add_subplot(grid[0])
    pairs = draw_top_matches(ax, x1, x2, result, k=k, b=b)
    ax.set_title(f"{labels[0]}  |  {labels[1]}: {len(pairs)} strongest pairs", fontsize=9)
    m1, m2 = result.marginals()
    for column, (x, m, label) in enumerate(((x1, m1, labels[0]), (x2, m2, labels[1])), start=1):
        axm = fig.add_subplot(grid[column])
        # signed marginals: diverging colour map centred on zero, with the sign convention on the colour bar
        overlay(axm, x[b:b + 1], m[b], alpha=0.5, colorbar=True)
        axm.set_title(f"{label}: marginal", fontsize=9)
    text = f"{title}   {remainder_note(result, b)}"
    if settings:
        text += "\n" + ", ".join(f"{key}={value}" for key, value in settings.items() if value is not None)
    fig.suptitle(text, fontsize=9)
    fig.tight_layout()
    return fig
