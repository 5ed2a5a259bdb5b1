"""The shared engine under every explanation method.

* :class:`PairAttribution`: the result type (a tuple of two maps with ``.similarity`` / ``.meta``).
* :class:`SimilarityForward`: ``x -> cos(model(x), model(reference))`` for Captum's own methods.
* :func:`guided_relus`: guided back-propagation through every ReLU (modules, re-used in-place
  modules and functional ``relu``) in the calling thread, via a thread-local torch-function mode.
* :func:`chunks`, :func:`progress`, :func:`resolve_fill`, :func:`check_count`: small shared helpers.

Re-exported from their homes (so that ``from ssl_widgets.attr.engine import ...`` keeps working):
:func:`cosine` (:mod:`ssl_widgets.core`); :func:`check_model`, :func:`preserved_model_state`,
:func:`model_lock`, :func:`eval_similarity` (:mod:`ssl_widgets.models.state`).
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .._validation import check_images
from ..core import cosine
from ..models.state import check_model, eval_similarity, model_lock, preserved_model_state
from ..models.wrapper import SSLModel

__all__ = [
    "Cancelled",
    "PairAttribution",
    "SimilarityForward",
    "check_count",
    "check_model",
    "chunks",
    "cosine",
    "eval_similarity",
    "guided_relus",
    "model_lock",
    "preserved_model_state",
    "progress",
    "resolve_fill",
]


class PairAttribution(tuple):
    """Two maps ``(map1, map2)``, each ``(B, h, w)``, plus the base similarity and the settings.

    Unpacks like a tuple (``m1, m2 = method.attribute((x1, x2))``), so Captum's tooling accepts it.

    Attributes:
        similarity: base cosine similarity ``(B,)`` of the unperturbed pair.
        meta: the method name and settings used.

    Examples:
        >>> result = PairAttribution((torch.zeros(1, 2, 2), torch.ones(1, 2, 2)), torch.tensor([0.5]), {"method": "x"})
        >>> m1, m2 = result
        >>> float(result.similarity)
        0.5
    """

    similarity: torch.Tensor
    meta: dict[str, Any]

    def __new__(cls, maps: Sequence[torch.Tensor], similarity: torch.Tensor, meta: dict[str, Any] | None = None):
        # results never carry an autograd graph, even for inputs that require grad
        obj = super().__new__(cls, tuple(m.detach() if isinstance(m, torch.Tensor) else m for m in maps))
        obj.similarity = similarity.detach() if isinstance(similarity, torch.Tensor) else similarity
        obj.meta = dict(meta or {})
        return obj

    def __getnewargs__(self):  # pickling support
        return (tuple(self), self.similarity, self.meta)

    def __repr__(self) -> str:
        shapes = ", ".join(str(tuple(m.shape)) for m in self)
        return f"PairAttribution(maps=[{shapes}], similarity={self.similarity.tolist()}, meta={self.meta})"


class SimilarityForward(nn.Module):
    """A scalar forward ``x -> cos(model(x), model(reference))`` for Captum's own methods.

    The reference embeddings are computed once (no gradient). One reference is compared with
    every input. ``B`` references are paired with ``B`` inputs row by row; when a Captum method
    hands over an expanded batch of ``k * B`` inputs, the references are expanded the same way:

    * ``expansion="repeat_interleave"`` (the default): ``x1, x1, .., x2, x2, ..``, as Captum's
      ``NoiseTunnel`` (and so ``GradientShap``) expands its inputs;
    * ``expansion="repeat"``: ``x1, x2, .., x1, x2, ..``, as ``IntegratedGradients``,
      ``Occlusion`` / ``FeatureAblation`` (``perturbations_per_eval > 1``) and ``DeepLift`` do.

    For any Captum method, and for compositions such as ``NoiseTunnel(IntegratedGradients)``,
    passing ``additional_forward_args=(forward.reference_embedding,)`` is exact: Captum expands
    that argument exactly as it expands the inputs, and :meth:`forward` pairs row by row.

    Args:
        model: the :class:`SSLModel`.
        reference: ``(1,3,H,W)`` or ``(B,3,H,W)`` images to compare with.
        expansion: how a ``k * B`` batch of inputs is laid out (see above).

    Examples:
        >>> from captum.attr import IntegratedGradients, NoiseTunnel, Saliency
        >>> ig = IntegratedGradients(SimilarityForward(model, x2))
        >>> attributions = ig.attribute(x1, baselines=x1 * 0)
        >>> refs, inputs = torch.cat([x2, x1]), torch.cat([x1, x2])
        >>> forward = SimilarityForward(model, refs)
        >>> smooth = NoiseTunnel(Saliency(forward)).attribute(inputs, nt_samples=4, stdevs=0.0)
        >>> torch.allclose(smooth, Saliency(forward).attribute(inputs), atol=1e-6)  # float rounding only
        True
        >>> ig2 = IntegratedGradients(forward).attribute(
        ...     inputs, baselines=inputs * 0, n_steps=4, additional_forward_args=(forward.reference_embedding,))
        >>> ig2.shape == inputs.shape
        True
    """

    EXPANSIONS = ("repeat_interleave", "repeat")

    def __init__(self, model: SSLModel, reference: torch.Tensor, expansion: str = "repeat_interleave") -> None:
        super().__init__()
        self.model = check_model(model)
        if expansion not in self.EXPANSIONS:
            raise ValueError(f"expansion must be one of {self.EXPANSIONS}, got {expansion!r}")
        self.expansion = expansion
        reference = check_images(reference, "reference")
        with torch.no_grad():
            self.register_buffer("reference_embedding", model(reference.to(model.device)).detach())

    def forward(self, x: torch.Tensor, reference_embedding: torch.Tensor | None = None) -> torch.Tensor:
        """``cos(model(x), reference)`` per row, ``(N,)``.

        Args:
            x: ``(N,3,H,W)`` images (a Captum method's possibly expanded batch).
            reference_embedding: ``(N, D)`` references, one per row of ``x`` (Captum's expansion of
                ``additional_forward_args=(forward.reference_embedding,)``); ``None``: the stored ones,
                expanded as described in the class docstring.

        Returns:
            ``(N,)`` cosine similarities.
        """
        z = self.model(x)
        n = z.shape[0]
        if reference_embedding is not None:
            if reference_embedding.shape != z.shape:
                raise ValueError(
                    f"reference_embedding must have one row per input, shape {tuple(z.shape)}; got "
                    f"{tuple(reference_embedding.shape)} (pass additional_forward_args=(forward.reference_embedding,))")
            return cosine(z, reference_embedding.to(z))
        ref = self.reference_embedding
        b = ref.shape[0]
        if b == 1:
            ref = ref.expand(n, -1)
        elif b != n:
            if n % b:
                raise ValueError(f"{n} inputs cannot be paired with {b} references: give 1 reference, "
                                 f"{n}, or a divisor of {n}")
            # Captum expanded the batch k-fold; expand the references the same way
            ref = ref.repeat_interleave(n // b, dim=0) if self.expansion == "repeat_interleave" else ref.repeat(n // b, 1)
        return cosine(z, ref)


class _GuidedReLUFunction(torch.autograd.Function):
    """ReLU whose backward passes only positive gradients at positive inputs."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = x.clamp(min=0)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (out,) = ctx.saved_tensors
        return grad.clamp(min=0) * (out > 0).to(grad.dtype)


def guided_relu(x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """``F.relu`` with guided-backprop gradients; ``inplace=True`` also writes the result into ``x``."""
    out = _GuidedReLUFunction.apply(x)
    return x.copy_(out) if inplace else out  # copy_ passes the gradient on to ``out``, so it stays guided


#: the ReLU entry points a guided pass redirects (``nn.ReLU.forward`` calls ``F.relu``), and whether in place
_RELUS = {F.relu: None, torch.relu: False, torch.Tensor.relu: False, F.relu_: True, torch.relu_: True,
          torch.Tensor.relu_: True}


class _GuidedReLUMode(TorchFunctionMode):
    """Sends every ReLU computed in this thread to :func:`guided_relu` (torch-function modes are per thread)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _RELUS:
            inplace = _RELUS[func]
            if inplace is None:  # F.relu(input, inplace=False)
                inplace = bool(args[1] if len(args) > 1 else kwargs.get("inplace", False))
            return guided_relu(args[0], inplace)
        return func(*args, **kwargs)


@contextlib.contextmanager
def guided_relus(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Guided back-propagation for the block, in the calling thread only: every ReLU rectifies its gradient.

    ``nn.ReLU`` modules (also torchvision's re-used in-place ``self.relu``) and functional ``F.relu`` /
    ``torch.relu`` / ``Tensor.relu`` calls are redirected by a ``torch.overrides.TorchFunctionMode``,
    which is thread-local: another thread running any model meanwhile gets plain gradients. Nothing
    process-wide is patched and no module is modified; no ``register_backward_hook`` is used.

    Guided back-propagation is defined for ReLU networks only: a model with GELU activations (a
    Vision Transformer) is refused with a ``ValueError`` rather than silently given plain gradients
    (GELU is not a rectifier, so "pass positive gradients where the unit is active" has no single
    meaning there).

    Examples:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
        >>> x = torch.tensor([[1.0, -1.0]], requires_grad=True)
        >>> with guided_relus(net):
        ...     y = torch.relu(x * 2 - 1)
        >>> (g,) = torch.autograd.grad(y.sum() * -1, [x])  # negative gradients stop at a guided ReLU
        >>> g.tolist()
        [[0.0, 0.0]]
    """
    if not enabled:
        yield
        return
    if any(isinstance(m, nn.GELU) for m in model.modules()):
        raise ValueError(
            "guided backpropagation is defined for ReLU networks; this model uses GELU activations (a Vision "
            "Transformer?). Use the method without ':guided' (plain gradients)"
        )
    with _GuidedReLUMode():
        yield


def resolve_fill(model: SSLModel, baselines: float | torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """The fill colour in pixel space, broadcastable to ``like`` (``(B,3,H,W)``).

    ``None`` gives the neutral fill (0 in the model's input space); a float gives a grey level;
    a tensor of 3 values or any shape broadcastable to ``like`` is used as is. Fills are pixel
    values: NaN, infinite or outside ``[0, 1]`` is refused with a ``ValueError`` naming ``baselines``.
    """
    if baselines is None:
        fill = model.fill_value.view(1, 3, 1, 1)
    elif isinstance(baselines, (int, float)) and not isinstance(baselines, bool):
        if not math.isfinite(baselines) or not 0.0 <= baselines <= 1.0:
            raise ValueError(f"baselines must be a finite grey level in [0, 1] (pixel space), got {baselines}")
        fill = torch.full((1, 3, 1, 1), float(baselines))
    elif isinstance(baselines, torch.Tensor):
        if not bool(torch.isfinite(baselines).all()):
            raise ValueError("baselines contain NaN or infinite values")
        if baselines.numel() and not (0.0 <= float(baselines.min()) and float(baselines.max()) <= 1.0):
            raise ValueError(f"baselines must be pixel values in [0, 1], got values in [{float(baselines.min()):.4g}, "
                             f"{float(baselines.max()):.4g}]")
        fill = baselines.float()
        if fill.numel() == 3:
            fill = fill.reshape(1, 3, 1, 1)
        try:
            torch.broadcast_shapes(fill.shape, like.shape)
        except RuntimeError as error:
            raise ValueError(f"baselines of shape {tuple(fill.shape)} do not broadcast to inputs {tuple(like.shape)}") from error
    else:
        raise TypeError(f"baselines must be None, a float or a tensor, got {type(baselines).__name__}")
    return fill.to(device=like.device, dtype=like.dtype)


def check_count(value: object, name: str, minimum: int = 1) -> int:
    """``value`` as an int ``>= minimum``; a ``TypeError`` / ``ValueError`` naming ``name`` otherwise.

    Examples:
        >>> check_count(4, "n_samples")
        4
        >>> check_count(0, "perturbations_per_eval")
        Traceback (most recent call last):
        ...
        ValueError: perturbations_per_eval must be >= 1, got 0
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def chunks(n: int, size: int) -> Iterator[slice]:
    """Consecutive slices of ``range(n)`` of at most ``size`` items."""
    check_count(size, "perturbations_per_eval")
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


class Cancelled(Exception):
    """Raised by a call's ``on_progress`` callback to stop it (e.g. a widget's Cancel button)."""


class _ReportingBar:
    def __init__(self, bar, callback, total: int) -> None:
        self.bar, self.callback, self.total, self.done = bar, callback, total, 0

    def update(self, n: int = 1) -> None:
        self.bar.update(n)
        self.done += n
        self.callback(self.done, self.total)

    def __enter__(self):
        self.bar.__enter__()
        self.callback(0, self.total)
        return self

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)


def progress(total: int, show: bool, desc: str, on_progress: Callable[[int, int], None] | None = None):
    """A tqdm.auto progress bar (a no-op bar when ``show`` is false), also reported to ``on_progress(done,
    total)`` when given (the call's explicit argument; it may raise :class:`Cancelled` to stop the call)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, disable=not show, desc=desc, leave=False)
    if on_progress is None:
        return bar
    if not callable(on_progress):
        raise TypeError(f"on_progress must be callable (done, total), got {type(on_progress).__name__}")
    return _ReportingBar(bar, on_progress, total)
