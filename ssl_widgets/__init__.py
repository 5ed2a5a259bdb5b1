"""ssl_widgets: see why a self-supervised vision model finds two images similar.

The public names are re-exported lazily (importing the package does not import torch models,
Captum or ipywidgets until a name is used)::

    import ssl_widgets
    model = ssl_widgets.load_model("tiny-simclr")
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "SSLModel": "ssl_widgets.models",
    "load_model": "ssl_widgets.models",
    "available_models": "ssl_widgets.models",
    "CheckpointError": "ssl_widgets.models",
    "load_image": "ssl_widgets.data",
    "make_pair": "ssl_widgets.data",
    "make_view": "ssl_widgets.data",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext ssl_widgets`` registers ``%ssl_explore [IMAGE [IMAGE2]] [--model NAME] [--method NAME]``."""
    from .widgets.magic import ssl_explore

    ipython.register_magic_function(ssl_explore, magic_kind="line", magic_name="ssl_explore")


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ssl_widgets' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
