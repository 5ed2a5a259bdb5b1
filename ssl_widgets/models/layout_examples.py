"""A checkpoint in each published layout the zoo loads, with placeholder values (for tests and docs).

:func:`example_checkpoint` writes, for every name of :func:`~ssl_widgets.models.available_models`, an
object shaped like the file that name loads: the same nesting, key names and tensor shapes as the
published release (DINO's full checkpoint, DINOv2's release with its ``mask_token`` and
``register_tokens``, SimCLR v2's converted ``{'resnet', 'head'}``, Barlow Twins' and SimSiam's
training checkpoints, torchvision's ResNet-50, the shipped tiny format). The values are not
trained: they serve to check that a loader accepts its layout and refuses a damaged one. A zoo entry
without an example here makes :func:`example_checkpoint` raise, so the test suite (which checks every
zoo name) asks for one.
"""
from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from typing import Any

import torch
from torch import nn

from .architectures import mlp_head, resnet50_trunk

__all__ = ["example_checkpoint"]


def _values(module: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """The module's state dict shapes, filled with small seeded values (built on the meta device: no init cost)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in module.state_dict().items():
        if value.is_floating_point():
            out[key] = torch.randn(value.shape, generator=g) * 0.02 + (1.0 if key.endswith("running_var") else 0.0)
        else:
            out[key] = torch.zeros(value.shape, dtype=value.dtype)
    return out


def _on_meta(build: Callable[[], nn.Module]) -> nn.Module:
    with torch.device("meta"):
        return build()


def _resnet50(width: int = 1) -> dict[str, torch.Tensor]:
    return _values(_on_meta(lambda: resnet50_trunk(width)), width)


def _simclr_v2(width: int) -> dict[str, Any]:
    stem = {"conv1.": "net.0.0.", "bn1.": "net.0.1.0."}
    block = {"conv1.": "net.0.", "bn1.": "net.1.0.", "conv2.": "net.2.", "bn2.": "net.3.0.", "conv3.": "net.4.",
             "bn3.": "net.5.0.", "downsample.0.": "projection.shortcut.", "downsample.1.": "projection.bn.0."}
    resnet = {}
    for key, value in _resnet50(width).items():
        if key.startswith("layer"):
            stage, index, rest = key[len("layer"):].split(".", 2)
            old = next(o for o in block if rest.startswith(o))
            resnet[f"net.{stage}.blocks.{index}.{block[old]}{rest[len(old):]}"] = value
        else:
            old = next(o for o in stem if key.startswith(o))
            resnet[stem[old] + key[len(old):]] = value
    dim = 2048 * width
    head = _values(_on_meta(lambda: mlp_head([dim, dim, dim, 128], last_bn=True)), 7)
    return {"resnet": resnet, "head": {"layers." + k: v for k, v in head.items()}}


def _barlow_twins() -> dict[str, Any]:
    projector = _values(_on_meta(lambda: mlp_head([2048, 8192, 8192, 8192])), 3)
    model = {"module.backbone." + k: v for k, v in _resnet50().items()}
    model.update({"module.projector." + k: v for k, v in projector.items()})
    model["module.bn.running_mean"] = torch.zeros(8192)  # the loss-only BatchNorm, dropped by the loader
    return {"epoch": 1000, "model": model, "optimizer": {"state": {}, "param_groups": []}}


def _simsiam() -> dict[str, Any]:
    trunk = _resnet50()
    projector = _values(_on_meta(lambda: mlp_head([2048, 2048, 2048, 2048], last_bn=True, last_bn_affine=False,
                                                  last_bias=True)), 4)
    predictor = _values(_on_meta(lambda: mlp_head([2048, 512, 2048], last_bias=True)), 5)
    state = {"module.encoder." + k: v for k, v in trunk.items()}
    state.update({"module.encoder.fc." + k: v for k, v in projector.items()})
    state.update({"module.predictor." + k: v for k, v in predictor.items()})
    return {"epoch": 100, "arch": "resnet50", "state_dict": state, "optimizer": {"state": {}, "param_groups": []}}


def _dino_head(in_dim: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(9)
    return {"mlp.0.weight": torch.randn(64, in_dim, generator=g) * 0.02, "mlp.0.bias": torch.zeros(64),
            "mlp.2.weight": torch.randn(32, 64, generator=g) * 0.02, "mlp.2.bias": torch.zeros(32),
            "last_layer.weight_g": torch.ones(128, 1), "last_layer.weight_v": torch.randn(128, 32, generator=g)}


def _dino_r50() -> dict[str, Any]:
    teacher = {"module.backbone." + k: v for k, v in _resnet50().items()}
    teacher.update({"module.head." + k: v for k, v in _dino_head(2048).items()})
    return {"teacher": teacher, "epoch": 800}


def _dino_vit(name: str) -> dict[str, torch.Tensor]:
    from .dino import VIT_ARCHS
    from .position_rules import DINO_RULE, ReferenceViT

    arch = {k: v for k, v in VIT_ARCHS[name].items() if k not in ("reg_tokens", "no_embed_class")}
    state = _values(_on_meta(lambda: ReferenceViT(position_rule=DINO_RULE, num_classes=0, **arch)), 11)
    if name.startswith("dinov2"):
        state["mask_token"] = torch.zeros(1, arch["embed_dim"])
        if "reg_tokens" in VIT_ARCHS[name]:
            state["register_tokens"] = torch.zeros(1, VIT_ARCHS[name]["reg_tokens"], arch["embed_dim"])
    return state


def _shipped(file_name: str) -> Callable[[], Any]:
    def read() -> Any:
        from .checkpoint_file import read_checkpoint

        return read_checkpoint(str(resources.files("ssl_widgets") / "weights" / file_name))

    return read


_EXAMPLES: dict[str, Callable[[], Any]] = {
    "tiny-simclr": _shipped("tiny-simclr.pt"),
    "tiny-barlow-twins": _shipped("tiny-barlow-twins.pt"),
    "tiny-simsiam": _shipped("tiny-simsiam.pt"),
    "tiny-dino-vit": _shipped("tiny-dino-vit.pt"),
    "simclr-v2-r50-1x": lambda: _simclr_v2(1),
    "simclr-v2-r50-2x": lambda: _simclr_v2(2),
    "barlow-twins-r50": _barlow_twins,
    "simsiam-r50": _simsiam,
    "resnet50-supervised": lambda: _resnet50() | {"fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)},
    "dino-r50": _dino_r50,
    "dino-vits16": lambda: _dino_vit("dino-vits16"),
    "dino-vitb16": lambda: _dino_vit("dino-vitb16"),
    "dinov2-vits14": lambda: _dino_vit("dinov2-vits14"),
    "dinov2-vits14-reg": lambda: _dino_vit("dinov2-vits14-reg"),
}


def example_checkpoint(name: str) -> Any:
    """An object in the layout of the file that ``load_model(name)`` loads (placeholder values).

    Args:
        name: a zoo name.

    Returns:
        The checkpoint object (what ``torch.load`` of the published file returns).

    Raises:
        KeyError: the zoo has this name but no example here (add one beside the loader).

    Examples:
        >>> sorted(example_checkpoint("dino-r50"))
        ['epoch', 'teacher']
    """
    if name not in _EXAMPLES:
        raise KeyError(f"no example checkpoint for the zoo model {name!r}: add one in ssl_widgets/models/layout_examples.py")
    return _EXAMPLES[name]()
