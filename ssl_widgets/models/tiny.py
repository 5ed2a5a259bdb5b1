"""The shipped tiny models' architectures and their weight-file format (``TINY_FORMAT``): build, save, load."""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .architectures import mlp_head, tiny_resnet18_trunk
from .checkpoint_file import load_strict
from .converters import CheckpointError
from .normalization import IMAGENET_MEAN, IMAGENET_STD
from .tiny_vit import build_tiny_vit_backbone
from .wrapper import SSLModel

__all__ = ["TINY_FORMAT", "build_tiny_model", "save_tiny_checkpoint", "tiny_builder"]

TINY_FORMAT = "ssl_widgets.tiny/1"


def build_tiny_model(arch: dict[str, Any], name: str = "tiny") -> SSLModel:
    """Build an untrained shipped-model architecture from its description.

    Args:
        arch: ``{"width": 32, "head_dims": [512, 128], "input_size": 112, "normalized": True}``, optionally
            with ``"last_bn": True`` (the projector ends in ``BatchNorm1d(affine=False)``, as Barlow Twins
            standardises and SimSiam's projector does) and ``"predictor_dims": [hidden, out]`` (a SimSiam
            predictor after the projector: ``head = Sequential(projector, predictor)``; ``cam_head =
            predictor`` like the ``simsiam-r50`` loader when the predictor takes the trunk's width, so that
            the paper's CAM path ``predictor(GAP(A))`` is defined; otherwise the CAM methods use the full head).
            For the tiny ViT: ``{"type": "vit", "patch_size": 8, "embed_dim": 192, "depth": 6, "num_heads": 3,
            "input_size": 112, "normalized": True, "pooling": "cls"}`` (a timm VisionTransformer whose
            embedding is its class token after the final norm).
        name: the model's name.

    Returns:
        An :class:`SSLModel` with random weights (used by training and by the loader).

    Examples:
        >>> m = build_tiny_model({"width": 8, "head_dims": [64, 32], "input_size": 32})
        >>> m(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 32])
        >>> s = build_tiny_model({"width": 8, "head_dims": [64, 64], "last_bn": True,
        ...                       "predictor_dims": [16, 64], "input_size": 32}).eval()
        >>> s(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 64])
        >>> s.cam_head is s.head[1]  # the predictor takes the trunk's 64 channels: the paper's CAM path
        True
        >>> build_tiny_model({"width": 8, "head_dims": [32, 32], "predictor_dims": [16, 32],
        ...                   "input_size": 32}).cam_head is None  # 32 != 64: the full head instead
        True
        >>> vit = build_tiny_model({"type": "vit", "patch_size": 8, "embed_dim": 24, "depth": 1, "num_heads": 2,
        ...                         "input_size": 32}).eval()
        >>> vit(torch.rand(1, 3, 32, 32)).shape, vit.features(torch.rand(1, 3, 32, 32)).shape
        (torch.Size([1, 24]), torch.Size([1, 24, 4, 4]))
    """
    normalized = bool(arch.get("normalized", True))
    if arch.get("type") == "vit":
        vit = build_tiny_vit_backbone(arch)
        return SSLModel(vit, None, mean=IMAGENET_MEAN if normalized else None, std=IMAGENET_STD if normalized else None,
                        name=name, input_size=int(arch.get("input_size", 112)), pooling=arch.get("pooling", "cls"),
                        num_prefix_tokens=vit.num_prefix_tokens, patch_size=int(arch.get("patch_size", 8)),
                        trunk_method="forward_features")
    trunk = tiny_resnet18_trunk(int(arch.get("width", 32)))
    dims = [trunk.out_channels] + [int(d) for d in arch.get("head_dims", [512, 128])]
    head: nn.Module = mlp_head(dims, last_bn=bool(arch.get("last_bn", False)), last_bn_affine=False)
    predictor = None
    if arch.get("predictor_dims"):
        predictor = mlp_head([dims[-1]] + [int(d) for d in arch["predictor_dims"]], last_bias=True)
        head = nn.Sequential(head, predictor)
    model = SSLModel(
        trunk,
        head,
        mean=IMAGENET_MEAN if normalized else None,
        std=IMAGENET_STD if normalized else None,
        name=name,
        input_size=int(arch.get("input_size", 112)),
    )
    # SimSiam: the paper's CAM path is predictor(GAP(A)), defined only when the predictor takes the trunk's
    # width (as in simsiam-r50); None (the full head) otherwise and for the other methods
    if predictor is not None and dims[-1] == trunk.out_channels:
        model.cam_head = predictor
    return model


def save_tiny_checkpoint(model: SSLModel, arch: dict[str, Any], path: str | os.PathLike, meta: dict | None = None,
                         half: bool = True) -> None:
    """Write a shipped-format weight file (``trunk``/``head`` state dicts, fp16 by default)."""
    def pack(module: nn.Module) -> dict[str, torch.Tensor]:
        return {
            k: (v.half() if half and v.is_floating_point() else v).detach().cpu().contiguous().clone()
            for k, v in module.state_dict().items()
        }

    torch.save(
        {"format": TINY_FORMAT, "arch": dict(arch), "trunk": pack(model.trunk), "head": pack(model.head),
         "meta": dict(meta or {})},
        path,
    )


def tiny_builder(name: str) -> Callable[[Any], SSLModel]:
    """The zoo builder of shipped model ``name``: a checkpoint in ``TINY_FORMAT`` -> its :class:`SSLModel`."""

    def build(checkpoint: Any) -> SSLModel:
        if (not isinstance(checkpoint, dict) or checkpoint.get("format") != TINY_FORMAT
                or not all(isinstance(checkpoint.get(key), dict) for key in ("arch", "trunk", "head"))):
            raise CheckpointError(
                f"not a {name!r} weight file: expected format {TINY_FORMAT!r} with 'arch', 'trunk' and 'head' "
                f"(the file that `python -m ssl_widgets.train --out FILE` writes)"
            )
        model = build_tiny_model(checkpoint["arch"], name=name)
        load_strict(model.trunk, checkpoint["trunk"], name, "trunk")
        load_strict(model.head, checkpoint["head"], name, "head")
        model.meta = dict(checkpoint.get("meta", {}))
        return model

    return build
