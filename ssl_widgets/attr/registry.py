"""Method names (CLI, widgets, tables) mapped to classes and settings, read from the method records.

The names, classes and settings come from each method's ``SPEC`` (see :mod:`ssl_widgets.attr.spec`);
this module only keeps the public lists and :func:`get_method`.
"""
from __future__ import annotations

from typing import Any

from .spec import listed_names, resolve

__all__ = ["JOINT_METHOD_NAMES", "METHOD_NAMES", "PAIR_METHOD_NAMES", "VIT_METHOD_NAMES", "get_method"]

#: pair methods: ``attribute`` returns a PairAttribution of two maps (every listed variant)
PAIR_METHOD_NAMES: tuple[str, ...] = listed_names("pair")
#: joint (pair-to-pair) methods: ``attribute`` returns a JointAttribution ``(B, h1*w1, h2*w2)``
JOINT_METHOD_NAMES: tuple[str, ...] = listed_names("joint")
#: every similarity explanation: pair methods, the one-map methods (pixel-invariance) and the joint methods
METHOD_NAMES: tuple[str, ...] = PAIR_METHOD_NAMES + listed_names("single") + JOINT_METHOD_NAMES
#: ViT-native views (token trunks only; ``feature-pca`` also works on CNN maps). Accepted by
#: :func:`get_method` and ``ssl-widgets explain``; not part of the pair-metric tables.
VIT_METHOD_NAMES: tuple[str, ...] = listed_names("view")


def get_method(name: str) -> tuple[type, dict[str, Any]]:
    """The class and ``attribute`` settings of a method name.

    Args:
        name: a listed name (``METHOD_NAMES``, ``VIT_METHOD_NAMES``), a variant or an alias.

    Returns:
        ``(cls, settings)``: the settings the name's options give (``{}`` for a plain name).

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
    spec, settings = resolve(name)
    return spec.cls, settings
