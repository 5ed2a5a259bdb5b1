"""Training of the shipped default models: ``python -m ssl_widgets.train --help``."""
from .loop import TrainConfig, train

__all__ = ["TrainConfig", "train"]
