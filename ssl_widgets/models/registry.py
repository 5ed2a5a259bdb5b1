"""The zoo's entries: one :class:`ModelSpec` per loadable model (name, licence, source, builder, file)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .builders import build_barlow_twins, build_simsiam, build_supervised, simclr_v2_builder
from .dino import build_dino_r50, dino_vit_builder
from .tiny import tiny_builder
from .wrapper import SSLModel

__all__ = ["ModelSpec", "available_models", "model_info"]


@dataclass(frozen=True)
class ModelSpec:
    """One entry of the zoo.

    Attributes:
        name: the zoo name (``load_model(name)``).
        description: one line for tables and ``--help``.
        license: licence of the weights.
        source: where the weights come from.
        url: download URL, or ``None`` when the file must be given as ``weights=PATH``.
        file_name: name of the file in torch.hub's cache (``$TORCH_HOME/hub/checkpoints``).
        sha256: expected SHA-256 of the file, a hex prefix of it, or ``None`` when unknown
            (then the hash is pinned on first use in a ``.sha256`` file beside it).
    """

    name: str
    description: str
    license: str
    source: str
    build: Callable[[Any], SSLModel] = field(repr=False)
    url: str | None = None
    file_name: str | None = None
    sha256: str | None = None


SIMCLR_HELP = (
    "SimCLR v2 weights are published as TensorFlow checkpoints "
    "(gs://simclr-checkpoints/simclrv2/pretrained/r50_{w}x_sk0). Convert one to the {{'resnet','head'}} "
    "PyTorch layout (EMA variables) and pass weights=PATH"
)

_DINO = "https://dl.fbaipublicfiles.com/dino/"
_DINOV2 = "https://dl.fbaipublicfiles.com/dinov2/"

_REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec("tiny-simclr", "ResNet-18 (half width) trained here with SimCLR (NT-Xent), 112 px",
                  "Apache-2.0 (trained by ssl_widgets)", "shipped with the package", tiny_builder("tiny-simclr"),
                  file_name="tiny-simclr.pt"),
        ModelSpec("tiny-barlow-twins", "ResNet-18 (half width) trained here with Barlow Twins, 112 px",
                  "Apache-2.0 (trained by ssl_widgets)", "shipped with the package",
                  tiny_builder("tiny-barlow-twins"), file_name="tiny-barlow-twins.pt"),
        ModelSpec("tiny-simsiam", "ResNet-18 (half width) trained here with SimSiam; similarity on the predictor "
                  "output, 112 px", "Apache-2.0 (trained by ssl_widgets)", "shipped with the package",
                  tiny_builder("tiny-simsiam"), file_name="tiny-simsiam.pt"),
        ModelSpec("simclr-v2-r50-1x", "SimCLR v2 ResNet-50 1x (sk0), 3-layer head, 128-d output",
                  "Apache-2.0 (google-research/simclr)", "google-research/simclr, converted to PyTorch",
                  simclr_v2_builder(1), file_name="r50_1x_sk0_ema.pth"),
        ModelSpec("simclr-v2-r50-2x", "SimCLR v2 ResNet-50 2x (sk0), 3-layer head, 128-d output",
                  "Apache-2.0 (google-research/simclr)", "google-research/simclr, converted to PyTorch",
                  simclr_v2_builder(2), file_name="r50_2x_sk0_ema.pth"),
        ModelSpec("barlow-twins-r50", "Barlow Twins ResNet-50 (1000 ep) with its 8192-8192-8192 projector",
                  "CC-BY-NC 4.0 (facebookresearch/barlowtwins)", "facebookresearch/barlowtwins full checkpoint",
                  build_barlow_twins,
                  url="https://dl.fbaipublicfiles.com/barlowtwins/ep1000_bs2048_lrw0.2_lrb0.0048_lambd0.0051/checkpoint.pth",
                  file_name="barlowtwins_ep1000_checkpoint.pth"),
        ModelSpec("simsiam-r50", "SimSiam ResNet-50 (100 ep, bs 512); similarity on the predictor output",
                  "CC-BY-NC 4.0 (facebookresearch/simsiam)", "facebookresearch/simsiam checkpoint_0099",
                  build_simsiam,
                  url="https://dl.fbaipublicfiles.com/simsiam/models/100ep/pretrain/checkpoint_0099.pth.tar",
                  file_name="simsiam_100ep_bs512_checkpoint_0099.pth.tar"),
        ModelSpec("resnet50-supervised", "torchvision ResNet-50 (ImageNet supervised, V1), pooled 2048-d feature",
                  "BSD-3-Clause (torchvision)", "torchvision IMAGENET1K_V1", build_supervised,
                  url="https://download.pytorch.org/models/resnet50-0676ba61.pth",
                  file_name="resnet50-0676ba61.pth", sha256="0676ba61"),
        ModelSpec("tiny-dino-vit", "ViT (patch 8, 192-d, 6 blocks) trained here with DINO (+ distillation from tiny-simclr), 112 px; class token",
                  "Apache-2.0 (trained by ssl_widgets)", "shipped with the package", tiny_builder("tiny-dino-vit"),
                  file_name="tiny-dino-vit.pt"),
        ModelSpec("dino-r50", "DINO ResNet-50, teacher with its DINO head (full checkpoint) or pooled backbone",
                  "Apache-2.0 (facebookresearch/dino)", "facebookresearch/dino full checkpoint", build_dino_r50,
                  url=_DINO + "dino_resnet50_pretrain/dino_resnet50_pretrain_full_checkpoint.pth",
                  file_name="dino_resnet50_pretrain_full_checkpoint.pth"),
        ModelSpec("dino-vits16", "DINO ViT-S/16, class token (teacher head with the full checkpoint)",
                  "Apache-2.0 (facebookresearch/dino)", "facebookresearch/dino backbone", dino_vit_builder("dino-vits16"),
                  url=_DINO + "dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth",
                  file_name="dino_deitsmall16_pretrain.pth"),
        ModelSpec("dino-vitb16", "DINO ViT-B/16, class token (teacher head with the full checkpoint)",
                  "Apache-2.0 (facebookresearch/dino)", "facebookresearch/dino backbone", dino_vit_builder("dino-vitb16"),
                  url=_DINO + "dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth",
                  file_name="dino_vitbase16_pretrain.pth"),
        ModelSpec("dinov2-vits14", "DINOv2 ViT-S/14 (LVD-142M), class token; 224 px by default",
                  "Apache-2.0 (facebookresearch/dinov2)", "facebookresearch/dinov2 release",
                  dino_vit_builder("dinov2-vits14"), url=_DINOV2 + "dinov2_vits14/dinov2_vits14_pretrain.pth",
                  file_name="dinov2_vits14_pretrain.pth"),
        ModelSpec("dinov2-vits14-reg", "DINOv2 ViT-S/14 with 4 register tokens, class token; 224 px by default",
                  "Apache-2.0 (facebookresearch/dinov2)", "facebookresearch/dinov2 release",
                  dino_vit_builder("dinov2-vits14-reg"),
                  url=_DINOV2 + "dinov2_vits14/dinov2_vits14_reg4_pretrain.pth",
                  file_name="dinov2_vits14_reg4_pretrain.pth"),
    ]
}


def available_models() -> list[str]:
    """Names accepted by :func:`load_model`.

    Examples:
        >>> "tiny-simclr" in available_models()
        True
    """
    return list(_REGISTRY)


def model_info(name: str) -> ModelSpec:
    """The zoo entry for ``name`` (raises ``ValueError`` for an unknown name)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]
