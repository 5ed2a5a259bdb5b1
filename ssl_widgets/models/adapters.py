"""What :meth:`SSLModel.from_timm <ssl_widgets.models.SSLModel.from_timm>` and ``from_torchvision`` wrap.

The functions here return the :class:`~ssl_widgets.models.SSLModel` constructor's arguments (trunk,
head, pooling, normalisation...), so that this module does not import the wrapper it feeds.

* :func:`timm_parts`: any timm model, instance or name (random weights or a local state dict).
  Vision Transformers become token trunks (class token or mean-of-patches pooling, register tokens
  counted as prefix tokens) whose position embeddings are interpolated for other input sizes
  (timm's ``dynamic_img_size``); other timm models are wrapped through ``forward_features``.
* :func:`torchvision_parts`: a torchvision ResNet (any depth) or VisionTransformer, instance or name.

Nothing here downloads: names build random weights; pass ``weights=PATH`` for a local file.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .architectures import ResNetTrunk
from .checkpoint_file import read_checkpoint, refuse_non_finite
from .converters import CheckpointError
from ..core import PAPER_INPUT_SIZE
from .normalization import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["TorchvisionViTTrunk", "make_dynamic", "timm_parts", "torchvision_parts"]


def make_dynamic(vit: nn.Module) -> nn.Module:
    """Switch a timm ``VisionTransformer`` to ``dynamic_img_size`` in place (position embeddings
    interpolated for any input size that is a multiple of the patch size). Returns ``vit``."""
    from timm.layers import Format

    if getattr(vit, "dynamic_img_size", False):
        return vit
    patch_embed = vit.patch_embed
    patch_embed.strict_img_size = False
    patch_embed.flatten = False
    patch_embed.output_fmt = Format.NHWC
    vit.dynamic_img_size = True
    return vit


def _is_timm_vit(model: nn.Module) -> bool:
    from timm.models.vision_transformer import VisionTransformer

    return isinstance(model, VisionTransformer)


def _load_weights(module: nn.Module, weights: str | os.PathLike | dict | None) -> None:
    if weights is None:
        return
    state = weights if isinstance(weights, dict) else read_checkpoint(weights)
    state = state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"weights do not match {type(module).__name__}: {str(error)[:400]}") from error
    refuse_non_finite(module, weights if not isinstance(weights, dict) else "the given state dict")


def timm_parts(model: nn.Module | str, *, pooling: str | None = None, head: nn.Module | None = None,
               weights: str | os.PathLike | dict | None = None, mean: Sequence[float] | None = None,
               std: Sequence[float] | None = None, input_size: int | None = None, name: str | None = None,
               **create_kwargs: Any) -> dict[str, Any]:
    """The :class:`~ssl_widgets.models.SSLModel` arguments that wrap a timm model.

    Args:
        model: a timm model instance, or a timm model name (built with random weights; nothing is
            downloaded, pass ``weights`` for a local file).
        pooling: ``"cls"`` or ``"mean"`` for a ViT (default: from the model's ``global_pool``:
            ``"token"`` -> class token, ``"avg"`` -> mean of patch tokens); CNNs use ``"avg"``.
        head: optional projector ``(B,C) -> (B,D)`` applied after pooling.
        weights: a state dict or the path of one, loaded strictly into the timm model.
        mean, std: input normalisation (default: the model's ``pretrained_cfg``, else ImageNet's).
        input_size: side the model was trained at (default: from the model).
        name: display name (default: the timm architecture name).
        create_kwargs: extra ``timm.create_model`` arguments when ``model`` is a name (e.g. ``depth=2``).

    Returns:
        The keyword arguments of ``SSLModel(...)``: a ViT keeps timm's layer names (``blocks.11``,
        ``blocks.11.attn``, ``norm``) and accepts any input size that is a multiple of its patch size.

    Examples:
        >>> parts = timm_parts("vit_tiny_patch16_224", depth=2)
        >>> parts["pooling"], parts["patch_size"], parts["num_prefix_tokens"]
        ('cls', 16, 1)
    """
    import timm

    if isinstance(model, str):
        arch = model
        kwargs = {"pretrained": False, "num_classes": 0, **create_kwargs}
        try:
            net = timm.create_model(arch, dynamic_img_size=True, **kwargs)
        except TypeError:  # not a ViT-family model: no dynamic_img_size argument
            net = timm.create_model(arch, **kwargs)
    elif isinstance(model, nn.Module):
        net, arch = model, getattr(getattr(model, "pretrained_cfg", {}), "get", lambda *_: None)("architecture")
        arch = arch or type(model).__name__
    else:
        raise TypeError(f"model must be a timm model or a timm model name, got {type(model).__name__}")
    _load_weights(net, weights)
    cfg = getattr(net, "pretrained_cfg", None) or {}
    if mean is None and std is None:
        mean, std = tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))
    common = {"mean": mean, "std": std, "name": name or arch}
    if _is_timm_vit(net):
        make_dynamic(net)
        if pooling is None:
            pooling = {"token": "cls", "avg": "mean"}.get(getattr(net, "global_pool", "token"), "cls")
        if pooling == "cls" and not getattr(net, "has_class_token", True):
            raise ValueError(f"{arch} has no class token; use pooling='mean'")
        size = input_size or int(net.patch_embed.img_size[0])
        patch = int(net.patch_embed.patch_size[0])
        return {"trunk": net, "head": head, "input_size": size, "pooling": pooling,
                "num_prefix_tokens": net.num_prefix_tokens, "patch_size": patch, "trunk_method": "forward_features",
                **common}
    if pooling not in (None, "avg"):
        raise ValueError(f"{arch} is not a Vision Transformer; only pooling='avg' applies")
    if not callable(getattr(net, "forward_features", None)):
        raise TypeError(f"{type(net).__name__} has no forward_features; wrap it with SSLModel(trunk, head) directly")
    size = input_size or int(cfg.get("input_size", (3, PAPER_INPUT_SIZE, PAPER_INPUT_SIZE))[-1])
    return {"trunk": net, "head": head, "input_size": size, "trunk_method": "forward_features", **common}


class TorchvisionViTTrunk(nn.Module):
    """A torchvision ``VisionTransformer`` without its classifier: ``(B,3,H,W) -> (B,1+N,C)`` tokens.

    Keeps torchvision's layer names (``conv_proj``, ``encoder.layers.encoder_layer_11``,
    ``encoder.ln``) and interpolates the position embedding (bicubic, as timm) for input sizes
    other than the training size.
    """

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.patch_size, self.image_size, self.hidden_dim = vit.patch_size, vit.image_size, vit.hidden_dim
        self.conv_proj, self.class_token, self.encoder = vit.conv_proj, vit.class_token, vit.encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from timm.layers import resample_abs_pos_embed

        n, _, h, w = x.shape
        tokens = self.conv_proj(x).flatten(2).transpose(1, 2)
        grid, trained = (h // self.patch_size, w // self.patch_size), self.image_size // self.patch_size
        pos = self.encoder.pos_embedding
        if grid != (trained, trained):
            pos = resample_abs_pos_embed(pos, list(grid), old_size=[trained, trained], num_prefix_tokens=1)
        tokens = torch.cat([self.class_token.expand(n, -1, -1), tokens], dim=1) + pos
        return self.encoder.ln(self.encoder.layers(self.encoder.dropout(tokens)))


def _resnet_trunk(net: nn.Module) -> ResNetTrunk:
    block = type(net.layer1[0])
    layers = [len(getattr(net, f"layer{i}")) for i in range(1, 5)]
    trunk = ResNetTrunk(block, layers, width=net.conv1.out_channels)
    state = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    try:
        trunk.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(f"unsupported ResNet variant (grouped or wide blocks?): {str(error)[:300]}") from error
    return trunk


def torchvision_parts(model: nn.Module | str, *, head: nn.Module | None = None,
                      weights: str | os.PathLike | dict | None = None, mean: Sequence[float] | None = IMAGENET_MEAN,
                      std: Sequence[float] | None = IMAGENET_STD, name: str | None = None) -> dict[str, Any]:
    """The :class:`~ssl_widgets.models.SSLModel` arguments that wrap a torchvision ResNet or VisionTransformer.

    Args:
        model: e.g. ``torchvision.models.resnet50()`` or ``"vit_b_16"``.
        head: optional projector after pooling (the classifier is always dropped).
        weights: a state dict or its path, loaded strictly into the torchvision model first.
        mean, std: input normalisation (ImageNet's by default).
        name: display name.

    Returns:
        The keyword arguments of ``SSLModel(...)``: a ResNet trunk keeps torchvision's layer names
        (``layer4``...); a ViT pools its class token.

    Examples:
        >>> type(torchvision_parts("resnet18")["trunk"]).__name__
        'ResNetTrunk'
    """
    import torchvision

    if isinstance(model, str):
        arch = model
        net = torchvision.models.get_model(model, weights=None)
    elif isinstance(model, nn.Module):
        net, arch = model, type(model).__name__
    else:
        raise TypeError(f"model must be a torchvision model or its name, got {type(model).__name__}")
    _load_weights(net, weights)
    if isinstance(net, torchvision.models.ResNet):
        return {"trunk": _resnet_trunk(net), "head": head, "mean": mean, "std": std, "name": name or arch,
                "input_size": PAPER_INPUT_SIZE}
    if isinstance(net, torchvision.models.VisionTransformer):
        return {"trunk": TorchvisionViTTrunk(net), "head": head, "mean": mean, "std": std, "name": name or arch,
                "input_size": net.image_size, "pooling": "cls", "num_prefix_tokens": 1, "patch_size": net.patch_size}
    raise TypeError(f"{type(net).__name__} is not supported: from_torchvision wraps ResNets and VisionTransformers")
