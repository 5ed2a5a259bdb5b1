"""Fast PNG rendering of images with heat-map overlays for ``ipywidgets.Image``."""
from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

__all__ = ["mask_outline", "overlay_png", "resize_map", "colour_bar_html", "map_scale", "render_view", "result_note", "COLORMAPS", "EXPLORER_STYLE"]

#: the panel's own styles: tab labels in full (the tabs wrap to a second row instead of cutting labels), images
#: that keep their size and place (fixed-width columns, wrapped text, every tab's panel as tall as the tallest
#: hand-made one: feature visualisation, 228 px), and an upload button without ipywidgets' file count
EXPLORER_STYLE = """<style>
.ssl-explorer .lm-TabBar-content { flex-wrap: wrap; }
.ssl-explorer .lm-TabBar-tab { flex: 0 0 auto !important; min-width: 0 !important; max-width: none !important; }
.ssl-explorer .lm-TabBar-tabLabel { overflow: visible !important; text-overflow: clip !important; }
.ssl-explorer .widget-tab-contents { min-height: 232px; }
.ssl-explorer .widget-html-content { white-space: normal; overflow-wrap: anywhere; line-height: 1.4; }
.ssl-explorer .ssl-image-label .widget-html-content { white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.ssl-explorer .ssl-upload { font-size: 0 !important; }
.ssl-explorer .ssl-upload i { font-size: var(--jp-widgets-font-size, 13px); }
.ssl-explorer .ssl-upload::after { content: "upload image 1"; font-size: var(--jp-widgets-font-size, 13px);
                                   margin-left: 4px; }
</style>"""

#: "auto": the static figures' choice (diverging and centred on zero for a signed map, inferno from 0 otherwise)
COLORMAPS = ("auto", "inferno", "viridis", "magma", "RdBu_r", "coolwarm", "gray", "jet")


def map_scale(heat: torch.Tensor, cmap: str) -> tuple[str, float, float]:
    """Colour map and limits for ``heat``: ``auto`` as the static figures, another map over the map's min..max.

    Examples:
        >>> map_scale(torch.tensor([[-0.5, 1.0]]), "auto")
        ('RdBu_r', -1.0, 1.0)
        >>> map_scale(torch.tensor([[-0.5, 1.0]]), "viridis")
        ('viridis', -0.5, 1.0)
    """
    from ..plotting import colour_scale

    if cmap == "auto":
        return colour_scale(heat)
    values = heat.detach().float()
    return cmap, float(values.min()), float(values.max())


def colour_bar_html(cmap: str, low: float, high: float, width: int = 256) -> str:
    """A horizontal colour bar of ``cmap`` from ``low`` to ``high`` with its end (and zero) values, as HTML.

    Examples:
        >>> "+0.0123" in colour_bar_html("inferno", 0.0, 0.0123)
        True
    """
    from matplotlib import colormaps

    colours = [colormaps[cmap](t / 8)[:3] for t in range(9)]
    stops = ", ".join("#" + "".join(f"{round(255 * c):02x}" for c in colour) for colour in colours)
    middle = "0" if low < 0 < high else ""
    return (f"<div style='width:{width}px'><div style='height:10px;background:linear-gradient(to right, {stops})'>"
            f"</div><div style='display:flex;justify-content:space-between;font-size:11px'>"
            f"<span>{low:+.3g}</span><span>{middle}</span><span>{high:+.3g}</span></div></div>")


def resize_map(heat: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A ``(h,w)`` map resized bilinearly to ``size``."""
    heat = heat.detach().float().cpu()
    if tuple(heat.shape) == tuple(size):
        return heat
    return F.interpolate(heat[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]


def mask_outline(mask: np.ndarray, width: int = 2) -> np.ndarray:
    """The pixels of a bool mask within ``width`` pixels of its edge (4-neighbourhood).

    Examples:
        >>> int(mask_outline(np.ones((4, 4), bool), width=1).sum())  # nothing outside: no edge
        0
        >>> int(mask_outline(np.pad(np.ones((3, 3), bool), 1), width=1).sum())  # the ring of a 3x3 square
        8
    """
    inner = mask.copy()
    for _ in range(width):
        padded = np.pad(inner, 1, mode="edge")
        inner = inner & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def overlay_png(image: torch.Tensor, heat: torch.Tensor | None = None, *, alpha: float = 0.5, cmap: str = "jet",
                display_size: int = 256, box: tuple[int, int, int, int] | None = None,
                vmin: float | None = None, vmax: float | None = None, contour: bool = False) -> bytes:
    """PNG bytes of ``image`` (``(3,H,W)`` or ``(1,3,H,W)`` in [0,1]) blended with a colour-mapped ``heat``.

    Args:
        image: the image.
        heat: ``(h,w)`` map (any size), normalised to [vmin, vmax] (default: its own min and max), or an RGB
            map ``(3,h,w)`` in [0, 1] (feature PCA), enlarged nearest-neighbour and blended as is.
        alpha: opacity of the heat map.
        cmap: a matplotlib colour map name.
        display_size: side of the output (nearest-neighbour free, bilinear up-scaling).
        box: ``(y0, x0, y1, x1)`` in image pixels, drawn as a white rectangle (the clicked patch).
        contour: ``heat`` is a 0/1 mask (DINO's attention mask): the outline of ``heat > 0.5`` is drawn in cyan.
    """
    from matplotlib import colormaps

    img = image.detach().float().cpu()
    img = img[0] if img.dim() == 4 else img
    h, w = img.shape[1:]
    rgb = img.permute(1, 2, 0).clamp(0, 1).numpy()
    if heat is not None and heat.dim() == 3 and heat.shape[0] == 3:  # an RGB map (feature PCA): shown as is
        colour = F.interpolate(heat.detach().float().cpu()[None], size=(h, w), mode="nearest")[0]
        rgb = (1 - alpha) * rgb + alpha * colour.permute(1, 2, 0).clamp(0, 1).numpy()
    elif heat is not None:
        hm = resize_map(heat.reshape(heat.shape[-2:]), (h, w)).numpy()
        low = float(hm.min()) if vmin is None else vmin
        high = float(hm.max()) if vmax is None else vmax
        norm = np.clip((hm - low) / (high - low if high > low else 1.0), 0, 1)
        colour = colormaps[cmap](norm)[..., :3]
        rgb = (1 - alpha) * rgb + alpha * colour
    out = Image.fromarray((rgb * 255).round().astype(np.uint8))
    scale = display_size / max(h, w)
    out = out.resize((round(w * scale), round(h * scale)), Image.BILINEAR)
    if contour and heat is not None and heat.dim() == 2:
        pixels = np.array(out)
        pixels[mask_outline(resize_map(heat, pixels.shape[:2]).numpy() > 0.5)] = (0, 255, 255)
        out = Image.fromarray(pixels)
    if box is not None:
        y0, x0, y1, x1 = (v * scale for v in box)
        ImageDraw.Draw(out).rectangle([x0, y0, x1 - 1, y1 - 1], outline=(255, 255, 255), width=2)
    buffer = io.BytesIO()
    out.save(buffer, format="PNG")
    return buffer.getvalue()


def render_view(image: torch.Tensor, heat: torch.Tensor | None, *, colormap: str, alpha: float, display_size: int,
                box: tuple[int, int, int, int] | None = None, contour: bool = False) -> tuple[bytes, str]:
    """One of the explorer's images: the PNG of ``image`` under ``heat`` and the HTML of its colour bar.

    A heat map gets ``colormap`` (``"auto"``: as the static figures) and a bar with its value range; an RGB map
    (feature PCA) says what its colours are; no map, no bar. ``contour``: the map is a mask whose outline is drawn.

    Examples:
        >>> png, bar = render_view(torch.rand(3, 8, 8), torch.rand(2, 2) - 0.5, colormap="auto", alpha=0.5,
        ...                        display_size=16)
        >>> png[1:4] == b"PNG" and "linear-gradient" in bar
        True
    """
    if heat is None:
        return overlay_png(image, None, alpha=alpha, display_size=display_size, box=box), ""
    if heat.dim() == 3:
        note = "<span style='font-size:11px'>colours: principal components 1-3 as red, green, blue</span>"
        return overlay_png(image, heat, alpha=alpha, display_size=display_size, box=box), note
    cmap, low, high = map_scale(heat, colormap)
    png = overlay_png(image, heat, alpha=alpha, cmap=cmap, vmin=low, vmax=high, display_size=display_size, box=box,
                      contour=contour)
    return png, colour_bar_html(cmap, low, high, width=display_size)


def result_note(result) -> str:
    """What the status line adds to a result: for feature PCA, what its colours separate (else nothing).

    Examples:
        >>> from ssl_widgets.attr import PairAttribution
        >>> maps = torch.zeros(1, 3, 2, 2), torch.ones(1, 3, 2, 2)
        >>> result_note(PairAttribution(maps, torch.ones(1), {"method": "feature-pca"}))[:40]
        ': red (component 1) separates image 2 fr'
    """
    from ..plotting import pca_note

    first, second = result[0], result[1]
    if first.dim() != 4 or first.shape[1] != 3 or second.dim() != 4:
        return ""
    ratios = result.meta.get("explained_variance_ratio")
    return ": " + pca_note(first[0], second[0], ratios[0] if ratios else None)
