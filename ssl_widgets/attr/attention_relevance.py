"""Gradient-weighted attention relevance (Chefer, Gur & Wolf, ICCV 2021) of a pair's similarity.

"Generic Attention-model Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers"
propagates a relevance matrix through the attention blocks of a Vision Transformer:

* ``R = I`` (``N x N`` over all tokens);
* per block ``b`` of the chosen range, in forward order:
  ``Ā_b = mean_heads(relu(∂s/∂A_b ⊙ A_b))`` and ``R <- R + Ā_b R``;
* the map is the class token's row of ``R`` over the patch tokens (class and register tokens left out).

The paper differentiates a class logit; here ``s`` is the pair's cosine similarity
``cos(f(x1), f(x2))``. Each image's map uses the gradient of ``s`` with respect to that image's own
attention matrices (both images are explained, each in the context of the other). The attention
matrices are those the blocks multiply with their values (fused attention is switched off for the
call, the same values), recorded by the hooks of
:func:`~ssl_widgets.attr.cls_attention.recorded_attention`.
"""
from __future__ import annotations

import torch
from captum.attr import GradientAttribution

from ..models.wrapper import SSLModel
from .base import PairMethod
from .cls_attention import attention_blocks, recorded_attention, resolve_block_range, token_map
from .engine import PairAttribution, cosine
from .spec import MethodSpec

__all__ = ["AttentionGradientRelevance", "relevance_rollout"]


def relevance_rollout(attentions: list[torch.Tensor], gradients: list[torch.Tensor]) -> torch.Tensor:
    """``R = prod_b (I + Ā_b)`` applied as ``R <- R + Ā_b R`` with ``Ā_b = mean_heads(relu(grad ⊙ A))``.

    Args:
        attentions: per block ``(B, heads, N, N)``, in forward order.
        gradients: the gradients of the explained score with respect to ``attentions``, same shapes.

    Returns:
        ``(B, N, N)`` relevance between tokens.

    Examples:
        >>> a = torch.full((1, 1, 2, 2), 0.5)
        >>> relevance_rollout([a], [torch.ones_like(a)])[0]
        tensor([[1.5000, 0.5000],
                [0.5000, 1.5000]])
    """
    n = attentions[0].shape[-1]
    relevance = torch.eye(n, dtype=attentions[0].dtype, device=attentions[0].device).expand(
        attentions[0].shape[0], n, n)
    for attn, grad in zip(attentions, gradients):
        weighted = (grad * attn).clamp(min=0).mean(1)
        relevance = relevance + weighted @ relevance
    return relevance


class AttentionGradientRelevance(PairMethod, GradientAttribution):
    """Chefer et al. (2021)'s gradient-weighted attention relevance, driven by the pair's cosine similarity.

    Each block's attention is weighted by the gradient of the similarity with respect to it (its positive
    part, averaged over heads) and accumulated as ``R <- R + Ā R`` (see the module docstring); the map is
    the class token's relevance to each patch. Unlike class-token attention and rollout, it depends on
    the other image: it explains the similarity, not only where each image's embedding draws from.

    Works on every ViT with timm-style attention: timm models, DINO / DINOv2 (with registers) from the zoo
    and Hugging Face ViTs through :func:`~ssl_widgets.models.from_transformers`; a CNN is refused.

    Args:
        model: a ViT :class:`SSLModel`.

    Examples:
        >>> from ssl_widgets.models import SSLModel
        >>> model = SSLModel.from_timm("vit_tiny_patch16_224", depth=2)
        >>> m1, m2 = AttentionGradientRelevance(model).attribute((torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)))
        >>> m1.shape
        torch.Size([1, 2, 2])
    """

    method_name = "attention-relevance"

    def __init__(self, model: SSLModel) -> None:
        self.blocks = attention_blocks(model, self.method_name)
        super().__init__(model)

    def attribute(self, inputs: tuple[torch.Tensor, torch.Tensor], start_block: int | str = 0,
                  end_block: int | str = -1) -> PairAttribution:
        """Relevance maps of both images.

        Args:
            inputs: ``(x1, x2)``, each ``(B,3,H,W)`` with sides multiple of the patch size.
            start_block: the first block accumulated (inclusive; index, negative from the end, or name).
            end_block: the last block accumulated (inclusive; index or name).

        Returns:
            :class:`PairAttribution` with maps ``(B, H/p, W/p)`` (non-negative).

        Raises:
            ValueError: a block out of range or unknown, or ``start_block`` after ``end_block``.
        """
        x1, x2 = self._inputs(inputs)
        first, last = resolve_block_range(self.blocks, start_block, end_block)
        modules = [m for _, m in self.blocks[first:last + 1]]
        with self._preserved(), torch.enable_grad(), recorded_attention(modules, keep_graph=True) as records:
            # inputs that need a gradient make autograd record the graph through the frozen model
            z1 = self.model(x1.detach().requires_grad_(True))
            z2 = self.model(x2.detach().requires_grad_(True))
            similarity = cosine(z1, z2)
            attentions = [r[0] for r in records] + [r[1] for r in records]
            gradients = torch.autograd.grad(similarity.sum(), attentions)
        k = len(modules)
        maps = []
        for i, x in enumerate((x1, x2)):
            relevance = relevance_rollout([a.detach() for a in attentions[i * k:(i + 1) * k]],
                                          list(gradients[i * k:(i + 1) * k]))
            maps.append(token_map(self.model, relevance[:, 0], x.shape[2:]))
        return self._result(maps, similarity, blocks=(self.blocks[first][0], self.blocks[last][0]))


#: the method record (see :mod:`ssl_widgets.attr.spec`)
SPEC = MethodSpec("attention-relevance", AttentionGradientRelevance, kind="pair",
                  summary="Chefer et al. 2021: attention weighted by the similarity's gradient, accumulated "
                          "through the blocks", architectures=("vit",),
                  vit_only_reason="it weights a Vision Transformer's attention by its gradient; use grad-cam or "
                                  "interaction-cam", order=420)
