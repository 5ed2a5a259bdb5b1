"""Conditional occlusion and its context-agnostic variant (methods.md sections 2.1 and 2.2)."""
from __future__ import annotations

from typing import Any

import torch
from captum.attr import PerturbationAttribution

from .._validation import check_pair
from ..models.wrapper import SSLModel
from .engine import PairAttribution, check_count, check_model, chunks, cosine, preserved_model_state, progress, resolve_fill
from .incremental import IncrementalTrunk
from .maps import _pair, window_mean_map

__all__ = ["ConditionalOcclusion", "ContextAgnosticOcclusion", "window_grid"]


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


class _WindowOcclusion(PerturbationAttribution):
    """Shared machinery: windows, chunked and incremental evaluation, result assembly."""

    method_name = "occlusion"

    def __init__(self, model: SSLModel) -> None:
        super().__init__(check_model(model))
        self.model = model

    # -- evaluation helpers -------------------------------------------------------------
    def _embed_windows(self, image_n: torch.Tensor, corners: torch.Tensor, window: tuple[int, int],
                       fill_n: torch.Tensor, keep_inside: bool, incremental: IncrementalTrunk | None,
                       cache: list[torch.Tensor] | None, memory_format: torch.memory_format) -> torch.Tensor:
        """Embeddings of the window-perturbed copies of one normalised image.

        ``keep_inside=False``: the window is filled (the image with the patch removed).
        ``keep_inside=True``: everything but the window is filled (the patch alone).
        """
        n = corners.shape[0]
        wh, ww = window
        if keep_inside:
            batch = fill_n.expand(n, -1, image_n.shape[2], image_n.shape[3]).clone()
        else:
            batch = image_n.expand(n, -1, -1, -1).clone()
        for i, (y, x) in enumerate(corners.tolist()):
            if keep_inside:
                batch[i, :, y:y + wh, x:x + ww] = image_n[0, :, y:y + wh, x:x + ww]
            else:
                batch[i, :, y:y + wh, x:x + ww] = fill_n[0, :, y:y + wh, x:x + ww]
        batch = batch.contiguous(memory_format=memory_format)
        if incremental is not None and cache is not None:
            boxes = torch.cat([corners, corners + torch.tensor([wh, ww])], dim=1)
            fmap = incremental(batch, boxes, cache)
        else:
            fmap = self.model.trunk(batch)
        return self.model.embed_features(fmap)

    def _setup(self, inputs, sliding_window_shapes, strides, baselines):
        x1, x2 = check_pair(inputs, dtype=self.model.mean.dtype)
        device = self.model.device
        x1, x2 = x1.to(device), x2.to(device)
        window, stride = _pair(sliding_window_shapes, "sliding_window_shapes"), _pair(strides, "strides")
        if x1.shape[2:] != x2.shape[2:]:
            corners = [window_grid(tuple(x.shape[2:]), window, stride) for x in (x1, x2)]
        else:
            corners = [window_grid(tuple(x1.shape[2:]), window, stride)] * 2
        fills = [resolve_fill(self.model, baselines, x) for x in (x1, x2)]
        return x1, x2, window, stride, corners, fills

    def _run(self, inputs, sliding_window_shapes, strides, baselines, perturbations_per_eval, grid,
             show_progress, incremental, channels_last) -> PairAttribution:
        check_count(perturbations_per_eval, "perturbations_per_eval")
        x1, x2, window, stride, corners, fills = self._setup(inputs, sliding_window_shapes, strides, baselines)
        model = self.model
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        engine = IncrementalTrunk.from_trunk(model.trunk) if incremental else None
        n_windows = [c.shape[0] for c in corners]
        steps = x1.shape[0] * sum(-(-n // perturbations_per_eval) for n in n_windows)
        grids: list[list[torch.Tensor]] = [[], []]
        with preserved_model_state(model, requires_grad=False, channels_last=channels_last), torch.no_grad():
            z1, z2 = model(x1), model(x2)
            base = cosine(z1, z2)
            with progress(steps, show_progress, self.method_name) as bar:
                for b in range(x1.shape[0]):
                    for view, (x, other, fill) in enumerate(((x1, z2, fills[0]), (x2, z1, fills[1]))):
                        image_n = model.normalize(x[b:b + 1]).contiguous(memory_format=fmt)
                        fill_n = model.normalize(fill.expand(x[b:b + 1].shape) if fill.shape[0] == 1
                                                 else fill[b:b + 1]).contiguous(memory_format=fmt)
                        values = self._grid_values(image_n, fill_n, corners[view], window, other[b:b + 1],
                                                   base[b], engine, perturbations_per_eval, fmt, bar)
                        grids[view].append(values)
        maps = []
        for view, x in enumerate((x1, x2)):
            h, w = x.shape[2:]
            n_h = (h - window[0]) // stride[0] + 1
            n_w = (w - window[1]) // stride[1] + 1
            g = torch.stack(grids[view]).view(-1, n_h, n_w)
            maps.append(g if grid else window_mean_map(g, (h, w), window, stride))
        meta = {"method": self.method_name, "sliding_window_shapes": window, "strides": stride, "grid": grid,
                "baselines": "neutral" if baselines is None else baselines, "incremental": engine is not None}
        return PairAttribution(maps, base, meta)

    def _grid_values(self, image_n, fill_n, corners, window, other, base, engine, per_eval, fmt, bar):
        raise NotImplementedError


def _engine_cache(engine: IncrementalTrunk | None, base_image: torch.Tensor) -> list[torch.Tensor] | None:
    if engine is None or not engine.supports(*base_image.shape[2:]):
        return None
    return engine.prepare(base_image)


_ATTRIBUTE_DOC = """
        Args:
            inputs: the pair ``(x1, x2)``, each ``(B,3,H,W)`` in ``[0,1]``.
            sliding_window_shapes: window side (int) or ``(h, w)``; default 64.
            strides: window stride (int) or ``(h, w)``; default 8; must not exceed the window.
            baselines: fill in pixel space; ``None`` = the neutral fill (0 in the model's input space).
            perturbations_per_eval: perturbed copies per forward pass; bounds the memory.
            grid: return the raw window grid ``(B, n_h, n_w)`` instead of an input-size map.
            show_progress: tqdm progress bar.
            incremental: recompute only the region each window changes (exact; ResNet trunks),
                else full forward passes.
            channels_last: run the trunk in channels-last memory format (faster on CPU and GPU).

        Returns:
            :class:`PairAttribution` ``(map1, map2)`` with ``.similarity`` and ``.meta``.
"""


class ConditionalOcclusion(_WindowOcclusion):
    """Conditional occlusion: occlude a window of one image, keep the other as the condition.

    Grid value ``H1[i,j] = s(x1, x2) - cos(f(x1 with window ij filled), f(x2))`` and likewise for
    ``x2`` (the paper's raw drops, larger = more important; they can be negative). With
    ``grid=False`` each pixel is the mean of the drops of the windows covering it.

    Examples:
        >>> model = ssl_widgets.load_model("tiny-simclr")  # doctest: +SKIP
        >>> m1, m2 = ConditionalOcclusion(model).attribute((x1, x2), sliding_window_shapes=32, strides=8)  # doctest: +SKIP
    """

    method_name = "conditional-occlusion"

    def attribute(self, inputs: tuple[torch.Tensor, torch.Tensor], sliding_window_shapes: Any = 64,
                  strides: Any = 8, baselines: float | torch.Tensor | None = None,
                  perturbations_per_eval: int = 32, grid: bool = False, show_progress: bool = False,
                  incremental: bool = True, channels_last: bool = True) -> PairAttribution:
        return self._run(inputs, sliding_window_shapes, strides, baselines, perturbations_per_eval, grid,
                         show_progress, incremental, channels_last)

    attribute.__doc__ = "Occlusion maps of both images." + _ATTRIBUTE_DOC

    def _grid_values(self, image_n, fill_n, corners, window, other, base, engine, per_eval, fmt, bar):
        cache = _engine_cache(engine, image_n)
        values = []
        for part in chunks(corners.shape[0], per_eval):
            z = self._embed_windows(image_n, corners[part], window, fill_n, False, engine, cache, fmt)
            values.append(base - cosine(z, other.expand_as(z)))
            bar.update(1)
        return torch.cat(values)


class ContextAgnosticOcclusion(_WindowOcclusion):
    """Context-agnostic conditional occlusion: what a patch contributes by itself.

    Grid value ``H1[i,j] = cos(f(P_ij(x1)) - f(M_ij(x1)), f(x2))`` where ``M_ij`` fills the window
    and ``P_ij`` fills everything but the window. No baseline is subtracted. The authors' code
    min-max normalises each grid afterwards; apply :func:`~ssl_widgets.attr.maps.normalize_map` for that.
    """

    method_name = "context-agnostic-occlusion"

    def attribute(self, inputs: tuple[torch.Tensor, torch.Tensor], sliding_window_shapes: Any = 64,
                  strides: Any = 8, baselines: float | torch.Tensor | None = None,
                  perturbations_per_eval: int = 32, grid: bool = False, show_progress: bool = False,
                  incremental: bool = True, channels_last: bool = True) -> PairAttribution:
        return self._run(inputs, sliding_window_shapes, strides, baselines, perturbations_per_eval, grid,
                         show_progress, incremental, channels_last)

    attribute.__doc__ = "Context-agnostic occlusion maps of both images." + _ATTRIBUTE_DOC

    def _grid_values(self, image_n, fill_n, corners, window, other, base, engine, per_eval, fmt, bar):
        removed_cache = _engine_cache(engine, image_n)
        alone_cache = _engine_cache(engine, fill_n)
        values = []
        for part in chunks(corners.shape[0], per_eval):
            removed = self._embed_windows(image_n, corners[part], window, fill_n, False, engine, removed_cache, fmt)
            alone = self._embed_windows(image_n, corners[part], window, fill_n, True, engine, alone_cache, fmt)
            values.append(cosine(alone - removed, other.expand_as(alone)))
            bar.update(1)
        return torch.cat(values)
