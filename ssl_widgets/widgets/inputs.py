"""The explorer's inputs: model, layer and device choices, the image pair, and view 2's augmentation."""
from __future__ import annotations

import io
import re
from typing import Any

import ipywidgets as W
import torch
from PIL import Image

from ..data import SAMPLE_IMAGES, make_view
from ..data.views import custom_view
from ..models import SSLModel

__all__ = ["AUGMENTED", "PairInputs"]

AUGMENTED = "(augmented view of image 1)"
#: view 2's recipes: the CLI's and the notebooks' ``"aug"`` transform (the default, so that the explorer's
#: default pair is theirs), or the explorer's sliders
RECIPES = (("'aug', as the CLI and notebooks", "aug"), ("the sliders below", "custom"))


def _label(image: Any) -> str:
    return image if isinstance(image, str) else str(image)


class PairInputs:
    """The widgets that choose the model (and layer, device) and the pair, and the pair they give.

    Args:
        models: the model names offered, the first one chosen.
        image1: the first image (sample name, path or PIL image; ``None``: ``"chelsea"``).
        image2: the second image, ``None`` for an augmented view of image 1 (its own controls).

    Examples:
        >>> inputs = PairInputs(["tiny-simclr"], "coffee", None)
        >>> x1, x2 = inputs.current_pair(32)
        >>> tuple(x1.shape), tuple(x2.shape), inputs.image2_select.value == AUGMENTED
        ((1, 3, 32, 32), (1, 3, 32, 32), True)
    """

    #: the widget attributes (the explorer exposes them under the same names)
    WIDGETS = ("model_select", "layer_select", "device_select", "image1_select", "image2_select", "upload",
               "recipe", "crop", "flip", "jitter", "grayscale", "blur", "seed", "resample")

    def __init__(self, models: list[str], image1: Any = None, image2: Any = None) -> None:
        self._uploaded: dict[str, Any] = {}
        self.model_select = W.Dropdown(options=models, value=models[0], description="model")
        self.layer_select = W.Dropdown(options=[("trunk output", "")], value="", description="layer")
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        self.device_select = W.Dropdown(options=devices, value="cpu", description="device",
                                        layout=W.Layout(display=None if len(devices) > 1 else "none"))
        samples = list(SAMPLE_IMAGES)
        self.image1_select = W.Combobox(options=samples, value=_label(image1 or "chelsea"),
                                        description="image 1", ensure_option=False, continuous_update=False)
        self.image2_select = W.Combobox(options=[AUGMENTED] + samples,
                                        value=AUGMENTED if image2 is None else _label(image2),
                                        description="image 2", ensure_option=False, continuous_update=False)
        self.upload = W.FileUpload(accept="image/*", multiple=False, description="upload image 1")
        self.upload.observe(self.on_upload, names="value")
        self._build_augmentation()

    def _build_augmentation(self) -> None:
        slow = dict(continuous_update=False)
        self.recipe = W.Dropdown(options=RECIPES, value="aug", description="view 2",
                                 tooltip="how image 2 is made from image 1 (both take the seed)")
        self.crop = W.FloatRangeSlider(value=(0.3, 1.0), min=0.08, max=1.0, step=0.01, description="crop scale", **slow)
        self.flip = W.Checkbox(value=True, description="random flip")
        self.jitter = W.FloatSlider(value=0.4, min=0.0, max=1.0, step=0.05, description="colour jitter", **slow)
        self.grayscale = W.Checkbox(value=False, description="grayscale")
        self.blur = W.FloatSlider(value=0.0, min=0.0, max=3.0, step=0.1, description="blur sigma", **slow)
        self.seed = W.IntText(value=0, description="seed")
        self.resample = W.Button(description="resample", icon="refresh", tooltip="draw a new augmentation")
        self.resample.on_click(lambda _: setattr(self.seed, "value", self.seed.value + 1))

    def rows(self) -> list[W.Widget]:
        """The input rows of the panel: model, layer and device; the images; view 2's augmentation."""
        sliders = W.VBox([W.HBox([self.crop, self.jitter, self.blur]), W.HBox([self.flip, self.grayscale])])
        show = lambda _=None: setattr(sliders.layout, "display", None if self.recipe.value == "custom" else "none")
        show()
        self.recipe.observe(show, names="value")
        return [W.HBox([self.model_select, self.layer_select, self.device_select]),
                W.HBox([self.image1_select, self.image2_select, self.upload]),
                W.Accordion(children=[W.VBox([W.HBox([self.recipe, self.seed, self.resample]), sliders])],
                            titles=("view 2 augmentation",))]

    def widgets(self) -> list[W.Widget]:
        """The widgets whose value changes the pair or the model (the panel recomputes on them)."""
        return [self.model_select, self.layer_select, self.device_select, self.image1_select, self.image2_select,
                self.recipe, self.crop, self.flip, self.jitter, self.grayscale, self.blur, self.seed]

    def key(self) -> tuple:
        """The images and the augmentation, as a cache key."""
        return (self.image1_select.value, self.image2_select.value, self.recipe.value, tuple(self.crop.value), self.flip.value,
                self.jitter.value, self.grayscale.value, self.blur.value, self.seed.value)

    def labels(self) -> tuple[str, str]:
        """The titles over the two images (HTML): image 1's name, and how image 2 was made."""
        second = self.image2_select.value
        if second == AUGMENTED:
            second = f"{'aug' if self.recipe.value == 'aug' else 'augmented'} view of 1, seed {self.seed.value}"
        return f"<b>image 1</b>: {self.image1_select.value}", f"<b>image 2</b>: {second}"

    def source(self, label: str) -> Any:
        """The image of a choice label (an uploaded image, or the label itself: a sample name or path)."""
        return self._uploaded.get(label, label)

    def current_pair(self, size: int, method: str | None = None,
                     settings: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The two views at ``size`` px (averaged transforms: a photometric view of image 1)."""
        image1 = self.source(self.image1_select.value)
        x1 = make_view(image1, "pure", size, seed=None)
        if method is not None and method.startswith("averaged-transforms"):
            return x1, make_view(image1, (settings or {}).get("transform", "combine"), size, seed=self.seed.value)
        if self.image2_select.value == AUGMENTED and self.recipe.value == "aug":  # make_pair(image1, "aug", seed=)
            x2 = make_view(image1, "aug", size, seed=self.seed.value)
        elif self.image2_select.value == AUGMENTED:
            x2 = custom_view(image1, size, tuple(self.crop.value), self.flip.value, self.jitter.value,
                             self.grayscale.value, self.blur.value, self.seed.value)
        else:
            x2 = make_view(self.source(self.image2_select.value), "pure", size, seed=None)
        return x1, x2

    def update_layers(self, model: SSLModel) -> None:
        """Offer the layers of ``model`` (ResNet stages and blocks; ViT token layers: patch grids)."""
        names = [n for n in model.layer_names() if (n.startswith("layer") and n.count(".") <= 1)
                 or re.fullmatch(r"blocks\.\d+(\.norm1|\.attn)?|norm", n)]  # ViT token layers: patch grids
        self.layer_select.options = [("trunk output", "")] + [(n, n) for n in names]
        self.layer_select.value = ""

    def on_upload(self, change: dict) -> None:
        """An uploaded file becomes image 1."""
        files = change["new"]
        if not files:
            return
        item = files[0] if isinstance(files, (list, tuple)) else next(iter(files.values()))
        label = f"upload: {item['name']}"
        self._uploaded[label] = Image.open(io.BytesIO(bytes(item["content"]))).convert("RGB")
        self.image1_select.options = list(self.image1_select.options) + [label]
        self.image1_select.value = label
