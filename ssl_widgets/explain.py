"""One call from a method name to image-size maps: shared by the CLI and the widgets."""
from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

from .attr import PairAttribution, upsample
from .attr.engine import eval_similarity
from .attr.spec import resolve
from .models.wrapper import SSLModel

__all__ = ["default_settings", "explain_pair", "sign_note"]


def sign_note(name: str) -> str | None:
    """What the sign of a method's map means (``None`` for methods whose maps are never negative).

    The figure shows the note only where a map actually has negative values. Read from the
    method's record (:class:`~ssl_widgets.attr.spec.MethodSpec` ``sign_note``).

    Examples:
        >>> sign_note("conditional-occlusion")
        'red: hiding this region lowers the similarity; blue: hiding it raises the similarity'
        >>> sign_note("grad-cam") is None
        True
    """
    return resolve(name)[0].sign_note


def default_settings(name: str, model: SSLModel) -> dict[str, Any]:
    """Per-method defaults scaled to the model's input size (the paper's values at 224 px).

    The settings its record lists (:meth:`~ssl_widgets.attr.spec.MethodSpec.default_settings`),
    overridden by the name's own options (e.g. ``guided=True``, or ``threshold=0.6`` of ``cls-attention:mask``).

    Args:
        name: a method name.
        model: the model (its ``input_size`` scales the pixel settings).

    Returns:
        ``attribute`` keyword arguments.

    Examples:
        >>> from ssl_widgets.models import load_model
        >>> default_settings("conditional-occlusion", load_model("tiny-simclr"))
        {'sliding_window_shapes': 32, 'strides': 4, 'fill': 'pixels'}
    """
    spec, settings = resolve(name)
    return {**spec.default_settings(model.input_size), **settings}


def _to_image_size(m: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A ``(B,h,w)`` map upsampled (bilinear, centre-aligned); an RGB map ``(B,3,h,w)`` (feature PCA)
    enlarged with nearest-neighbour so each patch stays one colour."""
    if m.dim() == 4:
        return m if m.shape[2:] == size else torch.nn.functional.interpolate(m, size=size, mode="nearest")
    return upsample(m, size) if m.shape[1:] != size else m


def explain_pair(model: SSLModel, name: str, x1: torch.Tensor, x2: torch.Tensor, layer: str | None = None,
                 generator: torch.Generator | None = None, evaluator: Any = None,
                 on_progress: Callable[[int, int], None] | None = None, **overrides: Any) -> PairAttribution:
    """Run the named method on a pair and bring both maps to image size.

    Args:
        model: the model.
        name: a method name (``ssl_widgets.attr.METHOD_NAMES``); for the joint methods the two
            marginal maps are returned (the joint relevance itself: the method's ``attribute``).
        x1, x2: the pair. For ``pixel-invariance`` only ``x1`` is explained (map 2 is zeros).
        layer: layer of the CAM methods.
        generator: seeds the random methods.
        evaluator: a :class:`~ssl_widgets.attr.CopyEvaluator` for the methods whose constructor takes one
            (the occlusion methods); the others ignore it.
        on_progress: ``(done, total)`` progress (and cancel, by raising) of the methods that report it.
        overrides: ``attribute`` keyword arguments replacing the defaults.

    Returns:
        :class:`PairAttribution` with ``(B,H,W)`` maps at the images' sizes (``feature-pca``: RGB maps
        ``(B,3,H,W)``); ``.meta`` has the settings.
    """
    spec = resolve(name)[0]
    settings = {**default_settings(name, model), **overrides}
    if evaluator is not None and "evaluator" in inspect.signature(spec.cls).parameters:
        method = spec.cls(model, evaluator=evaluator)
    else:
        method = spec.build(model, layer)
    if spec.layer == "setting" and layer is not None:
        settings.setdefault("layer", layer)
    if spec.seeded:
        settings.setdefault("generator", generator)
    if on_progress is not None and "on_progress" in inspect.signature(method.attribute).parameters:
        settings["on_progress"] = on_progress
    if spec.kind == "single":
        heat = method.attribute(x1, **settings)
        map1 = upsample(heat, tuple(x1.shape[2:]))
        maps = (map1, torch.zeros(x2.shape[0], *x2.shape[2:], dtype=map1.dtype, device=map1.device))
        sim = eval_similarity(model, model.normalize(x1.to(model.device)), model.normalize(x2.to(model.device)))
        settings.pop("generator", None)
        return PairAttribution(maps, sim, {"method": name, **settings})
    result = method.attribute((x1, x2), **settings)
    if spec.kind == "joint":  # the two marginal maps of the pair-to-pair relevance
        return result.marginals()
    maps = tuple(_to_image_size(m, tuple(x.shape[2:])) for m, x in zip(result, (x1, x2)))
    meta = {**result.meta, "method": name, **({"layer": layer} if layer else {})}
    return PairAttribution(maps, result.similarity, meta)
