"""Pixel invariance (Sammani et al. 2022): a linear surrogate of the similarity under augmentation."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from captum.attr import PerturbationAttribution

from .._validation import check_autograd_available, check_images, check_number
from ..core import PAPER_INPUT_SIZE, grayscale
from ..data.augment import AugmentConfig, box_masks, color_jitter, random_erasing_boxes
from .spec import CONDITIONAL_METRICS, MethodSpec, Setting
from .base import ModelMethod
from .engine import check_count, chunks, cosine, progress
from .gradients import blur_maps

__all__ = ["InvarianceMaps", "PixelInvariance", "nmf"]

_NO_SHIFT_JITTER = AugmentConfig(jitter_p=0.8, brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2)


class InvarianceMaps(torch.Tensor):
    """The result of :meth:`PixelInvariance.attribute`: the ``(B, size, size)`` maps in ``[0, 1]``, plus ``.meta``.

    It *is* that tensor (a ``torch.Tensor`` subclass): indexing, ``.shape``, arithmetic, plotting and
    ``torch.equal`` work as on the plain tensor, every operation returns a plain tensor, and it is
    saved (``torch.save``, pickle) as the plain tensor, without ``meta``. One map
    per image (the method explains each image alone), so unlike a
    :class:`~ssl_widgets.attr.engine.PairAttribution` there is no second map.

    Attributes:
        meta: the method name and settings used.

    Examples:
        >>> maps = InvarianceMaps.of(torch.zeros(2, 4, 4), {"method": "pixel-invariance", "size": 4})
        >>> maps.shape, maps.meta["size"], type(maps[0]).__name__
        (torch.Size([2, 4, 4]), 4, 'Tensor')
        >>> first, second = maps  # unpacks over the batch, as the plain tensor
    """

    meta: dict[str, Any]
    __torch_function__ = torch._C._disabled_torch_function_impl  # results of operations are plain tensors

    @classmethod
    def of(cls, maps: torch.Tensor, meta: dict[str, Any]) -> InvarianceMaps:
        """``maps`` (detached) as an :class:`InvarianceMaps` carrying ``meta``."""
        result = maps.detach().as_subclass(cls)
        result.meta = dict(meta)
        return result

    def __reduce_ex__(self, protocol):
        # saved (pickle, torch.save) as the plain tensor, so torch.load(weights_only=True) reads it; meta is not kept
        return self.as_subclass(torch.Tensor).__reduce_ex__(protocol)


def nmf(data: torch.Tensor, components: int, iterations: int = 200,
        generator: torch.Generator | None = None) -> torch.Tensor:
    """Non-negative matrix factorisation ``data ~ W H`` by multiplicative updates; returns ``W``.

    Random initialisation scaled as scikit-learn's ``init='random'`` (``sqrt(mean / k)``).
    """
    scale = (data.mean() / components).sqrt()
    w = torch.rand(data.shape[0], components, generator=generator).to(data) * scale
    h = torch.rand(components, data.shape[1], generator=generator).to(data) * scale
    eps = 1e-10
    for _ in range(iterations):
        h = h * (w.t() @ data) / (w.t() @ w @ h + eps)
        w = w * (data @ h.t()) / (w @ (h @ h.t()) + eps)
    return w


class PixelInvariance(ModelMethod, PerturbationAttribution):
    """Which pixels the similarity is invariant to, from a linear surrogate (one map per image).

    ``n_samples`` augmented copies of ``x`` (colour jitter 0.8/0.8/0.8/0.2 with p 0.8, grayscale
    0.2, random erasing with p 0.5 filled with 0 in model input space) are scored by
    ``y_n = cos(f(x), f(x_n))``; a linear model on the ``size x size`` down-sampled pixels is fitted
    with the paper's loss (BCE-with-logits on the soft targets, sum reduction, L1 penalty, plain
    full-batch SGD); the map is the channel-max of its weights, min-max normalised, zeroed below
    ``threshold`` and blurred. With ``nmf_components`` an NMF of the embeddings adds the auxiliary
    target of the authors' later code (weight 1).

    Examples:
        >>> heat = PixelInvariance(model).attribute(x, n_samples=200, epochs=100)
    """

    method_name = "pixel-invariance"

    def _dataset(self, x: torch.Tensor, n_samples: int, generator: torch.Generator | None,
                 per_eval: int, bar) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Augmented copies of one image ``x`` (pixel space), their labels and embeddings."""
        model = self.model
        x_n = model.normalize(x)
        z1 = model.forward_normalized(x_n)
        samples, labels, embeddings = [], [], []
        for part in chunks(n_samples, per_eval):
            n = part.stop - part.start
            views = color_jitter(x.expand(n, -1, -1, -1), _NO_SHIFT_JITTER, generator)
            gray = (torch.rand(n, generator=generator) < 0.2).to(x_n.device).view(-1, 1, 1, 1)
            luma = grayscale(views)
            views = torch.where(gray, luma.expand_as(views), views)
            views_n = model.normalize(views)
            boxes, found = random_erasing_boxes(n, x_n.shape[2], x_n.shape[3], (0.02, 0.33), (0.3, 3.3), generator)
            erase = (torch.rand(n, generator=generator) < 0.5) & found
            mask = box_masks(boxes.to(x_n.device), x_n.shape[2], x_n.shape[3]) & erase.to(x_n.device).view(-1, 1, 1, 1)
            views_n = torch.where(mask, torch.zeros_like(views_n), views_n)
            z2 = model.forward_normalized(views_n)
            samples.append(views_n)
            labels.append(cosine(z1.expand_as(z2), z2))
            embeddings.append(z2)
            bar.update(1)
        return torch.cat(samples), torch.cat(labels), torch.cat(embeddings)

    def attribute(self, x: torch.Tensor, n_samples: int = 1000, size: int = 64, epochs: int = 1000,
                  lr: float = 0.1, l1_weight: float = 0.2, nmf_components: int | None = None,
                  threshold: float = 0.5, blur: bool = True, generator: torch.Generator | None = None,
                  show_progress: bool = False, perturbations_per_eval: int = 32,
                  on_progress: Callable[[int, int], None] | None = None) -> InvarianceMaps:
        """One invariance map per image.

        Args:
            x: ``(B,3,H,W)`` images (the paper resizes to the model size without cropping).
            n_samples: augmented copies per image.
            size: side of the surrogate's pixel grid and of the map.
            epochs: full-batch SGD steps (the paper: 1000 for SimCLR v2, 10 for the others).
            lr: SGD learning rate.
            l1_weight: L1 penalty on the surrogate's weights and bias.
            nmf_components: if given, add the NMF auxiliary target with this many components.
            threshold: values below it (after min-max) are zeroed.
            blur: Gaussian 11x11, sigma 5 on the map.
            generator: seeds augmentations and the surrogate's initialisation.
            show_progress: tqdm progress bar.
            perturbations_per_eval: augmented copies per forward pass.
            on_progress: called ``(done, total)`` per stage (samples, then surrogate epochs); raising from it (e.g.
                :class:`~ssl_widgets.attr.engine.Cancelled`) stops the call.

        Returns:
            :class:`InvarianceMaps`: the ``(B, size, size)`` tensor of maps in ``[0, 1]``, with ``.meta``.
        """
        for value, name in ((n_samples, "n_samples"), (size, "size"), (epochs, "epochs"),
                            (perturbations_per_eval, "perturbations_per_eval")):
            check_count(value, name)
        check_autograd_available(self.method_name)  # the surrogate is fitted by gradient descent
        check_number(lr, "lr", minimum=0, above_minimum=True)
        check_number(l1_weight, "l1_weight", minimum=0)
        check_number(threshold, "threshold", minimum=0, maximum=1)
        x = check_images(x, dtype=self.model.mean.dtype).detach().to(self.model.device)
        model = self.model
        out = []
        with self._preserved():
            for b in range(x.shape[0]):
                x_n = model.normalize(x[b:b + 1])
                with torch.no_grad(), progress(-(-n_samples // perturbations_per_eval), show_progress,
                                               "pixel-invariance: samples", on_progress) as bar:
                    views, labels, embeddings = self._dataset(x[b:b + 1], n_samples, generator,
                                                              perturbations_per_eval, bar)
                small = F.interpolate(torch.cat([x_n, views]), size=(size, size), mode="bilinear",
                                      antialias=True, align_corners=False).flatten(1)
                x1_small, x2_small = small[:1], small[1:]
                aux = None
                if nmf_components:
                    aux = nmf(embeddings.clamp(min=0), nmf_components, generator=generator).mean(1)
                out.append(self._fit(x1_small, x2_small, labels, aux, epochs, lr, l1_weight, generator,
                                     show_progress, on_progress).view(3, size, size).amax(0))
        maps = torch.stack(out)
        flat = maps.flatten(1)
        low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
        maps = ((flat - low) / (high - low).clamp(min=1e-12)).view_as(maps)
        maps = torch.where(maps < threshold, torch.zeros_like(maps), maps)
        maps = blur_maps(maps) if blur else maps
        return InvarianceMaps.of(maps, {"method": self.method_name, "n_samples": n_samples, "size": size,
                                        "epochs": epochs, "lr": lr, "l1_weight": l1_weight,
                                        "nmf_components": nmf_components, "threshold": threshold, "blur": blur})

    @staticmethod
    def _fit(x1: torch.Tensor, x2: torch.Tensor, labels: torch.Tensor, aux: torch.Tensor | None, epochs: int,
             lr: float, l1_weight: float, generator: torch.Generator | None, show_progress: bool,
             on_progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        features = x2.shape[1]
        bound = 1.0 / features ** 0.5  # nn.Linear's default initialisation, seeded
        weight = ((torch.rand(1, features, generator=generator) * 2 - 1) * bound).to(x2).requires_grad_(True)
        bias = ((torch.rand(1, generator=generator) * 2 - 1) * bound).to(x2).requires_grad_(True)
        optimizer = torch.optim.SGD([weight, bias], lr=lr)
        with torch.enable_grad(), progress(epochs, show_progress, "pixel-invariance: surrogate", on_progress) as bar:
            for _ in range(epochs):
                logits = ((x1 @ weight.t() + bias) + (x2 @ weight.t() + bias)) / 2
                loss = F.binary_cross_entropy_with_logits(logits[:, 0], labels, reduction="sum")
                loss = loss + l1_weight * (weight.abs().sum() + bias.abs().sum())
                if aux is not None:
                    loss = loss + F.mse_loss(torch.sigmoid(logits[:, 0]), aux)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                bar.update(1)
        return weight.detach()[0]


#: the method record (see :mod:`ssl_widgets.attr.spec`): one map per image, so only the conditional metrics
SPEC = MethodSpec("pixel-invariance", PixelInvariance, kind="single", summary="which pixels the similarity is "
                  "invariant to (a linear surrogate)",
                  settings=(Setting("size", 64, 8, PAPER_INPUT_SIZE, "side of the surrogate's pixel grid", scaled=True, floor=8),
                            Setting("n_samples", 500, 50, 2000, "augmented copies"),
                            Setting("epochs", 300, 10, 1000, "surrogate fitting steps")),
                  slow=True, seeded=True, metrics=CONDITIONAL_METRICS, order=200)
