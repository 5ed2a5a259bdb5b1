"""Conditional occlusion and its context-agnostic variant (Sammani et al. 2022's pair occlusion methods)."""
from __future__ import annotations

from typing import Any

import torch
from captum.attr import PerturbationAttribution

from .._validation import check_pair
from .base import PairMethod
from .spec import ALL_METRICS, MethodSpec, Setting
from ..core import PAPER_INPUT_SIZE, PAPER_OCCLUSION_STRIDE, PAPER_OCCLUSION_WINDOW, as_window
from .engine import (
    PairAttribution,
    check_count,
    cosine,
    preserved_model_state,
    progress,
    resolve_fill,
)
from ._occlusion_copies import CopyEvaluation
from .occlusion_preview import active_preview, coarse_indices, no_preview, preview_stride
from ._winograd import workspace
from .incremental import WindowEvaluator
from .maps import window_mean_map

__all__ = ["ConditionalOcclusion", "ContextAgnosticOcclusion", "preview_stride", "window_grid"]


def window_grid(image_size: tuple[int, int], window: tuple[int, int], stride: tuple[int, int]) -> torch.Tensor:
    """Top-left corners ``(N, 2)`` of all windows, row-major, as in the paper's loops.

    Raises:
        ValueError: window larger than the image, stride larger than the window, or non-positive sizes.
    """
    (h, w), (wh, ww), (sh, sw) = image_size, window, stride
    if min(wh, ww, sh, sw) < 1:
        raise ValueError(f"sliding_window_shapes {window} and strides {stride} must be positive")
    if wh > h or ww > w:
        raise ValueError(f"sliding window {wh}x{ww} is larger than the image {h}x{w}")
    if sh > wh or sw > ww:
        raise ValueError(f"stride {stride} is larger than the window {window}: some pixels would never be occluded")
    ys = torch.arange(0, h - wh + 1, sh)
    xs = torch.arange(0, w - ww + 1, sw)
    return torch.cartesian_prod(ys, xs)


class _WindowOcclusion(CopyEvaluation, PairMethod, PerturbationAttribution):
    """Shared machinery: windows, chunked and incremental evaluation, result assembly."""

    method_name = "occlusion"

    def _setup(self, inputs, sliding_window_shapes, strides, baselines):
        x1, x2 = check_pair(inputs, dtype=self.model.mean.dtype)
        device = self.model.device
        x1, x2 = x1.to(device), x2.to(device)
        window, stride = as_window(sliding_window_shapes, "sliding_window_shapes"), as_window(strides, "strides")
        if x1.shape[2:] != x2.shape[2:]:
            corners = [window_grid(tuple(x.shape[2:]), window, stride) for x in (x1, x2)]
        else:
            corners = [window_grid(tuple(x1.shape[2:]), window, stride)] * 2
        fills = [resolve_fill(self.model, baselines, x) for x in (x1, x2)]
        return x1, x2, window, stride, corners, fills

    def _run(self, inputs, sliding_window_shapes, strides, baselines, perturbations_per_eval, grid,
             show_progress, incremental, channels_last, precision="exact") -> PairAttribution:
        if perturbations_per_eval is not None:
            check_count(perturbations_per_eval, "perturbations_per_eval")
        x1, x2, window, stride, corners, fills = self._setup(inputs, sliding_window_shapes, strides, baselines)
        preview = active_preview()
        leading = None  # per view, the positions of the preview's windows among the call's
        if preview is not None:
            coarse = as_window(preview.strides, "preview strides")
            leading = [coarse_indices(c, stride, coarse) for c in corners]
            if x1.shape[0] > 1 or x1.shape[2:] != x2.shape[2:] or any(i is None for i in leading):
                leading = None  # the preview grid is not among this call's windows: a separate call first
                with no_preview():
                    preview.on_preview(self._run(inputs, window, coarse, baselines, perturbations_per_eval, grid,
                                                 False, incremental, channels_last, precision))
        model = self.model
        per_eval = default_batch(model.device, perturbations_per_eval, x1.shape[2] * x1.shape[3])
        n_windows = sum(c.shape[0] for c in corners) * self.copies_per_window
        steps = x1.shape[0] * -(-n_windows // per_eval)
        grids: list[list[torch.Tensor]] = [[], []]
        similarities = []
        options = {"baselines": baselines, "grid": grid, "precision": precision}
        # workspace: the Winograd convolutions' buffers are reused across batches, and dropped at the end
        with preserved_model_state(model, requires_grad=False), torch.no_grad(), workspace():
            evaluator = WindowEvaluator(model, incremental, channels_last, precision)
            options["incremental"] = evaluator.incremental
            on_first = None
            if leading is not None:

                def on_first(values, base):
                    preview.on_preview(self._result([[values[0]], [values[1]]], [base], (x1, x2), window, coarse,
                                                    **options))

            with progress(steps, show_progress, self.method_name) as bar:
                for b in range(x1.shape[0]):
                    images = [model.normalize(x[b:b + 1]) for x in (x1, x2)]
                    fill_n = [model.normalize(fill if fill.shape[0] == 1 else fill[b:b + 1]).expand(
                        1, -1, *x.shape[2:]) for fill, x in zip(fills, (x1, x2))]
                    values, sim = self._grid_values(evaluator, images, fill_n, corners, window, per_eval, bar,
                                                    leading, on_first)
                    grids[0].append(values[0])
                    grids[1].append(values[1])
                    similarities.append(sim)
        return self._result(grids, similarities, (x1, x2), window, stride, **options)

    def _result(self, grids, similarities, images, window, stride, baselines, grid, precision, incremental
                ) -> PairAttribution:
        """The :class:`PairAttribution` of per-pair window grids (flat, row-major) at ``stride``."""
        maps = []
        for view, x in enumerate(images):
            h, w = x.shape[2:]
            n_h = (h - window[0]) // stride[0] + 1
            n_w = (w - window[1]) // stride[1] + 1
            g = torch.stack(grids[view]).view(-1, n_h, n_w)
            maps.append(g if grid else window_mean_map(g, (h, w), window, stride))
        meta = {"method": self.method_name, "sliding_window_shapes": window, "strides": stride, "grid": grid,
                "baselines": "neutral" if baselines is None else baselines, "incremental": incremental,
                "precision": precision}
        return PairAttribution(maps, torch.cat(similarities), meta)

    copies_per_window = 1

    def _grid_values(self, evaluator, images, fills, corners, window, per_eval, bar, leading=None, on_first=None):
        """Per view, the window values (flat, in the order of ``corners``) and the pair's similarity;
        ``on_first(values, similarity)`` gets the values of the windows at positions ``leading`` first."""
        bases_of, items_of = self._copies(images, fills, corners)
        report = None
        if leading is not None:
            def report(embs, z):
                on_first(*self._values(embs, z, [i.shape[0] for i in leading]))
        embs, z = self._evaluate(evaluator, images, bases_of, items_of, window, per_eval, bar, leading, report)
        return self._values(embs, z, [c.shape[0] for c in corners])

    def _copies(self, images, fills, corners):
        """``(bases_of, items_of)`` of :meth:`_evaluate`: the perturbed copies of each view's windows."""
        raise NotImplementedError

    def _values(self, embs, z, windows: list[int]):
        """``((values of view 1, values of view 2), similarity)`` from the copies' embeddings ``embs`` (per
        view, ``windows[v]`` windows) and the images' ``z``."""
        raise NotImplementedError


def default_batch(device: torch.device, perturbations_per_eval: int | None, pixels: int = PAPER_INPUT_SIZE ** 2) -> int:
    """``perturbations_per_eval``, or the batch that ran fastest per copy when it is ``None``: on CPU
    16 copies of 224 x 224 (larger batches leave the caches) and 128 of 112 x 112 (ResNet-18 at half
    width: 3.5 s for 968 copies against 3.9 s with 64 and 3.7 s with 256), interpolated as
    ``16 * (224 * 224 / pixels) ** 1.5`` between 8 and 128; 128 on GPU."""
    if perturbations_per_eval is not None:
        return perturbations_per_eval
    if torch.device(device).type == "cuda":
        return 128
    return int(min(128, max(8, round(16 * (PAPER_INPUT_SIZE ** 2 / max(pixels, 1)) ** 1.5))))


_ATTRIBUTE_DOC = """
        Args:
            inputs: the pair ``(x1, x2)``, each ``(B,3,H,W)`` in ``[0,1]``.
            sliding_window_shapes: window side (int), ``(h, w)`` or Captum's ``(3, h, w)``; default 64.
            strides: window stride (int) or ``(h, w)``; default 8; must not exceed the window.
            baselines: fill in pixel space; ``None`` = the neutral fill (0 in the model's input space).
            perturbations_per_eval: perturbed copies per batch (both images' windows share batches;
                on CPU each batch is split between two worker threads); bounds the memory. ``None``: the
                fastest batch measured for the device (on CPU 16 at 224 px, 128 at 112 px; 128 on GPU).
            grid: return the raw window grid ``(B, n_h, n_w)`` instead of an input-size map.
            show_progress: tqdm progress bar.
            incremental: recompute only the region each window changes (exact, for any trunk
                ``torch.fx`` can trace; unsupported operations are recomputed in full), else full forward passes (always for a
                token trunk such as a ViT, where every token sees every patch).
                Either way the trunk runs as a private copy with BatchNorm folded into the convolutions.
            channels_last: run the trunk copy in channels-last memory format (faster on CPU and GPU).
            precision: ``"exact"`` (float32) or ``"fast"`` (bfloat16 on CPU, float16 on CUDA: not exact;
                only faster on hardware with native support for the type). On CUDA, float32 convolutions
                follow ``torch.backends.cudnn.allow_tf32`` (on by default: inputs rounded to TF32, about
                1e-3 relative); set it to ``False`` for float32 throughout.

        Returns:
            :class:`PairAttribution` ``(map1, map2)`` with ``.similarity`` and ``.meta``.
"""


class ConditionalOcclusion(_WindowOcclusion):
    """Conditional occlusion: occlude a window of one image, keep the other as the condition.

    Grid value ``H1[i,j] = s(x1, x2) - cos(f(x1 with window ij filled), f(x2))`` and likewise for
    ``x2`` (the paper's raw drops, larger = more important; they can be negative). With
    ``grid=False`` each pixel is the mean of the drops of the windows covering it.

    Examples:
        >>> model = ssl_widgets.load_model("tiny-simclr")
        >>> m1, m2 = ConditionalOcclusion(model).attribute((x1, x2), sliding_window_shapes=32, strides=8)
    """

    method_name = "conditional-occlusion"

    def attribute(self, inputs: tuple[torch.Tensor, torch.Tensor], sliding_window_shapes: Any = 64,
                  strides: Any = 8, baselines: float | torch.Tensor | None = None,
                  perturbations_per_eval: int | None = None, grid: bool = False, show_progress: bool = False,
                  incremental: bool = True, channels_last: bool = True, precision: str = "exact") -> PairAttribution:
        return self._run(inputs, sliding_window_shapes, strides, baselines, perturbations_per_eval, grid,
                         show_progress, incremental, channels_last, precision)

    attribute.__doc__ = "Occlusion maps of both images." + _ATTRIBUTE_DOC

    def _copies(self, images, fills, corners):
        return (lambda v: [images[v]]), (lambda v: [(fills[v], corners[v][:, 0], corners[v][:, 1], 0)])

    def _values(self, embs, z, windows):
        base = cosine(z[0], z[1])
        return (base - cosine(embs[0], z[1]), base - cosine(embs[1], z[0])), base


class ContextAgnosticOcclusion(_WindowOcclusion):
    """Context-agnostic conditional occlusion: what a patch contributes by itself.

    Grid value ``H1[i,j] = cos(f(P_ij(x1)) - f(M_ij(x1)), f(x2))`` where ``M_ij`` fills the window
    and ``P_ij`` fills everything but the window. No baseline is subtracted. The authors' code
    min-max normalises each grid afterwards; apply :func:`~ssl_widgets.attr.maps.normalize_map` for that.
    """

    method_name = "context-agnostic-occlusion"

    def attribute(self, inputs: tuple[torch.Tensor, torch.Tensor], sliding_window_shapes: Any = 64,
                  strides: Any = 8, baselines: float | torch.Tensor | None = None,
                  perturbations_per_eval: int | None = None, grid: bool = False, show_progress: bool = False,
                  incremental: bool = True, channels_last: bool = True, precision: str = "exact") -> PairAttribution:
        return self._run(inputs, sliding_window_shapes, strides, baselines, perturbations_per_eval, grid,
                         show_progress, incremental, channels_last, precision)

    attribute.__doc__ = "Context-agnostic occlusion maps of both images." + _ATTRIBUTE_DOC

    copies_per_window = 2

    def _copies(self, images, fills, corners):
        # per view, bases: the image and the fill; "removed" pastes the fill's window onto the
        # image, "alone" pastes the image's window onto the fill
        def items(v):
            y0, x0 = corners[v][:, 0], corners[v][:, 1]
            return [(fills[v], y0, x0, 0), (images[v], y0, x0, 1)]

        return (lambda v: [images[v], fills[v]]), items

    def _values(self, embs, z, windows):
        n1, n2 = windows
        d1 = embs[0][n1:] - embs[0][:n1]
        d2 = embs[1][n2:] - embs[1][:n2]
        return (cosine(d1, z[1]), cosine(d2, z[0])), cosine(z[0], z[1])


_WINDOW_SETTINGS = (
    Setting("sliding_window_shapes", PAPER_OCCLUSION_WINDOW, 4, PAPER_INPUT_SIZE, "window side in pixels", scaled=True, floor=2),
    Setting("strides", PAPER_OCCLUSION_STRIDE, 1, PAPER_OCCLUSION_WINDOW, "window stride in pixels", scaled=True, floor=1),
)
#: the method records (see :mod:`ssl_widgets.attr.spec`); max-sensitivity is not computed for occlusion
SPEC = (
    MethodSpec("conditional-occlusion", ConditionalOcclusion, summary="occlude a window of one image, the other "
               "image is the condition", settings=_WINDOW_SETTINGS, slow=True,
               metrics=tuple(m for m in ALL_METRICS if m != "MS"), order=10,
               sign_note="red: hiding this region lowers the similarity; blue: hiding it raises the similarity"),
    MethodSpec("context-agnostic-occlusion", ContextAgnosticOcclusion, summary="what a window contributes by "
               "itself", settings=_WINDOW_SETTINGS, slow=True, metrics=tuple(m for m in ALL_METRICS if m != "MS"),
               order=20, sign_note="red: this patch alone points towards the other image; blue: it points away"),
)
