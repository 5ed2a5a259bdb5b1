"""The class token's self-attention of a Vision Transformer (DINO's attention maps), for a pair.

Attention weights are read from timm-style attention modules (``qkv``, ``num_heads``,
``attn_drop``, ``fused_attn``): fused attention (``scaled_dot_product_attention``, which never
materialises the weights) is switched off for the call and restored afterwards, and a forward
hook on ``attn_drop`` records ``softmax(q k^T / sqrt(d))`` of shape ``(B, heads, N, N)``.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from captum.attr import Attribution
from torch import nn

from ..core import module_hooks
from ..models.wrapper import SSLModel
from .base import PairMethod
from .spec import MethodSpec, Setting
from .engine import PairAttribution, check_model, cosine, preserved_model_state

__all__ = ["ClassTokenAttention", "attention_blocks", "mass_mask", "recorded_attention"]


def attention_blocks(model: SSLModel, method: str) -> list[tuple[str, nn.Module]]:
    """``[(name, attention module)]`` of a ViT trunk in forward order; a clear error for other models."""
    check_model(model)
    if not model.is_token_model:
        raise ValueError(
            f"{method} applies to Vision Transformers (token trunks); model {model.name!r} is a convolutional "
            f"network. Use grad-cam or interaction-cam for a CNN"
        )
    found = [(name, m) for name, m in model.trunk.named_modules()
             if all(hasattr(m, a) for a in ("qkv", "num_heads", "attn_drop", "fused_attn"))]
    if not found:
        raise ValueError(
            f"{method} needs timm-style attention modules (with qkv, num_heads, attn_drop, fused_attn); "
            f"model {model.name!r} has none (wrap a timm VisionTransformer with SSLModel.from_timm)"
        )
    return found


def resolve_block(blocks: list[tuple[str, nn.Module]], block: int | str) -> int:
    """Index of ``block`` (an int, negative from the end, or a module name such as ``"blocks.11"``)."""
    if isinstance(block, int) and not isinstance(block, bool):
        if not -len(blocks) <= block < len(blocks):
            raise ValueError(f"block {block} out of range: the model has {len(blocks)} attention blocks")
        return block % len(blocks)
    names = [n for n, _ in blocks]
    for i, name in enumerate(names):
        if block in (name, name.rsplit(".attn", 1)[0]):
            return i
    raise ValueError(f"unknown block {block!r}; attention blocks are {names[:2]} ... {names[-1:]}")


def resolve_block_range(blocks: list[tuple[str, nn.Module]], start_block: int | str,
                        end_block: int | str) -> tuple[int, int]:
    """Indices ``(first, last)`` of an inclusive block range (see :func:`resolve_block`); a clear error when
    ``start_block`` comes after ``end_block``."""
    first, last = resolve_block(blocks, start_block), resolve_block(blocks, end_block)
    if first > last:
        raise ValueError(f"start_block {start_block!r} (block {first}) comes after end_block {end_block!r} "
                         f"(block {last})")
    return first, last


@contextlib.contextmanager
def recorded_attention(modules: list[nn.Module], keep_graph: bool = False) -> Iterator[list[list[torch.Tensor]]]:
    """Record each module's attention weights during the block: ``records[i]`` lists the
    ``(B, heads, N, N)`` tensors of module ``i``, one per forward. Fused attention is off for the
    block; the flags are restored and the hooks removed on exit, also on error.

    ``keep_graph=True`` records the tensors the block multiplies with its values (not detached), so that
    ``torch.autograd.grad`` can differentiate with respect to them (gradient-weighted attention)."""
    records: list[list[torch.Tensor]] = [[] for _ in modules]
    fused = [m.fused_attn for m in modules]
    hooks = [(module.attn_drop, lambda _m, _i, out, i=i: records[i].append(out if keep_graph else out.detach()))
             for i, module in enumerate(modules)]
    try:
        for module in modules:
            module.fused_attn = False
        with module_hooks(forward=hooks):
            yield records
    finally:
        for module, flag in zip(modules, fused):
            module.fused_attn = flag


def pair_attentions(model: SSLModel, x1: torch.Tensor, x2: torch.Tensor, modules: list[nn.Module]):
    """Attention weights of ``modules`` for both images and the pair similarity (one forward each)."""
    with preserved_model_state(model, requires_grad=False), torch.no_grad(), recorded_attention(modules) as rec:
        z1 = model(x1)
        z2 = model(x2)
    first = [r[0] for r in rec]
    second = [r[1] for r in rec]
    return first, second, cosine(z1, z2)


def mass_mask(attention: torch.Tensor, threshold: float) -> torch.Tensor:
    """DINO's attention mask: the patches holding the top ``threshold`` fraction of the attention mass.

    As facebookresearch/dino's ``visualize_attention.py``: the values are sorted in ascending order,
    their cumulative sum is divided by the total, and a patch is kept where that cumulative fraction
    exceeds ``1 - threshold``. Ties are ordered by position (a stable sort; DINO's script leaves the
    order of equal values to torch's default sort): of equal values, the later patch counts as the
    larger one and is kept first. Sums are taken in float64.

    Args:
        attention: ``(..., P)`` non-negative weights over the patches.
        threshold: the fraction of the mass kept, in (0, 1].

    Returns:
        A bool tensor like ``attention``.

    Examples:
        >>> mass_mask(torch.tensor([0.1, 0.6, 0.3]), 0.6)
        tensor([False,  True, False])
        >>> mass_mask(torch.tensor([0.25, 0.25, 0.25, 0.25]), 0.5)  # ties: the later patches first
        tensor([False, False,  True,  True])
    """
    values, order = torch.sort(attention.double(), dim=-1, stable=True)
    fraction = values.cumsum(-1) / values.sum(-1, keepdim=True)
    kept = fraction > 1 - threshold
    return torch.empty_like(kept).scatter_(-1, order, kept)


def check_threshold(threshold: float | None) -> None:
    """``None`` or a number in (0, 1]; a clear error otherwise."""
    if threshold is None:
        return
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
        raise ValueError(f"threshold must be None or a fraction of the attention mass in (0, 1], got {threshold!r}")


def token_map(model: SSLModel, row: torch.Tensor, image_size) -> torch.Tensor:
    """A ``(B, N)`` row over all tokens -> ``(B, h, w)`` over the patch grid (prefix tokens dropped)."""
    h, w = model.grid_size(image_size)
    return row[:, model.num_prefix_tokens:].reshape(row.shape[0], h, w)


class ClassTokenAttention(PairMethod, Attribution):
    """Where the class token looks: its attention to each patch in one block, per head or averaged.

    ``map[b, i, j] = softmax(q_cls k^T / sqrt(d))[patch (i, j)]`` (averaged over heads unless a head
    is chosen). Register tokens and the class token itself are left out of the map (their weights
    are part of the softmax, so a map sums to less than 1). These are DINO's famous maps; they
    explain where the model looks in each image, not the similarity itself.

    With ``threshold=t`` the maps are DINO's masks instead (``visualize_attention.py --threshold``):
    1 on the smallest set of patches holding a fraction ``t`` of the map's attention mass (the patch
    weights normalised to sum to 1), 0 elsewhere -- of one head, or of the head mean when
    ``head=None`` (see :func:`mass_mask`). DINO's figures use ``t = 0.6``.

    Args:
        model: a ViT :class:`SSLModel` with timm-style attention (e.g. from ``SSLModel.from_timm``).

    Examples:
        >>> from ssl_widgets.models import SSLModel
        >>> model = SSLModel.from_timm("vit_tiny_patch16_224", depth=2)
        >>> x1, x2 = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)
        >>> m1, m2 = ClassTokenAttention(model).attribute((x1, x2), block=-1, head=None)
        >>> m1.shape
        torch.Size([1, 4, 4])
    """

    method_name = "cls-attention"

    def __init__(self, model: SSLModel) -> None:
        self.blocks = attention_blocks(model, self.method_name)
        super().__init__(model)

    def attribute(self, inputs: tuple[torch.Tensor, torch.Tensor], block: int | str = -1,
                  head: int | None = None, threshold: float | None = None) -> PairAttribution:
        """Class-token attention maps (or DINO's masks) of both images.

        Args:
            inputs: ``(x1, x2)``, each ``(B,3,H,W)`` with sides multiple of the patch size.
            block: attention block: index (``-1`` = last) or name (``"blocks.11"``).
            head: one head's map, or ``None`` for the mean over heads.
            threshold: ``None`` (the attention itself) or the fraction of the attention mass, in (0, 1],
                that DINO's mask keeps.

        Returns:
            :class:`PairAttribution` with maps ``(B, H/p, W/p)``: the attention weights, or with a
            ``threshold`` the masks as float 0/1 (``meta["threshold"]`` says which).
        """
        check_threshold(threshold)
        x1, x2 = self._inputs(inputs, convert=False)
        index = resolve_block(self.blocks, block)
        name, module = self.blocks[index]
        if head is not None and not 0 <= head < module.num_heads:
            raise ValueError(f"head {head} out of range: block {name!r} has {module.num_heads} heads")
        (a1,), (a2,), sims = pair_attentions(self.model, x1, x2, [module])
        maps = []
        for attn, x in ((a1, x1), (a2, x2)):
            row = attn[:, :, 0] if head is None else attn[:, head:head + 1, 0]
            attention = token_map(self.model, row.mean(1), x.shape[2:])
            if threshold is not None:
                flat = mass_mask(attention.flatten(1), threshold)
                attention = flat.reshape(attention.shape).to(attention.dtype)
            maps.append(attention)
        return self._result(maps, sims, block=name.rsplit(".attn", 1)[0], head="mean" if head is None else head,
                            **({} if threshold is None else {"threshold": threshold}))


#: the method record (see :mod:`ssl_widgets.attr.spec`)
SPEC = MethodSpec("cls-attention", ClassTokenAttention, kind="view", summary="the class token's attention (DINO's "
                  "maps; cls-attention:mask = DINO's mask of 60% of the mass)", architectures=("vit",),
                  vit_only_reason="it reads a Vision Transformer's attention weights; use grad-cam or interaction-cam",
                  options={"mask": ("threshold", 0.6)},
                  settings=(Setting("threshold", None, 0.0, 1.0, "attention mass kept by DINO's mask (None: no mask)"),),
                  order=400)
