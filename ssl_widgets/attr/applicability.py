"""Which methods apply to which architectures (CNN feature maps, ViT token sequences)."""
from __future__ import annotations

from torch import nn

from ..models.wrapper import SSLModel
from .spec import resolve

__all__ = ["architecture", "check_applicable", "not_applicable"]


def architecture(model: SSLModel) -> str:
    """``"Vision Transformer"`` for a token trunk, ``"convolutional network"`` otherwise.

    Examples:
        >>> from ssl_widgets.models import SSLModel
        >>> architecture(SSLModel.from_timm("vit_tiny_patch16_224", depth=1))
        'Vision Transformer'
    """
    return "Vision Transformer" if model.is_token_model else "convolutional network"


def not_applicable(name: str, model: SSLModel) -> str | None:
    """Why method ``name`` does not apply to ``model`` (``None`` when it applies).

    Guided back-propagation (``:guided`` variants) is defined for ReLU networks only, so it is refused for a
    model with GELU activations (every ViT); a method whose record lists only ``"vit"`` in its
    ``architectures`` (the attention views) is refused for a CNN.
    A name that is not a method's (the explorer's ``"correspondence"`` tab) applies to every model.

    Examples:
        >>> from ssl_widgets.models import SSLModel
        >>> vit = SSLModel.from_timm("vit_tiny_patch16_224", depth=1)
        >>> not_applicable("grad-cam", vit) is None
        True
        >>> print(not_applicable("input-x-gradient:guided", vit))  # doctest: +ELLIPSIS
        method 'input-x-gradient:guided' does not apply to model 'vit_tiny_patch16_224' (a Vision Transformer): ...
    """
    try:
        spec, settings = resolve(name)
    except ValueError:
        return None
    where = f"method {name!r} does not apply to model {model.name!r} (a {architecture(model)}): "
    if settings.get("guided") and any(isinstance(m, nn.GELU) for m in model.modules()):
        return where + ("guided backpropagation is defined for ReLU networks and this model uses GELU "
                        f"activations; use {spec.name!r} (plain gradients)")
    if ("vit" if model.is_token_model else "cnn") not in spec.architectures:
        return where + (spec.vit_only_reason or f"it applies to {' and '.join(spec.architectures)} models only")
    return None


def check_applicable(names: str | list[str] | tuple[str, ...], model: SSLModel) -> None:
    """Raise a ``ValueError`` naming every method of ``names`` that does not apply to ``model``."""
    reasons = [r for r in (not_applicable(n, model) for n in ([names] if isinstance(names, str) else names)) if r]
    if reasons:
        raise ValueError("; ".join(reasons))
