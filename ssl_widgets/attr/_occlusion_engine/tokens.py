"""Exact evaluation of box-perturbed copies on a timm Vision Transformer, token by token.

A copy that differs from its base image only inside a box has the base's patch tokens everywhere
but on the patches the box touches. :class:`TokenTrunk` computes the base's patch embedding once
(:meth:`~TokenTrunk.prepare`) and, per copy, runs the patch projection only on the touched patches
(whole patches, from the copy's pixels), then the trunk's own ``_pos_embed``, ``patch_drop``,
``norm_pre``, blocks and ``norm``. With class-token pooling the last block computes keys and values
for every token but the query, attention output, MLP and final norm for the class token only (the
only token the embedding reads). Both are exact: the result equals the trunk's ``forward_features``
up to float rounding.

Token removal (``fill="drop-tokens"`` of the occlusion methods): a patch whose pixels are not finite
is *absent*: its token (position embedding added) is removed from the sequence, prefix tokens kept.
The methods mark removed windows with an infinite fill, which no input or baseline can hold (both
are checked finite), so the copies' geometry needs no channel of its own.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ...models.wrapper import SSLModel
from .._model_state import has_forward_hooks
from .regions import Region, paste

__all__ = ["TokenTrunk", "check_drop_tokens", "require_token_trunk", "token_trunk", "unsupported_reason"]


def _per_token_types() -> tuple[type, ...]:
    from timm.layers import GluMlp, Mlp, RmsNorm, SwiGLU, SwiGLUPacked
    return nn.LayerNorm, nn.Identity, RmsNorm, Mlp, GluMlp, SwiGLU, SwiGLUPacked


def unsupported_reason(model: SSLModel) -> str | None:
    """Why :class:`TokenTrunk` cannot evaluate ``model`` exactly (``None``: it can).

    Supported: a timm ``VisionTransformer`` (or subclass, e.g. :class:`~ssl_widgets.models.position_rules.ReferenceViT`)
    run by its standard ``forward_features``, without forward hooks, whose patch embedding is timm's
    ``PatchEmbed`` with a patch-sized, patch-strided ``Conv2d`` and per-token norm.
    """
    try:
        from timm.layers import PatchEmbed
        from timm.layers.format import Format
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:  # pragma: no cover - timm is a dependency
        return "timm is not installed"
    trunk = model.trunk
    if not model.is_token_model:
        return f"model {model.name!r} is not a token model (pooling {model.pooling!r})"
    if not isinstance(trunk, VisionTransformer):
        return f"the trunk is a {type(trunk).__name__}, not a timm VisionTransformer"
    if model.trunk_method != "forward_features" or type(trunk).forward_features is not VisionTransformer.forward_features:
        return "the trunk's output is not timm's standard forward_features"
    if has_forward_hooks(trunk):
        return "the trunk has forward hooks"
    embed = trunk.patch_embed
    if type(embed) is not PatchEmbed or not isinstance(embed.proj, nn.Conv2d):
        return f"the patch embedding is a {type(embed).__name__}, not timm's PatchEmbed with a Conv2d"
    proj, p = embed.proj, model.patch_size
    if proj.kernel_size != (p, p) or proj.stride != (p, p) or proj.padding != (0, 0) or proj.dilation != (1, 1) \
            or proj.groups != 1:
        return f"the patch projection is not a {p}x{p} convolution of stride {p} without padding"
    if not (embed.flatten or embed.output_fmt == Format.NHWC) or not isinstance(embed.norm, _per_token_types()):
        return "the patch embedding does not give per-token (B, N, C) or (B, h, w, C) tokens"
    if trunk.num_prefix_tokens != model.num_prefix_tokens:
        return f"the trunk has {trunk.num_prefix_tokens} prefix tokens, the model reads {model.num_prefix_tokens}"
    return None


def token_trunk(model: SSLModel, *, recompute_all: bool = False, drop: bool = False) -> TokenTrunk | None:
    """A :class:`TokenTrunk` of ``model``, or ``None`` where :func:`unsupported_reason` gives a reason."""
    return None if unsupported_reason(model) is not None else TokenTrunk(model, recompute_all=recompute_all, drop=drop)


def require_token_trunk(model: SSLModel) -> None:
    """A ``ValueError`` saying why ``fill="drop-tokens"`` cannot run on ``model``, unless :class:`TokenTrunk` supports it."""
    reason = unsupported_reason(model)
    if reason is not None:
        raise ValueError(f"fill='drop-tokens' needs a timm-style Vision Transformer (a timm VisionTransformer the "
                         f"token evaluator supports): {reason}")


def check_drop_tokens(model: SSLModel, window: tuple[int, int], stride: tuple[int, int],
                      images: tuple[torch.Tensor, ...], baselines: object) -> None:
    """A clear ``ValueError`` unless ``fill="drop-tokens"`` applies: a supported ViT, no ``baselines``, whole-patch
    windows and strides on images of whole patches."""
    if baselines is not None:
        raise ValueError(f"baselines must be None with fill='drop-tokens' (the window's tokens are removed, no fill "
                         f"colour is used), got {baselines if not isinstance(baselines, torch.Tensor) else 'a tensor'}")
    require_token_trunk(model)
    p = model.patch_size
    if any(v % p for v in (*window, *stride)):
        raise ValueError(f"fill='drop-tokens' removes whole patch tokens: sliding_window_shapes {window} and strides "
                         f"{stride} must be multiples of the patch size {p}")
    for x in images:
        model.check_input_size(*x.shape[2:])


def _absent(pixels: torch.Tensor, p: int) -> torch.Tensor:
    """``(B, h, w)`` bool: patches of ``pixels`` ``(B, 3, h*p, w*p)`` holding a non-finite value."""
    bad = (~torch.isfinite(pixels)).any(1, keepdim=True).float()
    return F.max_pool2d(bad, p, p)[:, 0] > 0


class TokenTrunk:
    """The exact token-level evaluation of copies (see the module docstring).

    Args:
        model: a model :func:`unsupported_reason` accepts.
        recompute_all: recompute every patch of each copy (no reuse of the base's patch tokens).
        drop: remove absent (non-finite) patches' tokens from each copy's sequence.
    """

    def __init__(self, model: SSLModel, *, recompute_all: bool = False, drop: bool = False) -> None:
        self.model, self.trunk = model, model.trunk
        self.patch, self.recompute_all, self.drop = int(model.patch_size), recompute_all, drop
        self.prefix = int(self.trunk.num_prefix_tokens)
        self.first_token_only = model.pooling == "cls" and self._last_block_supported()

    def _last_block_supported(self) -> bool:
        from timm.layers import Attention
        from timm.models.vision_transformer import Block
        blocks = self.trunk.blocks
        if not isinstance(blocks, nn.Sequential) or len(blocks) == 0:
            return False
        last, per_token = blocks[-1], _per_token_types()
        return type(last) is Block and type(last.attn) is Attention and isinstance(last.attn.qkv, nn.Linear) \
            and all(isinstance(m, per_token) for m in (last.norm1, last.norm2, last.mlp, self.trunk.norm))

    def prepare(self, bases: torch.Tensor) -> dict:
        """The state of base images ``(n, 3, H, W)`` (model input space): their patch tokens ``(n, h, w, C)``."""
        self.model.check_input_size(*bases.shape[2:])
        tokens = self.trunk.patch_embed(bases)
        grid = (bases.shape[2] // self.patch, bases.shape[3] // self.patch)
        state = {"bases": bases, "flat": tokens.dim() == 3, "tokens": tokens.reshape(bases.shape[0], *grid, -1)}
        if self.drop:
            state["absent"] = _absent(bases, self.patch)
        return state

    def embed(self, state: dict, local: torch.Tensor, y0: torch.Tensor, x0: torch.Tensor, bid: torch.Tensor,
              head: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Embeddings ``(B, D)`` (``head`` of the trunk output) of copies of base ``bid[b]`` whose box at
        ``(y0[b], x0[b])`` holds ``local[b]``."""
        p, base = self.patch, state["tokens"]
        grid = base.shape[1:3]
        size = local.shape[2:]
        if self.recompute_all:
            ty0, tx0, th, tw = torch.zeros_like(y0), torch.zeros_like(x0), grid[0], grid[1]
        else:  # the patch rows and columns the boxes touch, one size for the batch, moved inside the grid
            th = int(((y0 + size[0] - 1) // p - y0 // p).max()) + 1
            tw = int(((x0 + size[1] - 1) // p - x0 // p).max()) + 1
            ty0, tx0 = (y0 // p).clamp(max=grid[0] - th), (x0 // p).clamp(max=grid[1] - tw)
        pixels = Region(local, y0, x0, bid, state["bases"], (2, 3)).grow(ty0 * p, tx0 * p, th * p, tw * p)
        embed = self.trunk.patch_embed
        fresh = embed.norm(embed.proj(pixels).permute(0, 2, 3, 1))
        tokens = base.index_select(0, bid.to(base.device))
        paste(tokens, fresh, ty0, tx0, (1, 2))
        absent = None
        if self.drop:
            absent = state["absent"].index_select(0, bid.to(base.device)).float()
            paste(absent, _absent(pixels, p).float(), ty0, tx0, (1, 2))
        return self._finish(tokens, state["flat"], absent, head)

    def embed_bases(self, state: dict, head: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Embeddings ``(n, D)`` of the prepared base images themselves (absent patches removed)."""
        absent = state["absent"].float() if self.drop else None
        return self._finish(state["tokens"], state["flat"], absent, head)

    def _finish(self, tokens: torch.Tensor, flat: bool, absent: torch.Tensor | None,
                head: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """The trunk after its patch embedding, on patch tokens ``(B, h, w, C)``, then ``head``."""
        trunk = self.trunk
        seq = trunk._pos_embed(tokens.flatten(1, 2) if flat else tokens)
        if absent is None:
            return head(self._blocks(seq))
        keep = absent.flatten(1) == 0
        counts = keep.sum(1)
        out: torch.Tensor | None = None
        for count in counts.unique().tolist():  # copies with as many kept tokens run together
            rows = (counts == count).nonzero().flatten()
            patches = keep[rows].nonzero()[:, 1].view(rows.shape[0], count) + self.prefix
            order = torch.cat([torch.arange(self.prefix, device=seq.device).expand(rows.shape[0], -1), patches], 1)
            part = seq.index_select(0, rows).gather(1, order[..., None].expand(-1, -1, seq.shape[2]))
            emb = head(self._blocks(part))
            if out is None:
                out = emb.new_empty(seq.shape[0], *emb.shape[1:])
            out[rows] = emb
        return out

    def _blocks(self, seq: torch.Tensor) -> torch.Tensor:
        """``patch_drop``, ``norm_pre``, the blocks and ``norm`` (class token only in the last block when the
        embedding reads only it): tokens ``(B, N, C)``, or ``(B, 1, C)``."""
        trunk = self.trunk
        x = trunk.norm_pre(trunk.patch_drop(seq))
        if not self.first_token_only:
            return trunk.norm(trunk.blocks(x))
        for block in trunk.blocks[:-1]:
            x = block(x)
        return trunk.norm(_first_token_block(trunk.blocks[-1], x))


def _first_token_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """timm ``Block.forward`` (``Attention`` inside) for the first token's output only: ``(B, N, C) -> (B, 1, C)``."""
    attn = block.attn
    y = block.norm1(x)
    batch, count, _ = y.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    width = getattr(attn, "attn_dim", heads * head_dim)
    weight, bias = attn.qkv.weight, attn.qkv.bias
    kv = F.linear(y, weight[width:], None if bias is None else bias[width:])
    k, v = kv.reshape(batch, count, 2, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    first = y[:, :1]
    q = F.linear(first, weight[:width], None if bias is None else bias[:width]).reshape(batch, 1, heads, head_dim)
    q, k = attn.q_norm(q.transpose(1, 2)), attn.k_norm(k)
    if attn.fused_attn:
        o = F.scaled_dot_product_attention(q, k, v, dropout_p=attn.attn_drop.p if attn.training else 0.0)
    else:
        o = attn.attn_drop((q * attn.scale @ k.transpose(-2, -1)).softmax(dim=-1)) @ v
    o = attn.norm(o.transpose(1, 2).reshape(batch, 1, width))
    gate = getattr(attn, "gate", None)
    if gate is not None:
        o = o * gate(first).sigmoid()
    o = attn.proj_drop(attn.proj(o))
    token = x[:, :1] + block.drop_path1(block.ls1(o))
    return token + block.drop_path2(block.ls2(block.mlp(block.norm2(token))))
