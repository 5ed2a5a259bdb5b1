"""Locks that belong to modules, so that every wrapper over one network shares them.

A method changes a model's state for the duration of a call (eval mode, frozen parameters, hooks) and
builds private copies of its trunk. Two :class:`~ssl_widgets.models.SSLModel` wrappers may share one
trunk (the same network with two heads, or wrapped twice): a lock per wrapper would let two calls change
that trunk at once. So the locks are keyed (weakly) by the modules themselves: :func:`module_lock` is
one re-entrant lock per module object, and :func:`model_lock` holds the locks of every part a call
touches (an ``SSLModel``'s trunk, head and CAM head), taken in one global order so that two calls never
wait for each other crosswise.
"""
from __future__ import annotations

import threading
import weakref
from types import TracebackType

from torch import nn

__all__ = ["ModelLock", "model_lock", "module_lock"]

_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_GUARD = threading.Lock()


def module_lock(module: nn.Module) -> threading.RLock:
    """The re-entrant lock of ``module`` (one per module object, kept beside it, gone with it).

    Examples:
        >>> m = nn.Linear(2, 2)
        >>> module_lock(m) is module_lock(m)
        True
    """
    with _GUARD:
        lock = _LOCKS.get(module)
        if lock is None:
            lock = _LOCKS[module] = threading.RLock()
        return lock


class ModelLock:
    """The locks of a model's parts, held together (a context manager; re-entrant in one thread).

    Args:
        parts: the modules whose locks are taken (in order of ``id``, released in reverse).
    """

    def __init__(self, parts: list[nn.Module]) -> None:
        self.parts = sorted({id(p): p for p in parts}.values(), key=id)
        self._locks = [module_lock(p) for p in self.parts]

    def __enter__(self) -> ModelLock:
        taken = []
        try:
            for lock in self._locks:
                lock.acquire()
                taken.append(lock)
        except BaseException:
            for lock in reversed(taken):
                lock.release()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        for lock in reversed(self._locks):
            lock.release()


def model_lock(model: nn.Module) -> ModelLock:
    """The lock that serialises every method call on ``model`` and on any model sharing a part with it.

    For an :class:`~ssl_widgets.models.SSLModel` these are the locks of its trunk, head and CAM head
    (its child modules), so two wrappers over one trunk serialise; for any other module, its own lock.

    Examples:
        >>> from ssl_widgets.models.wrapper import SSLModel
        >>> trunk = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
        >>> a, b = SSLModel(trunk), SSLModel(trunk, nn.Linear(4, 2))
        >>> trunk in model_lock(a).parts and trunk in model_lock(b).parts
        True
        >>> with model_lock(a), model_lock(a):  # re-entrant in one thread
        ...     pass
    """
    from .wrapper import SSLModel

    parts = list(model.children()) if isinstance(model, SSLModel) else []
    return ModelLock(parts or [model])
