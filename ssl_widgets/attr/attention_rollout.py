"""Attention rollout (Abnar & Zuidema, 2020) of a Vision Transformer, for a pair."""
from __future__ import annotations

import torch
from captum.attr import Attribution

from ..models.wrapper import SSLModel
from .base import PairMethod
from .spec import MethodSpec
from .cls_attention import attention_blocks, pair_attentions, resolve_block, token_map
from .engine import PairAttribution

__all__ = ["AttentionRollout", "rollout"]

HEAD_FUSIONS = ("mean", "max", "min")


def rollout(attentions: list[torch.Tensor], head_fusion: str = "mean") -> torch.Tensor:
    """``R = Â_L ... Â_1`` with ``Â = rownorm(fuse_heads(A) + I)``; ``(B, N, N)``.

    Args:
        attentions: per block ``(B, heads, N, N)``, in forward order.
        head_fusion: ``"mean"``, ``"max"`` or ``"min"`` over heads.

    Examples:
        >>> a = torch.full((1, 1, 2, 2), 0.5)
        >>> rollout([a, a])[0]
        tensor([[0.6250, 0.3750],
                [0.3750, 0.6250]])
    """
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"head_fusion must be one of {HEAD_FUSIONS}, got {head_fusion!r}")
    result = None
    for attn in attentions:
        fused = {"mean": attn.mean(1), "max": attn.amax(1), "min": attn.amin(1)}[head_fusion]
        fused = fused + torch.eye(fused.shape[-1], dtype=fused.dtype, device=fused.device)
        fused = fused / fused.sum(-1, keepdim=True)
        result = fused if result is None else fused @ result
    return result


class AttentionRollout(PairMethod, Attribution):
    """How much each patch flows into the class token through all blocks (attention rollout).

    Each block's attention (heads fused) gets the identity added for the residual connection and
    is renormalised per row; the product over blocks gives the class token's row, read on the
    patch grid. Like :class:`~ssl_widgets.attr.cls_attention.ClassTokenAttention`, it explains where
    each image's embedding draws from, not the similarity itself.

    Examples:
        >>> from ssl_widgets.models import SSLModel
        >>> model = SSLModel.from_timm("vit_tiny_patch16_224", depth=2)
        >>> m1, m2 = AttentionRollout(model).attribute((torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)))
        >>> m1.shape
        torch.Size([1, 2, 2])
    """

    method_name = "attention-rollout"

    def __init__(self, model: SSLModel) -> None:
        self.blocks = attention_blocks(model, self.method_name)
        super().__init__(model)

    def attribute(self, inputs: tuple[torch.Tensor, torch.Tensor], head_fusion: str = "mean",
                  start_block: int | str = 0, end_block: int | str = -1) -> PairAttribution:
        """Rollout maps of both images.

        Args:
            inputs: ``(x1, x2)``.
            head_fusion: ``"mean"`` (default), ``"max"`` or ``"min"`` over heads.
            start_block: the first block rolled out (inclusive; index or name).
            end_block: the last block rolled out (inclusive; index or name).

        Returns:
            :class:`PairAttribution` with maps ``(B, H/p, W/p)``.
        """
        if head_fusion not in HEAD_FUSIONS:
            raise ValueError(f"head_fusion must be one of {HEAD_FUSIONS}, got {head_fusion!r}")
        x1, x2 = self._inputs(inputs, convert=False)
        first, last = resolve_block(self.blocks, start_block), resolve_block(self.blocks, end_block)
        if first > last:
            raise ValueError(f"start_block {start_block!r} comes after end_block {end_block!r}")
        modules = [m for _, m in self.blocks[first:last + 1]]
        a1, a2, sims = pair_attentions(self.model, x1, x2, modules)
        maps = [token_map(self.model, rollout(a, head_fusion)[:, 0], x.shape[2:]) for a, x in ((a1, x1), (a2, x2))]
        return self._result(maps, sims, head_fusion=head_fusion, blocks=(self.blocks[first][0], self.blocks[last][0]))


#: the method record (see :mod:`ssl_widgets.attr.spec`)
SPEC = MethodSpec("attention-rollout", AttentionRollout, kind="view", summary="attention flow into the class token "
                  "through all blocks", architectures=("vit",), vit_only_reason="it reads a Vision Transformer's attention weights; use grad-cam or interaction-cam", order=410)
