"""Model-level helpers shared by the methods, the metrics and the analyses.

* :func:`check_model`: a clear ``TypeError`` unless the argument is an :class:`SSLModel`.
* :func:`preserved_model_state`: eval mode for the duration; mode, ``requires_grad`` flags and
  hooks restored on every exit path; serialised by :func:`~ssl_widgets.models.locks.model_lock`
  (the locks of the model's parts, shared by every wrapper over them). The model's tensors are never
  replaced or converted (no memory-format or dtype round trip), so ``torch.inference_mode`` cannot
  turn them into inference tensors.
* :func:`eval_similarity`: ``cos(f(x1_n), f(x2_n))`` without autograd.

They live under ``models`` (not ``attr``) so that ``metrics`` and ``analysis`` need no method code;
``ssl_widgets.attr.engine`` re-exports them.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from .._validation import check_materialized
from ..core import cosine
from .locks import model_lock
from .wrapper import SSLModel

__all__ = ["check_model", "eval_similarity", "model_lock", "preserved_model_state"]


def check_model(model: object) -> SSLModel:
    """Raise a clear ``TypeError`` unless ``model`` is an :class:`SSLModel`.

    Args:
        model: the object to check.

    Returns:
        ``model`` itself.

    Examples:
        >>> check_model(model) is model
        True
        >>> check_model(nn.Linear(2, 2))
        Traceback (most recent call last):
        ...
        TypeError: expected an ssl_widgets.models.SSLModel, got Linear; wrap your network with SSLModel(trunk, head, mean=..., std=...) or load one with ssl_widgets.load_model(name)
    """
    if not isinstance(model, SSLModel):
        raise TypeError(
            f"expected an ssl_widgets.models.SSLModel, got {type(model).__name__}; wrap your network with "
            f"SSLModel(trunk, head, mean=..., std=...) or load one with ssl_widgets.load_model(name)"
        )
    check_materialized(model)
    return model


@contextlib.contextmanager
def preserved_model_state(model: nn.Module, requires_grad: bool | None = None) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block and restore everything on exit.

    Restores each module's ``training`` flag and each parameter's ``requires_grad``, and removes any
    hook registered on the model's modules during the block, also when the block raises. A model with
    parameters on the meta device is refused with a clear ``ValueError``.

    The block holds the model's :func:`model_lock`: calls on the same model (or on wrappers sharing
    its trunk) from several threads run one after the other (never interleaving their state changes),
    calls on different models run in parallel, and a nested call in the same thread does not block.

    Args:
        model: the module.
        requires_grad: if given, set on every parameter for the block (``False`` for all methods:
            they need gradients with respect to inputs or activations, never parameters).
    """
    check_materialized(model)
    with model_lock(model), _preserved_state_unlocked(model, requires_grad):
        yield model


@contextlib.contextmanager
def _preserved_state_unlocked(model: nn.Module, requires_grad: bool | None) -> Iterator[nn.Module]:
    modes = {m: m.training for m in model.modules()}
    flags = {p: p.requires_grad for p in model.parameters()}
    hook_dicts = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
                  "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called")
    saved_hooks = {(m, name): dict(getattr(m, name)) for m in model.modules() for name in hook_dicts
                   if hasattr(m, name)}
    saved_forwards = {m: m.__dict__.get("forward") for m in model.modules()}
    try:
        model.eval()
        if requires_grad is not None:
            for p in model.parameters():
                p.requires_grad_(requires_grad)
        yield model
    finally:
        for module, training in modes.items():
            module.training = training
        for p, flag in flags.items():
            p.requires_grad_(flag)
        for (module, name), hooks in saved_hooks.items():
            current = getattr(module, name)
            for key in list(current):
                if key not in hooks:
                    del current[key]
        for module, forward in saved_forwards.items():
            if forward is None:
                module.__dict__.pop("forward", None)
            else:
                module.__dict__["forward"] = forward


def eval_similarity(model: SSLModel, x1_n: torch.Tensor, x2_n: torch.Tensor) -> torch.Tensor:
    """``cos(f(x1_n), f(x2_n))`` for inputs in the model's input space, in eval mode, without autograd.

    Args:
        model: the model.
        x1_n, x2_n: ``(B,3,H,W)`` images already normalised (``model.normalize``).

    Returns:
        ``(B,)`` similarities.

    Examples:
        >>> round(float(eval_similarity(model, model.normalize(x1), model.normalize(x1))), 4)
        1.0
    """
    with preserved_model_state(model), torch.no_grad():
        return cosine(model.forward_normalized(x1_n), model.forward_normalized(x2_n))
