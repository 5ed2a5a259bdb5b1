"""Vision Transformers whose position embeddings are resampled exactly as their reference code does.

A ViT trained at one size runs at another by resampling its grid of patch position embeddings.
The published codebases do this in slightly different ways, and each way gives a slightly
different model (cosine 0.986-0.996 between the embeddings at 224 px for DINOv2, say), so every
map at a non-native size is only a map of *the* model when the rule is the model's own:

==========================  ============================================  =========  =========
rule                        used by                                       size from  antialias
==========================  ============================================  =========  =========
``DINO_RULE``               DINO, DINOv2 without registers (their         scale      no
                            ``interpolate_pos_encoding``, hub defaults)   (g+0.1)/M
``REGISTERS_RULE``          DINOv2 with registers (hub), Hugging Face     size g     yes
                            ``Dinov2WithRegistersModel``
``HF_RULE``                 Hugging Face ``ViTModel``, ``Dinov2Model``    size g     no
timm (not here)             timm's ``dynamic_img_size``                   size g     yes
==========================  ============================================  =========  =========

All resample bicubically (``align_corners=False``) in float32, from the ``M x M`` training grid to
the input's ``h x w`` patch grid, and leave the grid untouched when it already is ``M x M``. The
"scale" rule passes ``scale_factor=((h + 0.1) / M, (w + 0.1) / M)`` to ``F.interpolate``, which
then maps output to input coordinates with that factor rather than with ``h / M``: a historical
offset (DINO's issue 8) that DINOv2 keeps for compatibility.

:class:`ReferenceViT` is timm's ``VisionTransformer`` (same layer names, same state dict, so every
ViT view works) with the rule as a constructor argument.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

__all__ = ["DINO_RULE", "HF_RULE", "REGISTERS_RULE", "PositionRule", "ReferenceViT", "resample_patch_positions"]


@dataclass(frozen=True)
class PositionRule:
    """How a codebase resamples the patch position embeddings for another grid.

    Attributes:
        name: a short label (shown in ``SSLModel.meta``).
        offset: ``None`` to give ``F.interpolate`` the output size; a number to give it the scale
            factor ``(g + offset) / M`` instead (DINO's 0.1).
        antialias: ``F.interpolate``'s ``antialias`` flag.
    """

    name: str
    offset: float | None
    antialias: bool


#: DINO's and DINOv2's ``interpolate_pos_encoding`` with their torch.hub defaults (offset 0.1, no antialias).
DINO_RULE = PositionRule("dino (bicubic, scale offset 0.1)", 0.1, False)
#: DINOv2's register models on torch.hub (offset 0, antialias) and transformers' Dinov2WithRegistersModel.
REGISTERS_RULE = PositionRule("dinov2 registers (bicubic to size, antialias)", None, True)
#: transformers' ViTModel and Dinov2Model.
HF_RULE = PositionRule("transformers (bicubic to size)", None, False)


def resample_patch_positions(positions: torch.Tensor, grid: tuple[int, int], rule: PositionRule) -> torch.Tensor:
    """Resample ``(1, M*M, C)`` patch position embeddings to a ``grid = (h, w)`` patch grid.

    Args:
        positions: the patch positions of the square training grid (no class or register entries).
        grid: the input's patch grid ``(rows, columns)``.
        rule: the codebase's rule (:data:`DINO_RULE`, :data:`REGISTERS_RULE`, :data:`HF_RULE`).

    Returns:
        ``(1, h*w, C)`` in the dtype of ``positions`` (computed in float32); ``positions`` itself
        when the grid is the training grid.

    Examples:
        >>> pos = torch.arange(2 * 2 * 1, dtype=torch.float32).view(1, 4, 1)
        >>> resample_patch_positions(pos, (2, 2), DINO_RULE) is pos
        True
        >>> resample_patch_positions(pos, (3, 5), DINO_RULE).shape
        torch.Size([1, 15, 1])
    """
    count, dim = positions.shape[1], positions.shape[2]
    side = math.isqrt(count)
    if side * side != count:
        raise ValueError(f"{count} patch position embeddings do not form a square grid")
    rows, cols = int(grid[0]), int(grid[1])
    if (rows, cols) == (side, side):
        return positions
    square = positions.float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
    if rule.offset is None:
        sizing: dict[str, Any] = {"size": (rows, cols)}
    else:
        sizing = {"scale_factor": ((rows + rule.offset) / side, (cols + rule.offset) / side)}
    resampled = F.interpolate(square, mode="bicubic", align_corners=False, antialias=rule.antialias, **sizing)
    if tuple(resampled.shape[-2:]) != (rows, cols):
        raise RuntimeError(f"position resampling gave a {tuple(resampled.shape[-2:])} grid for {(rows, cols)}")
    return resampled.permute(0, 2, 3, 1).reshape(1, rows * cols, dim).to(positions.dtype)


class ReferenceViT(VisionTransformer):
    """timm's ``VisionTransformer`` with the position-embedding rule of the code that trained it.

    Any input size that is a multiple of the patch size is accepted (``dynamic_img_size``); the
    state dict and layer names are timm's.

    Args:
        position_rule: see :class:`PositionRule`.
        **kwargs: ``VisionTransformer`` arguments (``patch_size``, ``embed_dim``, ``depth``, ...).

    Examples:
        >>> vit = ReferenceViT(position_rule=DINO_RULE, img_size=32, patch_size=8, embed_dim=16, depth=1,
        ...                    num_heads=2, num_classes=0)
        >>> vit.forward_features(torch.rand(1, 3, 40, 24)).shape  # class token + 5 x 3 patches
        torch.Size([1, 16, 16])
    """

    def __init__(self, *, position_rule: PositionRule, **kwargs: Any) -> None:
        kwargs.setdefault("dynamic_img_size", True)
        if not kwargs["dynamic_img_size"]:
            raise ValueError("ReferenceViT resamples position embeddings per input: dynamic_img_size must be True")
        super().__init__(**kwargs)
        self.position_rule = position_rule

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        batch, rows, cols, dim = x.shape  # dynamic_img_size: the patch embedding keeps the grid (NHWC)
        x = x.reshape(batch, rows * cols, dim)
        prefix = [t.expand(batch, -1, -1) for t in (self.cls_token, self.reg_token) if t is not None]
        with_prefix_positions = not self.no_embed_class  # the class token's position is pos_embed[:, 0]
        first = self.num_prefix_tokens if with_prefix_positions else 0
        patches = resample_patch_positions(self.pos_embed[:, first:], (rows, cols), self.position_rule)
        if with_prefix_positions:
            x = torch.cat(prefix + [x], dim=1) + torch.cat([self.pos_embed[:, :first], patches], dim=1)
        else:
            x = torch.cat(prefix + [x + patches], dim=1)
        return self.pos_drop(x)
