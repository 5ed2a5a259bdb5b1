"""The shipped tiny ViT's backbone (``tiny-dino-vit``): a small timm VisionTransformer."""
from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["build_tiny_vit_backbone"]


def build_tiny_vit_backbone(arch: dict[str, Any]) -> nn.Module:
    """A timm ``VisionTransformer`` without classifier, class-token pooled, from a tiny-model ``arch``.

    Args:
        arch: ``{"type": "vit", "patch_size": 8, "embed_dim": 192, "depth": 6, "num_heads": 3,
            "input_size": 112, ...}``.

    Returns:
        The network with random weights; ``forward_features`` gives ``(B, 1 + N, C)`` tokens and
        position embeddings are interpolated for other input sizes (``dynamic_img_size``).

    Examples:
        >>> import torch
        >>> vit = build_tiny_vit_backbone({"patch_size": 8, "embed_dim": 24, "depth": 1, "num_heads": 2, "input_size": 32})
        >>> vit.forward_features(torch.rand(1, 3, 32, 32)).shape
        torch.Size([1, 17, 24])
    """
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        img_size=int(arch.get("input_size", 112)), patch_size=int(arch.get("patch_size", 8)),
        embed_dim=int(arch.get("embed_dim", 192)), depth=int(arch.get("depth", 6)),
        num_heads=int(arch.get("num_heads", 3)), num_classes=0, global_pool="token", dynamic_img_size=True,
    )
