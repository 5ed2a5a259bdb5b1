"""``SSLModel``: one interface over every self-supervised network the package explains."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .._validation import check_images

__all__ = ["SSLModel", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SSLModel(nn.Module):
    """A trunk, a projection head and the input normalisation, wrapped as one module.

    ``model(x) = head(global_avg_pool(trunk(normalise(x))))`` maps pixel-space images
    ``(B,3,H,W)`` in ``[0,1]`` to embeddings ``(B,D)``; the pairwise similarity that every method
    explains is the cosine of two such embeddings.

    Args:
        trunk: ``(B,3,H,W) -> (B,C,h,w)``, e.g. a ResNet without pooling and classifier.
        head: ``(B,C) -> (B,D)`` projector, or ``None`` to use the pooled trunk feature.
        mean: per-channel normalisation mean applied inside the wrapper, or ``None``.
        std: per-channel normalisation std, or ``None`` (requires ``mean`` to be ``None`` too).
        name: a display name (the zoo name for loaded models).
        input_size: the side length the model was trained at.

    Examples:
        >>> trunk = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        >>> model = SSLModel(trunk, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), input_size=8)
        >>> model(torch.rand(2, 3, 8, 8)).shape
        torch.Size([2, 4])
        >>> model.fill_value.tolist()  # the colour that is 0 in the model's input space
        [0.5, 0.5, 0.5]
    """

    def __init__(
        self,
        trunk: nn.Module,
        head: nn.Module | None = None,
        *,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        name: str = "custom",
        input_size: int = 224,
    ) -> None:
        super().__init__()
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std for input normalisation, or neither")
        self.trunk = trunk
        self.head = head if head is not None else nn.Identity()
        self.name = name
        self.input_size = int(input_size)
        #: head used by the CAM methods' paper-faithful mode; ``None`` means ``head``. The SimSiam
        #: loader sets the predictor alone here, as the paper's code does (methods.md section 3).
        self.cam_head: nn.Module | None = None
        self.normalized = mean is not None
        mean_t = torch.tensor(mean if mean is not None else (0.0, 0.0, 0.0), dtype=torch.float32)
        std_t = torch.tensor(std if std is not None else (1.0, 1.0, 1.0), dtype=torch.float32)
        if mean_t.numel() != 3 or std_t.numel() != 3:
            raise ValueError("mean and std must have 3 values (one per RGB channel)")
        if bool((std_t <= 0).any()):
            raise ValueError("std must be positive")
        self.register_buffer("mean", mean_t.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", std_t.view(1, 3, 1, 1), persistent=False)

    # -- properties -------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """The device of the model's parameters (CPU for a parameter-free model)."""
        for tensor in self.parameters():
            return tensor.device
        return self.mean.device

    @property
    def fill_value(self) -> torch.Tensor:
        """The neutral colour in pixel space: 0 in the model's input space, shape ``(3,)``.

        Black for an un-normalised model, the normalisation mean for a normalised one.
        """
        return self.mean.view(3).clone()

    # -- forward passes -----------------------------------------------------------------
    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Map pixel-space images to the model's input space."""
        if not self.normalized:
            return x
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk's feature map ``(B, C, h, w)`` for pixel-space images ``x``."""
        # the range is not checked here, so that Captum's noise-adding wrappers (NoiseTunnel) work on
        # SimilarityForward; every method and metric checks it on its inputs
        x = check_images(x, dtype=self.mean.dtype, value_range=False)
        return self.trunk(self.normalize(x))

    def embed_features(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Head applied to the globally average-pooled feature map: ``(B,C,h,w) -> (B,D)``."""
        return self.head(feature_map.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings ``(B, D)`` of pixel-space images ``x``."""
        return self.embed_features(self.features(x))

    def forward_normalized(self, x_n: torch.Tensor) -> torch.Tensor:
        """Embeddings of images already in the model's input space (gradient methods work there)."""
        return self.embed_features(self.trunk(x_n))

    def similarity(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """Cosine similarity ``(B,)`` between the embeddings of two image batches."""
        return torch.nn.functional.cosine_similarity(self(x1), self(x2), dim=-1, eps=1e-8)

    def layer_names(self) -> list[str]:
        """Dot paths of the trunk's sub-modules, usable as ``layer=`` by the CAM and
        feature-visualisation methods (e.g. ``"layer4"``, ``"layer3.1.conv2"``)."""
        return [name for name, _ in self.trunk.named_modules() if name]

    def get_layer(self, name: str) -> nn.Module:
        """The trunk sub-module at dot path ``name``; a clear ``ValueError`` if there is none."""
        modules = dict(self.trunk.named_modules())
        if name not in modules or not name:
            top = [n for n in self.layer_names() if "." not in n]
            raise ValueError(f"unknown layer {name!r} for model {self.name!r}; top-level layers are {top}")
        return modules[name]

    def extra_repr(self) -> str:
        return f"name={self.name!r}, input_size={self.input_size}, normalized={self.normalized}"
