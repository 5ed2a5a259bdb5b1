"""What the explorer's tabs and plots may use of it: :class:`ExplorerContext` (and the models it loads)."""
from __future__ import annotations

import weakref
from collections.abc import Callable

import torch

from ..attr import CopyEvaluator, ViewEmbeddingStore
from ..models import SSLModel, load_model
from .inputs import PairInputs
from .jobs import JobRunner

__all__ = ["ExplorerContext", "ModelStore"]


class ModelStore:
    """The models of a panel, loaded once by name and kept, with one occlusion evaluator per model.

    Args:
        first: a model to keep under its name (``None``: load every model from the zoo when asked).

    Attributes:
        views: the store of each image's occluded-copy embeddings that the evaluators share (an unchanged
            image's copies are reused when only the other view changes).
    """

    def __init__(self, first: SSLModel | None = None) -> None:
        self._models: dict[str, SSLModel] = {}
        self._evaluators: weakref.WeakKeyDictionary[SSLModel, CopyEvaluator] = weakref.WeakKeyDictionary()
        self.views = ViewEmbeddingStore()
        if first is not None:
            self._models[first.name] = first

    def evaluator(self, model: SSLModel) -> CopyEvaluator:
        """The occlusion methods' evaluator of ``model`` (built on first use, with the shared :attr:`views`)."""
        if model not in self._evaluators:
            self._evaluators[model] = CopyEvaluator(model, store=self.views)
        return self._evaluators[model]

    def get(self, name: str, device: str | None = None) -> SSLModel:
        """The model ``name`` (loaded on first use), moved to ``device`` if given."""
        if name not in self._models:
            self._models[name] = load_model(name)
        model = self._models[name]
        if device is not None and str(model.device.type) != device:
            model.to(device)
        return model


class ExplorerContext:
    """The public view of an explorer that its tabs and plots receive: the current model, the pair, the
    settings chosen above the tabs, and the job runner (worker thread, progress, Cancel, status line).

    Args:
        inputs: the model, layer, device, image and augmentation choices.
        models: where models are loaded and kept.
        runner: the panel's job runner.

    Examples:
        >>> from ssl_widgets.widgets.inputs import PairInputs
        >>> from ssl_widgets.widgets.jobs import JobRunner
        >>> context = ExplorerContext(PairInputs(["tiny-simclr"]), ModelStore(), JobRunner(threaded=False))
        >>> context.model().name, context.layer, context.seed
        ('tiny-simclr', None, 0)
        >>> tuple(context.current_pair()[0].shape)
        (1, 3, 112, 112)
    """

    def __init__(self, inputs: PairInputs, models: ModelStore, runner: JobRunner) -> None:
        self.inputs = inputs
        self.models = models
        self.runner = runner

    def model(self) -> SSLModel:
        """The chosen model, on the chosen device."""
        return self.models.get(self.inputs.model_select.value, self.inputs.device_select.value)

    def load_model(self, name: str) -> SSLModel:
        """Another model by zoo name (kept for the next call), e.g. the one a tab compares with."""
        return self.models.get(name)

    def current_pair(self, method: str | None = None, settings: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The two views the current settings give, at the model's input size."""
        return self.inputs.current_pair(self.model().input_size, method, settings)

    @property
    def layer(self) -> str | None:
        """The chosen layer (``None``: the trunk output)."""
        return self.inputs.layer_select.value or None

    @property
    def seed(self) -> int:
        """The seed of view 2's augmentation (also seeds the synthesis tabs)."""
        return int(self.inputs.seed.value)

    @property
    def threaded(self) -> bool:
        """Whether jobs run in a worker thread."""
        return self.runner.threaded

    def on_model_change(self, callback: Callable[[SSLModel], None]) -> None:
        """Call ``callback(model)`` with the new model each time the model choice changes."""
        self.inputs.model_select.observe(lambda _: callback(self.model()), names="value")
