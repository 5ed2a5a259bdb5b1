"""``Explorer``: the interactive panel for pairwise-similarity explanations.

It is assembled from parts: :class:`~ssl_widgets.widgets.inputs.PairInputs` (model, layer, images,
augmentation), one tab per method (:mod:`~ssl_widgets.widgets.controls`), the job runner
(:class:`~ssl_widgets.widgets.jobs.JobRunner`: worker thread, progress, Cancel, status line), the
click handling (:mod:`~ssl_widgets.widgets.joint_click`) and the curves (:mod:`~ssl_widgets.widgets.plots`).
Tabs and plots see the explorer only through its public :class:`~ssl_widgets.widgets.context.ExplorerContext`.
"""
from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import Any

import ipywidgets as W
import torch

from ..attr.applicability import not_applicable
from ..attr.engine import eval_similarity
from ..attr.spec import spec_for
from ..explain import explain_pair
from ..models import SSLModel
from ..threads import set_threads
from .context import ExplorerContext, ModelStore
from .controls import MethodControls, OcclusionControls, build_method_controls
from .inputs import AUGMENTED, PairInputs
from .jobs import Job, JobRunner
from .joint_click import JointClickMixin
from .plots import CurvePlot
from .progressive import explorer_defaults, run_progressively
from .rendering import COLORMAPS, EXPLORER_STYLE, render_view, result_note

__all__ = ["AUGMENTED", "Explorer"]

OFFLINE_MODELS = ("tiny-simclr", "tiny-barlow-twins", "tiny-simsiam", "tiny-dino-vit")


class Explorer(JointClickMixin, W.VBox):
    """Explore why a self-supervised model finds two images similar.

    Choose the pair (shipped samples, a file path or an upload; image 2 defaults to the CLI's augmented
    view of image 1), the model and layer, then a method tab with its own controls. Both heat maps are
    drawn over their labelled images with an opacity, a colour map and a colour bar, beside the similarity. Slow methods run in a worker thread with a progress bar and a Cancel
    button; they draw a partial result first (a coarse occlusion frame, SmoothGrad's running mean, ...) and
    then refine, with defaults sized to the model (:func:`~ssl_widgets.widgets.progressive.explorer_defaults`).
    Click a point of either image (Correspondence tab) to see where the other image answers. The Curves tab plots insertion and
    deletion curves of the current map and a similarity-versus-transform-strength sweep (bqplot).
    With a Vision Transformer the layer choice lists token layers, the Attention tab shows the class
    token's attention (block, head or mean) and the PCA tab the patch features as RGB; a method that
    does not apply to the model (a guided variant on a GELU network, attention on a CNN) says so in
    the panel. Joint methods in the Correspondence tab run in the worker too.

    Args:
        model: an :class:`SSLModel`, a zoo name, or ``None`` for the shipped ``tiny-simclr``.
        images: a sample name / path / PIL image, or a pair of them (image 2 ``None`` = augmented view).
        method: the method shown first (a method name such as ``"interaction-cam:max"``; default:
            conditional occlusion).
        threaded: run slow methods in a worker thread (set ``False`` for scripts and tests; in a script,
            ``explorer.wait()`` waits for the maps; the similarity is set when the constructor returns).
        display_size: pixel size of each displayed image.
        threads: torch threads (``None``: :func:`ssl_widgets.threads.default_threads`: one on a busy machine).

    Examples:
        >>> from ssl_widgets.widgets import Explorer
        >>> explorer = Explorer(threaded=False)  # in a notebook, end a cell with it to show it
        >>> -1 <= explorer.similarity <= 1
        True
    """

    tabs: tuple[type[MethodControls], ...] | None = None

    def __init__(self, model: SSLModel | str | None = None, images: Any = None, *, method: str | None = None,
                 threaded: bool = True, display_size: int = 256, threads: int | None = None) -> None:
        super().__init__()
        self.threads = set_threads(threads)
        self.display_size = display_size
        self._cache: OrderedDict = OrderedDict()
        self.maps: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)
        self.similarity: float | None = None
        self._box: tuple[int, tuple[int, int, int, int]] | None = None
        self._contour = False  # the maps are masks (cls-attention's threshold): their outline is drawn
        first = model.name if isinstance(model, SSLModel) else (model or OFFLINE_MODELS[0])
        image1, image2 = (images, None) if not isinstance(images, (tuple, list)) else tuple(images)
        self.inputs = PairInputs([first] + [n for n in OFFLINE_MODELS if n != first], image1, image2)
        for name in PairInputs.WIDGETS:  # the input widgets are the explorer's attributes too
            setattr(self, name, getattr(self.inputs, name))
        self.jobs = JobRunner(threaded)
        self.status, self.progress, self.cancel_button = self.jobs.status, self.jobs.progress, self.jobs.cancel_button
        self.context = ExplorerContext(self.inputs, ModelStore(model if isinstance(model, SSLModel) else None),
                                       self.jobs)
        self._build_tabs()
        self._build_display()
        self.add_class("ssl-explorer")  # EXPLORER_STYLE: full tab labels, images that keep their size
        self.upload.add_class("ssl-upload")
        column = lambda *parts, width=display_size + 8: W.VBox(list(parts), layout=W.Layout(width=f"{width}px",
                                                                                             flex="0 0 auto"))
        self.children = [W.HTML(EXPLORER_STYLE), *self.inputs.rows(), self.method_tabs,
                         W.HBox([column(self.label1, self.view1, self.colour_bar1),
                                 column(self.label2, self.view2, self.colour_bar2),
                                 column(self.similarity_label, self.opacity, self.colormap, self.jobs.box,
                                        self.status, width=340)]), self.curves.box]
        self.inputs.update_layers(self._model())
        if method is not None:
            self.select_method(method)
        self._connect()
        with contextlib.suppress(Exception):  # set when the constructor returns; refresh() shows any error
            self._show_similarity(*self.current_pair(*self._controls().request()))
        self.refresh()

    def _build_tabs(self) -> None:
        model = self._model()
        self.method_controls = build_method_controls(model.input_size, self.tabs, model.patch_size)
        for controls in self.method_controls:
            controls.bind(self.context)
        self.method_tabs = W.Tab(children=[c.box for c in self.method_controls],
                                 titles=[c.title for c in self.method_controls])

    def _build_display(self) -> None:
        self.opacity = W.FloatSlider(value=0.5, min=0.0, max=1.0, step=0.05, description="opacity")
        self.colormap = W.Dropdown(options=COLORMAPS, value="auto", description="colour map",
                                   tooltip="auto: as the static figures (red/blue around 0 for signed maps, inferno "
                                           "from 0 otherwise)")
        layout = dict(width=f"{self.display_size}px", min_width=f"{self.display_size}px")
        self.label1, self.label2 = W.HTML(_dom_classes=["ssl-image-label"]), W.HTML(_dom_classes=["ssl-image-label"])
        self.colour_bar1, self.colour_bar2 = W.HTML(), W.HTML()
        self.view1, self.view2 = (W.Image(format="png", layout=W.Layout(**layout), _dom_classes=["ssl-view"])
                                  for _ in range(2))
        self.similarity_label = W.HTML()
        self.curves = CurvePlot(self.context)
        self._attach_clicks()

    def _connect(self) -> None:
        """Recompute on every setting that changes the maps; redraw on the display settings."""
        recompute = self.inputs.widgets() + [self.method_tabs]
        for controls in self.method_controls:
            recompute += controls.widgets()
        for widget in recompute:
            widget.observe(self._on_change, names="value" if widget is not self.method_tabs else "selected_index")
        self.model_select.observe(self._on_model_change, names="value")
        for display in (self.opacity, self.colormap):
            display.observe(lambda _: self._draw(), names="value")

    @property
    def threaded(self) -> bool:
        """Whether slow methods run in a worker thread."""
        return self.jobs.threaded

    @threaded.setter
    def threaded(self, value: bool) -> None:
        self.jobs.threaded = value

    @property
    def last_error(self) -> str | None:
        """The error the panel shows (``None`` when the last computation succeeded)."""
        return self.jobs.last_error

    @last_error.setter
    def last_error(self, value: str | None) -> None:
        self.jobs.last_error = value

    def select_method(self, name: str) -> None:
        """Switch to the tab (and variant) of a method name, e.g. ``"context-agnostic-occlusion"``."""
        base, _, option = name.partition(":")
        for index, controls in enumerate(self.method_controls):
            if controls.select(base, option):
                self.method_tabs.selected_index = index
                return
        raise ValueError(f"no tab of this panel shows the method {name!r}")

    def _model(self) -> SSLModel:
        return self.context.model()

    def current_pair(self, method: str | None = None, settings: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The two views the current settings give (averaged transforms: a photometric view of image 1)."""
        return self.context.current_pair(method, settings)

    def _on_model_change(self, _change) -> None:
        self.inputs.update_layers(self._model())

    def _on_change(self, _change) -> None:
        self.refresh()

    def _on_upload(self, change) -> None:
        self.inputs.on_upload(change)

    def _controls(self) -> MethodControls:
        return self.method_controls[self.method_tabs.selected_index or 0]

    def request_key(self) -> tuple:
        name, settings = self._controls().request()
        return (self.model_select.value, self.device_select.value, self.layer_select.value, self.inputs.key(), name,
                tuple(sorted(settings.items())))

    def refresh(self) -> None:
        """Recompute (or fetch from the cache) the current method's maps and redraw."""
        controls = self._controls()
        name, settings = controls.request()
        job = self.jobs.new_job()  # stops a computation still running for older settings
        try:
            x1, x2 = self.current_pair(name, settings)
        except Exception as error:
            self._show_error(error)
            return
        reason = not_applicable(name, self._model())
        if name in ("synthesis", "correspondence") or reason:
            status = {"synthesis": f"{controls.title}: press run", "correspondence": "click a point of either image"}
            note = f"<span style='color:#8a5a00'><b>note:</b> {reason}</span>" if reason else None
            self._show_plain(note or status[name], x1, x2)
            return
        key = self.request_key()
        if key in self._cache:
            self._cache.move_to_end(key)
            self._show_result(self._cache[key], x1, x2)
            return
        self.jobs.run(job, lambda job: self._compute(job, key, name, settings, x1, x2, controls),
                      status=f"computing {name} ...", on_result=lambda result: self._show_result(result, x1, x2),
                      threaded=(controls.slow or spec_for(name).slow) and self.threaded)

    def _compute(self, job: Job, key: tuple, name: str, settings: dict, x1, x2, controls: MethodControls):
        """The maps of method ``name`` (a job of the runner), drawn progressively (:func:`.progressive.run_progressively`)."""
        settings = dict(settings)
        settings.pop("transform", None)
        seed = settings.pop("seed", self.seed.value)
        model = self._model()
        plan = explorer_defaults(model.input_size, model.patch_size)
        spec = spec_for(name)
        occlusion = isinstance(controls, OcclusionControls)  # keeps one evaluator: an unchanged image's copies reused
        extra: dict[str, Any] = {**plan.compute.get(spec.name, {}), **({"evaluator": self.context.models.evaluator(model)}
                                                                       if occlusion else {})}

        def show_partial(partial, note: str | None = None) -> None:  # image-size maps, in this job's thread
            if job.current:
                what = note or partial.meta.get("partial", "coarse preview")
                partial.meta["method"] = name  # as the refined result's (the method's own partials carry its base)
                self._show_result(partial, x1, x2, note=f" ({what}, refining ...)", curves=False)

        def call(**options):
            return explain_pair(model, name, x1, x2, layer=self.context.layer if spec.needs_layer else None,
                                generator=torch.Generator().manual_seed(int(seed)), on_progress=job.on_progress,
                                **{**settings, **extra, **options})

        result = run_progressively(call, spec, settings, plan, show_partial, occlusion)
        self._cache[key] = result
        if len(self._cache) > 32:  # one entry added at a time
            self._cache.popitem(last=False)
        return result

    # -- drawing ----------------------------------------------------------------------------------
    def _show_plain(self, status: str, x1, x2) -> None:
        """The two images without maps, with ``status`` (tabs waiting for a click or a run; methods that do not
        apply to the model)."""
        self.maps = (None, None)
        self._box = None
        self._contour = False
        self.status.value = status
        self.cancel_button.disabled = True
        self._show_similarity(x1, x2)
        self._draw(x1, x2)

    def _show_similarity(self, x1, x2) -> None:
        model = self._model()  # eval_similarity leaves the model's train/eval mode as it was
        x1_n, x2_n = model.normalize(x1.to(model.device)), model.normalize(x2.to(model.device))
        self.similarity = float(eval_similarity(model, x1_n, x2_n)[0])
        self.similarity_label.value = f"<b>cos similarity</b> = {self.similarity:+.3f}"

    def _show_result(self, result, x1, x2, note: str = "", curves: bool = True) -> None:
        self.maps = (result[0][0], result[1][0] if result[1].abs().sum() > 0 else None)
        self.similarity = float(result.similarity[0])
        self.similarity_label.value = f"<b>cos similarity</b> = {self.similarity:+.3f}"
        self.status.value = f"{result.meta.get('method', '')}{note}{result_note(result)}"
        self.last_error = None
        self._box = None
        self._contour = "threshold" in result.meta
        self._draw(x1, x2)
        if curves and self.maps[0] is not None and self.maps[0].dim() == 2:  # RGB maps (PCA) have no curves
            self.curves.update(x1, x2, self.maps[0])

    def _show_error(self, error: Exception) -> None:
        self.jobs.show_error(error)

    def _draw(self, x1=None, x2=None) -> None:
        if x1 is None or x2 is None:
            name, settings = self._controls().request()
            x1, x2 = self.current_pair(name, settings)
        boxes = [None, None]
        if self._box is not None:
            boxes[self._box[0]] = self._box[1]
        self.label1.value, self.label2.value = self.inputs.labels()
        for view, bar, x, heat, box in ((self.view1, self.colour_bar1, x1, self.maps[0], boxes[0]),
                                        (self.view2, self.colour_bar2, x2, self.maps[1], boxes[1])):
            view.value, bar.value = render_view(x, heat, colormap=self.colormap.value, alpha=self.opacity.value,
                                                display_size=self.display_size, box=box, contour=self._contour)

    def wait(self, timeout: float | None = 120) -> None:
        """Block until the worker thread (if any) has finished (for scripts and tests)."""
        self.jobs.wait(timeout)

    def sweep(self, kind: str | None = None) -> torch.Tensor:
        """Similarity of image 1 with itself under a transform of growing strength (plotted with bqplot)."""
        return self.curves.sweep(kind)
