"""The base of the explorer's tabs: :class:`MethodControls` (a tab's widgets and the method they choose)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import ipywidgets as W

from .progressive import explorer_defaults

if TYPE_CHECKING:  # pragma: no cover
    from .context import ExplorerContext

__all__ = ["MethodControls"]


class MethodControls:
    """A tab's widgets and how they turn into a method name and ``attribute`` settings.

    Args:
        input_size: the model's input size (sizes the sliders of patch sizes and strides).
        patch_size: a token model's patch side (``None``: a CNN); with ``input_size`` it sizes the initial
            values (:func:`~ssl_widgets.widgets.progressive.explorer_defaults`).
    """

    title = ""
    slow = False

    def __init__(self, input_size: int, patch_size: int | None = None) -> None:
        self.input_size, self.patch_size = input_size, patch_size
        self.defaults = explorer_defaults(input_size, patch_size).settings
        self.box = W.VBox(self.children())

    def children(self) -> list[W.Widget]:
        return []

    def widgets(self) -> list[W.Widget]:
        return [c for c in self.box.children if isinstance(c, W.ValueWidget)]

    def request(self) -> tuple[str, dict[str, Any]]:
        raise NotImplementedError

    def bind(self, context: ExplorerContext) -> None:
        """Called once by the explorer with its public :class:`~ssl_widgets.widgets.context.ExplorerContext`
        (tabs that follow the model or run their own jobs keep it)."""

    #: base method names this tab shows
    names: tuple[str, ...] = ()

    def select(self, base: str, option: str) -> bool:
        """Set the tab's controls to the method ``base[:option]``; ``False`` if it is not this tab's."""
        if base not in self.names:
            return False
        self._select(base, option)
        return True

    def _select(self, base: str, option: str) -> None:
        pass
