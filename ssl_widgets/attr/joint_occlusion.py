"""Joint occlusion: the interaction of occluding patch i of image 1 and patch j of image 2.

With ``s = cos(f(x1), f(x2))`` and ``-i`` meaning "patch i filled", the interaction index is

    ``I_ij = s - s(-i) - s(-j) + s(-i,-j)``,

positive when the two patches make the similarity together (each one's effect depends on the
other being present). With ``u = f / ||f||`` the similarity is bilinear in ``(u1, u2)``, so
``I_ij = <u1 - u1(-i), u2 - u2(-j)>``: the exhaustive ``(h1*w1) x (h2*w2)`` table needs only
``h1*w1 + h2*w2`` occluded embeddings (computed with the incremental occlusion engine), not one
forward pass per pair.

``context_probability = p > 0`` averages the interaction over random contexts: every other patch
of each image is also filled, independently, with probability ``p`` (``p = 0.5`` is the Banzhaf
interaction index; Hamilton et al., ICLR 2022 use Shapley-Taylor weights for the same kind of
joint index). The bilinear form factorises again: ``I_ij = <D1_i, D2_j>`` with
``D_i = E[u(S)] - E[u(S + i)]`` over random occluded sets ``S`` not containing ``i``. On coarse
grids (``2^P`` masks, ``P <= max_exhaustive``) the expectation is computed exactly; on fine grids
a seeded sampling estimator draws ``n_samples`` random masks per image and reuses every masked
embedding for every patch (``D_i ~= mean u(M | i kept) - mean u(M | i filled)``, the
maximum-sample-reuse estimator), which converges to the exhaustive values as samples grow.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from captum.attr import PerturbationAttribution

from .._validation import check_pair
from .base import ModelMethod
from .spec import MethodSpec
from .engine import chunks, cosine, preserved_model_state, progress, resolve_fill
from .joint import JointAttribution, check_grid, patch_boxes, patch_index
from .occlusion import CopyEvaluator, check_evaluator

__all__ = ["JointOcclusion"]


def _unit(z: torch.Tensor) -> torch.Tensor:
    return z / z.norm(dim=-1, keepdim=True).clamp(min=1e-8)


class JointOcclusion(ModelMethod, PerturbationAttribution):
    """Pairwise occlusion interaction ``s - s(-i) - s(-j) + s(-i,-j)`` on two patch grids.

    See the module docstring for the definition, the context-averaged variant and its estimator.

    Args:
        model: the :class:`~ssl_widgets.models.SSLModel`.
        evaluator: the :class:`~ssl_widgets.attr.CopyEvaluator` that embeds the occluded copies (``p = 0``);
            ``None``: a default one.

    Examples:
        >>> from ssl_widgets.models.wrapper import SSLModel
        >>> model = SSLModel(torch.nn.Identity(), input_size=4).eval()  # embedding = mean colour
        >>> x1, x2 = torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 4)
        >>> result = JointOcclusion(model).attribute((x1, x2), grid=2)
        >>> result.shape
        torch.Size([1, 4, 4])
    """

    method_name = "joint-occlusion"

    def __init__(self, model: Any, *, evaluator: CopyEvaluator | None = None) -> None:
        super().__init__(model)
        self.evaluator = check_evaluator(evaluator, model)

    def attribute(self, inputs: tuple[torch.Tensor, torch.Tensor], grid: int | tuple[int, int] = 7,
                  baselines: float | torch.Tensor | None = None, context_probability: float = 0.0,
                  n_samples: int | None = None, max_exhaustive: int = 12, perturbations_per_eval: int = 32,
                  generator: torch.Generator | None = None, incremental: bool = True,
                  show_progress: bool = False, on_progress: Callable[[int, int], None] | None = None
                  ) -> JointAttribution:
        """Interaction of every patch of image 1 with every patch of image 2.

        Args:
            inputs: ``(x1, x2)``, each ``(B,3,H,W)`` in ``[0,1]``.
            grid: patches per side (int) or ``(rows, cols)``, used for both images.
            baselines: fill in pixel space; ``None`` = the neutral fill (0 in the model's input space).
            context_probability: ``p`` in ``[0, 1)``: probability that each other patch is also
                filled (0: the plain interaction from the full images, always exhaustive).
            n_samples: random masks per image for the sampling estimator (``p > 0``); ``None``
                enumerates all ``2^P`` masks (allowed up to ``max_exhaustive`` patches).
            max_exhaustive: largest patch count enumerated exhaustively when ``p > 0``.
            perturbations_per_eval: occluded copies per forward pass; bounds the memory.
            generator: seeds the sampled masks.
            incremental: recompute only the occluded patch's region (exact; ResNet trunks), for ``p = 0``.
            show_progress: tqdm progress bar.
            on_progress: called ``(done, total)`` after each batch; raising from it (e.g.
                :class:`~ssl_widgets.attr.engine.Cancelled`) stops the call.

        Returns:
            :class:`JointAttribution` ``(B, rows*cols, rows*cols)``; ``.marginals()`` gives the two maps.

        Raises:
            ValueError / TypeError: bad images, grid, probability, sample count or batch size.
        """
        x1, x2 = (x.to(self.model.device) for x in check_pair(inputs))
        g1, g2 = check_grid(grid, tuple(x1.shape[2:])), check_grid(grid, tuple(x2.shape[2:]))
        p = float(context_probability)
        if not 0.0 <= p < 1.0:
            raise ValueError(f"context_probability must be in [0, 1), got {context_probability!r}")
        if not isinstance(perturbations_per_eval, int) or perturbations_per_eval < 1:
            raise ValueError(f"perturbations_per_eval must be a positive int, got {perturbations_per_eval!r}")
        if n_samples is not None and (not isinstance(n_samples, int) or n_samples < 2):
            raise ValueError(f"n_samples must be an int >= 2 or None, got {n_samples!r}")
        n_patches = max(g1[0] * g1[1], g2[0] * g2[1])
        if p > 0 and n_samples is None and n_patches > max_exhaustive:
            raise ValueError(f"a {n_patches}-patch grid has 2^{n_patches} masks; give n_samples for the sampling "
                             f"estimator or raise max_exhaustive (now {max_exhaustive})")
        model = self.model
        fills = [resolve_fill(model, baselines, x) for x in (x1, x2)]
        plan = [self._masks(g, p, n_samples, generator) for g in (g1, g2)]
        steps = x1.shape[0] * sum(-(-m[0] // perturbations_per_eval) for m in plan)
        with preserved_model_state(model, requires_grad=False), self.evaluator.session(
                incremental=incremental and p == 0) as session:
            copies = session if session.incremental else None  # masks of several patches: the model itself
            z1, z2 = model(x1), model(x2)
            deltas: list[list[torch.Tensor]] = [[], []]
            with progress(steps, show_progress, self.method_name, on_progress) as bar:
                for b in range(x1.shape[0]):
                    for view, (x, z, fill, g) in enumerate(((x1, z1, fills[0], g1), (x2, z2, fills[1], g2))):
                        image_n = model.normalize(x[b:b + 1])
                        fill_n = model.normalize(fill.expand_as(x[b:b + 1]) if fill.shape[0] == 1 else fill[b:b + 1])
                        deltas[view].append(self._deltas(image_n, fill_n, _unit(z[b]), g, p, plan[view],
                                                         copies, perturbations_per_eval, bar))
        relevance = torch.einsum("bid,bjd->bij", torch.stack(deltas[0]), torch.stack(deltas[1]))
        meta: dict[str, Any] = {"method": self.method_name, "grid1": g1, "grid2": g2, "size1": tuple(x1.shape[2:]),
                                "size2": tuple(x2.shape[2:]), "context_probability": p,
                                "estimator": "exhaustive" if plan[0][1] is None else f"sampled ({n_samples} masks)",
                                "baselines": "neutral" if baselines is None else baselines}
        return JointAttribution(relevance, cosine(z1, z2), meta)

    @staticmethod
    def _masks(grid: tuple[int, int], p: float, n_samples: int | None,
               generator: torch.Generator | None) -> tuple[int, torch.Tensor | None]:
        """Number of masks and, for the sampling estimator, the drawn masks ``(n, P)`` (True = filled)."""
        n_patches = grid[0] * grid[1]
        if p == 0:
            return n_patches, None
        if n_samples is None:
            return 2 ** n_patches, None
        return n_samples, torch.rand(n_samples, n_patches, generator=generator) < p

    def _embed(self, image_n, fill_n, filled, index, boxes, copies, cache):
        """Unit embeddings of the image with the patches marked in ``filled`` ``(k, P)`` replaced by the fill."""
        keep = (~filled)[:, index].to(image_n.dtype)[:, None]  # (k, 1, H, W)
        batch = image_n * keep + fill_n * (1 - keep)
        if copies is not None and cache is not None and boxes is not None:
            return _unit(copies.embed_boxes(cache, batch, boxes))
        return _unit(self.model.embed_features(self.model.run_trunk(batch)))

    def _deltas(self, image_n, fill_n, u, grid, p, plan, copies, per_eval, bar) -> torch.Tensor:
        """``D_i`` ``(P, D)``: the expected change of the unit embedding when patch ``i`` is filled."""
        n_masks, drawn = plan
        n_patches = grid[0] * grid[1]
        size = tuple(image_n.shape[2:])
        index = patch_index(size, grid, image_n.device)
        device = image_n.device
        if p == 0:
            boxes_all = patch_boxes(size, grid).to(device)
            cache = copies.prepare(image_n)[0] if copies is not None else None  # the graph engine takes any size
            rows = []
            for part in chunks(n_patches, per_eval):
                filled = torch.eye(n_patches, dtype=torch.bool, device=device)[part]
                rows.append(u - self._embed(image_n, fill_n, filled, index, boxes_all[part], copies, cache))
                bar.update(1)
            return torch.cat(rows)
        kept_sum = u.new_zeros(n_patches, u.shape[0])
        filled_sum = u.new_zeros(n_patches, u.shape[0])
        kept_weight = u.new_zeros(n_patches)
        filled_weight = u.new_zeros(n_patches)
        bits = 2 ** torch.arange(n_patches, device=device)
        for part in chunks(n_masks, per_eval):
            if drawn is None:  # exhaustive: mask m fills the patches of the set bits of m
                filled = (torch.arange(part.start, part.stop, device=device)[:, None] & bits) > 0
                size_m = filled.sum(1, keepdim=True).to(u.dtype)
                weight = p ** size_m * (1 - p) ** (n_patches - size_m)  # (k, 1)
            else:
                filled = drawn[part].to(device)
                weight = u.new_ones(filled.shape[0], 1)
            emb = self._embed(image_n, fill_n, filled, index, None, None, None)  # (k, D)
            f = filled.to(u.dtype)
            filled_sum += (f * weight).T @ emb
            kept_sum += ((1 - f) * weight).T @ emb
            filled_weight += (f * weight).sum(0)
            kept_weight += ((1 - f) * weight).sum(0)
            bar.update(1)
        # E[u(S) | i kept] - E[u(S) | i filled]; a patch never seen in one state contributes 0
        kept_mean = kept_sum / kept_weight.clamp(min=1e-30)[:, None]
        filled_mean = filled_sum / filled_weight.clamp(min=1e-30)[:, None]
        missing = (kept_weight == 0) | (filled_weight == 0)
        return torch.where(missing[:, None], torch.zeros_like(kept_mean), kept_mean - filled_mean)


#: the method record (see :mod:`ssl_widgets.attr.spec`)
SPEC = MethodSpec("joint-occlusion", JointOcclusion, kind="joint", summary="interaction of every patch pair under "
                  "occlusion", slow=True, seeded=True, order=310)
