"""The shipped tiny Vision Transformer (``tiny-dino-vit``): a timm ``VisionTransformer`` and DINO's head.

The architecture is described by a small ``arch`` dict stored in the weight file::

    {"type": "vit", "patch_size": 8, "embed_dim": 192, "depth": 6, "num_heads": 3,
     "input_size": 112, "normalized": True, "pooling": "cls"}

The embedding of the model is the class token after the final norm
(``backbone.forward_features(x)[:, 0]``), as DINO evaluates its teacher.
"""
from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TINY_VIT_ARCH", "DINOHead", "build_tiny_vit_backbone", "dino_head_state_dict"]

TINY_VIT_ARCH: dict[str, Any] = {"type": "vit", "patch_size": 8, "embed_dim": 192, "depth": 6, "num_heads": 3,
                                 "input_size": 112, "normalized": True, "pooling": "cls"}


def build_tiny_vit_backbone(arch: dict[str, Any], *, drop_path_rate: float = 0.0,
                            dynamic_img_size: bool = True) -> nn.Module:
    """A timm ``VisionTransformer`` (class token, no classifier) from an ``arch`` dict.

    Args:
        arch: ``patch_size``, ``embed_dim``, ``depth``, ``num_heads`` and ``input_size`` (see the module doc).
        drop_path_rate: stochastic depth (the DINO student uses 0.1; 0 for the teacher and inference).
        dynamic_img_size: accept other input sizes (multiples of the patch size) by interpolating the
            position embeddings, as DINO's multi-crop needs.

    Returns:
        ``timm.models.vision_transformer.VisionTransformer`` with ``num_classes=0`` and
        ``global_pool="token"``.

    Raises:
        ValueError: ``arch`` is not a ViT description, or the input size is not a multiple of the patch size.

    Examples:
        >>> vit = build_tiny_vit_backbone({"type": "vit", "patch_size": 8, "embed_dim": 24, "depth": 1,
        ...                                "num_heads": 2, "input_size": 32})
        >>> vit.forward_features(torch.rand(1, 3, 32, 32)).shape  # class token + 4 x 4 patches
        torch.Size([1, 17, 24])
    """
    from timm.models.vision_transformer import VisionTransformer

    if arch.get("type", "vit") != "vit":
        raise ValueError(f"not a ViT architecture: type {arch.get('type')!r}")
    patch, size = int(arch["patch_size"]), int(arch["input_size"])
    if size % patch:
        raise ValueError(f"input_size {size} is not a multiple of patch_size {patch}")
    if arch.get("pooling", "cls") != "cls":
        raise ValueError(f"unsupported pooling {arch.get('pooling')!r}: the tiny ViT uses the class token ('cls')")
    kwargs: dict[str, Any] = {"img_size": size, "patch_size": patch, "embed_dim": int(arch["embed_dim"]),
                                  "depth": int(arch["depth"]), "num_heads": int(arch["num_heads"]), "num_classes": 0,
                                  "global_pool": "token", "class_token": True, "drop_path_rate": drop_path_rate}
    if dynamic_img_size:
        if "dynamic_img_size" not in inspect.signature(VisionTransformer.__init__).parameters:
            raise ImportError("multi-crop training needs timm>=0.9 (VisionTransformer(dynamic_img_size=True))")
        kwargs["dynamic_img_size"] = True
    return VisionTransformer(**kwargs)


class _WeightNormLinear(nn.Module):
    """``Linear`` without bias whose weight is ``weight_g * weight_v / ||weight_v||`` (row-wise), DINO's last layer.

    The parameters carry DINO's checkpoint names (``weight_g``, ``weight_v``); ``weight_g`` is fixed
    at 1 (``norm_last_layer=True``).
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.weight_v = nn.Parameter(torch.empty(out_dim, in_dim))
        nn.init.trunc_normal_(self.weight_v, std=0.02)
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight_g * F.normalize(self.weight_v, dim=1))


class DINOHead(nn.Module):
    """DINO's published (trainable) head, as facebookresearch/dino's ``DINOHead``: MLP (3 layers, GELU) ->
    bottleneck -> L2 norm -> weight-normalised linear.

    Args:
        in_dim: backbone feature size.
        out_dim: number of prototypes ``K``.
        hidden_dim: MLP width.
        bottleneck_dim: output of the MLP before the last layer.

    Examples:
        >>> head = DINOHead(16, 32, hidden_dim=24, bottleneck_dim=8)
        >>> head(torch.randn(3, 16)).shape
        torch.Size([3, 32])
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 1024, bottleneck_dim: int = 256) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, hidden_dim),
                                 nn.GELU(), nn.Linear(hidden_dim, bottleneck_dim))
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        self.last_layer = _WeightNormLinear(bottleneck_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


def dino_head_state_dict(head: DINOHead, half: bool = True) -> dict[str, torch.Tensor]:
    """The head's weights in DINO's checkpoint layout (``mlp.0.weight`` ... ``last_layer.weight_g/_v``), on CPU."""
    return {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().clone()
            for k, v in head.state_dict().items()}
