"""Model-difference visualisation (the paper's feature inversion from several depths): invert the same image from two models."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from captum.attr import Attribution

from .._validation import check_autograd_available, check_images, check_number
from ..models.wrapper import SSLModel
from .engine import check_model, preserved_model_state, progress
from .synthesis import partial_forward, total_variation

__all__ = ["ModelDifference"]

DEFAULT_LAYERS = ("stem", "layer1", "layer2")


class ModelDifference(Attribution):
    """Feature inversion (Mahendran & Vedaldi) of one image from two models at several depths.

    For each layer and model: start from ``0.1 * N(0, 1)`` noise and run SGD (momentum 0.9) on
    ``0.1 |phi(x) - phi(image)|^2 / |phi(image)|^2 + 1e-7 sum x^6 + 1e-8 TV(x)``, clipping ``x`` to
    ``[0, 1]`` before each step. Comparing the two reconstructions shows what each model keeps
    (e.g. ``ModelDifference(ssl_model, load_model("resnet50-supervised"))``).

    Each model receives the image in its own input normalisation (the wrappers apply it); the
    authors' code fed the un-normalised image to the supervised network when the self-supervised
    one was SimCLR v2, which this corrects. The learning-rate schedule is the paper's by default:
    model A's rate is multiplied by 0.1 at every 40th iteration (from iteration 0, so it starts at
    ``lr / 10``), model B's stays constant (``decay=(True, False)``).

    Args:
        model_a: usually the self-supervised model.
        model_b: usually the supervised one; both need the trunk layers named in ``layers``.

    Examples:
        >>> other = ssl_widgets.load_model("tiny-barlow-twins")  # or e.g. "resnet50-supervised"
        >>> pairs = ModelDifference(model, other).invert(x, iterations=5, generator=torch.Generator().manual_seed(0))
        >>> img_a, img_b = pairs["layer1"]
        >>> img_a.shape == img_b.shape == x.shape
        True
    """

    def __init__(self, model_a: SSLModel, model_b: SSLModel) -> None:
        check_model(model_a)
        check_model(model_b)
        super().__init__(model_a)
        self.models = (model_a, model_b)

    def attribute(self, *args, **kwargs):  # pragma: no cover - Captum's abstract name; the method is invert()
        return self.invert(*args, **kwargs)

    def invert(self, x: torch.Tensor, layers: Sequence[str] | None = None, iterations: int = 201,
               generator: torch.Generator | None = None, show_progress: bool = False, lr: float = 1e4,
               decay: tuple[bool, bool] = (True, False),
               callback: Callable[[str, int, int, torch.Tensor], None] | None = None,
               callback_every: int = 20, on_progress: Callable[[int, int], None] | None = None
               ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Reconstruct ``x`` from each layer of both models.

        Args:
            x: ``(B,3,H,W)`` images in [0,1].
            layers: trunk layer names (default: stem, layer1, layer2).
            iterations: SGD steps per layer and model (201 in the paper).
            generator: seeds the starting noise.
            show_progress: tqdm progress bar.
            lr: the SGD learning rate (1e4 in the paper, for its loss scale).
            decay: whether each model's rate decays x0.1 every 40 iterations.
            callback: ``callback(layer, model_index, step, image)`` every ``callback_every`` steps.
            on_progress: called ``(done, total)`` after each step; raising from it (e.g.
                :class:`~ssl_widgets.attr.engine.Cancelled`) stops the call.

        Returns:
            ``{layer: (image_a, image_b)}``, each ``(B,3,H,W)`` in [0,1].
        """
        check_autograd_available("model difference")
        check_number(lr, "lr", minimum=0, above_minimum=True)
        x = check_images(x).detach()
        layers = tuple(layers or DEFAULT_LAYERS)
        for model in self.models:
            for layer in layers:
                model.get_layer("maxpool" if layer == "stem" else layer)  # clear error for unknown layers
        if iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations}")
        start = torch.randn(x.shape, generator=generator) * 0.1
        results: dict[str, list[torch.Tensor]] = {layer: [] for layer in layers}
        total = len(layers) * 2 * iterations
        with progress(total, show_progress, "model difference", on_progress) as bar:
            for index, model in enumerate(self.models):
                with preserved_model_state(model, requires_grad=False):
                    image = x.to(model.device)
                    for layer in layers:
                        results[layer].append(self._invert_one(model, image, layer, start.to(model.device), iterations,
                                                               lr, decay[index], bar, callback, index, callback_every))
        return {layer: (pair[0], pair[1]) for layer, pair in results.items()}

    @staticmethod
    def _invert_one(model, image, layer, start, iterations, lr, decays, bar, callback, index, every) -> torch.Tensor:
        with torch.no_grad():
            target = partial_forward(model, image, layer)
            norm = target.flatten(1).pow(2).sum(1).clamp(min=1e-12)
        x = start.clone().requires_grad_(True)
        optimizer = torch.optim.SGD([x], lr=lr, momentum=0.9)
        for i in range(iterations):
            if decays and i % 40 == 0:
                for group in optimizer.param_groups:
                    group["lr"] *= 0.1
            with torch.no_grad():
                x.clamp_(0, 1)
            with torch.enable_grad():
                features = partial_forward(model, x, layer)
                loss = 0.1 * (features - target).flatten(1).pow(2).sum(1) / norm
                loss = loss + 1e-7 * x.pow(6).flatten(1).sum(1) + 1e-8 * total_variation(x)
                optimizer.zero_grad()
                loss.sum().backward()
            optimizer.step()
            bar.update(1)
            if callback is not None and (i + 1) % every == 0:
                callback(layer, index, i + 1, x.detach().clamp(0, 1))
        return x.detach().clamp(0, 1)
