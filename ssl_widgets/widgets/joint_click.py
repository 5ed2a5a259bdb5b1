"""The explorer's clicks: correspondence maps, and joint-method clicks (bilinear, joint occlusion) run as jobs."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..analysis import dense_correspondence
from ..attr.registry import get_method

if TYPE_CHECKING:  # pragma: no cover
    from .context import ExplorerContext
    from .jobs import JobRunner

__all__ = ["JointClickMixin"]


class JointClickMixin:
    """For :class:`Explorer`: a click on either view shows where the other view answers (feature cosine); under
    a joint method the pair-to-pair relevance is computed as a job of the explorer's runner (progress bar and
    Cancel, like the other slow methods) and cached per pair and method."""

    context: ExplorerContext
    jobs: JobRunner
    display_size: int

    def _attach_clicks(self) -> None:
        try:
            from ipyevents import Event
        except ImportError:  # the explorer works without clicks
            self._events = []
            return
        self._events = []
        for index, view in enumerate((self.view1, self.view2)):
            event = Event(source=view, watched_events=["click"])
            event.on_dom_event(lambda e, i=index: self.click(i, e))
            self._events.append(event)

    def _click_point(self, event: dict) -> tuple[float, float]:
        """The clicked point in model-input pixels ``(y, x)``; refuses a point outside the displayed image."""
        size = self.context.model().input_size
        if "dataX" in event:
            x, y = event["dataX"], event["dataY"]
            extent = float(self.display_size)
        else:
            x, y = event["relativeX"], event["relativeY"]
            extent = float(event.get("boundingRectWidth") or self.display_size)
        if not (0 <= x <= extent and 0 <= y <= extent):
            raise ValueError(f"click ({x:g}, {y:g}) is outside the displayed image of {extent:g} px")
        scale = size / extent
        return min(size - 1, y * scale), min(size - 1, x * scale)

    def click(self, view_index: int, event: dict) -> None:
        """Handle a click on view ``view_index`` (0 or 1): show the correspondence map on the other view.

        ``event`` needs ``dataX``/``dataY`` (pixels of the displayed image, as ipyevents sends) or
        ``relativeX``/``relativeY`` with ``boundingRectWidth``/``boundingRectHeight``.
        """
        try:
            point = self._click_point(event)
            x1, x2 = self.current_pair()
            query, target = (x1, x2) if view_index == 0 else (x2, x1)
            joint = getattr(self._controls(), "joint_method", None)
            if joint is not None and joint.value != "feature-cosine":
                self._start_joint(joint.value, view_index, point, x1, x2)
                return
            heat = dense_correspondence(self.context.model(), query, target, point, self.context.layer)
            self._show_click(view_index, point, heat, x1, x2)
        except Exception as error:  # errors show in the panel, never as a dead widget
            self._show_error(error)

    def _show_click(self, view_index: int, point: tuple[float, float], heat: torch.Tensor, x1, x2) -> None:
        """Draw the correspondence ``heat`` on the other view and box the clicked cell."""
        size = self.context.model().input_size
        cell = size / heat.shape[0]
        row, col = int(point[0] // cell), int(point[1] // cell)
        box = (int(row * cell), int(col * cell), int((row + 1) * cell), int((col + 1) * cell))
        self._box = (view_index, box)
        self.maps = (None, heat) if view_index == 0 else (heat, None)
        self.last_error = None
        self.status.value = f"correspondence of the point ({point[0]:.0f}, {point[1]:.0f}) of image {view_index + 1}"
        self._draw(x1, x2)

    def _start_joint(self, name: str, view_index: int, point: tuple[float, float], x1, x2) -> None:
        """Run a joint method for a click as a job (a newer click or setting supersedes it)."""
        self.jobs.submit(lambda job: self._joint_heat(name, view_index, point, x1, x2, on_progress=job.on_progress),
                         status=f"computing {name} ...",
                         on_result=lambda heat: self._show_click(view_index, point, heat, x1, x2))

    def _joint_heat(self, name: str, view_index: int, point: tuple[float, float], x1, x2, grid: int = 7,
                    on_progress=None):
        """Relevance of the clicked cell (7x7 grid) with every cell of the other image, under a joint method."""
        cached = getattr(self, "_joint_cache", None)
        if cached is None or cached[0] != name or not (torch.equal(cached[1], x1) and torch.equal(cached[2], x2)):
            result = get_method(name)[0](self.context.model()).attribute((x1, x2), grid=grid, on_progress=on_progress)
            self._joint_cache = cached = (name, x1.clone(), x2.clone(), result)
        size = x1.shape[-1] if view_index == 0 else x2.shape[-1]
        cell = (min(grid - 1, int(point[0] * grid / size)), min(grid - 1, int(point[1] * grid / size)))
        return cached[3].over_other(cell, image=view_index + 1)
