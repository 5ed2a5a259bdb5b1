"""Builders of the published models: a checkpoint in its authors' layout -> an :class:`SSLModel`.

Each builder converts the state dict (:mod:`~ssl_widgets.models.converters`), builds the
architecture and loads it strictly; the DINO builders live in :mod:`~ssl_widgets.models.dino`.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from .architectures import mlp_head, resnet50_trunk
from .checkpoint_file import load_strict
from .converters import convert_barlow_twins, convert_simclr_v2, convert_simsiam, convert_torchvision_resnet
from ..core import PAPER_INPUT_SIZE
from .normalization import IMAGENET_MEAN, IMAGENET_STD
from .wrapper import SSLModel

__all__ = ["build_barlow_twins", "build_simsiam", "build_supervised", "simclr_v2_builder"]


def simclr_v2_builder(width: int) -> Callable[[Any], SSLModel]:
    def build(checkpoint: Any) -> SSLModel:
        name = f"simclr-v2-r50-{width}x"
        trunk_sd, head_sd = convert_simclr_v2(checkpoint)
        trunk = resnet50_trunk(width)
        dim = trunk.out_channels
        head = mlp_head([dim, dim, dim, 128], last_bn=True)
        load_strict(trunk, trunk_sd, name, "trunk")
        load_strict(head, head_sd, name, "head")
        return SSLModel(trunk, head, name=name, input_size=PAPER_INPUT_SIZE)

    return build


def build_barlow_twins(checkpoint: Any, projector_width: int = 8192) -> SSLModel:
    # projector_width exists for tests only (a small checkpoint in the same layout); the published one is 8192
    trunk_sd, head_sd = convert_barlow_twins(checkpoint)
    trunk, head = resnet50_trunk(zero_init_residual=True), mlp_head([2048] + [projector_width] * 3)
    load_strict(trunk, trunk_sd, "barlow-twins-r50", "trunk")
    load_strict(head, head_sd, "barlow-twins-r50", "projector")
    return SSLModel(trunk, head, mean=IMAGENET_MEAN, std=IMAGENET_STD, name="barlow-twins-r50", input_size=PAPER_INPUT_SIZE)


def build_simsiam(checkpoint: Any) -> SSLModel:
    trunk_sd, head_sd = convert_simsiam(checkpoint)
    trunk = resnet50_trunk()
    projector = mlp_head([2048, 2048, 2048, 2048], last_bn=True, last_bn_affine=False, last_bias=True)
    predictor = mlp_head([2048, 512, 2048], last_bias=True)
    head = nn.Sequential(projector, predictor)
    load_strict(trunk, trunk_sd, "simsiam-r50", "trunk")
    load_strict(head, head_sd, "simsiam-r50", "projector+predictor")
    model = SSLModel(trunk, head, mean=IMAGENET_MEAN, std=IMAGENET_STD, name="simsiam-r50", input_size=PAPER_INPUT_SIZE)
    model.cam_head = predictor  # the paper's CAM path: predictor(GAP(A)), skipping the projector
    return model


def build_supervised(checkpoint: Any) -> SSLModel:
    trunk_sd, _ = convert_torchvision_resnet(checkpoint)
    trunk = resnet50_trunk()
    load_strict(trunk, trunk_sd, "resnet50-supervised", "trunk")
    return SSLModel(trunk, None, mean=IMAGENET_MEAN, std=IMAGENET_STD, name="resnet50-supervised", input_size=PAPER_INPUT_SIZE)
