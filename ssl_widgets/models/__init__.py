"""Self-supervised models: the :class:`SSLModel` wrapper, the zoo and its loaders."""
from .converters import CheckpointError
from .wrapper import IMAGENET_MEAN, IMAGENET_STD, SSLModel, from_transformers
from .zoo import available_models, build_tiny_model, load_model, model_info

__all__ = [
    "CheckpointError",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SSLModel",
    "available_models",
    "build_tiny_model",
    "from_transformers",
    "load_model",
    "model_info",
]
