"""Pairwise occlusion (Sammani et al. 2022): random rectangles erased from both images at once."""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from captum.attr import PerturbationAttribution

from ..data.augment import box_masks, random_erasing_boxes
from .base import PairMethod
from .spec import ALL_METRICS, MethodSpec
from .engine import PairAttribution, check_count, chunks, cosine

__all__ = ["PairwiseOcclusion"]


def _check_range(value: object, name: str, upper: float | None) -> None:
    """A ``(low, high)`` pair of positive numbers with ``low <= high`` (and ``high <= upper``)."""
    try:
        low, high = (float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a pair (low, high) of numbers, got {value!r}") from None
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"{name} must be a pair of finite numbers, got {value!r}")
    if not (0 < low <= high) or (upper is not None and high > upper):
        bound = f" and high <= {upper:g}" if upper is not None else ""
        raise ValueError(f"{name} must satisfy 0 < low <= high{bound}, got {value!r}")


def _peak_normalised(maps: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each ``(B,H,W)`` map divided by its maximum (per image)."""
    return [m / (m.flatten(1).amax(1).view(-1, 1, 1) + 1e-9) for m in maps]


class PairwiseOcclusion(PairMethod, PerturbationAttribution):
    """Pairwise occlusion: erase a random rectangle from each image, credit the drop to one image.

    Each sample erases (fills with 0 in model input space) an independent rectangle in both
    images (torchvision ``RandomErasing`` sampling: area ``scale``, log-uniform aspect ``ratio``,
    10 tries). With ``d_n = s(x1, x2) - cos(f(x1^n), f(x2^n))`` and ``w = softmax(d)``, the weight
    ``w_n`` goes to the erased pixels of the image whose perturbed embedding has the smaller norm.
    Maps are divided by their maximum.

    The authors' code finds the erased pixels as those whose channel sum is 0 (so pixels that are
    0 anyway count too); that is the default, ``erased_pixels="mask"`` uses the drawn rectangle.

    Examples:
        >>> m1, m2 = PairwiseOcclusion(model).attribute((x1, x2), generator=torch.Generator().manual_seed(0))
    """

    method_name = "pairwise-occlusion"

    def attribute(self, inputs: tuple[torch.Tensor, torch.Tensor], n_samples: int = 100,
                  scale: tuple[float, float] = (0.1, 0.3), ratio: tuple[float, float] = (1, 1.5),
                  perturbations_per_eval: int = 32, generator: torch.Generator | None = None,
                  show_progress: bool = False, erased_pixels: str = "channel-sum",
                  on_progress: Callable[[int, int], None] | None = None,
                  on_partial: Callable[[PairAttribution], None] | None = None) -> PairAttribution:
        """Maps of both images at input size, in ``[0, 1]``.

        Args:
            inputs: ``(x1, x2)``.
            n_samples: number of erased pairs (memory does not grow with it: the softmax-weighted
                maps are accumulated chunk by chunk).
            scale: erased area as a fraction of the image, ``0 < low <= high <= 1``.
            ratio: aspect ratio range (sampled log-uniformly).
            perturbations_per_eval: pairs per forward pass (bounds the memory).
            generator: seeds the rectangles.
            show_progress: tqdm progress bar.
            erased_pixels: ``"channel-sum"`` (paper) or ``"mask"``.
            on_progress: called ``(done, total)`` as the work advances; raising from it (e.g.
                :class:`~ssl_widgets.attr.engine.Cancelled`) stops the call.
            on_partial: called after each batch of pairs but the last with the maps of the pairs erased so far
                (later images' maps zeros), ``.meta["partial"]`` saying how many (e.g. ``"32 of 100 pairs"``).
                The result does not depend on it.

        Returns:
            :class:`PairAttribution` with maps ``(B,H,W)``.
        """
        if erased_pixels not in ("channel-sum", "mask"):
            raise ValueError("erased_pixels must be 'channel-sum' or 'mask'")
        check_count(n_samples, "n_samples")
        check_count(perturbations_per_eval, "perturbations_per_eval")
        _check_range(scale, "scale", upper=1.0)
        _check_range(ratio, "ratio", upper=None)
        if on_partial is not None and not callable(on_partial):
            raise TypeError(f"on_partial must be callable, got {type(on_partial).__name__}")
        x1, x2 = self._inputs(inputs)
        model = self.model
        maps = [torch.zeros(x.shape[0], *x.shape[2:], device=x.device) for x in (x1, x2)]
        with self._preserved(), torch.no_grad():
            x1_n, x2_n = model.normalize(x1), model.normalize(x2)
            base = cosine(model.forward_normalized(x1_n), model.forward_normalized(x2_n))
            steps = x1.shape[0] * -(-n_samples // perturbations_per_eval)
            with self._progress(steps, show_progress, on_progress=on_progress) as bar:
                for b in range(x1.shape[0]):
                    # softmax(drops) accumulated chunk by chunk (running maximum, rescaled sums), so
                    # memory stays bounded by perturbations_per_eval whatever n_samples is
                    peak = torch.tensor(float("-inf"), device=x1.device)
                    denominator = torch.zeros((), device=x1.device)
                    for part in chunks(n_samples, perturbations_per_eval):
                        n = part.stop - part.start
                        perturbed, norms, erased = [], [], []
                        for x_n in (x1_n[b:b + 1], x2_n[b:b + 1]):
                            boxes, found = random_erasing_boxes(n, x_n.shape[2], x_n.shape[3], scale, ratio, generator)
                            mask = box_masks(boxes.to(x_n.device), x_n.shape[2], x_n.shape[3]) & found.to(x_n.device).view(-1, 1, 1, 1)
                            # channels-last inputs give channels-last convolutions (the model's weights are
                            # never converted)
                            batch = x_n.expand(n, -1, -1, -1).masked_fill(mask, 0.0).contiguous(
                                memory_format=torch.channels_last)
                            z = model.forward_normalized(batch)
                            perturbed.append(z)
                            norms.append(z.norm(dim=1))
                            erased.append((batch.sum(1) == 0) if erased_pixels == "channel-sum" else mask[:, 0])
                        drops = base[b] - cosine(perturbed[0], perturbed[1])
                        to_first = norms[0] < norms[1]
                        new_peak = torch.maximum(peak, drops.max())
                        rescale = torch.exp(peak - new_peak)  # 0 on the first chunk
                        weights = torch.exp(drops - new_peak)
                        denominator = denominator * rescale + weights.sum()
                        for k, select in enumerate((to_first, ~to_first)):
                            maps[k][b] = maps[k][b] * rescale + torch.einsum(
                                "n,nhw->hw", weights * select.float(), erased[k].float())
                        peak = new_peak
                        bar.update(1)
                        if on_partial is not None and part.stop < n_samples:
                            so_far = [m.clone() for m in maps]
                            for k in range(2):
                                so_far[k][b] /= denominator
                            on_partial(self._result(_peak_normalised(so_far), base, n_samples=n_samples, scale=scale,
                                                    ratio=ratio, erased_pixels=erased_pixels,
                                                    partial=f"{part.stop} of {n_samples} pairs"))
                    for k in range(2):
                        maps[k][b] /= denominator
        return self._result(_peak_normalised(maps), base, n_samples=n_samples, scale=scale, ratio=ratio, erased_pixels=erased_pixels)


#: the method record (see :mod:`ssl_widgets.attr.spec`)
SPEC = MethodSpec("pairwise-occlusion", PairwiseOcclusion, summary="random rectangles erased from both images",
                  slow=True, seeded=True, metrics=tuple(m for m in ALL_METRICS if m != "MS"), order=30, quick={"n_samples": 4},
                  sign_note="red: erasing this region lowers the similarity; blue: erasing it raises the similarity")
