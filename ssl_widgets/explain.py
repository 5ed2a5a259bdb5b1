"""One call from a method name to image-size maps: shared by the CLI and the widgets."""
from __future__ import annotations

import inspect
from typing import Any

import torch

from .attr import PairAttribution, get_method, upsample
from .attr.cam import InteractionCAM, PairGradCAM
from .attr.engine import eval_similarity
from .attr.feature_pca import PatchFeaturePCA
from .attr.occlusion import ConditionalOcclusion, ContextAgnosticOcclusion
from .attr.pixel_invariance import PixelInvariance
from .attr.registry import JOINT_METHOD_NAMES
from .models.wrapper import SSLModel

__all__ = ["default_settings", "explain_pair", "sign_note"]

_SIGN_NOTES = {
    "conditional-occlusion": "red: hiding this region lowers the similarity; blue: hiding it raises the similarity",
    "pairwise-occlusion": "red: erasing this region lowers the similarity; blue: erasing it raises the similarity",
    "context-agnostic-occlusion": "red: this patch alone points towards the other image; blue: it points away",
}


def sign_note(name: str) -> str | None:
    """What the sign of a method's map means (``None`` for methods whose maps are never negative).

    The figure shows the note only where a map actually has negative values.

    Examples:
        >>> sign_note("conditional-occlusion")
        'red: hiding this region lowers the similarity; blue: hiding it raises the similarity'
        >>> sign_note("grad-cam") is None
        True
    """
    return _SIGN_NOTES.get(name.partition(":")[0])


def default_settings(name: str, model: SSLModel) -> dict[str, Any]:
    """Per-method defaults scaled to the model's input size (the paper's values at 224 px).

    Examples:
        >>> from ssl_widgets.models import load_model
        >>> default_settings("conditional-occlusion", load_model("tiny-simclr"))
        {'sliding_window_shapes': 32, 'strides': 4}
    """
    cls, settings = get_method(name)
    settings = dict(settings)
    scale = model.input_size / 224
    if cls in (ConditionalOcclusion, ContextAgnosticOcclusion):
        settings.update(sliding_window_shapes=max(2, round(64 * scale)), strides=max(1, round(8 * scale)))
    if cls is PixelInvariance:
        settings.update(size=max(8, round(64 * scale)), n_samples=500, epochs=300)
    return settings


def _to_image_size(m: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A ``(B,h,w)`` map upsampled (bilinear, centre-aligned); an RGB map ``(B,3,h,w)`` (feature PCA)
    enlarged with nearest-neighbour so each patch stays one colour."""
    if m.dim() == 4:
        return m if m.shape[2:] == size else torch.nn.functional.interpolate(m, size=size, mode="nearest")
    return upsample(m, size) if m.shape[1:] != size else m


def explain_pair(model: SSLModel, name: str, x1: torch.Tensor, x2: torch.Tensor, layer: str | None = None,
                 generator: torch.Generator | None = None, **overrides: Any) -> PairAttribution:
    """Run the named method on a pair and bring both maps to image size.

    Args:
        model: the model.
        name: a method name (``ssl_widgets.attr.METHOD_NAMES``); for the joint methods the two
            marginal maps are returned (the joint relevance itself: the method's ``attribute``).
        x1, x2: the pair. For ``pixel-invariance`` only ``x1`` is explained (map 2 is zeros).
        layer: layer of the CAM methods.
        generator: seeds the random methods.
        overrides: ``attribute`` keyword arguments replacing the defaults.

    Returns:
        :class:`PairAttribution` with ``(B,H,W)`` maps at the images' sizes (``feature-pca``: RGB maps
        ``(B,3,H,W)``); ``.meta`` has the settings.
    """
    cls, settings = get_method(name)
    settings = {**default_settings(name, model), **overrides}
    if cls in (PairGradCAM, InteractionCAM):
        method = cls(model, layer)
    else:
        method = cls(model)
    if cls is PatchFeaturePCA and layer is not None:
        settings.setdefault("layer", layer)
    if "generator" in inspect.signature(cls.attribute).parameters:
        settings.setdefault("generator", generator)
    if cls is PixelInvariance:
        heat = method.attribute(x1, **settings)
        maps = (upsample(heat, tuple(x1.shape[2:])), torch.zeros(x2.shape[0], *x2.shape[2:]))
        sim = eval_similarity(model, model.normalize(x1.to(model.device)), model.normalize(x2.to(model.device)))
        settings.pop("generator", None)
        return PairAttribution(maps, sim, {"method": name, **settings})
    result = method.attribute((x1, x2), **settings)
    if name in JOINT_METHOD_NAMES:  # the two marginal maps of the pair-to-pair relevance
        return result.marginals()
    maps = tuple(_to_image_size(m, tuple(x.shape[2:])) for m, x in zip(result, (x1, x2)))
    meta = {**result.meta, "method": name, **({"layer": layer} if layer else {})}
    return PairAttribution(maps, result.similarity, meta)
