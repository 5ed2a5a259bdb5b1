"""bqplot figures of the explorer: insertion/deletion curves and similarity sweeps."""
from __future__ import annotations

from typing import TYPE_CHECKING

import ipywidgets as W
import torch

from ..analysis import SWEEPS, similarity_sweep
from ..metrics import insertion_deletion

if TYPE_CHECKING:  # pragma: no cover
    from .context import ExplorerContext

__all__ = ["CurvePlot"]


def _figure(title: str, x_label: str, colors: list[str], labels: list[str]):
    import bqplot as bq

    x_scale, y_scale = bq.LinearScale(min=0, max=1), bq.LinearScale()
    lines = bq.Lines(x=[0.0, 1.0], y=[[0.0, 0.0]] * len(colors), scales={"x": x_scale, "y": y_scale},
                     colors=colors, labels=labels, display_legend=True)
    axes = [bq.Axis(scale=x_scale, label=x_label), bq.Axis(scale=y_scale, orientation="vertical", label="cosine")]
    figure = bq.Figure(marks=[lines], axes=axes, title=title, legend_location="top-right",
                       layout=W.Layout(width="420px", height="300px"),
                       fig_margin=dict(top=40, bottom=45, left=55, right=10))
    return figure, lines


class CurvePlot:
    """Insertion/deletion curves of the current map and a similarity-vs-strength sweep.

    Args:
        context: the explorer's :class:`~ssl_widgets.widgets.context.ExplorerContext` (model and pair).
    """

    def __init__(self, context: ExplorerContext) -> None:
        self.context = context
        self.curve_figure, self.curve_lines = _figure("conditional: image 1 inserted / deleted, image 2 kept",
                                                      "fraction of pixels", ["#1f77b4", "#d62728"],
                                                      ["insertion", "deletion"])
        self.sweep_figure, self.sweep_lines = _figure("similarity vs transform strength", "strength",
                                                      ["#2ca02c"], ["cos(x, T_s(x))"])
        self.sweep_kind = W.Dropdown(options=list(SWEEPS), value="color-jitter", description="transform")
        self.sweep_kind.observe(lambda _: self.sweep(), names="value")
        self.show_curves = W.Checkbox(value=False, description="insertion/deletion curves (slower)")
        self.box = W.Accordion(children=[W.VBox([W.HBox([self.show_curves]), W.HBox([self.curve_figure,
                                                  W.VBox([self.sweep_kind, self.sweep_figure])])])],
                               titles=("curves",))
        self.box.observe(lambda change: self.sweep() if change["new"] == 0 else None, names="selected_index")
        self.last_sweep: torch.Tensor | None = None
        self.last_curves: tuple[torch.Tensor, torch.Tensor] | None = None

    def update(self, x1: torch.Tensor, x2: torch.Tensor, map1: torch.Tensor | None) -> None:
        """Recompute the conditional insertion and deletion curves of ``map1`` (when shown)."""
        if not self.show_curves.value or map1 is None:
            return
        model = self.context.model()
        step = max(1, x1.shape[2] * x1.shape[3] // 50)
        ins = insertion_deletion(model, x1, x2, map1[None], mode="insertion", step=step).curve[0]
        dele = insertion_deletion(model, x1, x2, map1[None], mode="deletion", step=step).curve[0]
        grid = torch.linspace(0, 1, len(ins))
        self.curve_lines.x = grid.tolist()
        self.curve_lines.y = [ins.tolist(), dele.tolist()]
        self.last_curves = (ins, dele)

    def sweep(self, kind: str | None = None) -> torch.Tensor:
        """Run and plot the sweep of ``kind`` (default: the dropdown's) on image 1."""
        kind = kind or self.sweep_kind.value
        x1, _ = self.context.current_pair()
        strengths = [i / 10 for i in range(11)]
        sims = similarity_sweep(self.context.model(), x1, kind, strengths)
        self.sweep_lines.x = strengths
        self.sweep_lines.y = [sims.tolist()]
        self.last_sweep = sims
        return sims
