"""Reuse of one image's occluded-copy embeddings across occlusion calls (the Explorer's view store).

Both occlusion methods embed each image's perturbed copies independently of the other image: the
other image only enters through its unperturbed embedding. When a caller asks again with one image
unchanged (the Explorer: a new augmentation of view 2, a new second image), that image's copies
need not be evaluated again. :class:`ViewEmbeddingStore` keeps them; a
:class:`~ssl_widgets.attr.CopyEvaluator` built with ``store=`` uses and fills it. Without one nothing is
kept: methods called directly keep nothing between calls.

An entry is reused only for the same model object unchanged since by the one rule of
:func:`~ssl_widgets.attr._model_state.state_token` (values compared element by element, so ``.data``
updates such as EMA teacher updates are seen; hooks, structure, settings, mode), the same private
inference copy of its trunk, the same method, window, corners, fill and evaluation options, and base images equal
value for value (``torch.equal``). Reused maps equal a fresh call's up to float rounding (the copies
were evaluated in other batches).
"""
from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["ViewEmbeddingStore"]


@dataclass
class _Entry:
    refs: tuple[weakref.ref, ...]  # the model and the evaluated trunk copy
    options: tuple
    tensors: tuple[torch.Tensor, ...]  # base images, window contents, corners
    embeddings: torch.Tensor
    unperturbed: torch.Tensor


def _same(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and x.dtype == y.dtype and x.device == y.device
                                    and torch.equal(x, y) for x, y in zip(a, b))


class ViewEmbeddingStore:
    """A bounded store of occluded-copy embeddings of single images, for reuse across occlusion calls.

    Args:
        max_entries: views kept (least recently used dropped first). One entry holds one image's
            copy embeddings (windows x embedding size) and the tensors it is matched by.

    Examples:
        >>> from ssl_widgets.models.zoo import build_tiny_model
        >>> from ssl_widgets.attr import ConditionalOcclusion, CopyEvaluator
        >>> model = build_tiny_model({"width": 8, "head_dims": [32, 16], "input_size": 32}).eval()
        >>> g = torch.Generator().manual_seed(0)
        >>> x1, x2, x3 = (torch.rand(1, 3, 32, 32, generator=g) for _ in range(3))
        >>> store = ViewEmbeddingStore()
        >>> occlusion = ConditionalOcclusion(model, evaluator=CopyEvaluator(model, store=store))
        >>> _ = occlusion.attribute((x1, x2), 16, 8)
        >>> again = occlusion.attribute((x1, x3), 16, 8)  # x1's copies are reused
        >>> len(store), store.hits
        (3, 1)
        >>> fresh = ConditionalOcclusion(model).attribute((x1, x3), 16, 8)
        >>> torch.allclose(again[0], fresh[0], atol=1e-6) and torch.allclose(again[1], fresh[1], atol=1e-6)
        True
    """

    def __init__(self, max_entries: int = 16) -> None:
        if isinstance(max_entries, bool) or not isinstance(max_entries, int):
            raise TypeError(f"max_entries must be an integer >= 1 (views kept), got {max_entries!r}")
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}")
        self.max_entries = max_entries
        self.hits = 0
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        self._next = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Drop every entry."""
        with self._lock:
            self._entries.clear()

    def find(self, objects: tuple[Any, ...], options: tuple,
             tensors: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(copy embeddings, unperturbed embedding)`` stored for these inputs, or ``None``."""
        with self._lock:
            for key, entry in reversed(self._entries.items()):
                if entry.options == options and all(r() is o for r, o in zip(entry.refs, objects)) \
                        and _same(entry.tensors, tensors):
                    self._entries.move_to_end(key)
                    self.hits += 1
                    return entry.embeddings, entry.unperturbed
        return None

    def keep(self, objects: tuple[Any, ...], options: tuple, tensors: tuple[torch.Tensor, ...],
             embeddings: torch.Tensor, unperturbed: torch.Tensor) -> None:
        """Store one image's copy embeddings (detached copies of everything matched on)."""
        entry = _Entry(tuple(weakref.ref(o) for o in objects), options, tuple(t.detach().clone() for t in tensors),
                       embeddings.detach().clone(), unperturbed.detach().clone())
        with self._lock:
            self._entries[self._next] = entry
            self._next += 1
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

