"""The one rule for "has the model changed?", used by every cache built from a user's model.

The caches (occlusion's private trunk copy in :mod:`~ssl_widgets.attr._occlusion_engine.fold`, the view store's copy
embeddings in :mod:`~ssl_widgets.attr._occlusion_engine.store`, and through the copy the Winograd weight transforms of
:mod:`~ssl_widgets.attr._occlusion_engine.winograd`) are valid only while the model computes exactly as it did when they
were filled. The Winograd transforms are keyed by the private copy's own weights, which only this
package holds and never writes: a changed model gives a new copy with new weights, and
:func:`private_tensor_version` is their guard. :func:`state_token` is an
int that stays the same while that holds and never repeats once it does not. It covers:

* values: every parameter and buffer is compared element by element with a snapshot (so in-place
  updates through ``.data``, which bypass PyTorch's version counters, as EMA teacher updates do, are
  seen), and its identity, name, shape, dtype and device;
* hooks: forward and forward-pre hooks of every submodule, the global module hooks, and ``forward``
  replaced on an instance;
* structure: every submodule's name, identity and type (a parameter-free module swapped, e.g.
  ``block.relu = nn.Tanh()``), and its plain settings (``stride``, ``inplace``, ``p``, ...);
* mode: every submodule's ``training`` flag.

:func:`has_forward_hooks` tells whether a module runs user code on its forward passes; a private
traced and BatchNorm-folded copy cannot reproduce that (a hook on a convolution folded into its
BatchNorm would see another tensor), so the fast engines then run the model itself.
"""
from __future__ import annotations

import itertools
import threading
import weakref
from typing import Any

import torch
from torch import nn
from torch.nn.modules import module as _module

__all__ = ["has_forward_hooks", "private_tensor_version", "state_token"]

_LOCK = threading.Lock()
_COUNTER = itertools.count(1)
#: per tensor (by id): (weak reference, value snapshot, generation)
_VALUES: dict[int, tuple[weakref.ref, torch.Tensor, int]] = {}
#: per module: (its full description, its token)
_TOKENS: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, int]] = weakref.WeakKeyDictionary()

_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
_GLOBAL_FORWARD_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks")
_GLOBAL_HOOKS = (*_GLOBAL_FORWARD_HOOKS, "_global_backward_hooks", "_global_backward_pre_hooks")
_PLAIN = (bool, int, float, str, type(None))


def _forget(key: int) -> None:  # a snapshotted tensor died (may run inside the locked block: no lock)
    entry = _VALUES.get(key)
    if entry is not None and entry[0]() is None:
        _VALUES.pop(key, None)


def _value_generation(tensor: torch.Tensor) -> int:
    """A number that changes whenever ``tensor``'s values differ from those seen last time (caller holds _LOCK)."""
    key = id(tensor)
    entry = _VALUES.get(key)
    if entry is not None and entry[0]() is tensor and not tensor.is_meta and entry[1].shape == tensor.shape \
            and entry[1].dtype == tensor.dtype and entry[1].device == tensor.device \
            and torch.equal(entry[1], tensor.detach()):
        return entry[2]
    with torch.inference_mode(False), torch.no_grad():  # a normal tensor, also when called in inference mode
        snapshot = tensor.detach().clone()
    generation = next(_COUNTER)
    _VALUES[key] = (weakref.ref(tensor, lambda _, key=key: _forget(key)), snapshot, generation)
    return generation


def _hooks(owner: Any, names: tuple[str, ...]) -> tuple:
    return tuple((name, tuple((k, id(h)) for k, h in getattr(owner, name, {}).items())) for name in names)


def _settings(module: nn.Module) -> tuple:
    """The module's plain attributes (``training``, ``stride``, ``inplace``, ...), and a replaced ``forward``."""
    items = []
    for key, value in module.__dict__.items():
        if isinstance(value, _PLAIN) or (isinstance(value, tuple) and all(isinstance(v, _PLAIN) for v in value)):
            items.append((key, value))
    return tuple(sorted(items)), id(module.__dict__.get("forward"))


def _describe(module: nn.Module) -> tuple:
    """Everything the module computes with (see the module docstring); compares values (caller holds _LOCK)."""
    modules = tuple((name, id(m), type(m), _settings(m), _hooks(m, _HOOK_DICTS))
                    for name, m in module.named_modules(remove_duplicate=False))
    tensors = tuple((name, id(t), tuple(t.shape), t.dtype, t.device, _value_generation(t))
                    for name, t in (*module.named_parameters(remove_duplicate=False),
                                    *module.named_buffers(remove_duplicate=False)) if t is not None)
    return modules, tensors, _hooks(_module, _GLOBAL_HOOKS)


def state_token(module: nn.Module) -> int:
    """An int that stays the same while ``module`` computes as it did, and is new once it may not.

    Caches built from a module keep the token they were built at and are stale when it differs. It
    costs one element-wise comparison of the module's parameters and buffers with a snapshot (one copy
    of them is kept, shared by every module that holds the same tensors).

    Examples:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
        >>> token = state_token(net)
        >>> state_token(net) == token
        True
        >>> _ = net[0].weight.data.mul_(2)  # bypasses the version counter
        >>> state_token(net) == token
        False
        >>> token = state_token(net); net[1] = nn.Tanh(); state_token(net) == token
        False
        >>> token = state_token(net); handle = net[0].register_forward_hook(lambda *a: None)
        >>> state_token(net) == token
        False
    """
    with _LOCK:
        description = _describe(module)
        entry = _TOKENS.get(module)
        if entry is not None and entry[0] == description:
            return entry[1]
        token = next(_COUNTER)
        _TOKENS[module] = (description, token)
        return token


def has_forward_hooks(module: nn.Module) -> bool:
    """Whether a forward pass of ``module`` runs user code besides its modules' ``forward``: forward or
    forward-pre hooks on any submodule, global module forward hooks, or a ``forward`` replaced on an instance.

    Examples:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
        >>> has_forward_hooks(net)
        False
        >>> handle = net[0].register_forward_hook(lambda *a: None)
        >>> has_forward_hooks(net)
        True
    """
    if any(getattr(_module, name, None) for name in _GLOBAL_FORWARD_HOOKS):
        return True
    return any(m._forward_hooks or m._forward_pre_hooks or "forward" in m.__dict__ for m in module.modules())


def private_tensor_version(tensor: torch.Tensor) -> int | None:
    """The in-place version counter of a tensor only this package holds (a private copy's weight), or ``None``
    for an inference tensor, which keeps none.

    Enough for tensors no user code can reach (no ``.data`` updates); tensors of the user's model go
    through :func:`state_token`.

    Examples:
        >>> w = torch.zeros(2)
        >>> before = private_tensor_version(w); _ = w.add_(1)
        >>> private_tensor_version(w) == before
        False
    """
    try:
        return tensor._version
    except RuntimeError:
        return None
