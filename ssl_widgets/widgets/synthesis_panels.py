"""Explorer tabs for the image-synthesis methods: feature visualisation and model difference.

Images appear as they form (updated every few iterations); a run goes in a worker thread when
the explorer is threaded and stops with its Cancel button.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import ipywidgets as W
import torch

from ..attr import FeatureVisualization, ModelDifference
from .base import MethodControls
from .rendering import overlay_png

if TYPE_CHECKING:  # pragma: no cover
    from .context import ExplorerContext

__all__ = ["FeatureVisualizationControls", "ModelDifferenceControls"]


def _pending_image(width: str) -> W.Image:
    """An image output hidden until its first picture (an empty ``W.Image`` shows a broken-image icon)."""
    return W.Image(format="png", layout=W.Layout(width=width, visibility="hidden"))


def _show_image(image: W.Image, png: bytes) -> None:
    image.value = png
    image.layout.visibility = "visible"


class _SynthesisControls(MethodControls):
    """A tab with its own Run button and image outputs; needs :meth:`bind` to an explorer's context."""

    context: ExplorerContext | None = None

    def bind(self, context: ExplorerContext) -> None:
        self.context = context

    def request(self):
        return "synthesis", {}

    def widgets(self) -> list[W.Widget]:
        """The settings (a change shows the pair again, waiting for a run), not the image outputs or texts."""
        return [w for w in super().widgets() if not isinstance(w, (W.Image, W.HTML))]

    def run(self) -> None:
        """Start (or, unthreaded, perform) the synthesis with the explorer's model and pair, in its job runner."""
        context = self.context
        if context is None:
            raise RuntimeError(f"{type(self).__name__} runs with an explorer: bind() it to the explorer's context first")
        status = context.runner.status
        context.runner.submit(lambda job: self._synthesise(job.on_progress), status=f"{self.title}: running ...",
                              on_result=lambda _: setattr(status, "value", f"{self.title}: done"))

    def _synthesise(self, on_progress=None) -> None:
        raise NotImplementedError


class FeatureVisualizationControls(_SynthesisControls):
    title = "Feature visualisation"
    names = ("feature-visualization",)

    def children(self):
        layers = ["layer1", "layer2", "layer3", "layer4"]
        self.layer = W.Dropdown(options=layers, value="layer3", description="layer")
        self.mode = W.ToggleButtons(options=["score", "feature"], value="score", description="mode")
        self.parametrization = W.ToggleButtons(options=[("octaves (paper)", "pixel"), ("Fourier", "fourier")],
                                               value="pixel", description="image")
        self.octaves = W.IntSlider(value=10, min=1, max=12, description="octaves", continuous_update=False)
        self.iterations = W.IntSlider(value=20, min=5, max=60, step=5, description="iterations",
                                      continuous_update=False)
        self.run_button = W.Button(description="run", icon="play")
        self.run_button.on_click(lambda _: self.run())
        self.output = _pending_image("224px")
        self.placeholder = W.HTML("<i>press run: the image appears here as it forms</i>")
        self.result: torch.Tensor | None = None
        return [W.HBox([self.layer, self.mode]), self.parametrization, W.HBox([self.octaves, self.iterations]),
                W.HBox([self.run_button, W.HTML("image whose partial embedding matches view 2's:")]),
                self.placeholder, self.output]

    def _synthesise(self, on_progress=None) -> None:
        context = self.context
        _, x2 = context.current_pair()
        self.placeholder.layout.display = "none"

        def show(_step, image):
            _show_image(self.output, overlay_png(image[0], display_size=224))

        self.result = FeatureVisualization(context.model(), self.layer.value).visualize(
            x2, mode=self.mode.value, octaves=self.octaves.value, iterations=self.iterations.value,
            parametrization=self.parametrization.value, generator=torch.Generator().manual_seed(context.seed),
            callback=show, callback_every=10, on_progress=on_progress)
        show(0, self.result)


class ModelDifferenceControls(_SynthesisControls):
    title = "Model difference"
    names = ("model-difference",)

    def children(self):
        self.other = W.Dropdown(options=["tiny-barlow-twins", "tiny-simclr", "tiny-simsiam", "tiny-dino-vit", "resnet50-supervised"],
                                value="tiny-barlow-twins", description="compare with")
        self.iterations = W.IntSlider(value=201, min=20, max=400, step=20, description="iterations",
                                      continuous_update=False)
        self.run_button = W.Button(description="run", icon="play")
        self.run_button.on_click(lambda _: self.run())
        self.layers = ("stem", "layer1", "layer2")
        self.outputs = {(layer, k): _pending_image("150px") for layer in self.layers for k in range(2)}
        self.labels = [W.HTML("<b>this model</b>"), W.HTML("<b>the other model</b>")]
        grid = W.GridBox([W.HTML("")] + [W.HTML(f"<b>{layer}</b>") for layer in self.layers] +
                         [self.labels[0]] + [self.outputs[(layer, 0)] for layer in self.layers] +
                         [self.labels[1]] + [self.outputs[(layer, 1)] for layer in self.layers],
                         layout=W.Layout(grid_template_columns="120px 155px 155px 155px"))
        self.result: dict | None = None
        self.placeholder = W.HTML("<i>press run: the six images appear here as they form</i>")
        return [W.HBox([self.other, self.iterations, self.run_button]),
                W.HTML("feature inversion of view 1 from three depths of each model:"), self.placeholder, grid]

    def _synthesise(self, on_progress=None) -> None:
        context = self.context
        model = context.model()
        other = self.other.value
        other_model = context.load_model(other)
        x1, _ = context.current_pair()
        self.labels[0].value, self.labels[1].value = f"<b>{model.name}</b>", f"<b>{other}</b>"
        self.placeholder.layout.display = "none"

        def show(layer, index, _step, image):
            _show_image(self.outputs[(layer, index)], overlay_png(image[0], display_size=150))

        self.result = ModelDifference(model, other_model).invert(
            x1, layers=self.layers, iterations=self.iterations.value,
            generator=torch.Generator().manual_seed(context.seed), callback=show, callback_every=25, on_progress=on_progress)
        for layer, pair in self.result.items():
            for index, image in enumerate(pair):
                show(layer, index, 0, image)
