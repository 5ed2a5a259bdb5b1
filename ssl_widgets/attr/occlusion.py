"""Conditional occlusion and its context-agnostic variant (Sammani et al. 2022's pair occlusion methods)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from captum.attr import PerturbationAttribution

from ..core import PAPER_INPUT_SIZE, PAPER_OCCLUSION_STRIDE, PAPER_OCCLUSION_WINDOW, as_window
from ._occlusion_engine import CopyEvaluator, check_drop_tokens, coarse_indices, default_batch, preview_stride
from .base import PairMethod
from .engine import PairAttribution, check_count, cosine, preserved_model_state, progress, resolve_fill
from .maps import window_mean_map
from .spec import ALL_METRICS, MethodSpec, Setting

__all__ = ["ConditionalOcclusion", "ContextAgnosticOcclusion", "FILLS", "check_evaluator", "preview_stride",
           "window_grid"]

#: how a window is occluded: ``"pixels"`` paints it with the fill colour, ``"drop-tokens"`` removes its patch tokens
FILLS = ("pixels", "drop-tokens")


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


def check_evaluator(evaluator: CopyEvaluator | None, model: Any) -> CopyEvaluator:
    """``evaluator``, or a new :class:`CopyEvaluator` of ``model`` when ``None``; an error naming ``evaluator``
    when it is no evaluator or one of another model."""
    if evaluator is None:
        return CopyEvaluator(model)
    if not isinstance(evaluator, CopyEvaluator):
        raise TypeError(f"evaluator must be a CopyEvaluator or None, got {type(evaluator).__name__}")
    if evaluator.model is not model:
        raise ValueError("evaluator was built for another model: build it with CopyEvaluator(model) of this method's "
                         "model")
    return evaluator


class _WindowOcclusion(PairMethod, PerturbationAttribution):
    """Shared steps of the window methods: windows, the preview's windows, result assembly; the copies and
    their values are each method's (:meth:`_copies`, :meth:`_values`), their evaluation the evaluator's."""

    method_name = "occlusion"
    copies_per_window = 1

    def __init__(self, model: Any, *, evaluator: CopyEvaluator | None = None) -> None:
        super().__init__(model)
        self.evaluator = check_evaluator(evaluator, model)

    def _run(self, inputs, sliding_window_shapes, strides, baselines, perturbations_per_eval, grid, show_progress,
             incremental, channels_last, precision, on_progress=None, on_partial=None,
             partial_strides=None, fill="pixels") -> PairAttribution:
        if perturbations_per_eval is not None:
            check_count(perturbations_per_eval, "perturbations_per_eval")
        if fill not in FILLS:
            raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
        drop = fill == "drop-tokens"
        x1, x2 = self._inputs(inputs)
        window, stride = as_window(sliding_window_shapes, "sliding_window_shapes"), as_window(strides, "strides")
        corners = [window_grid(tuple(x.shape[2:]), window, stride) for x in (x1, x2)]
        if drop:  # removed windows are marked by an infinite fill (see _occlusion_engine.tokens)
            check_drop_tokens(self.model, window, stride, (x1, x2), baselines)
            fills = [torch.full((1, 3, 1, 1), float("inf"), device=x.device) for x in (x1, x2)]
        else:
            fills = [resolve_fill(self.model, baselines, x) for x in (x1, x2)]
        leading = None  # per view, the positions of the partial result's windows among the call's
        coarse = None
        if on_partial is not None:
            coarse = self._partial_strides(on_partial, partial_strides, window, stride, (x1, x2))
            if drop:
                check_drop_tokens(self.model, window, coarse, (x1, x2), baselines)
            leading = [coarse_indices(c, stride, coarse) for c in corners]
            if x1.shape[0] > 1 or x1.shape[2:] != x2.shape[2:] or any(i is None for i in leading):
                leading = None  # the coarse grid is not among this call's windows: a separate call first
                on_partial(self._run(inputs, window, coarse, baselines, perturbations_per_eval, grid, False,
                                     incremental, channels_last, precision, on_progress, fill=fill))
        model = self.model
        per_eval = default_batch(model.device, perturbations_per_eval, x1.shape[2] * x1.shape[3])
        n_windows = sum(c.shape[0] for c in corners) * self.copies_per_window
        steps = x1.shape[0] * -(-n_windows // per_eval)
        grids: list[list[torch.Tensor]] = [[], []]
        similarities = []
        options = {"baselines": baselines, "grid": grid, "precision": precision, "fill": fill}
        tag = self.method_name + (":drop-tokens" if drop else "")
        with preserved_model_state(model, requires_grad=False), self.evaluator.session(
                incremental=incremental, channels_last=channels_last, precision=precision,
                drop_tokens=drop) as session:
            options["incremental"] = session.incremental
            with progress(steps, show_progress, self.method_name, on_progress) as bar:
                for b in range(x1.shape[0]):
                    images = [model.normalize(x[b:b + 1]) for x in (x1, x2)]
                    fill_n = [model.normalize(fill if fill.shape[0] == 1 else fill[b:b + 1]).expand(
                        1, -1, *x.shape[2:]) for fill, x in zip(fills, (x1, x2))]
                    report = None
                    if leading is not None:

                        def report(embs, z):
                            values, base = self._values(embs, z, [i.shape[0] for i in leading])
                            on_partial(self._assemble([[values[0]], [values[1]]], [base], (x1, x2), window, coarse,
                                                      **options))
                    embs, z = session.evaluate(images, *self._copies(images, fill_n, corners), window, per_eval, bar,
                                               tag, leading, report)
                    values, sim = self._values(embs, z, [c.shape[0] for c in corners])
                    grids[0].append(values[0])
                    grids[1].append(values[1])
                    similarities.append(sim)
        return self._assemble(grids, similarities, (x1, x2), window, stride, **options)

    @staticmethod
    def _partial_strides(on_partial, partial_strides, window, stride, images) -> tuple[int, int]:
        """The coarse grid's stride: ``partial_strides``, or per side :func:`preview_stride` (a multiple of
        the call's stride that tiles the images) when ``None``."""
        if not callable(on_partial):
            raise TypeError(f"on_partial must be callable, got {type(on_partial).__name__}")
        if partial_strides is None:
            return tuple(preview_stride(window[d], [int(x.shape[2 + d]) for x in images], multiple_of=stride[d])
                         for d in (0, 1))
        coarse = as_window(partial_strides, "partial_strides")
        if min(coarse) < 1:
            raise ValueError(f"partial_strides must be positive, got {partial_strides!r}")
        return coarse

    def _assemble(self, grids, similarities, images, window, stride, baselines, grid, precision, incremental,
                  fill="pixels") -> PairAttribution:
        """The :class:`PairAttribution` of per-pair window grids (flat, row-major) at ``stride``."""
        maps = []
        for view, x in enumerate(images):
            h, w = x.shape[2:]
            n_h = (h - window[0]) // stride[0] + 1
            n_w = (w - window[1]) // stride[1] + 1
            g = torch.stack(grids[view]).view(-1, n_h, n_w)
            maps.append(g if grid else window_mean_map(g, (h, w), window, stride))
        return self._result(maps, torch.cat(similarities), sliding_window_shapes=window, strides=stride, grid=grid,
                            baselines="neutral" if baselines is None else baselines, incremental=incremental,
                            precision=precision, fill=fill)

    def _copies(self, images, fills, corners):
        """``(bases_of, items_of)`` of :meth:`~._occlusion_engine.evaluator.Session.evaluate`: the perturbed
        copies of each view's windows."""
        raise NotImplementedError

    def _values(self, embs, z, windows: list[int]):
        """``((values of view 1, values of view 2), similarity)`` from the copies' embeddings ``embs`` (per
        view, ``windows[v]`` windows) and the images' ``z``."""
        raise NotImplementedError


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
                ``torch.fx`` can trace; unsupported operations are recomputed in full), else full forward passes
                (a timm ViT: only the patch embeddings the window touches are recomputed, every block runs;
                other token trunks always run full forward passes). Either way a CNN
                trunk runs as a private copy with BatchNorm folded into the convolutions (the constructor's
                ``evaluator=``, a :class:`~ssl_widgets.attr.CopyEvaluator`, says how copies are evaluated).
            channels_last: run the trunk copy in channels-last memory format (faster on CPU and GPU).
            precision: ``"exact"`` (float32) or ``"fast"`` (bfloat16 on CPU, float16 on CUDA: not exact;
                only faster on hardware with native support for the type). On CUDA, float32 convolutions
                follow ``torch.backends.cudnn.allow_tf32`` (on by default: inputs rounded to TF32, about
                1e-3 relative); set it to ``False`` for float32 throughout.
            on_progress: called ``(done, total)`` after each batch, in the calling thread; raising
                :class:`~ssl_widgets.attr.engine.Cancelled` (or any error) from it stops the call.
            on_partial: called once, before the call returns, with a coarse result (the same form as the
                call's: windows at ``partial_strides``), evaluated first from the call's own windows.
            partial_strides: the coarse result's stride; ``None``: a multiple of ``strides`` that tiles the
                images, from half the window up (:func:`preview_stride`).
            fill: ``"pixels"`` paints the window with ``baselines``; ``"drop-tokens"`` (a timm Vision
                Transformer only; a different explanation, no out-of-distribution grey patches) removes the
                patch tokens the window covers from the sequence (position embeddings added first, class and
                register tokens kept): "removed" has all but the window's tokens, "alone" only them. Windows,
                strides and images must be whole patches; ``baselines`` must be ``None``.

        Returns:
            :class:`PairAttribution` ``(map1, map2)`` with ``.similarity`` and ``.meta`` (``fill`` included).

        Examples:
            >>> vit = ssl_widgets.load_model("tiny-dino-vit")  # patch 8, 112 px
            >>> g = torch.Generator().manual_seed(0)
            >>> v1, v2 = torch.rand(1, 3, 32, 32, generator=g), torch.rand(1, 3, 32, 32, generator=g)
            >>> result = {method_name}(vit).attribute((v1, v2), 16, 8, grid=True, fill="drop-tokens")
            >>> result[0].shape, result.meta["fill"]
            (torch.Size([1, 3, 3]), 'drop-tokens')
"""


class ConditionalOcclusion(_WindowOcclusion):
    """Conditional occlusion: occlude a window of one image, keep the other as the condition.

    Grid value ``H1[i,j] = s(x1, x2) - cos(f(x1 with window ij filled), f(x2))`` and likewise for
    ``x2`` (the paper's raw drops, larger = more important; they can be negative). With
    ``grid=False`` each pixel is the mean of the drops of the windows covering it.

    Args:
        model: the :class:`~ssl_widgets.models.SSLModel`.
        evaluator: the :class:`~ssl_widgets.attr.CopyEvaluator` that embeds the occluded copies (of this
            model); ``None``: a default one (incremental, worker threads, Winograd, no store).

    Examples:
        >>> model = ssl_widgets.load_model("tiny-simclr")
        >>> m1, m2 = ConditionalOcclusion(model).attribute((x1, x2), sliding_window_shapes=32, strides=8)
    """

    method_name = "conditional-occlusion"

    def attribute(self, inputs: tuple[torch.Tensor, torch.Tensor], sliding_window_shapes: Any = 64,
                  strides: Any = 8, baselines: float | torch.Tensor | None = None,
                  perturbations_per_eval: int | None = None, grid: bool = False, show_progress: bool = False,
                  incremental: bool = True, channels_last: bool = True, precision: str = "exact",
                  on_progress: Callable[[int, int], None] | None = None,
                  on_partial: Callable[[PairAttribution], None] | None = None,
                  partial_strides: Any = None, fill: str = "pixels") -> PairAttribution:
        return self._run(inputs, sliding_window_shapes, strides, baselines, perturbations_per_eval, grid,
                         show_progress, incremental, channels_last, precision, on_progress, on_partial, partial_strides,
                         fill)

    attribute.__doc__ = "Occlusion maps of both images." + _ATTRIBUTE_DOC.replace("{method_name}", "ConditionalOcclusion")

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
                  incremental: bool = True, channels_last: bool = True, precision: str = "exact",
                  on_progress: Callable[[int, int], None] | None = None,
                  on_partial: Callable[[PairAttribution], None] | None = None,
                  partial_strides: Any = None, fill: str = "pixels") -> PairAttribution:
        return self._run(inputs, sliding_window_shapes, strides, baselines, perturbations_per_eval, grid,
                         show_progress, incremental, channels_last, precision, on_progress, on_partial, partial_strides,
                         fill)

    attribute.__doc__ = ("Context-agnostic occlusion maps of both images." +
                         _ATTRIBUTE_DOC.replace("{method_name}", "ContextAgnosticOcclusion"))

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
    Setting("fill", "pixels", help="pixels: paint the window with the fill colour; drop-tokens (ViT): remove its "
            "patch tokens"),
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
