"""An independent re-implementation of the reference ViT forward of DINO, DINOv2 and transformers.

Written from the published ``prepare_tokens`` / ``interpolate_pos_encoding`` code of each project
(facebookresearch/dino, facebookresearch/dinov2, huggingface/transformers), in their own terms:
the checkpoint's own layout (the class token's position is ``pos_embed[:, 0]``, register tokens
inserted after the positions are added), the pixel-size test for "no resampling", and the
interpolation arguments each passes. It shares no code with ``ssl_widgets.models.position_rules``;
only the transformer blocks and the final norm of a timm ``VisionTransformer`` are reused.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: (offset, antialias) of each codebase: an offset is passed as scale factor (g + offset) / M
DINO = {"offset": 0.1, "antialias": False}          # DINO, DINOv2 (torch.hub defaults)
DINOV2_REGISTERS = {"offset": 0.0, "antialias": True}  # DINOv2 *_reg on torch.hub; transformers' WithRegisters
TRANSFORMERS = {"offset": 0.0, "antialias": False}     # transformers ViTModel, Dinov2Model


def reference_positions(pos_embed, height, width, patch, *, offset, antialias):
    """``interpolate_pos_encoding`` as the reference code writes it (pixel sizes in, class entry first)."""
    npatch, n = (height // patch) * (width // patch), pos_embed.shape[1] - 1
    if npatch == n and height == width:
        return pos_embed
    dim, m = pos_embed.shape[-1], int(math.sqrt(n))
    h0, w0 = height // patch, width // patch
    grid = pos_embed[:, 1:].float().reshape(1, m, m, dim).permute(0, 3, 1, 2)
    if offset:  # DINO: w0, h0 = w0 + 0.1, h0 + 0.1; scale_factor=(w0 / sqrt(N), h0 / sqrt(N))
        grid = F.interpolate(grid, scale_factor=((h0 + offset) / math.sqrt(n), (w0 + offset) / math.sqrt(n)),
                             mode="bicubic", antialias=antialias)
    else:
        grid = F.interpolate(grid, size=(h0, w0), mode="bicubic", align_corners=False, antialias=antialias)
    assert tuple(grid.shape[-2:]) == (h0, w0)
    return torch.cat([pos_embed[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, dim)], dim=1)


def reference_tokens(state, x, patch, *, offset, antialias):
    """Class token, patch embedding, resampled positions, then register tokens (DINOv2's order)."""
    batch, _, height, width = x.shape
    tokens = F.conv2d(x, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=patch)
    tokens = torch.cat([state["cls_token"].expand(batch, -1, -1), tokens.flatten(2).transpose(1, 2)], dim=1)
    tokens = tokens + reference_positions(state["pos_embed"], height, width, patch, offset=offset, antialias=antialias)
    if "register_tokens" in state:
        tokens = torch.cat([tokens[:, :1], state["register_tokens"].expand(batch, -1, -1), tokens[:, 1:]], dim=1)
    return tokens


def reference_embedding(vit, state, x, *, offset, antialias):
    """The class token after the final norm, with ``vit``'s blocks and norm on the reference tokens.

    Args:
        vit: a timm ``VisionTransformer`` with the same block weights (its positions are not used).
        state: the checkpoint in the reference layout (``cls_token``, ``pos_embed`` with the class
            entry, ``patch_embed.proj.*``, optional ``register_tokens``).
        x: normalised images.
    """
    patch = state["patch_embed.proj.weight"].shape[-1]
    tokens = reference_tokens(state, x, patch, offset=offset, antialias=antialias)
    with torch.no_grad():
        for block in vit.blocks:
            tokens = block(tokens)
        return vit.norm(tokens)[:, 0]
