"""Attention rollout (Abnar & Zuidema, 2020) of a Vision Transformer, for a pair.

``discard_ratio`` is jacobgil/vit-explain's rule (its ``vit_rollout.py``; the commonly published
rollout maps use ``head_fusion="max", discard_ratio=0.9``). vit-explain divides each block's matrix by
its column sums (a broadcasting slip, its issue #16), which equals the row normalisation only where
every row sums alike (mean fusion without discarding); here every fusion follows the paper's row
normalisation.
"""
from __future__ import annotations

import torch
from captum.attr import Attribution

from ..models.wrapper import SSLModel
from .base import PairMethod
from .spec import MethodSpec, Setting
from .cls_attention import attention_blocks, pair_attentions, resolve_block_range, token_map
from .engine import PairAttribution

__all__ = ["AttentionRollout", "rollout"]

HEAD_FUSIONS = ("mean", "max", "min")


def discard_lowest(fused: torch.Tensor, discard_ratio: float) -> torch.Tensor:
    """vit-explain's discard rule: per image, the ``int(N * N * discard_ratio)`` lowest entries of the
    fused ``(B, N, N)`` matrix are set to 0, except the class token's attention to itself (entry
    ``[0, 0]``), which is spared (it is then not replaced by another entry). Ties are broken by position
    (a stable sort over the row-major entries: of equal values the earlier entry goes first), so the result
    is deterministic.

    Examples:
        >>> discard_lowest(torch.tensor([[[0.1, 0.2], [0.2, 0.5]]]), 0.75)
        tensor([[[0.1000, 0.0000],
                 [0.0000, 0.5000]]])
    """
    flat = fused.flatten(1)
    count = int(flat.shape[1] * discard_ratio)
    lowest = torch.sort(flat, dim=1, stable=True).indices[:, :count]
    drop = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, lowest, True)
    drop[:, 0] = False  # the class token's attention to itself is spared
    return flat.masked_fill(drop, 0).reshape(fused.shape)


def check_discard_ratio(discard_ratio: float) -> None:
    """A number in [0, 1); a clear error otherwise."""
    if isinstance(discard_ratio, bool) or not isinstance(discard_ratio, (int, float)) or not 0 <= discard_ratio < 1:
        raise ValueError(f"discard_ratio must be a fraction in [0, 1), got {discard_ratio!r}")


def rollout(attentions: list[torch.Tensor], head_fusion: str = "mean", discard_ratio: float = 0.0) -> torch.Tensor:
    """``R = Â_L ... Â_1`` with ``Â = rownorm(discard(fuse_heads(A)) + I)``; ``(B, N, N)``.

    Args:
        attentions: per block ``(B, heads, N, N)``, in forward order.
        head_fusion: ``"mean"``, ``"max"`` or ``"min"`` over heads.
        discard_ratio: the fraction of the lowest fused entries set to 0 before the identity is added
            (:func:`discard_lowest`; 0 = none).

    Examples:
        >>> a = torch.full((1, 1, 2, 2), 0.5)
        >>> rollout([a, a])[0]
        tensor([[0.6250, 0.3750],
                [0.3750, 0.6250]])
    """
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"head_fusion must be one of {HEAD_FUSIONS}, got {head_fusion!r}")
    check_discard_ratio(discard_ratio)
    result = None
    for attn in attentions:
        fused = {"mean": attn.mean(1), "max": attn.amax(1), "min": attn.amin(1)}[head_fusion]
        if discard_ratio > 0:
            fused = discard_lowest(fused, discard_ratio)
        fused = fused + torch.eye(fused.shape[-1], dtype=fused.dtype, device=fused.device)
        fused = fused / fused.sum(-1, keepdim=True)
        result = fused if result is None else fused @ result
    return result


class AttentionRollout(PairMethod, Attribution):
    """How much each patch flows into the class token through all blocks (attention rollout).

    Each block's attention (heads fused; optionally its lowest entries discarded, vit-explain's
    rule, see :func:`discard_lowest`) gets the identity added for the residual connection and
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
                  start_block: int | str = 0, end_block: int | str = -1,
                  discard_ratio: float = 0.0) -> PairAttribution:
        """Rollout maps of both images.

        Args:
            inputs: ``(x1, x2)``.
            head_fusion: ``"mean"`` (default), ``"max"`` or ``"min"`` over heads.
            discard_ratio: fraction in [0, 1) of each fused matrix's lowest entries set to 0 (the class
                token's self-attention spared); 0 (default) discards nothing. vit-explain's default is 0.9.
            start_block: the first block rolled out (inclusive; index or name).
            end_block: the last block rolled out (inclusive; index or name).

        Returns:
            :class:`PairAttribution` with maps ``(B, H/p, W/p)``.
        """
        if head_fusion not in HEAD_FUSIONS:
            raise ValueError(f"head_fusion must be one of {HEAD_FUSIONS}, got {head_fusion!r}")
        check_discard_ratio(discard_ratio)
        x1, x2 = self._inputs(inputs, convert=False)
        first, last = resolve_block_range(self.blocks, start_block, end_block)
        modules = [m for _, m in self.blocks[first:last + 1]]
        a1, a2, sims = pair_attentions(self.model, x1, x2, modules)
        maps = [token_map(self.model, rollout(a, head_fusion, discard_ratio)[:, 0], x.shape[2:])
                for a, x in ((a1, x1), (a2, x2))]
        return self._result(maps, sims, head_fusion=head_fusion, blocks=(self.blocks[first][0], self.blocks[last][0]),
                            **({"discard_ratio": discard_ratio} if discard_ratio else {}))


#: the method record (see :mod:`ssl_widgets.attr.spec`)
SPEC = MethodSpec("attention-rollout", AttentionRollout, kind="view", summary="attention flow into the class token "
                  "through all blocks (attention-rollout:max+discard = vit-explain's default)", architectures=("vit",),
                  vit_only_reason="it reads a Vision Transformer's attention weights; use grad-cam or interaction-cam",
                  options={**{f: ("head_fusion", f) for f in HEAD_FUSIONS}, "discard": ("discard_ratio", 0.9)},
                  settings=(Setting("discard_ratio", 0.0, 0.0, 0.99, "fraction of the lowest fused attention set to 0"),),
                  order=410)
