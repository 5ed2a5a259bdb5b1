"""The per-method control groups of the explorer (one tab each)."""
from __future__ import annotations

from typing import Any

import ipywidgets as W

from ..attr.cls_attention import attention_blocks
from ..attr.spec import MethodSpec, Setting, all_specs, spec_for
from .base import MethodControls
from .synthesis_panels import FeatureVisualizationControls, ModelDifferenceControls

__all__ = ["TAB_METHODS", "AttentionControls", "MethodControls", "PCAControls", "SpecControls", "build_method_controls"]

_SLOW = dict(continuous_update=False, style={"description_width": "initial"})


def _setting_slider(spec: MethodSpec, name: str, input_size: int, description: str, value: int) -> W.IntSlider:
    """A slider of the record's setting ``name`` at ``value``, in its range at ``input_size`` (as the CLI's)."""
    setting = next(s for s in spec.settings if s.name == name)
    low, high = setting.range_for(input_size, spec.reference_size)
    return W.IntSlider(value=value, min=int(low), max=int(high), description=description, **_SLOW)


class OcclusionControls(MethodControls):
    title = "Occlusion"
    slow = True
    names = ("conditional-occlusion", "context-agnostic-occlusion")

    def _select(self, base, option):
        self.variant.value = base

    def children(self):
        size = self.input_size
        self.variant = W.ToggleButtons(options=[("conditional", "conditional-occlusion"),
                                                ("context-agnostic", "context-agnostic-occlusion")],
                                       value="conditional-occlusion", description="variant")
        values = self.defaults["conditional-occlusion"]
        self.patch = _setting_slider(spec_for("conditional-occlusion"), "sliding_window_shapes", size, "patch size",
                                     values["sliding_window_shapes"])
        self.stride = _setting_slider(spec_for("conditional-occlusion"), "strides", size, "stride", values["strides"])
        fills = [("neutral (0 in model input)", "neutral"), ("black", "black"), ("grey", "grey")]
        if self.patch_size is not None:  # a ViT: its own occlusion, the window's patch tokens removed
            fills.append(("drop the patch tokens (ViT)", "drop-tokens"))
        self.fill = W.Dropdown(options=fills, value="neutral", description="fill")
        return [self.variant, self.patch, self.stride, self.fill]

    def request(self):
        stride = min(self.stride.value, self.patch.value)
        settings = {"sliding_window_shapes": self.patch.value, "strides": stride}
        if self.fill.value == "drop-tokens":
            return self.variant.value, {**settings, "fill": "drop-tokens"}
        return self.variant.value, {**settings, "baselines": {"neutral": None, "black": 0.0, "grey": 0.5}[self.fill.value]}


class PairwiseControls(MethodControls):
    title = "Pairwise occlusion"
    slow = True
    names = ("pairwise-occlusion",)

    def children(self):
        self.samples = W.IntSlider(value=self.defaults["pairwise-occlusion"]["n_samples"], min=10, max=400, step=10,
                                   description="samples", **_SLOW)
        self.scale = W.FloatRangeSlider(value=(0.1, 0.3), min=0.02, max=0.6, step=0.01, description="area", **_SLOW)
        self.seed = W.IntText(value=0, description="seed")
        return [self.samples, self.scale, self.seed]

    def request(self):
        return "pairwise-occlusion", {"n_samples": self.samples.value, "scale": tuple(self.scale.value),
                                      "seed": self.seed.value}


class CAMControls(MethodControls):
    title = "Interaction-CAM"
    names = ("grad-cam", "interaction-cam")

    def _select(self, base, option):
        pooling, _, gi = option.partition("+")
        self.variant.value = "grad-cam" if base == "grad-cam" else (pooling or "mean")
        self.interaction.value = gi == "gi"

    def children(self):
        self.variant = W.Dropdown(options=[("Grad-CAM", "grad-cam"), ("Interaction-CAM mean", "mean"),
                                           ("Interaction-CAM max", "max"), ("Interaction-CAM attention", "attention")],
                                  value="max", description="pooling")
        self.interaction = W.Checkbox(value=False, description="gradient interaction")
        return [self.variant, self.interaction]

    def request(self):
        if self.variant.value == "grad-cam":
            return "grad-cam", {}
        name = "interaction-cam:" + self.variant.value + ("+gi" if self.interaction.value else "")
        return name, {}


class AveragedTransformsControls(MethodControls):
    title = "Averaged transforms"
    names = ("averaged-transforms",)

    def _select(self, base, option):
        self.guided.value = "guided" in option
        self.noise.value = "noise" in option

    def children(self):
        self.transform = W.Dropdown(options=["combine", "color-jitter", "blur", "grayscale", "solarize"],
                                    value="combine", description="transform")
        self.steps = W.IntSlider(value=self.defaults["averaged-transforms"]["steps"], min=2, max=20, description="steps",
                                 **_SLOW)
        self.guided = W.Checkbox(value=True, description="guided")
        self.noise = W.Checkbox(value=False, description="noise")
        self.blur = W.Checkbox(value=True, description="blur map")
        return [self.transform, self.steps, self.guided, self.noise, self.blur]

    def request(self):
        name = "averaged-transforms" + (":" + "+".join(f for f, on in (("guided", self.guided.value),
                                                                          ("noise", self.noise.value)) if on)
                                        if (self.guided.value or self.noise.value) else "")
        return name, {"steps": self.steps.value, "blur": self.blur.value, "transform": self.transform.value}


class GradientControls(MethodControls):
    title = "Gradients"
    names = ("input-x-gradient", "smoothgrad")

    def _select(self, base, option):
        self.kind.value = base
        self.guided.value = option == "guided"

    def children(self):
        self.kind = W.ToggleButtons(options=[("Input x Gradient", "input-x-gradient"), ("SmoothGrad", "smoothgrad")],
                                    value="input-x-gradient", description="method")
        self.guided = W.Checkbox(value=True, description="guided")
        self.blur = W.Checkbox(value=True, description="blur map")
        samples = self.defaults["smoothgrad"]["n_samples"]
        self.samples = W.IntSlider(value=samples, min=min(5, samples), max=100, step=5 if samples % 5 == 0 else 1,
                                   description="SmoothGrad samples", **_SLOW)
        return [self.kind, self.guided, self.blur, self.samples]

    def request(self):
        name = self.kind.value + (":guided" if self.guided.value else "")
        settings: dict[str, Any] = {"blur": self.blur.value}
        if self.kind.value == "smoothgrad":
            settings["n_samples"] = self.samples.value
        return name, settings


class PixelInvarianceControls(MethodControls):
    title = "Pixel invariance"
    slow = True
    names = ("pixel-invariance",)

    def children(self):
        self.samples = W.IntSlider(value=self.defaults["pixel-invariance"]["n_samples"], min=50, max=1000, step=50,
                                   description="augmentations", **_SLOW)
        self.epochs = W.IntSlider(value=200, min=10, max=1000, step=10, description="epochs", **_SLOW)
        self.threshold = W.FloatSlider(value=0.5, min=0.0, max=0.95, step=0.05, description="threshold", **_SLOW)
        return [self.samples, self.epochs, self.threshold]

    def request(self):
        return "pixel-invariance", {"n_samples": self.samples.value, "epochs": self.epochs.value,
                                    "threshold": self.threshold.value}


class CorrespondenceControls(MethodControls):
    title = "Correspondence"
    names = ("correspondence",)

    def children(self):
        self.help = W.HTML("Click a point of either image: the other image shows how each of its positions "
                           "answers the clicked one. Feature cosine: cosine between the features (layer as chosen "
                           "above); bilinear (joint-gradient), joint occlusion and BiLRP (LRP rules; CNNs only): the "
                           "pair-to-pair relevance of the clicked cell of a 7x7 grid with every cell of the other image.")
        self.joint_method = W.Dropdown(options=[("feature cosine", "feature-cosine"), ("bilinear", "joint-gradient"),
                                                ("joint occlusion", "joint-occlusion"), ("BiLRP", "bilrp")],
                                       value="feature-cosine", description="method")
        return [self.joint_method, self.help]

    def request(self):
        return "correspondence", {}


class AttentionControls(MethodControls):
    """The class token's attention (``cls-attention``) of a ViT: block and head (or the mean of heads)."""

    title = "Attention"
    names = ("cls-attention",)

    def children(self):
        self.block = W.Dropdown(options=[("last", -1)], value=-1, description="block")
        self.head = W.Dropdown(options=[("mean of heads", "mean")], value="mean", description="head")
        self.threshold = W.FloatSlider(value=0.0, min=0.0, max=1.0, step=0.05, description="mask mass",
                                       tooltip="DINO's mask: the smallest set of patches holding this fraction of "
                                               "the attention (0 = off; DINO's figures use 0.6)", **_SLOW)
        self.help = W.HTML("Where the class token looks in each image (DINO's attention maps); Vision "
                           "Transformers only. Mask mass &gt; 0 shows DINO's mask with its outline.")
        return [self.block, self.head, self.threshold, self.help]

    def bind(self, context) -> None:
        """Fill the block and head choices from the explorer's model (again on a model change)."""
        self.update_model(context.model())
        context.on_model_change(self.update_model)

    def update_model(self, model) -> None:
        """Block and head options of ``model`` (a CNN keeps the defaults; the tab then says it does not apply)."""
        try:
            blocks = attention_blocks(model, "cls-attention")
        except ValueError:
            blocks = []
        block_options = [("last", -1)] + [(n.rsplit(".attn", 1)[0], i) for i, (n, _) in enumerate(blocks)]
        heads = blocks[0][1].num_heads if blocks else 0
        head_options = [("mean of heads", "mean")] + [(f"head {h}", h) for h in range(heads)]
        self.block.value, self.head.value = -1, "mean"
        self.block.options, self.head.options = block_options, head_options

    def request(self):
        head = None if self.head.value == "mean" else int(self.head.value)
        threshold = round(float(self.threshold.value), 4) or None
        return "cls-attention", {"block": int(self.block.value), "head": head, "threshold": threshold}


class PCAControls(MethodControls):
    """Patch-feature PCA (``feature-pca``) as RGB over both images (the layer chosen above)."""

    title = "Feature PCA"
    names = ("feature-pca",)

    def children(self):
        self.help = W.HTML("The first three principal components of the patch features (layer chosen above), "
                           "fitted over both images together and shown as RGB: equal colours mean similar "
                           "features in the two images.")
        self.components = W.IntSlider(value=3, min=1, max=3, description="components", **_SLOW)
        return [self.components, self.help]

    def request(self):
        return "feature-pca", {"n_components": self.components.value}


TAB_METHODS = (OcclusionControls, CAMControls, AveragedTransformsControls, GradientControls, PairwiseControls,
               PixelInvarianceControls, CorrespondenceControls, AttentionControls, PCAControls)


class SpecControls(MethodControls):
    """A tab built from a method's record alone, for methods without a hand-made tab (so that a new
    method, one file in ``ssl_widgets/attr`` with its ``SPEC``, appears in the explorer too): one
    slider or check box per :class:`~ssl_widgets.attr.spec.Setting`, in its range.

    Args:
        spec: the method's record.
        input_size: the model's input size (scaled settings follow it).

    Examples:
        >>> from ssl_widgets.attr.spec import spec_for
        >>> tab = SpecControls(spec_for("integrated-gradients"), 112)
        >>> tab.title, tab.request()
        ('Integrated gradients', ('integrated-gradients', {'n_steps': 50}))
    """

    def __init__(self, spec: MethodSpec, input_size: int, patch_size: int | None = None) -> None:
        self.spec = spec
        self.title = spec.name.replace("-", " ").capitalize()  # sentence case, as the hand-made tabs
        self.slow = spec.slow
        self.names = (spec.name,)
        super().__init__(input_size, patch_size)

    def children(self) -> list[W.Widget]:
        self.controls = {}
        for setting in self.spec.settings:
            widget = _setting_widget(setting, self.input_size, self.spec.reference_size,
                                     self.defaults.get(self.spec.name, {}).get(setting.name))
            if widget is not None:
                self.controls[setting.name] = widget
        return list(self.controls.values())

    def request(self) -> tuple[str, dict[str, Any]]:
        return self.spec.name, {name: widget.value for name, widget in self.controls.items()}


def _setting_widget(setting: Setting, input_size: int, reference_size: int,
                    value: Any = None) -> W.ValueWidget | None:
    """A check box for a bool, a slider for a number in its range, at ``value`` (``None``: the setting's default
    at ``input_size``); ``None`` for other values (the method's own default is then used)."""
    value = setting.value_for(input_size, reference_size) if value is None else value
    options = dict(description=setting.name, tooltip=setting.help, **_SLOW)
    if isinstance(value, bool):
        return W.Checkbox(value=value, description=setting.name, tooltip=setting.help)
    low, high = setting.range_for(input_size, reference_size)
    low = low if low is not None else min(value, 0)
    high = high if high is not None else max(4 * value, 1)
    if isinstance(value, int):
        return W.IntSlider(value=value, min=int(low), max=int(high), **options)
    if isinstance(value, float):
        return W.FloatSlider(value=value, min=float(low), max=float(high), step=(high - low) / 100, **options)
    return None


def build_method_controls(input_size: int, only: tuple[type, ...] | None = None,
                          patch_size: int | None = None) -> list[MethodControls]:
    """One :class:`MethodControls` per tab (all, or ``only`` these classes), at the values of
    :func:`~ssl_widgets.widgets.progressive.explorer_defaults` for ``input_size`` and ``patch_size``.

    Every method record of kind pair, single or view without a hand-made tab gets a
    :class:`SpecControls` tab (after the hand-made ones; not when ``only`` is given).
    """
    tabs = [cls(input_size, patch_size)
            for cls in (only or TAB_METHODS + (FeatureVisualizationControls, ModelDifferenceControls))]
    if only:
        return tabs
    shown = {name for tab in tabs for name in tab.names}
    return tabs + [SpecControls(spec, input_size, patch_size) for spec in all_specs()
                   if spec.kind in ("pair", "single", "view") and spec.name not in shown]
