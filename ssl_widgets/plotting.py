"""Matplotlib helpers that take CHW / BCHW tensors directly.

Figures are built with matplotlib's object-oriented API (no ``pyplot``, no backend switching), so
the helpers work the same in a script, in a headless command and in a Jupyter kernel: a figure
returned as the last expression of a cell (or passed to ``IPython.display.display``) shows as a
PNG image, and ``fig.savefig(path)`` writes it anywhere.

Colour conventions: a map with negative values is drawn with a diverging colour map centred on
zero (red > 0, white = 0, blue < 0, symmetric limits); a map without negative values with a
sequential colour map starting at 0. Each map has a colour bar whose label says which.
"""
from __future__ import annotations

import io
import os
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

__all__ = [
    "POSITIVE_CMAP",
    "SIGNED_CMAP",
    "DisplayFigure",
    "colour_scale",
    "pca_note",
    "image_label",
    "maps_figure",
    "overlay",
    "pair_figure",
    "to_image",
]

#: colour map of signed maps (diverging, centred on zero: red positive, blue negative)
SIGNED_CMAP = "RdBu_r"
#: colour map of maps without negative values (sequential, from 0)
POSITIVE_CMAP = "inferno"


class DisplayFigure(Figure):
    """A matplotlib ``Figure`` that shows itself as a PNG image in Jupyter without ``pyplot``.

    Examples:
        >>> fig = DisplayFigure(figsize=(2, 2))
        >>> _ = fig.subplots().plot([0, 1])
        >>> fig._repr_png_()[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
        True
    """

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", bbox_inches="tight")
        return buffer.getvalue()


def image_label(image: Any, width: int = 28) -> str:
    """A short panel title for an image: a sample name as is, a path by its file name (shortened).

    Examples:
        >>> image_label("/some/long/folder/astronaut.jpg")
        'astronaut.jpg'
        >>> image_label("chelsea")
        'chelsea'
        >>> image_label("a_very_long_file_name_that_never_ends_at_all.png", width=20)
        'a_very_long_fil….png'
    """
    if isinstance(image, (str, os.PathLike)):
        name = Path(image).name or str(image)
    else:
        name = type(image).__name__
    if len(name) > width:
        _stem, dot, suffix = name.rpartition(".")
        keep = f"{dot}{suffix}" if dot and len(suffix) <= 5 else ""
        name = name[: width - len(keep) - 1] + "…" + keep
    return name


def to_image(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """An ``(H,W,3)`` float array in [0,1] from a ``(3,H,W)``, ``(1,3,H,W)`` or ``(H,W,3)`` input.

    Examples:
        >>> to_image(torch.ones(1, 3, 4, 5)).shape
        (4, 5, 3)
    """
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


def _limits(m: np.ndarray) -> tuple[str, float, float, bool]:
    """Colour map and limits: diverging and symmetric for a signed map, sequential from 0 otherwise."""
    low, high = float(np.nanmin(m)), float(np.nanmax(m))
    if low < 0:
        bound = max(abs(low), abs(high)) or 1.0
        return SIGNED_CMAP, -bound, bound, True
    return POSITIVE_CMAP, 0.0, high if high > 0 else 1.0, False


def colour_scale(m: torch.Tensor | np.ndarray) -> tuple[str, float, float]:
    """The colour map and limits the static figures give a map (the explorer's ``auto`` colour map too).

    A map with negative values gets ``SIGNED_CMAP`` with limits symmetric around zero, a map without them
    ``POSITIVE_CMAP`` from 0 to its maximum.

    Examples:
        >>> colour_scale(torch.tensor([[-1.0, 0.5]]))
        ('RdBu_r', -1.0, 1.0)
        >>> colour_scale(torch.tensor([[0.0, 2.0]]))
        ('inferno', 0.0, 2.0)
    """
    cmap, low, high, _signed = _limits(_map(m))
    return cmap, low, high


_CHANNELS = ("red", "green", "blue")


def pca_note(map1: torch.Tensor, map2: torch.Tensor, ratios: Sequence[float] | None = None) -> str:
    """What feature PCA's colours separate: parts within the images, or one image from the other.

    A component separates the two images when 90% of one image's patches lie below 90% of the other's
    (then the whole of one image takes that component's colour: a difference of the whole view, such as an
    augmentation's colour change, not of its parts).

    Args:
        map1, map2: the two RGB maps ``(3,h,w)`` (or ``(1,3,h,w)``) in [0, 1], component ``k`` in channel ``k``.
        ratios: the components' explained variance ratios, if known.

    Examples:
        >>> a, b = torch.zeros(3, 4, 4), torch.zeros(3, 4, 4)
        >>> a[0, :2], b[0, 2:] = 1, 1          # red varies inside both images
        >>> b[1] = 1                           # green: all of image 2, none of image 1
        >>> print(pca_note(a, b, [0.4, 0.3, 0.1]))
        red (component 1, 40% of the variance) separates parts within both images; green (component 2, 30%) separates image 2 from image 1: it tints all of image 2 (the images differ as a whole there, not part by part)
    """
    a, b = (torch.as_tensor(m).detach().float().reshape(-1, *m.shape[-2:])[-3:].flatten(1) for m in (map1, map2))
    parts = []
    for k in range(min(3, a.shape[0])):
        share = f", {ratios[k]:.0%}" + (" of the variance" if k == 0 else "") if ratios else ""
        name = f"{_CHANNELS[k]} (component {k + 1}{share})"
        high, low = (b, a) if float(b[k].median()) > float(a[k].median()) else (a, b)
        if float(low[k].quantile(0.9)) < float(high[k].quantile(0.1)):
            which = "image 2" if high is b else "image 1"
            other = "image 1" if high is b else "image 2"
            parts.append(f"{name} separates {which} from {other}: it tints all of {which} (the images differ "
                         "as a whole there, not part by part)")
        elif k == 0:
            parts.append(f"{name} separates parts within both images")
    return "; ".join(parts)


def _is_rgb(m: torch.Tensor | np.ndarray) -> bool:
    """A ``(B,3,H,W)`` map (feature PCA's RGB result), as opposed to ``(B,H,W)`` heat maps."""
    return isinstance(m, torch.Tensor) and m.dim() == 4 and m.shape[1] == 3


def overlay(ax, image: torch.Tensor | np.ndarray, heatmap: torch.Tensor | np.ndarray | None = None,
            alpha: float = 0.5, cmap: str | None = None, vmin: float | None = None, vmax: float | None = None,
            colorbar: bool = False):
    """Draw ``image`` on ``ax`` and, over it, ``heatmap`` (any size; stretched to the image extent).

    Args:
        ax: a matplotlib ``Axes``.
        image: ``(3,H,W)``, ``(1,3,H,W)`` or ``(H,W,3)`` in [0, 1].
        heatmap: a 2-D map (or ``(1,h,w)``); ``None`` draws the image alone.
        alpha: opacity of the map.
        cmap, vmin, vmax: colour map and limits; by default a signed map gets ``SIGNED_CMAP`` with
            limits symmetric about zero and a non-negative map ``POSITIVE_CMAP`` from 0.
        colorbar: add a colour bar labelled with the sign convention.

    Returns:
        The heatmap's ``AxesImage`` (for a colour bar), or ``None`` without a heatmap.

    Examples:
        >>> fig = DisplayFigure()
        >>> ax = fig.subplots()
        >>> shown = overlay(ax, torch.zeros(3, 8, 8), torch.arange(16.0).reshape(4, 4) - 8)
        >>> shown.get_cmap().name, shown.get_clim()
        ('RdBu_r', (-8.0, 8.0))
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
    values = _map(heatmap)
    auto_cmap, auto_min, auto_max, signed = _limits(values)
    shown = ax.imshow(values, cmap=cmap or auto_cmap, alpha=alpha,
                      vmin=auto_min if vmin is None else vmin, vmax=auto_max if vmax is None else vmax,
                      extent=(0, img.shape[1], img.shape[0], 0), interpolation="bilinear")
    if colorbar:
        bar = ax.figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
        bar.set_label("signed: red > 0, blue < 0" if signed else "value (all ≥ 0)", fontsize=8)
        bar.ax.tick_params(labelsize=7)
    return shown


def _wrap(text: str, width: int, lines: int = 2) -> str:
    return "\n".join(textwrap.wrap(text, width, max_lines=lines, placeholder="…")) if text else text


def _is_flat_zero(m: torch.Tensor | np.ndarray | None) -> bool:
    if m is None:
        return True
    values = _map(m)
    return bool(np.all(values == 0))


def pair_figure(x1: torch.Tensor, x2: torch.Tensor, map1: torch.Tensor | None, map2: torch.Tensor | None,
                similarity: float, title: str = "", settings: dict[str, Any] | None = None,
                alpha: float = 0.5, cmap: str | None = None, labels: Sequence[str] = ("view 1", "view 2"),
                sign_note: str | None = None) -> DisplayFigure:
    """The explain figure: both views, both maps overlaid with colour bars, similarity and settings.

    Args:
        x1, x2: the two images ``(1,3,H,W)`` in [0, 1].
        map1, map2: their maps (any resolution; ``None`` or all zeros: "no map").
        similarity: the pair's cosine similarity (shown in the title).
        title: first line of the title (e.g. the method and model).
        settings: shown on a second line (``method`` left out).
        alpha, cmap: as :func:`overlay` (``None``: by the sign of each map).
        labels: short names of the two images (file or sample names; see :func:`image_label`).
        sign_note: what a positive / negative value means for this method: a third title line, shown
            only where a map has negative values.

    Returns:
        The :class:`DisplayFigure` (a matplotlib ``Figure``; shows as an image in Jupyter).

    Examples:
        >>> x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
        >>> fig = pair_figure(x, x, torch.rand(1, 4, 4), None, 1.0, labels=("chelsea", "chelsea"))
        >>> [ax.get_title() for ax in fig.axes[:4]]
        ['image 1: chelsea', 'image 2: chelsea', 'map on image 1', 'image 2: no map']
    """
    fig = DisplayFigure(figsize=(13, 4.3))
    axes = fig.subplots(1, 4, gridspec_kw={"width_ratios": [1, 1, 1.12, 1.12]})
    names = [_wrap(f"image {i + 1}: {label}", 30, 3) for i, label in enumerate(labels[:2])]
    for ax, x, name in ((axes[0], x1, names[0]), (axes[1], x2, names[1])):
        overlay(ax, x)
        ax.set_title(name, fontsize=9)
    for index, (ax, x, m) in enumerate(((axes[2], x1, map1), (axes[3], x2, map2))):
        if _is_flat_zero(m):
            overlay(ax, x)
            ax.set_title(f"image {index + 1}: no map", fontsize=9)
            continue
        overlay(ax, x, m, alpha=alpha, cmap=cmap, colorbar=True)
        ax.set_title(f"map on image {index + 1}", fontsize=9)
    text = f"{title}   cos similarity = {similarity:+.3f}" if title else f"cos similarity = {similarity:+.3f}"
    if settings:
        shown = ", ".join(f"{k}={v}" for k, v in settings.items() if k not in ("method",) and v is not None)
        text += "\n" + _wrap(shown, 150, 1)
    signed = any(not _is_flat_zero(m) and float(np.nanmin(_map(m))) < 0 for m in (map1, map2))
    if sign_note and signed:
        text += "\n" + _wrap(sign_note, 150, 1)
    if _is_rgb(map1) and _is_rgb(map2):  # feature PCA: say what the colours separate
        ratios = (settings or {}).get("explained_variance_ratio")
        text += "\n" + _wrap(pca_note(map1, map2, ratios[0] if ratios else None), 150, 2)
    fig.suptitle(text, fontsize=9)
    fig.tight_layout()
    return fig


def maps_figure(images: Sequence[torch.Tensor], maps: Sequence[torch.Tensor | None], titles: Sequence[str],
                ncols: int = 4, alpha: float = 0.5, suptitle: str = "") -> DisplayFigure:
    """A grid of images, each with its map overlaid and a colour bar (signed maps centred on zero).

    Args:
        images: ``(1,3,H,W)`` images, one per panel.
        maps: one map per panel (``None``: the image alone).
        titles: one short title per panel (wrapped to fit).
        ncols: panels per row.
        alpha: opacity of the maps.
        suptitle: a title over the grid.

    Returns:
        The :class:`DisplayFigure`.

    Examples:
        >>> x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
        >>> fig = maps_figure([x, x], [torch.rand(2, 2), None], ["a", "b"], ncols=2)
        >>> [ax.get_title() for ax in fig.axes[:2]]
        ['a', 'b']
    """
    if not (len(images) == len(maps) == len(titles)) or not images:
        raise ValueError(f"maps_figure needs as many maps and titles as images (got {len(images)} images, "
                         f"{len(maps)} maps, {len(titles)} titles)")
    ncols = max(1, min(ncols, len(images)))
    nrows = -(-len(images) // ncols)
    fig = DisplayFigure(figsize=(3.4 * ncols, 3.2 * nrows + (0.4 if suptitle else 0)))
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, x, m, name in zip(axes, images, maps, titles):
        overlay(ax, x, m, alpha=alpha, colorbar=m is not None)
        ax.set_title(_wrap(name, 30), fontsize=9)
    for ax in axes[len(images):]:
        ax.set_axis_off()
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return fig
