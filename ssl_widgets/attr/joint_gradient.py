"""Bilinear gradient decomposition of the similarity on pairs of patches (in the spirit of BiLRP).

BiLRP (Eberle et al., "Building and Interpreting Deep Similarity Models", TPAMI 2022) explains a
dot-product similarity ``<z1, z2> = sum_k z1_k z2_k`` on pairs of input features by composing
first-order explanations of each embedding dimension: ``R_ij = sum_k R_i(z1_k) R_j(z2_k)``.
This module uses the first-order rule gradient x input (in the model's input space) for
``R_i(z_k)``, summed over the pixels and channels of each patch.

How normalisation enters: the explained quantity is the cosine ``<u1, u2>`` of the normalised
embeddings ``u = z / ||z||``. The norms are treated as constants (detached), as LRP treats
normalisation layers, so ``R_i(u_k) = sum_{pixels p in i} x_p dz_k/dx_p / ||z||``. For a
positively homogeneous embedding (linear or ReLU layers without biases) Euler's theorem gives
``sum_i R_i(u_k) = u_k`` and hence ``sum_ij R_ij = cos(z1, z2)`` exactly; biases (and BatchNorm
shifts) leave a remainder. (Differentiating through the norm instead would give a sum of 0:
``u`` is homogeneous of degree 0.)
"""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from captum.attr import GradientAttribution
from torch import nn

from .._validation import check_autograd_available, check_pair
from ..models.wrapper import SSLModel
from .base import ModelMethod
from .spec import MethodSpec
from .engine import chunks, cosine, preserved_model_state, progress
from .joint import JointAttribution, check_grid, patch_index, pool_to_patches

__all__ = ["JointGradient", "dimension_relevance"]


def dimension_relevance(model: SSLModel, x_n: torch.Tensor, grid: tuple[int, int], batch_size: int,
                        mode: str = "auto", bar: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension patch relevance ``R[b, k, i]`` of the normalised embedding, and the embedding.

    ``R[b, k, i] = sum_{p in patch i} x_p dz_k/dx_p / ||z||`` is computed in one of two vectorised ways:

    * ``"reverse"``: batched backward passes over chunks of ``batch_size`` embedding dimensions
      (``torch.autograd.grad(..., is_grads_batched=True)``), ``D / batch_size`` passes;
    * ``"forward"``: since ``R[:, i] = J (x * 1_patch_i)`` is a Jacobian-vector product, batched
      forward-mode passes (``torch.func.vmap`` over ``torch.func.jvp``) over chunks of
      ``batch_size`` patches, ``P / batch_size`` passes.

    ``"auto"`` picks the one with fewer vectors (forward when the grid has fewer patches than the
    embedding has dimensions). Both give the same values.

    Args:
        model: the model (already in eval mode, parameters frozen).
        x_n: ``(B,3,H,W)`` images in the model's input space.
        grid: ``(rows, cols)`` patch grid.
        batch_size: dimensions (reverse) or patches (forward) per vectorised pass (bounds the memory).
        mode: ``"auto"``, ``"forward"`` or ``"reverse"``.
        bar: a progress bar updated once per pass.

    Returns:
        ``(R, z)``: ``R`` of shape ``(B, D, rows*cols)`` and the embeddings ``z`` ``(B, D)``.
    """
    x_n = x_n.detach()
    with torch.no_grad():
        z = model.forward_normalized(x_n)
    batch, dim = z.shape
    n_patches = grid[0] * grid[1]
    if mode == "auto":
        mode = "forward" if n_patches < dim else "reverse"
    norm = z.norm(dim=1).clamp(min=1e-8)
    parts = []
    if mode == "forward":
        index = patch_index(tuple(x_n.shape[2:]), grid, x_n.device)

        def jvp_of(tangent: torch.Tensor) -> torch.Tensor:
            return torch.func.jvp(model.forward_normalized, (x_n,), (tangent,))[1]

        with torch.no_grad(), warnings.catch_warnings():
            # torch's first forward-mode call scripts a helper and warns, with its own path, that
            # torch.jit.script is deprecated: nothing a user can act on
            warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
            for part in chunks(n_patches, batch_size):
                masks = (index[None] == torch.arange(part.start, part.stop, device=x_n.device)[:, None, None])
                tangents = x_n[None] * masks[:, None, None].to(x_n.dtype)  # (k, B, 3, H, W)
                parts.append(torch.func.vmap(jvp_of)(tangents))  # (k, B, D)
                if bar is not None:
                    bar.update(1)
        relevance = torch.cat(parts).permute(1, 2, 0)  # (B, D, P)
    elif mode == "reverse":
        with torch.enable_grad():
            a = x_n.clone().requires_grad_(True)
            z_graph = model.forward_normalized(a)
            for part in chunks(dim, batch_size):
                k = part.stop - part.start
                seeds = z.new_zeros(k, batch, dim)
                seeds[torch.arange(k), :, torch.arange(part.start, part.stop)] = 1.0
                (grads,) = torch.autograd.grad(z_graph, a, seeds, retain_graph=part.stop < dim,
                                               is_grads_batched=True)
                parts.append(pool_to_patches((grads * x_n).sum(2), grid))  # (k, B, P)
                if bar is not None:
                    bar.update(1)
        relevance = torch.cat(parts).permute(1, 0, 2)  # (B, D, P)
    else:
        raise ValueError(f"mode must be 'auto', 'forward' or 'reverse', got {mode!r}")
    return relevance / norm[:, None, None], z


def _passes(mode: str, n_patches: int, dim: int, batch_size: int) -> int:
    if mode == "auto":
        mode = "forward" if n_patches < dim else "reverse"
    return -(-(n_patches if mode == "forward" else dim) // batch_size)


@contextlib.contextmanager
def unfused_attention(model: nn.Module) -> Iterator[None]:
    """Switch timm's fused attention (``scaled_dot_product_attention``, which has no forward-mode derivative on
    the CPU) to its explicit softmax form for the block, the same values; the flags are restored on exit."""
    modules = [m for m in model.modules() if isinstance(getattr(m, "fused_attn", None), bool)]
    flags = [m.fused_attn for m in modules]
    try:
        for module in modules:
            module.fused_attn = False
        yield
    finally:
        for module, flag in zip(modules, flags):
            module.fused_attn = flag


class JointGradient(ModelMethod, GradientAttribution):
    """Bilinear gradient x input decomposition ``R_ij = sum_k R_i(u1_k) R_j(u2_k)`` on patch pairs.

    See the module docstring for how the normalisation enters; for a bias-free linear or ReLU
    embedding the relevances sum exactly to the cosine similarity.

    Examples:
        >>> from ssl_widgets.models.wrapper import SSLModel
        >>> model = SSLModel(torch.nn.Conv2d(3, 4, 3, padding=1, bias=False), input_size=8).eval()
        >>> x1, x2 = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8)
        >>> result = JointGradient(model).attribute((x1, x2), grid=2)
        >>> result.shape
        torch.Size([1, 4, 4])
        >>> bool(torch.allclose(result.relevance.sum((1, 2)), result.similarity, atol=1e-5))
        True
    """

    method_name = "joint-gradient"

    def attribute(self, inputs: tuple[torch.Tensor, torch.Tensor], grid: int | tuple[int, int] = 7,
                  batch_size: int = 64, mode: str = "auto", show_progress: bool = False,
                  on_progress: Callable[[int, int], None] | None = None) -> JointAttribution:
        """Pair-to-pair relevance of the two images' patches.

        Args:
            inputs: ``(x1, x2)``, each ``(B,3,H,W)`` in ``[0,1]``.
            grid: patches per side (int) or ``(rows, cols)``, used for both images.
            batch_size: embedding dimensions (reverse mode) or patches (forward mode) per vectorised
                pass; bounds the memory.
            mode: ``"auto"`` (fewest passes), ``"forward"`` (Jacobian-vector products, one per patch)
                or ``"reverse"`` (batched backward passes, one per embedding dimension); same values.
            show_progress: tqdm progress bar.
            on_progress: called ``(done, total)`` as the work advances; raising from it (e.g.
                :class:`~ssl_widgets.attr.engine.Cancelled`) stops the call.

        Returns:
            :class:`JointAttribution` ``(B, rows*cols, rows*cols)``; ``.marginals()`` gives the two maps.

        Raises:
            ValueError / TypeError: bad images, grid, ``batch_size`` or ``mode``.
        """
        check_autograd_available(self.method_name)
        x1, x2 = (x.to(self.model.device) for x in check_pair(inputs))
        g1, g2 = check_grid(grid, tuple(x1.shape[2:])), check_grid(grid, tuple(x2.shape[2:]))
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if mode not in ("auto", "forward", "reverse"):
            raise ValueError(f"mode must be 'auto', 'forward' or 'reverse', got {mode!r}")
        model = self.model
        with preserved_model_state(model, requires_grad=False), unfused_attention(model):
            with torch.no_grad():
                n_dims = model.forward_normalized(model.normalize(x1[:1])).shape[1]
            steps = sum(_passes(mode, g[0] * g[1], n_dims, batch_size) for g in (g1, g2))
            with progress(steps, show_progress, self.method_name, on_progress) as bar, torch.enable_grad():
                r1, z1 = dimension_relevance(model, model.normalize(x1), g1, batch_size, mode, bar)
                r2, z2 = dimension_relevance(model, model.normalize(x2), g2, batch_size, mode, bar)
        relevance = torch.einsum("bki,bkj->bij", r1, r2)
        meta = {"method": self.method_name, "grid1": g1, "grid2": g2, "size1": tuple(x1.shape[2:]),
                "size2": tuple(x2.shape[2:]), "batch_size": batch_size, "mode": mode}
        return JointAttribution(relevance, cosine(z1, z2), meta)


#: the method record (see :mod:`ssl_widgets.attr.spec`)
SPEC = MethodSpec("joint-gradient", JointGradient, kind="joint", summary="pair-to-pair relevance of patches, exact "
                  "for a linear embedding", order=300)
