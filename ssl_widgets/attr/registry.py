"""Method names (CLI, widgets, tables) mapped to classes and settings."""
from __future__ import annotations

from typing import Any

from .attention_rollout import AttentionRollout
from .averaged_transforms import AveragedTransforms
from .cam import InteractionCAM, PairGradCAM, parse_cam_variant
from .cls_attention import ClassTokenAttention
from .feature_pca import PatchFeaturePCA
from .gradients import PairInputXGradient, PairSmoothGrad
from .joint_gradient import JointGradient
from .joint_occlusion import JointOcclusion
from .occlusion import ConditionalOcclusion, ContextAgnosticOcclusion
from .pairwise_occlusion import PairwiseOcclusion
from .pixel_invariance import PixelInvariance

__all__ = ["JOINT_METHOD_NAMES", "METHOD_NAMES", "PAIR_METHOD_NAMES", "VIT_METHOD_NAMES", "get_method"]

_SIMPLE = {
    "conditional-occlusion": ConditionalOcclusion,
    "context-agnostic-occlusion": ContextAgnosticOcclusion,
    "pairwise-occlusion": PairwiseOcclusion,
    "pixel-invariance": PixelInvariance,
    "cls-attention": ClassTokenAttention,
    "attention-rollout": AttentionRollout,
    "feature-pca": PatchFeaturePCA,
    "joint-gradient": JointGradient,
    "joint-occlusion": JointOcclusion,
}
_FLAGS = {
    "averaged-transforms": (AveragedTransforms, {"guided", "noise"}),
    "input-x-gradient": (PairInputXGradient, {"guided"}),
    "smoothgrad": (PairSmoothGrad, {"guided"}),
}

PAIR_METHOD_NAMES: tuple[str, ...] = (
    "conditional-occlusion", "context-agnostic-occlusion", "pairwise-occlusion", "grad-cam", "interaction-cam",
    "interaction-cam:max", "interaction-cam:attention", "interaction-cam:mean+gi", "interaction-cam:max+gi", "interaction-cam:attention+gi",
    "averaged-transforms", "averaged-transforms:guided", "averaged-transforms:noise",
    "averaged-transforms:guided+noise", "input-x-gradient", "input-x-gradient:guided", "smoothgrad",
    "smoothgrad:guided",
)
#: joint (pair-to-pair) methods: ``attribute`` returns a JointAttribution ``(B, h1*w1, h2*w2)``
JOINT_METHOD_NAMES: tuple[str, ...] = ("joint-gradient", "joint-occlusion")
METHOD_NAMES: tuple[str, ...] = PAIR_METHOD_NAMES + ("pixel-invariance",) + JOINT_METHOD_NAMES
#: ViT-native views (token trunks only; ``feature-pca`` also works on CNN maps). Accepted by
#: :func:`get_method` and ``ssl-widgets explain``; not part of the pair-metric tables.
VIT_METHOD_NAMES: tuple[str, ...] = ("cls-attention", "attention-rollout", "feature-pca")


def get_method(name: str) -> tuple[type, dict[str, Any]]:
    """The class and ``attribute`` settings of a method name.

    Examples:
        >>> get_method("interaction-cam:max+gi")
        (<class 'ssl_widgets.attr.cam.InteractionCAM'>, {'pooling': 'max', 'gradient_interaction': True})
        >>> get_method("interaction-cam+gi")[1]  # mean pooling is the default
        {'pooling': 'mean', 'gradient_interaction': True}
        >>> get_method("averaged-transforms:guided+noise")[1]
        {'guided': True, 'noise': True}

    Raises:
        ValueError: unknown name (the message lists the known names).
    """
    if name in _SIMPLE:
        return _SIMPLE[name], {}
    if name == "grad-cam":
        return PairGradCAM, {}
    if name == "interaction-cam+gi":
        name = "interaction-cam:mean+gi"
    base, _, options = name.partition(":")
    try:
        if base == "interaction-cam":
            pooling, gi = parse_cam_variant(name)
            return InteractionCAM, {"pooling": pooling, "gradient_interaction": gi}
        if base in _FLAGS:
            cls, allowed = _FLAGS[base]
            flags = [f for f in options.split("+") if f] if options else []
            if any(f not in allowed for f in flags):
                raise ValueError
            return cls, {f: True for f in flags}
    except ValueError:
        pass
    raise ValueError(f"unknown method {name!r}; known methods: {', '.join(METHOD_NAMES + VIT_METHOD_NAMES)}")
