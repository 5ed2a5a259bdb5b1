"""Integrated Gradients of the pair similarity (Sundararajan et al. 2017), through Captum.

Added as one file -- the class and its ``SPEC`` -- to show how a method joins the package: the
registry, ``ssl-widgets explain``, the evaluation driver and the explorer's lists find it through
its record (see :mod:`ssl_widgets.attr.spec`).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from captum.attr import GradientAttribution, IntegratedGradients

from .._validation import check_autograd_available
from .base import PairMethod
from .engine import PairAttribution, SimilarityForward, check_count, eval_similarity, resolve_fill
from .spec import MethodSpec, Setting

__all__ = ["PairIntegratedGradients"]

#: Captum's integral approximations
APPROXIMATIONS = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")


class PairIntegratedGradients(PairMethod, GradientAttribution):
    """Integrated Gradients of each image towards the other: ``map_k = max_c |IG_k|``.

    ``IG_1 = (x1 - x1') * mean_{a} dS/dx1 (x1' + a (x1 - x1'))`` with ``S = cos(f(.), f(x2))`` (the
    other image fixed, Captum's :class:`~captum.attr.IntegratedGradients` on a
    :class:`~ssl_widgets.attr.engine.SimilarityForward`), likewise for ``x2``; gradients are taken
    in pixel space (the model normalises inside). The baseline ``x'`` is the neutral fill (0 in the
    model's input space) unless ``baselines`` gives another. By IG's completeness the attributions
    of an image sum to ``S(x) - S(x')`` (up to the integral's error).

    Args:
        model: the :class:`~ssl_widgets.models.SSLModel`.

    Examples:
        >>> from ssl_widgets.models import SSLModel
        >>> model = SSLModel(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()), None)
        >>> x1, x2 = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8)
        >>> result = PairIntegratedGradients(model).attribute((x1, x2), n_steps=8)
        >>> m1, m2 = result
        >>> m1.shape, result.meta["n_steps"]
        (torch.Size([1, 8, 8]), 8)
    """

    method_name = "integrated-gradients"

    def attribute(self, inputs: tuple[torch.Tensor, torch.Tensor], n_steps: int = 50,
                  baselines: float | torch.Tensor | None = None, method: str = "gausslegendre",
                  perturbations_per_eval: int = 16, on_progress: Callable[[int, int], None] | None = None,
                  on_partial: Callable[[PairAttribution], None] | None = None) -> PairAttribution:
        """Integrated-gradient maps of both images.

        Args:
            inputs: ``(x1, x2)``, each ``(B,3,H,W)`` in ``[0,1]``.
            n_steps: points of the path integral.
            baselines: the path's start in pixel space; ``None`` = the neutral fill, a float = a grey
                level, a tensor of 3 values or broadcastable to the images.
            method: Captum's integral approximation (one of :data:`APPROXIMATIONS`).
            perturbations_per_eval: path points per forward/backward pass (Captum's
                ``internal_batch_size``); bounds the memory.
            on_progress: called ``(done, total)`` before each batch of path points (``total``: the batches of
                both images' paths); raising from it (e.g. :class:`~ssl_widgets.attr.engine.Cancelled`) stops the call.
            on_partial: called after each image's path but the last with the maps done so far (the others
                zeros), ``.meta["partial"]`` saying how many (e.g. ``"image 1 of 2"``). The result does not
                depend on it.

        Returns:
            :class:`PairAttribution` with maps ``(B,H,W)``; ``.meta`` has the settings (``method`` as
            ``"approximation"``: ``"method"`` is the method's name).
        """
        check_autograd_available(self.method_name)
        check_count(n_steps, "n_steps")
        check_count(perturbations_per_eval, "perturbations_per_eval")
        if method not in APPROXIMATIONS:
            raise ValueError(f"method must be one of {APPROXIMATIONS}, got {method!r}")
        x1, x2 = self._inputs(inputs)
        if on_partial is not None and not callable(on_partial):
            raise TypeError(f"on_partial must be callable, got {type(on_partial).__name__}")
        fills = [resolve_fill(self.model, baselines, x) for x in (x1, x2)]
        maps: list[list[torch.Tensor]] = [[], []]
        settings = dict(n_steps=n_steps, baselines="neutral" if baselines is None else baselines,
                        approximation=method)
        similarity = eval_similarity(self.model, self.model.normalize(x1), self.model.normalize(x2))
        images = 2 * x1.shape[0]
        with self._preserved(), torch.enable_grad(), self._progress(
                images * -(-n_steps // perturbations_per_eval), False, on_progress=on_progress) as bar:
            for b in range(x1.shape[0]):
                for k, (x, other) in enumerate(((x1, x2), (x2, x1))):
                    image = x[b:b + 1]
                    fill = fills[k] if fills[k].shape[0] == 1 else fills[k][b:b + 1]
                    ig = IntegratedGradients(_Counted(SimilarityForward(self.model, other[b:b + 1]), bar))
                    attr = ig.attribute(image, baselines=fill.expand_as(image).contiguous(), n_steps=n_steps,
                                        method=method, internal_batch_size=perturbations_per_eval)
                    maps[k].append(attr.detach().abs().amax(dim=1))
                    done = 2 * b + k + 1
                    if on_partial is not None and done < images:
                        on_partial(self._result([torch.cat(m + [torch.zeros_like(maps[0][0])] * (x1.shape[0] - len(m)))
                                                 for m in maps], similarity, **settings,
                                                partial=f"image {done} of {images}"))
        return self._result((torch.cat(maps[0]), torch.cat(maps[1])), similarity, **settings)


class _Counted:
    """A forward that moves a progress bar by one before each call (a batch of path points); the bar's
    ``on_progress`` may raise to stop the call."""

    def __init__(self, forward: SimilarityForward, bar: Any) -> None:
        self.forward, self.bar = forward, bar

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.bar.update(1)
        return self.forward(x)


#: the method record (see :mod:`ssl_widgets.attr.spec`)
SPEC = MethodSpec("integrated-gradients", PairIntegratedGradients, summary="integrated gradients of each image "
                  "towards the other (Captum), from the neutral fill",
                  settings=(Setting("n_steps", 50, 4, 200, "points of the path integral"),), slow=True, order=90,
                  quick={"n_steps": 4})
