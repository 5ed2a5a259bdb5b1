"""Dataset evaluation driver: ``ssl-widgets evaluate`` / ``python -m ssl_widgets.evaluate`` (also under torchrun)."""
from __future__ import annotations

import importlib
from typing import Any

__all__ = ["EvaluationConfig", "build_pairs", "evaluate", "main"]


def __getattr__(name: str) -> Any:
    if name in ("EvaluationConfig", "build_pairs", "evaluate"):
        return getattr(importlib.import_module(".driver", __name__), name)
    if name == "main":
        return importlib.import_module(".cli", __name__).main
    raise AttributeError(name)
