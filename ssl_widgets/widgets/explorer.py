"""``Explorer``: the interactive panel for pairwise-similarity explanations."""
from __future__ import annotations

import re
import threading
from collections import OrderedDict
from typing import Any

import ipywidgets as W
import torch

from ..analysis import dense_correspondence
from ..attr.applicability import not_applicable
from ..attr.engine import Cancelled, eval_similarity, progress_listener
from ..attr.spec import all_specs
from ..data import SAMPLE_IMAGES, make_view
from ..data.views import custom_view
from ..explain import explain_pair
from ..models import SSLModel, load_model
from .controls import MethodControls, OcclusionControls, build_method_controls
from .joint_click import JointClickMixin
from .plots import CurvePlot
from .rendering import COLORMAPS, overlay_png

__all__ = ["Explorer"]

OFFLINE_MODELS = ("tiny-simclr", "tiny-barlow-twins", "tiny-simsiam", "tiny-dino-vit")
AUGMENTED = "(augmented view of image 1)"
LAYER_METHODS = tuple(s.name for s in all_specs() if s.needs_layer)  # methods that use the layer choice


class Explorer(JointClickMixin, W.VBox):
    """Explore why a self-supervised model finds two images similar.

    Choose the pair (shipped samples, a file path or an upload; image 2 defaults to an augmented
    view of image 1 with its own controls), the model and layer, then a method tab with its own
    controls. Both heat maps are drawn over their images with an opacity and colour-map choice,
    beside the similarity. Slow methods run in a worker thread with a progress bar and a Cancel
    button; occlusion shows a coarse frame first and then refines. Click a point of either image
    (Correspondence tab) to see where the other image answers. The Curves tab plots insertion and
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
        threaded: run slow methods in a worker thread (set ``False`` for scripts and tests).
        display_size: pixel size of each displayed image.

    Examples:
        >>> from ssl_widgets.widgets import Explorer
        >>> explorer = Explorer(threaded=False)  # in a notebook, end a cell with it to show it
        >>> -1 <= explorer.similarity <= 1
        True
    """

    tabs: tuple[type[MethodControls], ...] | None = None

    def __init__(self, model: SSLModel | str | None = None, images: Any = None, *, method: str | None = None,
                 threaded: bool = True, display_size: int = 256) -> None:
        super().__init__()
        self.threaded = threaded
        self.display_size = display_size
        self._models: dict[str, SSLModel] = {}
        if isinstance(model, SSLModel):
            self._models[model.name] = model
            first = model.name
        else:
            first = model or OFFLINE_MODELS[0]
        names = [first] + [n for n in OFFLINE_MODELS if n != first]
        self._cache: OrderedDict = OrderedDict()
        self._worker: threading.Thread | None = None
        self._cancel = threading.Event()
        self._generation = 0
        self.maps: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)
        self.similarity: float | None = None
        self.last_error: str | None = None
        self._box: tuple[int, tuple[int, int, int, int]] | None = None
        image1, image2 = (images, None) if not isinstance(images, (tuple, list)) else tuple(images)
        self._uploaded: dict[str, Any] = {}

        # -- model and images ---------------------------------------------------------------
        self.model_select = W.Dropdown(options=names, value=first, description="model")
        self.layer_select = W.Dropdown(options=[("trunk output", "")], value="", description="layer")
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        self.device_select = W.Dropdown(options=devices, value="cpu", description="device",
                                        layout=W.Layout(display=None if len(devices) > 1 else "none"))
        samples = list(SAMPLE_IMAGES)
        self.image1_select = W.Combobox(options=samples, value=self._image_label(image1 or "chelsea"),
                                        description="image 1", ensure_option=False, continuous_update=False)
        self.image2_select = W.Combobox(options=[AUGMENTED] + samples,
                                        value=AUGMENTED if image2 is None else self._image_label(image2),
                                        description="image 2", ensure_option=False, continuous_update=False)
        self.upload = W.FileUpload(accept="image/*", multiple=False, description="upload image 1")
        # -- view 2 augmentation -------------------------------------------------------------
        slow = dict(continuous_update=False)
        self.crop = W.FloatRangeSlider(value=(0.3, 1.0), min=0.08, max=1.0, step=0.01, description="crop scale", **slow)
        self.flip = W.Checkbox(value=True, description="random flip")
        self.jitter = W.FloatSlider(value=0.4, min=0.0, max=1.0, step=0.05, description="colour jitter", **slow)
        self.grayscale = W.Checkbox(value=False, description="grayscale")
        self.blur = W.FloatSlider(value=0.0, min=0.0, max=3.0, step=0.1, description="blur sigma", **slow)
        self.seed = W.IntText(value=0, description="seed")
        self.resample = W.Button(description="resample", icon="refresh", tooltip="draw a new augmentation")
        # -- methods -------------------------------------------------------------------------------
        self.method_controls = build_method_controls(self._model().input_size, self.tabs)
        for controls in self.method_controls:
            if hasattr(controls, "bind"):
                controls.bind(self)
        self.method_tabs = W.Tab(children=[c.box for c in self.method_controls])
        for i, controls in enumerate(self.method_controls):
            self.method_tabs.set_title(i, controls.title)
        # -- display --------------------------------------------------------------------------------
        self.opacity = W.FloatSlider(value=0.5, min=0.0, max=1.0, step=0.05, description="opacity")
        self.colormap = W.Dropdown(options=COLORMAPS, value="jet", description="colour map")
        self.view1 = W.Image(format="png", layout=W.Layout(width=f"{display_size}px"))
        self.view2 = W.Image(format="png", layout=W.Layout(width=f"{display_size}px"))
        self.view1.add_class("ssl-view")
        self.view2.add_class("ssl-view")
        self.similarity_label = W.HTML()
        self.status = W.HTML()
        self.progress = W.IntProgress(value=0, min=0, max=1, description="", layout=W.Layout(width="220px"))
        self.cancel_button = W.Button(description="cancel", icon="stop", disabled=True)
        self.curves = CurvePlot(self)
        self._attach_clicks()

        self.children = [
            W.HBox([self.model_select, self.layer_select, self.device_select]),
            W.HBox([self.image1_select, self.image2_select, self.upload]),
            W.Accordion(children=[W.VBox([W.HBox([self.crop, self.jitter, self.blur]),
                                          W.HBox([self.flip, self.grayscale, self.seed, self.resample])])],
                        titles=("view 2 augmentation",)),
            self.method_tabs,
            W.HBox([W.VBox([self.view1]), W.VBox([self.view2]),
                    W.VBox([self.similarity_label, self.opacity, self.colormap,
                            W.HBox([self.progress, self.cancel_button]), self.status])]),
            self.curves.box,
        ]
        self._update_layers()
        if method is not None:
            self.select_method(method)
        recompute = [self.model_select, self.layer_select, self.device_select, self.image1_select, self.image2_select,
                     self.crop, self.flip, self.jitter, self.grayscale, self.blur, self.seed, self.method_tabs]
        for controls in self.method_controls:
            recompute += controls.widgets()
        for widget in recompute:
            widget.observe(self._on_change, names="value" if widget is not self.method_tabs else "selected_index")
        self.model_select.observe(self._on_model_change, names="value")
        self.opacity.observe(lambda _: self._draw(), names="value")
        self.colormap.observe(lambda _: self._draw(), names="value")
        self.resample.on_click(lambda _: setattr(self.seed, "value", self.seed.value + 1))
        self.cancel_button.on_click(lambda _: self._cancel.set())
        self.upload.observe(self._on_upload, names="value")
        self.refresh()

    def select_method(self, name: str) -> None:
        """Switch to the tab (and variant) of a method name, e.g. ``"context-agnostic-occlusion"``."""
        base, _, option = name.partition(":")
        for index, controls in enumerate(self.method_controls):
            if controls.select(base, option):
                self.method_tabs.selected_index = index
                return
        raise ValueError(f"no tab of this panel shows the method {name!r}")

    # -- inputs -----------------------------------------------------------------------------------
    @staticmethod
    def _image_label(image: Any) -> str:
        return image if isinstance(image, str) else str(image)

    def _model(self) -> SSLModel:
        name = self.model_select.value if hasattr(self, "model_select") else None
        name = name or next(iter(self._models), OFFLINE_MODELS[0])
        if name not in self._models:
            self._models[name] = load_model(name)
        model = self._models[name]
        device = getattr(self, "device_select", None)
        if device is not None and str(model.device.type) != device.value:
            model.to(device.value)
        return model

    def _source(self, label: str) -> Any:
        return self._uploaded.get(label, label)

    def current_pair(self, method: str | None = None, settings: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The two views the current settings give (averaged transforms: a photometric view of image 1)."""
        size = self._model().input_size
        image1 = self._source(self.image1_select.value)
        x1 = make_view(image1, "pure", size, seed=None)
        if method is not None and method.startswith("averaged-transforms"):
            return x1, make_view(image1, (settings or {}).get("transform", "combine"), size, seed=self.seed.value)
        if self.image2_select.value == AUGMENTED:
            x2 = custom_view(image1, size, tuple(self.crop.value), self.flip.value, self.jitter.value,
                             self.grayscale.value, self.blur.value, self.seed.value)
        else:
            x2 = make_view(self._source(self.image2_select.value), "pure", size, seed=None)
        return x1, x2

    def _update_layers(self) -> None:
        model = self._model()
        names = [n for n in model.layer_names() if (n.startswith("layer") and n.count(".") <= 1)
                 or re.fullmatch(r"blocks\.\d+(\.norm1|\.attn)?|norm", n)]  # ViT token layers: patch grids
        self.layer_select.options = [("trunk output", "")] + [(n, n) for n in names]
        self.layer_select.value = ""

    # -- events ---------------------------------------------------------------------------------------
    def _on_model_change(self, _change) -> None:
        self._update_layers()

    def _on_change(self, _change) -> None:
        self.refresh()

    def _on_upload(self, change) -> None:
        files = change["new"]
        if not files:
            return
        item = files[0] if isinstance(files, (list, tuple)) else next(iter(files.values()))
        import io

        from PIL import Image

        label = f"upload: {item['name']}"
        self._uploaded[label] = Image.open(io.BytesIO(bytes(item["content"]))).convert("RGB")
        self.image1_select.options = list(self.image1_select.options) + [label]
        self.image1_select.value = label

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

    def click(self, view_index: int, event: dict) -> None:
        """Handle a click on view ``view_index`` (0 or 1): show the correspondence map on the other view.

        ``event`` needs ``dataX``/``dataY`` (pixels of the displayed image, as ipyevents sends) or
        ``relativeX``/``relativeY`` with ``boundingRectWidth``/``boundingRectHeight``.
        """
        try:
            size = self._model().input_size
            if "dataX" in event:
                x, y = event["dataX"], event["dataY"]
                extent = float(self.display_size)
            else:
                x, y = event["relativeX"], event["relativeY"]
                extent = float(event.get("boundingRectWidth") or self.display_size)
            if not (0 <= x <= extent and 0 <= y <= extent):
                raise ValueError(f"click ({x:g}, {y:g}) is outside the displayed image of {extent:g} px")
            scale = size / extent
            point = (min(size - 1, y * scale), min(size - 1, x * scale))
            x1, x2 = self.current_pair()
            query, target = (x1, x2) if view_index == 0 else (x2, x1)
            joint = getattr(self._controls(), "joint_method", None)
            if joint is not None and joint.value != "feature-cosine":
                self._start_joint(joint.value, view_index, point, x1, x2)
                return
            heat = dense_correspondence(self._model(), query, target, point, self.layer_select.value or None)
            self._show_click(view_index, point, heat, x1, x2)
        except Exception as error:  # errors show in the panel, never as a dead widget
            self._show_error(error)

    # -- computation ------------------------------------------------------------------------------
    def _controls(self) -> MethodControls:
        return self.method_controls[self.method_tabs.selected_index or 0]

    def request_key(self) -> tuple:
        name, settings = self._controls().request()
        aug = (self.image1_select.value, self.image2_select.value, tuple(self.crop.value), self.flip.value,
               self.jitter.value, self.grayscale.value, self.blur.value, self.seed.value)
        return (self.model_select.value, self.device_select.value, self.layer_select.value, aug, name,
                tuple(sorted(settings.items())))

    def refresh(self) -> None:
        """Recompute (or fetch from the cache) the current method's maps and redraw."""
        controls = self._controls()
        name, settings = controls.request()
        self._cancel.set()  # stop a computation still running for older settings
        self._cancel = threading.Event()
        self._generation += 1
        generation = self._generation
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
        # one job at a time per panel: a new job first waits for the (cancelled) previous one to stop
        previous = self._worker
        args = (generation, key, name, settings, x1, x2, controls)
        if controls.slow and self.threaded:
            self._worker = threading.Thread(target=self._compute_after, args=(previous, *args), daemon=True)
            self._worker.start()
        else:
            self._compute_after(previous, *args)

    def _compute_after(self, previous: threading.Thread | None, generation: int, *args) -> None:
        if previous is not None and previous is not threading.current_thread():
            previous.join()
        if generation == self._generation:  # not superseded while waiting
            self._compute(generation, *args)

    def _progress_reporter(self, cancel: threading.Event):
        """The progress listener of a job: moves the progress bar, raises ``Cancelled`` once ``cancel`` is set."""
        def report(desc: str, done: int, total: int) -> None:
            if cancel.is_set():
                raise Cancelled()
            self.progress.max, self.progress.value = max(total, 1), done

        return report

    def _compute(self, generation: int, key: tuple, name: str, settings: dict, x1, x2,
                 controls: MethodControls) -> None:
        cancel = self._cancel
        settings = dict(settings)
        settings.pop("transform", None)
        seed = settings.pop("seed", self.seed.value)
        self.cancel_button.disabled = False
        self.status.value = f"computing {name} ..."

        try:
            with progress_listener(self._progress_reporter(cancel)):
                if isinstance(controls, OcclusionControls) and settings["strides"] < settings["sliding_window_shapes"] // 2:
                    coarse = dict(settings, strides=max(1, settings["sliding_window_shapes"] // 2))
                    preview = explain_pair(self._model(), name, x1, x2, layer=None, **coarse)
                    if generation == self._generation:
                        self._show_result(preview, x1, x2, note=" (coarse preview, refining ...)")
                layer = (self.layer_select.value or None) if name.startswith(LAYER_METHODS) else None
                result = explain_pair(self._model(), name, x1, x2, layer=layer,
                                      generator=torch.Generator().manual_seed(int(seed)), **settings)
            self._cache[key] = result
            while len(self._cache) > 32:
                self._cache.popitem(last=False)
            if generation == self._generation:
                self._show_result(result, x1, x2)
        except Cancelled:
            if generation == self._generation:  # a newer request cancels silently
                self.status.value = "cancelled"
        except Exception as error:
            if generation == self._generation:
                self._show_error(error)
        finally:
            if generation == self._generation:
                self.cancel_button.disabled = True

    # -- drawing ----------------------------------------------------------------------------------
    def _show_plain(self, status: str, x1, x2) -> None:
        """The two images without maps, with ``status`` (tabs waiting for a click or a run; methods that do not
        apply to the model)."""
        self.maps = (None, None)
        self._box = None
        self.status.value = status
        self.cancel_button.disabled = True
        self._show_similarity(x1, x2)
        self._draw(x1, x2)

    def _show_similarity(self, x1, x2) -> None:
        model = self._model()  # eval_similarity leaves the model's train/eval mode as it was
        x1_n, x2_n = model.normalize(x1.to(model.device)), model.normalize(x2.to(model.device))
        self.similarity = float(eval_similarity(model, x1_n, x2_n)[0])
        self.similarity_label.value = f"<b>cos similarity</b> = {self.similarity:+.3f}"

    def _show_result(self, result, x1, x2, note: str = "") -> None:
        self.maps = (result[0][0], result[1][0] if result[1].abs().sum() > 0 else None)
        self.similarity = float(result.similarity[0])
        self.similarity_label.value = f"<b>cos similarity</b> = {self.similarity:+.3f}"
        self.status.value = f"{result.meta.get('method', '')}{note}"
        self.last_error = None
        self._box = None
        self._draw(x1, x2)
        if self.maps[0] is not None and self.maps[0].dim() == 2:  # RGB maps (feature PCA) have no curves
            self.curves.update(x1, x2, self.maps[0])

    def _show_error(self, error: Exception) -> None:
        self.last_error = f"{type(error).__name__}: {error}"
        self.status.value = f"<span style='color:#b00020'><b>error:</b> {self.last_error}</span>"

    def _draw(self, x1=None, x2=None) -> None:
        if x1 is None or x2 is None:
            name, settings = self._controls().request()
            x1, x2 = self.current_pair(name, settings)
        boxes = [None, None]
        if self._box is not None:
            boxes[self._box[0]] = self._box[1]
        common = dict(alpha=self.opacity.value, cmap=self.colormap.value, display_size=self.display_size)
        self.view1.value = overlay_png(x1, self.maps[0], box=boxes[0], **common)
        self.view2.value = overlay_png(x2, self.maps[1], box=boxes[1], **common)

    def wait(self, timeout: float | None = 120) -> None:
        """Block until the worker thread (if any) has finished (for scripts and tests)."""
        if self._worker is not None:
            self._worker.join(timeout)

    def sweep(self, kind: str | None = None) -> torch.Tensor:
        """Similarity of image 1 with itself under a transform of growing strength (plotted with bqplot)."""
        return self.curves.sweep(kind)

