"""Template bases of the methods (in the spirit of Captum's attribution bases and pytorch-grad-cam's BaseCAM).

The parts every method repeats are written once here; a method keeps its own ``attribute``
signature and computation and calls:

* ``__init__`` -- checks the model is an :class:`~ssl_widgets.models.SSLModel` and hands it to the
  Captum base as its forward function (``self.model`` is the model);
* :meth:`PairMethod._inputs` -- validates the pair (shapes, dtypes, finite values) and moves it to the
  model's device;
* :meth:`ModelMethod._preserved` -- eval mode and frozen parameters for the block, the model's mode,
  ``requires_grad`` flags and hooks restored on every exit path (errors and
  :class:`~ssl_widgets.attr.engine.Cancelled` included);
* :meth:`ModelMethod._progress` -- a progress bar, also reported to the call's ``on_progress`` (which may cancel);
* :meth:`PairMethod._result` -- the :class:`~ssl_widgets.attr.engine.PairAttribution` with
  ``meta = {"method": method_name, **settings}``.

:class:`LayerPairMethod` adds the layer choice of the CAM methods.
"""
from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from .._validation import check_pair
from ..models.wrapper import SSLModel
from .engine import PairAttribution, check_model, preserved_model_state, progress

__all__ = ["LayerPairMethod", "ModelMethod", "PairMethod"]


class ModelMethod:
    """Mixin base of every method of one model: the model check, state preservation and progress.

    Put it before the Captum base (``class M(ModelMethod, PerturbationAttribution)``); the
    one-image and joint methods use it directly, the pair methods through :class:`PairMethod`.

    Args:
        model: the :class:`~ssl_widgets.models.SSLModel` to explain.

    Attributes:
        model: the model.
        method_name: the method's record name (progress bars, ``.meta["method"]``).
    """

    method_name: ClassVar[str] = ""

    def __init__(self, model: SSLModel) -> None:
        super().__init__(check_model(model))  # type: ignore[call-arg]  # the Captum base's forward_func
        self.model = model

    def _preserved(self) -> contextlib.AbstractContextManager[Any]:
        """:func:`~ssl_widgets.attr.engine.preserved_model_state` with frozen parameters."""
        return preserved_model_state(self.model, requires_grad=False)

    def _progress(self, total: int, show: bool, desc: str | None = None, on_progress=None):
        """A progress bar named after the method, reported to ``on_progress(done, total)`` when given (see
        :func:`~ssl_widgets.attr.engine.progress`)."""
        return progress(total, show, desc or self.method_name, on_progress)


class PairMethod(ModelMethod):
    """Mixin base of the pair methods; put it before the Captum base: ``class M(PairMethod, GradientAttribution)``.

    Args:
        model: the :class:`~ssl_widgets.models.SSLModel` to explain.

    Attributes:
        model: the model.
        method_name: the name written to ``.meta["method"]`` (a method's record name).

    Examples:
        >>> from captum.attr import GradientAttribution
        >>> from ssl_widgets.models import SSLModel
        >>> class Zero(PairMethod, GradientAttribution):
        ...     method_name = "zero"
        ...     def attribute(self, inputs):
        ...         x1, x2 = self._inputs(inputs)
        ...         return self._result((x1[:, 0] * 0, x2[:, 0] * 0), torch.zeros(x1.shape[0]), scale=1)
        >>> model = SSLModel(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()), None)
        >>> Zero(model).attribute((torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))).meta
        {'method': 'zero', 'scale': 1}
        >>> Zero("not a model")
        Traceback (most recent call last):
        ...
        TypeError: expected an ssl_widgets.models.SSLModel, got str; ...
    """

    def _inputs(self, inputs: Any, names: tuple[str, str] = ("x1", "x2"),
                convert: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """The validated pair on the model's device (converted to the model's dtype when ``convert``)."""
        x1, x2 = check_pair(inputs, names, self.model.mean.dtype if convert else None)
        return x1.to(self.model.device), x2.to(self.model.device)

    def _result(self, maps: Sequence[torch.Tensor], similarity: torch.Tensor, **settings: Any) -> PairAttribution:
        """The result: two maps, the base similarity and ``{"method": method_name, **settings}``."""
        return PairAttribution(maps, similarity, {"method": self.method_name, **settings})


class LayerPairMethod(PairMethod):
    """:class:`PairMethod` of a layer (Captum's ``LayerAttribution`` second): ``M(model, layer=None)``.

    Args:
        model: the model.
        layer: a trunk layer name (``model.layer_names()``); ``None`` = the trunk's output.

    Attributes:
        layer_name: the layer's name (``None`` for the trunk's output).
    """

    def __init__(self, model: SSLModel, layer: str | None = None) -> None:
        check_model(model)
        module = model.trunk if layer is None else model.get_layer(layer)
        super(ModelMethod, self).__init__(model, module)  # type: ignore[call-arg]  # LayerAttribution(model, layer)
        self.model, self.layer_name = model, layer

