"""A value lent to the calling thread for the length of a ``with`` block (progress listeners, the view
store, the occlusion preview): each lends its object through :func:`lent_to_thread`."""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import TypeVar

__all__ = ["lent_to_thread"]

T = TypeVar("T")


@contextlib.contextmanager
def lent_to_thread(local: threading.local, name: str, value: T) -> Iterator[T]:
    """Set ``local.name`` to ``value`` in this thread for the block, then restore what it was (nesting
    works; other threads never see it).

    Examples:
        >>> local = threading.local()
        >>> with lent_to_thread(local, "store", 1) as lent:
        ...     with lent_to_thread(local, "store", 2):
        ...         inner = local.store
        ...     lent, inner, local.store
        (1, 2, 1)
        >>> getattr(local, "store", None) is None
        True
    """
    outer = getattr(local, name, None)
    setattr(local, name, value)
    try:
        yield value
    finally:
        setattr(local, name, outer)
