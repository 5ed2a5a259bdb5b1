"""The explorer's settings sized to the model (:func:`explorer_defaults`), in one place."""
from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..attr.spec import MethodSpec, spec_for
from ..core import PAPER_INPUT_SIZE, PAPER_OCCLUSION_WINDOW

__all__ = ["ExplorerDefaults", "explorer_defaults", "run_progressively"]

#: models up to this input size (the shipped tiny ones: 112 px) keep the tabs' historical defaults
SMALL_INPUT = 128
#: a refined occlusion grid of about this many windows per side on larger models
REFINED_WINDOWS_PER_SIDE = 6


@dataclass(frozen=True)
class ExplorerDefaults:
    """What :func:`explorer_defaults` chose.

    Attributes:
        settings: per method (base name), the tab's initial values (the sliders still offer the paper's).
        compute: per method, settings the explorer adds to each call: batch sizes that bring the first
            partial result early (they do not change the maps beyond float rounding).
        coarse: per method, the settings of a quick first call whose maps are shown before the requested
            call's (empty on small models: their tabs answer within about a second).
    """

    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    compute: dict[str, dict[str, Any]] = field(default_factory=dict)
    coarse: dict[str, dict[str, Any]] = field(default_factory=dict)


def _multiple(value: float, unit: int) -> int:
    """The multiple of ``unit`` nearest ``value`` (at least ``unit``)."""
    return max(unit, unit * round(value / unit))


def _window_and_stride(input_size: int, unit: int) -> tuple[int, int]:
    """The occlusion window (a multiple of ``unit`` near the paper's, scaled) and stride (a multiple of ``unit``,
    at most half the window, about :data:`REFINED_WINDOWS_PER_SIDE` windows per side); the window nearest the
    paper's whose grid tiles the image, else the nearest."""
    target = PAPER_OCCLUSION_WINDOW * input_size / PAPER_INPUT_SIZE
    choices = []
    for window in sorted(range(unit, input_size + 1, unit), key=lambda w: abs(w - target)):
        wanted = (input_size - window) / (REFINED_WINDOWS_PER_SIDE - 1)
        stride = int(min(unit * -(-wanted // unit), max(unit, unit * (window // 2 // unit))))
        choices.append((window, stride))
        if (input_size - window) % stride == 0:
            return window, stride
    return choices[0]


def explorer_defaults(input_size: int, patch_size: int | None = None) -> ExplorerDefaults:
    """The explorer's default settings for a model of ``input_size`` pixels (``patch_size``: a token model's).

    The budget they aim at, on a 2-core CPU with 2 threads: a first frame within about 1 s, a refined
    occlusion map within 15 s and a refined gradient tab within about 2 s. One forward and backward pass of
    a ResNet-50 or a ViT-S/16 at 224 px takes about 0.45 s on one thread of that CPU (0.25 s on two), one
    occluded copy about 0.1-0.16 s on one thread; so on models above :data:`SMALL_INPUT` px:

    * occlusion: the paper's window (scaled to the input size), a stride giving about
      :data:`REFINED_WINDOWS_PER_SIDE` windows per side and at most half the window (6 x 6 windows of
      64 px at stride 32 on 224 px: 72 copies, about 12 s on one thread), and a quick first frame of
      2 x 2 windows of half the image (8 copies); token models: window and strides multiples of the patch,
      so that windows cover whole patches;
    * SmoothGrad 4 samples in batches of 2 (a running mean after 2), integrated gradients 4 path points
      (image 1's map after its path), averaged transforms 5 path points (2 first), pairwise occlusion 30
      pairs in batches of 6 (a running map after 6), pixel invariance 50 augmentations (10 first).

    Models up to :data:`SMALL_INPUT` px (the shipped tiny models) keep the tabs' historical values
    (occlusion: the method record's scaled paper settings with the in-call coarse preview; 20 SmoothGrad
    samples, 50 path points, ...). The sliders still offer the paper's settings.

    Args:
        input_size: the model's input side in pixels.
        patch_size: the patch side of a token model (``None``: a CNN).

    Returns:
        :class:`ExplorerDefaults`.

    Examples:
        >>> explorer_defaults(112).settings["conditional-occlusion"]
        {'sliding_window_shapes': 32, 'strides': 4, 'fill': 'pixels'}
        >>> big = explorer_defaults(224, patch_size=14)
        >>> big.settings["conditional-occlusion"], big.coarse["conditional-occlusion"]
        ({'sliding_window_shapes': 56, 'strides': 28}, {'sliding_window_shapes': 112, 'strides': 112})
    """
    occlusion = spec_for("conditional-occlusion").default_settings(input_size)
    if input_size <= SMALL_INPUT:
        return ExplorerDefaults(settings={
            "conditional-occlusion": occlusion, "context-agnostic-occlusion": occlusion,
            "smoothgrad": {"n_samples": 20}, "integrated-gradients": {"n_steps": 50},
            "averaged-transforms": {"steps": 10}, "pairwise-occlusion": {"n_samples": 100},
            "pixel-invariance": {"n_samples": 300}})
    unit = patch_size or 1
    window, stride = _window_and_stride(input_size, unit)
    first = _multiple(input_size / 2, unit)
    occlusion = {"sliding_window_shapes": window, "strides": stride}
    quick = {"sliding_window_shapes": first, "strides": first}
    return ExplorerDefaults(
        settings={"conditional-occlusion": occlusion, "context-agnostic-occlusion": occlusion,
                  "smoothgrad": {"n_samples": 4}, "integrated-gradients": {"n_steps": 4},
                  "averaged-transforms": {"steps": 5}, "pairwise-occlusion": {"n_samples": 30},
                  "pixel-invariance": {"n_samples": 50}},
        compute={"smoothgrad": {"perturbations_per_eval": 2}, "integrated-gradients": {"perturbations_per_eval": 4},
                 "pairwise-occlusion": {"perturbations_per_eval": 6}},
        coarse={"conditional-occlusion": quick, "context-agnostic-occlusion": quick,
                "averaged-transforms": {"steps": 2}, "pixel-invariance": {"n_samples": 10}})


def run_progressively(call: Callable[..., Any], spec: MethodSpec, settings: dict[str, Any], plan: ExplorerDefaults,
                      show_partial: Callable[..., None], occlusion_tab: bool) -> Any:
    """The refined result of ``call(**options)`` (a method call with the tab's ``settings``), drawn progressively:
    first the maps of the quick call ``plan`` has for the method (unless the settings are already that cheap),
    then the method's own partial results (``on_partial``: occlusion's coarse preview where the stride is under
    half the window, SmoothGrad's running mean, ...), each through ``show_partial(partial, note=None)``.

    Args:
        call: runs the method; keyword arguments override the tab's settings.
        spec: the method's record.
        settings: the tab's settings.
        plan: :func:`explorer_defaults` of the model.
        show_partial: draws a partial result.
        occlusion_tab: the request comes from the occlusion tab.

    Returns:
        The refined result (what ``call()`` returns).
    """
    quick = plan.coarse.get(spec.name)
    if quick and any(settings.get(k) != v for k, v in quick.items()):
        show_partial(call(**quick), "first frame: " + ", ".join(f"{k} {v}" for k, v in quick.items()))
    if "on_partial" in inspect.signature(spec.cls.attribute).parameters and (
            not occlusion_tab or settings.get("strides") < settings.get("sliding_window_shapes") // 2):
        return call(on_partial=show_partial)
    return call()
