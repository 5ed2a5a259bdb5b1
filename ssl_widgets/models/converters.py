"""Key mappings from the published checkpoint layouts to this package's modules.

Each function takes the object stored in the checkpoint file and returns
``(trunk_state_dict, head_state_dict)`` for a :class:`~ssl_widgets.models.architectures.ResNetTrunk`
and the matching ``mlp_head``. The mappings are written from the key layouts of the published checkpoint files
(no third-party converter code is used).
"""
from __future__ import annotations

import re
from typing import Any
from collections.abc import Mapping

import torch

__all__ = [
    "CheckpointError",
    "convert_simclr_v2",
    "convert_barlow_twins",
    "convert_simsiam",
    "convert_torchvision_resnet",
    "dinov2_to_timm_layout",
    "shape_of",
    "strip_prefix",
]

StateDict = dict[str, torch.Tensor]


class CheckpointError(ValueError):
    """A weight file could not be read, is corrupt, or does not have the expected layout."""


def _require_mapping(obj: Any, key: str, what: str) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping) or key not in obj:
        found = list(obj.keys())[:8] if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(f"{what}: expected a dict with key {key!r}, found {found}")
    return obj[key]


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> StateDict:
    """The entries of ``state`` whose key starts with ``prefix``, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state.items() if isinstance(k, str) and k.startswith(prefix)}


# SimCLR v2 (converted TF checkpoint): {'resnet': ..., 'head': ...}
_SIMCLR_BLOCK = re.compile(r"^net\.([1-4])\.blocks\.(\d+)\.(.*)$")
_SIMCLR_CONV = {"net.0.": "conv1.", "net.2.": "conv2.", "net.4.": "conv3."}
_SIMCLR_BN = {"net.1.0.": "bn1.", "net.3.0.": "bn2.", "net.5.0.": "bn3."}
_SIMCLR_SHORTCUT = {"projection.shortcut.": "downsample.0.", "projection.bn.0.": "downsample.1."}


def _simclr_key(key: str) -> str | None:
    if key.startswith("fc."):
        return None  # the supervised 1000-way head is not part of the SSL model
    if key.startswith("net.0.0."):
        return "conv1." + key[len("net.0.0."):]
    if key.startswith("net.0.1.0."):
        return "bn1." + key[len("net.0.1.0."):]
    match = _SIMCLR_BLOCK.match(key)
    if match is None:
        raise CheckpointError(f"SimCLR v2 checkpoint: unexpected key {key!r} in 'resnet'")
    stage, index, rest = match.groups()
    for table in (_SIMCLR_CONV, _SIMCLR_BN, _SIMCLR_SHORTCUT):
        for old, new in table.items():
            if rest.startswith(old):
                return f"layer{stage}.{index}.{new}{rest[len(old):]}"
    raise CheckpointError(f"SimCLR v2 checkpoint: unexpected key {key!r} in 'resnet'")


def convert_simclr_v2(checkpoint: Any) -> tuple[StateDict, StateDict]:
    """Map a converted SimCLR v2 checkpoint (``{'resnet', 'head'}``) to trunk and head state dicts.

    Examples:
        A file in this layout (``torch.load("r50_1x_sk0_ema.pth")``), here with three of its tensors:

        >>> checkpoint = {"resnet": {"net.0.0.weight": torch.zeros(64, 3, 7, 7),
        ...                          "net.1.blocks.0.net.2.weight": torch.zeros(64, 64, 3, 3),
        ...                          "fc.weight": torch.zeros(1000, 2048)},
        ...               "head": {"layers.0.0.weight": torch.zeros(2048, 2048)}}
        >>> trunk_sd, head_sd = convert_simclr_v2(checkpoint)
        >>> sorted(trunk_sd), sorted(head_sd)  # the supervised 'fc' is dropped
        (['conv1.weight', 'layer1.0.conv2.weight'], ['0.0.weight'])
    """
    resnet = _require_mapping(checkpoint, "resnet", "SimCLR v2 checkpoint")
    head = _require_mapping(checkpoint, "head", "SimCLR v2 checkpoint")
    trunk_sd: StateDict = {}
    for key, value in resnet.items():
        new_key = _simclr_key(key)
        if new_key is not None:
            trunk_sd[new_key] = value
    head_sd = strip_prefix(head, "layers.")
    if not head_sd:
        raise CheckpointError("SimCLR v2 checkpoint: 'head' has no 'layers.*' keys")
    return trunk_sd, head_sd


def convert_barlow_twins(checkpoint: Any) -> tuple[StateDict, StateDict]:
    """Map the official Barlow Twins full checkpoint (``{'epoch','model','optimizer'}``).

    ``module.backbone.*`` is a torchvision ResNet-50 without ``fc``; ``module.projector.*`` the
    8192-8192-8192 projector. ``module.bn`` (the loss-only affine-free BN) is dropped.
    """
    model = _require_mapping(checkpoint, "model", "Barlow Twins checkpoint")
    trunk_sd = strip_prefix(model, "module.backbone.")
    head_sd = strip_prefix(model, "module.projector.")
    if not trunk_sd or not head_sd:
        raise CheckpointError(
            "Barlow Twins checkpoint: expected 'module.backbone.*' and 'module.projector.*' keys in 'model' "
            "(the backbone-only resnet50.pth from torch.hub has no projector; use the full checkpoint.pth); "
            f"'model' has keys {sorted(model)[:4]}"
        )
    return trunk_sd, head_sd


def convert_simsiam(checkpoint: Any) -> tuple[StateDict, StateDict]:
    """Map the official SimSiam checkpoint (``{'state_dict': ...}``).

    ``module.encoder.*`` is a torchvision ResNet-50 whose ``fc`` is the projector;
    ``module.predictor.*`` the predictor. The head is ``Sequential(projector, predictor)``, so its
    state dict keys are ``0.*`` (projector) and ``1.*`` (predictor).
    """
    state = _require_mapping(checkpoint, "state_dict", "SimSiam checkpoint")
    encoder = strip_prefix(state, "module.encoder.")
    predictor = strip_prefix(state, "module.predictor.")
    if not encoder or not predictor:
        raise CheckpointError("SimSiam checkpoint: expected 'module.encoder.*' and 'module.predictor.*' keys in "
                              f"'state_dict', found {sorted(state)[:4]}")
    trunk_sd = {k: v for k, v in encoder.items() if not k.startswith("fc.")}
    head_sd = {"0." + k[3:]: v for k, v in encoder.items() if k.startswith("fc.")}
    head_sd.update({"1." + k: v for k, v in predictor.items()})
    return trunk_sd, head_sd


def convert_torchvision_resnet(checkpoint: Any) -> tuple[StateDict, StateDict]:
    """A plain torchvision ResNet state dict: trunk keys kept, ``fc`` dropped, no head."""
    if not isinstance(checkpoint, Mapping) or "conv1.weight" not in checkpoint:
        found = sorted(checkpoint)[:6] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise CheckpointError(f"torchvision ResNet weights: expected a state dict with 'conv1.weight', found {found}")
    return {k: v for k, v in checkpoint.items() if not k.startswith("fc.")}, {}


def dinov2_to_timm_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DINOv2 names -> timm's: drop ``mask_token``; with registers, timm's ``no_embed_class`` layout
    (the class token's position embedding folded into the class token, ``register_tokens`` ->
    ``reg_token``), which computes exactly DINOv2's forward. Also used for transformers' DINOv2 models
    (:mod:`~ssl_widgets.models.hf`) once their names are DINOv2's."""
    state = {k: v for k, v in state.items() if k != "mask_token"}
    if "register_tokens" in state:
        pos, cls = state.get("pos_embed"), state.get("cls_token")
        if not (isinstance(pos, torch.Tensor) and isinstance(cls, torch.Tensor) and pos.dim() == 3
                and cls.dim() == 3 and pos.shape[2] == cls.shape[2] and pos.shape[1] > 1):
            raise CheckpointError(f"DINOv2 with registers: expected 'cls_token' (1, 1, C) and 'pos_embed' (1, 1 + N, C), "
                                  f"found {shape_of(cls)} and {shape_of(pos)}")
        state["reg_token"] = state.pop("register_tokens")
        state["cls_token"] = cls + pos[:, :1]
        state["pos_embed"] = pos[:, 1:]
    return state


def shape_of(value: Any) -> str:
    """A checkpoint entry for an error message: its shape if a tensor, else its type's name."""
    return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__
