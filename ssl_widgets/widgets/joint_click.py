"""The explorer's click results, and its joint-method clicks (bilinear, joint occlusion) run in its worker thread."""
from __future__ import annotations

import threading

import torch

from ..attr.engine import Cancelled, progress_listener

__all__ = ["JointClickMixin"]


class JointClickMixin:
    """For :class:`Explorer`: a click under a joint method computes the pair-to-pair relevance in the worker
    thread (progress bar and Cancel, like the other slow methods) and caches it per pair and method."""

    def _show_click(self, view_index: int, point: tuple[float, float], heat: torch.Tensor, x1, x2) -> None:
        """Draw the correspondence ``heat`` on the other view and box the clicked cell."""
        size = self._model().input_size
        cell = size / heat.shape[0]
        row, col = int(point[0] // cell), int(point[1] // cell)
        box = (int(row * cell), int(col * cell), int((row + 1) * cell), int((col + 1) * cell))
        self._box = (view_index, box)
        self.maps = (None, heat) if view_index == 0 else (heat, None)
        self.last_error = None
        self.status.value = f"correspondence of the point ({point[0]:.0f}, {point[1]:.0f}) of image {view_index + 1}"
        self._draw(x1, x2)

    def _start_joint(self, name: str, view_index: int, point: tuple[float, float], x1, x2) -> None:
        """Run a joint method for a click in the worker (progress bar and Cancel, like the other slow methods)."""
        self._cancel.set()  # a newer click supersedes a joint computation still running
        self._cancel = threading.Event()
        self._generation += 1
        generation, cancel, previous = self._generation, self._cancel, self._worker

        def job() -> None:
            if previous is not None and previous is not threading.current_thread():
                previous.join()
            if generation != self._generation:
                return
            self.cancel_button.disabled = False
            self.status.value = f"computing {name} ..."

            try:
                with progress_listener(self._progress_reporter(cancel)):
                    heat = self._joint_heat(name, view_index, point, x1, x2)
                if generation == self._generation:
                    self._show_click(view_index, point, heat, x1, x2)
            except Cancelled:
                if generation == self._generation:
                    self.status.value = "cancelled"
            except Exception as error:
                if generation == self._generation:
                    self._show_error(error)
            finally:
                if generation == self._generation:
                    self.cancel_button.disabled = True

        if self.threaded:
            self._worker = threading.Thread(target=job, daemon=True)
            self._worker.start()
        else:
            job()

    def _joint_heat(self, name: str, view_index: int, point: tuple[float, float], x1, x2, grid: int = 7):
        """Relevance of the clicked cell (7x7 grid) with every cell of the other image, under a joint method."""
        from ..attr.registry import get_method

        cached = getattr(self, "_joint_cache", None)
        if cached is None or cached[0] != name or not (torch.equal(cached[1], x1) and torch.equal(cached[2], x2)):
            result = get_method(name)[0](self._model()).attribute((x1, x2), grid=grid)
            self._joint_cache = cached = (name, x1.clone(), x2.clone(), result)
        size = x1.shape[-1] if view_index == 0 else x2.shape[-1]
        cell = (min(grid - 1, int(point[0] * grid / size)), min(grid - 1, int(point[1] * grid / size)))
        return cached[3].over_other(cell, image=view_index + 1)

