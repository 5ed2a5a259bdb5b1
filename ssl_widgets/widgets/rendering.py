"""Fast PNG rendering of images with heat-map overlays for ``ipywidgets.Image``."""
from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

__all__ = ["overlay_png", "resize_map", "COLORMAPS"]

COLORMAPS = ("jet", "viridis", "inferno", "magma", "coolwarm", "gray")


def resize_map(heat: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A ``(h,w)`` map resized bilinearly to ``size``."""
    heat = heat.detach().float().cpu()
    if tuple(heat.shape) == tuple(size):
        return heat
    return F.interpolate(heat[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]


def overlay_png(image: torch.Tensor, heat: torch.Tensor | None = None, *, alpha: float = 0.5, cmap: str = "jet",
                display_size: int = 256, box: tuple[int, int, int, int] | None = None,
                vmin: float | None = None, vmax: float | None = None) -> bytes:
    """PNG bytes of ``image`` (``(3,H,W)`` or ``(1,3,H,W)`` in [0,1]) blended with a colour-mapped ``heat``.

    Args:
        image: the image.
        heat: ``(h,w)`` map (any size), normalised to [vmin, vmax] (default: its own min and max), or an RGB
            map ``(3,h,w)`` in [0, 1] (feature PCA), enlarged nearest-neighbour and blended as is.
        alpha: opacity of the heat map.
        cmap: a matplotlib colour map name.
        display_size: side of the output (nearest-neighbour free, bilinear up-scaling).
        box: ``(y0, x0, y1, x1)`` in image pixels, drawn as a white rectangle (the clicked patch).
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
    if box is not None:
        y0, x0, y1, x1 = (v * scale for v in box)
        ImageDraw.Draw(out).rectangle([x0, y0, x1 - 1, y1 - 1], outline=(255, 255, 255), width=2)
    buffer = io.BytesIO()
    out.save(buffer, format="PNG")
    return buffer.getvalue()
