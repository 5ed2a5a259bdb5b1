"""Loaders of the DINO and DINOv2 checkpoints in their published layouts.

* DINO full checkpoints (``*_full_checkpoint.pth``): ``{'student', 'teacher', 'optimizer', 'epoch',
  'args', 'dino_loss'}``; each network's keys are ``backbone.*`` and ``head.*``, with a ``module.``
  prefix where the network was wrapped in DistributedDataParallel (the student always; the
  ResNet-50's teacher too). The **teacher with its DINO head** is explained, as the authors' code
  does. The head is ``mlp`` (Linear [-> BN] -> GELU ... -> Linear), an L2 normalisation, and
  ``last_layer``, stored weight-normalised (``weight_g``/``weight_v``) or plain (``weight``).
* DINO training checkpoints (``checkpoint.pth`` of ``main_dino.py``) are full checkpoints too; their
  ``args`` entry is an ``argparse.Namespace``, the one class the safe reader allows
  (:mod:`~ssl_widgets.models.checkpoint_file`).
* DINOv2 training checkpoints: ``{'model': {'student.*', 'teacher.*'}, 'optimizer', 'iteration'}`` or
  ``teacher_checkpoint.pth``'s ``{'teacher': {'backbone.*', 'dino_head.*', 'ibot_head.*'}}``; the
  teacher's backbone is loaded (chunked ``blocks.C.I.*`` names unchunked), the heads are not.
* DINO backbone files (``dino_resnet50_pretrain.pth``, ``dino_deitsmall16_pretrain.pth``,
  ``dino_vitbase16_pretrain.pth``): a bare state dict of the backbone (torchvision ResNet-50
  names without ``fc``, or timm-compatible ViT names); the embedding is the pooled feature / the
  class token after the final norm.
* DINOv2 releases (``dinov2_vits14[_reg4]_pretrain.pth``): timm-compatible ViT-S/14 names with
  ``blocks.N.ls1.gamma`` layer scales, a ``mask_token`` (unused at inference), a 518 px
  ``pos_embed`` (37x37 + class) and, for the register variant, ``register_tokens``.

Position embeddings are resampled for other input sizes exactly as DINO's and DINOv2's own
``interpolate_pos_encoding`` does with their torch.hub settings (bicubic with a 0.1 scale offset and
no antialias; for the register models, bicubic to the grid size with antialias: see
:mod:`~ssl_widgets.models.position_rules`), so the embedding and every map equal the reference
model's at any input size, not only at the training size.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .architectures import resnet50_trunk
from .checkpoint_file import load_strict
from .converters import CheckpointError, convert_torchvision_resnet, dinov2_to_timm_layout, shape_of, strip_prefix
from .position_rules import DINO_RULE, REGISTERS_RULE, ReferenceViT
from ..core import PAPER_INPUT_SIZE
from .normalization import IMAGENET_MEAN, IMAGENET_STD
from .wrapper import SSLModel

__all__ = [
    "VIT_ARCHS",
    "CheckpointDINOHead",
    "build_dino_r50",
    "build_dino_vit",
    "dino_head_from_state",
    "dino_vit_builder",
    "dinov2_to_timm_layout",
    "split_dino_checkpoint",
]

#: timm ``VisionTransformer`` arguments of each released ViT.
VIT_ARCHS: dict[str, dict[str, Any]] = {
    "dino-vits16": {"img_size": 224, "patch_size": 16, "embed_dim": 384, "depth": 12, "num_heads": 6},
    "dino-vitb16": {"img_size": 224, "patch_size": 16, "embed_dim": 768, "depth": 12, "num_heads": 12},
    "dinov2-vits14": {"img_size": 518, "patch_size": 14, "embed_dim": 384, "depth": 12, "num_heads": 6, "init_values": 1e-5},
    "dinov2-vits14-reg": {"img_size": 518, "patch_size": 14, "embed_dim": 384, "depth": 12, "num_heads": 6, "init_values": 1e-5,
                              "reg_tokens": 4, "no_embed_class": True},
}


class CheckpointDINOHead(nn.Module):
    """A DINO head rebuilt from a checkpoint's ``head.*`` keys: ``last_layer(normalize(mlp(x)))`` (the
    logits before the softmax), its layers as the file has them and the weight norm folded into a plain
    ``Linear``. Its attribute names are DINO's, so its state dict keys are the checkpoint's
    (``mlp.0.weight``... ``last_layer.weight``). DINO's trainable head is
    :class:`~ssl_widgets.models.tiny_vit.DINOHead`.

    Examples:
        >>> head = CheckpointDINOHead(nn.Sequential(nn.Linear(8, 4)), nn.Linear(4, 16, bias=False))
        >>> head(torch.rand(2, 8)).shape
        torch.Size([2, 16])
    """

    def __init__(self, mlp: nn.Module, last_layer: nn.Linear) -> None:
        super().__init__()
        self.mlp, self.last_layer = mlp, last_layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1, p=2))


def _last_layer_weight(state: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The effective last-layer weight: ``g * v / ||v||`` (per output row) or the plain weight."""
    keys = {k for k in state if k.startswith("last_layer.")}
    pairs = [("last_layer.weight_g", "last_layer.weight_v"),
             ("last_layer.parametrizations.weight.original0", "last_layer.parametrizations.weight.original1")]
    for g_key, v_key in pairs:
        if g_key in state and v_key in state:
            g, v = state[g_key], state[v_key]
            if not (isinstance(g, torch.Tensor) and isinstance(v, torch.Tensor) and v.dim() == 2
                    and g.numel() == v.shape[0]):
                raise CheckpointError(f"DINO head: '{g_key}' and '{v_key}' should be a gain per row and a 2-d "
                                      f"weight, found {shape_of(g)} and {shape_of(v)}")
            g, v = g.float().reshape(-1, 1), v.float()
            return g * v / v.norm(dim=1, keepdim=True)
    if "last_layer.weight" in state:
        return _head_tensor(state, "last_layer.weight", 2).float()
    raise CheckpointError(
        f"DINO head: no last layer found (expected last_layer.weight_g/weight_v or last_layer.weight), found {sorted(keys)}"
    )


def _head_tensor(state: Mapping[str, Any], key: str, dims: int) -> torch.Tensor:
    value = state[key]
    if not isinstance(value, torch.Tensor) or value.dim() != dims:
        what = f"a {value.dim()}-d tensor" if isinstance(value, torch.Tensor) else type(value).__name__
        raise CheckpointError(f"DINO head: 'head.{key}' should be a {dims}-d tensor, found {what}")
    return value


def _require_bias(mlp_state: Mapping[str, Any], prefix: str) -> None:
    """DINO's head builds every ``mlp`` Linear with a bias: a weight without one is a damaged file (built
    bias-free it would load, and give another model's embeddings)."""
    if f"{prefix}bias" not in mlp_state:
        raise CheckpointError(f"DINO head: 'head.mlp.{prefix}weight' has no 'head.mlp.{prefix}bias' (missing key; "
                              f"every Linear of DINO's head has a bias)")


def dino_head_from_state(state: Mapping[str, Any], in_dim: int | None = None) -> CheckpointDINOHead:
    """Build a :class:`CheckpointDINOHead` whose layout (depth, widths, BatchNorm) follows the state dict ``head.*``
    keys (prefix removed), check that its widths chain, and load it.

    Args:
        state: the ``head.*`` entries without the prefix.
        in_dim: the backbone's feature width, if known (the head's input must match it).

    Raises:
        CheckpointError: no ``mlp.*`` or last layer, a malformed or unexpected key, or widths that do
            not chain (``mlp`` output vs ``last_layer`` input, backbone width vs ``mlp`` input); the
            message names the key.
    """
    if bad := [k for k in state if not isinstance(k, str)]:
        raise CheckpointError(f"DINO head: keys must be strings, found {bad[:3]}")
    mlp_state = strip_prefix(state, "mlp.")
    if not mlp_state:
        raise CheckpointError(f"DINO head: expected 'mlp.*' keys, found {sorted(state)[:6]}")
    if "weight" in mlp_state:  # nlayers=1: mlp is a single Linear
        w = _head_tensor(mlp_state, "weight", 2)
        _require_bias(mlp_state, "")
        mlp: nn.Module = nn.Linear(w.shape[1], w.shape[0])
        linears = [w]
    else:
        if bad := sorted(k for k in mlp_state if not k.split(".")[0].isdigit()):
            raise CheckpointError(f"DINO head: unexpected keys {['head.mlp.' + k for k in bad[:3]]} (expected "
                                  f"'head.mlp.<index>.<parameter>')")
        indices = sorted({int(k.split(".")[0]) for k in mlp_state})
        layers: list[nn.Module] = []
        linears = []
        for i in range(indices[-1] + 1):
            w = mlp_state.get(f"{i}.weight")
            if isinstance(w, torch.Tensor) and w.dim() == 2:
                _require_bias(mlp_state, f"{i}.")
                layers.append(nn.Linear(w.shape[1], w.shape[0]))
                linears.append(w)
            elif f"{i}.running_mean" in mlp_state:
                layers.append(nn.BatchNorm1d(_head_tensor(mlp_state, f"{i}.running_mean", 1).shape[0]))
            else:
                layers.append(nn.GELU())
        mlp = nn.Sequential(*layers)
    for before, after in zip(linears, linears[1:]):
        if after.shape[1] != before.shape[0]:
            raise CheckpointError(f"DINO head: the 'head.mlp' layers do not chain: a {before.shape[0]}-d output feeds "
                                  f"a layer expecting {after.shape[1]}-d")
    if in_dim is not None and linears[0].shape[1] != in_dim:
        raise CheckpointError(f"DINO head: 'head.mlp' takes {linears[0].shape[1]}-d input, but the backbone gives "
                              f"{in_dim}-d features (a head of another model?)")
    try:
        mlp.load_state_dict(mlp_state, strict=True)
    except (RuntimeError, TypeError, AttributeError) as error:
        raise CheckpointError(f"DINO head: the 'mlp' keys do not form Linear/BN/GELU layers: {str(error)[:300]}") from error
    weight = _last_layer_weight(state)
    if weight.dim() != 2 or weight.shape[1] != linears[-1].shape[0]:
        raise CheckpointError(f"DINO head: 'head.last_layer' has shape {tuple(weight.shape)}, but the mlp gives "
                              f"{linears[-1].shape[0]}-d output")
    last = nn.Linear(weight.shape[1], weight.shape[0], bias="last_layer.bias" in state)
    with torch.no_grad():
        last.weight.copy_(weight)
        if last.bias is not None:
            last.bias.copy_(_head_tensor(state, "last_layer.bias", 1))
    return CheckpointDINOHead(mlp, last).eval()


def _strip_module(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {(k.removeprefix("module.") if isinstance(k, str) else k): v for k, v in state.items()}


_CHUNKED_BLOCK = re.compile(r"^blocks\.\d+\.(\d+)\.")


def _training_teacher(checkpoint: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The teacher's state of a training checkpoint: DINO's ``teacher`` entry, or the ``teacher.*``
    keys of DINOv2's ``model`` entry; ``None`` for a plain state dict."""
    if "teacher" in checkpoint:
        return checkpoint["teacher"]
    model = checkpoint.get("model")
    if isinstance(model, Mapping) and any(str(k).startswith("teacher.") for k in model):
        return strip_prefix(model, "teacher.")
    return None


def split_dino_checkpoint(checkpoint: Any, model_name: str, backbone_key: str) -> tuple[dict, dict | None]:
    """``(backbone_state, head_state or None)`` of a DINO / DINOv2 training checkpoint (its teacher) or a
    backbone file.

    Training checkpoints: DINO's (``student``, ``teacher``, ``optimizer``, ``epoch``, ``args``, ...; a
    ``module.`` prefix where the network was wrapped in DistributedDataParallel), DINOv2's (``model``
    with ``student.*`` / ``teacher.*`` keys, or ``teacher_checkpoint.pth``'s ``teacher``; chunked
    ``blocks.C.I.*`` names are unchunked). The DINO head is returned as ``head_state``; DINOv2's
    ``dino_head`` and ``ibot_head`` are not (its evaluations use the class token).

    Args:
        checkpoint: the loaded file.
        model_name: for error messages.
        backbone_key: a key every backbone state of this model has (``"conv1.weight"``, ``"cls_token"``).

    Raises:
        CheckpointError: the file is neither layout; the message lists the keys found.
    """
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"{model_name}: expected a dict, found {type(checkpoint).__name__}")
    teacher = _training_teacher(checkpoint)
    if teacher is not None:
        if not isinstance(teacher, Mapping):
            raise CheckpointError(f"{model_name}: a training checkpoint whose 'teacher' is a "
                                  f"{type(teacher).__name__}, not a state dict")
        teacher = _strip_module(teacher)
        backbone = {_CHUNKED_BLOCK.sub(r"blocks.\1.", k): v for k, v in strip_prefix(teacher, "backbone.").items()}
        head = strip_prefix(teacher, "head.")
        if backbone_key not in backbone:
            raise CheckpointError(
                f"{model_name}: a training checkpoint with keys {sorted(map(str, checkpoint))[:8]} whose teacher has "
                f"no 'backbone.{backbone_key}' (optionally prefixed by 'module.'); the teacher's keys begin "
                f"{sorted(map(str, teacher))[:4]}"
            )
        return backbone, head or None
    state = _strip_module(checkpoint)
    if backbone_key in state:
        return state, None
    raise CheckpointError(
        f"{model_name}: neither a DINO full checkpoint (with 'teacher') nor a backbone state dict with "
        f"{backbone_key!r}; found keys {list(checkpoint)[:6]}"
    )


def build_dino_r50(checkpoint: Any) -> SSLModel:
    """DINO ResNet-50: the teacher with its DINO head (full checkpoint) or the pooled backbone."""
    backbone, head_state = split_dino_checkpoint(checkpoint, "dino-r50", "conv1.weight")
    trunk_sd, _ = convert_torchvision_resnet(backbone)
    trunk = resnet50_trunk()
    load_strict(trunk, trunk_sd, "dino-r50", "trunk")
    head = dino_head_from_state(head_state, in_dim=trunk.out_channels) if head_state is not None else None
    model = SSLModel(trunk, head, mean=IMAGENET_MEAN, std=IMAGENET_STD, name="dino-r50", input_size=PAPER_INPUT_SIZE)
    model.meta = {"head": "teacher DINO head" if head is not None else "none (backbone file)"}
    return model


def build_dino_vit(name: str, checkpoint: Any) -> SSLModel:
    """A DINO / DINOv2 ViT from its checkpoint; see the module docstring for the layouts."""
    arch = VIT_ARCHS[name]
    backbone, head_state = split_dino_checkpoint(checkpoint, name, "cls_token")
    if name.startswith("dinov2"):
        if head_state is not None:
            raise CheckpointError(f"{name}: expected a DINOv2 backbone or training checkpoint, found a DINO (v1) full "
                                  f"checkpoint with a 'head.*' DINO head")
        if ("register_tokens" in backbone) != ("reg_tokens" in arch):
            has = "has" if "register_tokens" in backbone else "has no"
            other = "dinov2-vits14" if "reg_tokens" in arch else "dinov2-vits14-reg"
            raise CheckpointError(f"{name}: this file {has} 'register_tokens'; load it as {other!r}")
        backbone = dinov2_to_timm_layout(backbone)
    backbone = {k: v for k, v in backbone.items() if not str(k).startswith("head.")}  # DINO's Identity head
    rule = REGISTERS_RULE if "reg_tokens" in arch else DINO_RULE
    vit = ReferenceViT(position_rule=rule, num_classes=0, global_pool="token", **arch)
    load_strict(vit, backbone, name, "backbone")
    head = dino_head_from_state(head_state, in_dim=vit.embed_dim) if head_state is not None else None
    model = SSLModel(vit, head, mean=IMAGENET_MEAN, std=IMAGENET_STD, name=name, input_size=PAPER_INPUT_SIZE, pooling="cls",
                     num_prefix_tokens=vit.num_prefix_tokens, patch_size=arch["patch_size"],
                     trunk_method="forward_features")
    model.meta = {"head": "teacher DINO head" if head is not None else "none (class token)",
                  "position embeddings": f"resampled as the reference code does: {rule.name}"}
    return model


def dino_vit_builder(name: str) -> Callable[[Any], SSLModel]:
    """The zoo builder of ``name`` (a key of :data:`VIT_ARCHS`)."""
    def build(checkpoint: Any) -> SSLModel:
        return build_dino_vit(name, checkpoint)

    return build
