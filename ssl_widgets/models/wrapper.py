"""``SSLModel``: one interface over every self-supervised network the package explains."""
from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .._validation import check_images
from ..core import PAPER_INPUT_SIZE, cosine
from .adapters import timm_parts, torchvision_parts
from .hf import transformers_parts
from .normalization import IMAGENET_MEAN, IMAGENET_STD
from .position_rules import PositionRule

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "SSLModel", "from_transformers"]



POOLINGS = ("avg", "cls", "mean")


class SSLModel(nn.Module):
    """A trunk, a projection head and the input normalisation, wrapped as one module.

    ``model(x) = head(pool(trunk(normalise(x))))`` maps pixel-space images ``(B,3,H,W)`` in
    ``[0,1]`` to embeddings ``(B,D)``; the pairwise similarity that every method explains is the
    cosine of two such embeddings. Two kinds of trunk are understood:

    * a convolutional trunk ``(B,3,H,W) -> (B,C,h,w)``, pooled by global average pooling
      (``pooling="avg"``, the default);
    * a token trunk (a Vision Transformer) ``(B,3,H,W) -> (B,N,C)`` with ``num_prefix_tokens``
      class/register tokens before the ``h*w`` patch tokens, pooled by its class token
      (``pooling="cls"``) or by the mean of its patch tokens (``pooling="mean"``). Every method
      that needs a spatial map sees the patch tokens as the grid ``(B,C,H/p,W/p)``
      (:meth:`layer_map`), ``p`` being the patch size.

    Use :meth:`from_timm` or :meth:`from_torchvision` to wrap an existing network in one line.

    Args:
        trunk: the trunk (see above), e.g. a ResNet without pooling and classifier.
        head: ``(B,C) -> (B,D)`` projector, or ``None`` to use the pooled trunk feature.
        mean: per-channel normalisation mean applied inside the wrapper, or ``None``.
        std: per-channel normalisation std, or ``None`` (requires ``mean`` to be ``None`` too).
        name: a display name (the zoo name for loaded models).
        input_size: the side length the model was trained at.
        pooling: ``"avg"`` (maps), ``"cls"`` or ``"mean"`` (tokens); a token pooling makes the
            trunk a token trunk.
        num_prefix_tokens: class and register tokens before the patch tokens (token trunks).
        patch_size: side of a patch in pixels (token trunks; inputs must be multiples of it).
        trunk_method: name of the trunk's method that returns the token sequence (default:
            ``forward_features`` when the trunk has one, e.g. a timm ViT; else the trunk's ``forward``).

    Examples:
        >>> trunk = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        >>> model = SSLModel(trunk, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), input_size=8)
        >>> model(torch.rand(2, 3, 8, 8)).shape
        torch.Size([2, 4])
        >>> model.fill_value.tolist()  # the colour that is 0 in the model's input space
        [0.5, 0.5, 0.5]
        >>> import timm
        >>> vit = timm.create_model("vit_tiny_patch16_224", depth=1, num_classes=0, dynamic_img_size=True)
        >>> model = SSLModel(vit, pooling="cls", num_prefix_tokens=1, patch_size=16)
        >>> model(torch.rand(2, 3, 32, 48)).shape, model.features(torch.rand(2, 3, 32, 48)).shape
        (torch.Size([2, 192]), torch.Size([2, 192, 2, 3]))
    """

    def __init__(
        self,
        trunk: nn.Module,
        head: nn.Module | None = None,
        *,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        name: str = "custom",
        input_size: int = PAPER_INPUT_SIZE,
        pooling: str = "avg",
        num_prefix_tokens: int = 0,
        patch_size: int | None = None,
        trunk_method: str | None = None,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        tokens = pooling != "avg"
        if tokens and (patch_size is None or int(patch_size) < 1):
            raise ValueError(f"a token trunk (pooling={pooling!r}) needs patch_size, the side of a patch in pixels")
        if pooling == "cls" and num_prefix_tokens < 1:
            raise ValueError("pooling='cls' needs a class token: num_prefix_tokens must be >= 1")
        if trunk_method is None and tokens and hasattr(trunk, "forward_features"):
            trunk_method = "forward_features"
        if trunk_method is not None and not callable(getattr(trunk, trunk_method, None)):
            raise ValueError(f"the trunk ({type(trunk).__name__}) has no method {trunk_method!r}")
        #: ``"avg"`` (global average pooling of a map), ``"cls"`` or ``"mean"`` (token trunks).
        self.pooling = pooling
        self.num_prefix_tokens = int(num_prefix_tokens) if tokens else 0
        self.patch_size = int(patch_size) if tokens else None
        self.trunk_method = trunk_method
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std for input normalisation, or neither")
        self.trunk = trunk
        self.head = head if head is not None else nn.Identity()
        self.name = name
        self.input_size = int(input_size)
        #: head used by the CAM methods' paper-faithful mode; ``None`` means ``head``. The SimSiam
        #: loader sets the predictor alone here, as the paper's Interaction-CAM code does.
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

    @property
    def is_token_model(self) -> bool:
        """Whether the trunk returns a token sequence (a Vision Transformer) rather than a map."""
        return self.pooling != "avg"

    # -- forward passes -----------------------------------------------------------------
    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Map pixel-space images to the model's input space."""
        if not self.normalized:
            return x
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def check_input_size(self, height: int, width: int) -> None:
        """A clear ``ValueError`` unless a token trunk can cut ``height x width`` into whole patches."""
        p = self.patch_size
        if p is not None and (height % p or width % p):
            raise ValueError(
                f"input size {height}x{width} is not a multiple of the patch size {p} of model {self.name!r}; "
                f"resize or crop the images to multiples of {p} (e.g. {max(p, height // p * p)}x{max(p, width // p * p)})"
            )

    def run_trunk(self, x_n: torch.Tensor) -> torch.Tensor:
        """The trunk's raw output for inputs in the model's input space: a map ``(B,C,h,w)`` or
        tokens ``(B,N,C)``."""
        if self.patch_size is not None:
            self.check_input_size(*x_n.shape[-2:])
        if self.trunk_method is None:
            return self.trunk(x_n)
        return getattr(self.trunk, self.trunk_method)(x_n)

    def grid_size(self, image_size: Sequence[int]) -> tuple[int, int] | None:
        """The patch grid ``(h, w)`` of a token trunk for an image ``(H, W)`` (``None`` for a map trunk)."""
        if self.patch_size is None:
            return None
        self.check_input_size(int(image_size[0]), int(image_size[1]))
        return int(image_size[0]) // self.patch_size, int(image_size[1]) // self.patch_size

    def layer_map(self, output: Any, image_size: Sequence[int]) -> torch.Tensor:
        """A layer's output as a spatial map ``(B,C,h,w)``.

        A 4-D map is returned as is; for a token trunk a token sequence ``(B,N,C)`` becomes the grid
        of its patch tokens (the prefix tokens dropped), ``(B,C,H/p,W/p)``.

        Raises:
            ValueError: the output is neither (e.g. a tuple, or a pooled vector).
        """
        grid = self.grid_size(image_size)
        if isinstance(output, torch.Tensor) and output.dim() == 4:
            if grid is not None and tuple(output.shape[1:3]) == grid and tuple(output.shape[2:]) != grid:
                return output.permute(0, 3, 1, 2)  # channels-last patch grid (timm's dynamic patch_embed)
            return output
        if grid is not None and isinstance(output, torch.Tensor) and output.dim() == 3:
            n_patch = grid[0] * grid[1]
            if output.shape[1] != self.num_prefix_tokens + n_patch:
                raise ValueError(
                    f"a token layer output of {output.shape[1]} tokens does not match {self.num_prefix_tokens} prefix "
                    f"tokens + a {grid[0]}x{grid[1]} patch grid for input {tuple(image_size)}"
                )
            patches = output[:, self.num_prefix_tokens:]
            return patches.transpose(1, 2).reshape(output.shape[0], output.shape[2], grid[0], grid[1])
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        kind = "(B, C, h, w) feature map or a (B, N, C) token sequence" if grid is not None else "(B, C, h, w) feature map"
        raise ValueError(f"layer output {shape} is not a {kind}")

    def pool(self, output: torch.Tensor) -> torch.Tensor:
        """The trunk output pooled to ``(B, C)``: average of a map, class token, or mean of patch tokens."""
        if self.pooling == "avg":
            if output.dim() != 4:
                raise ValueError(f"pooling 'avg' expects a (B, C, h, w) map, got shape {tuple(output.shape)}")
            return output.mean(dim=(2, 3))
        if output.dim() != 3:
            raise ValueError(f"pooling {self.pooling!r} expects (B, N, C) tokens, got shape {tuple(output.shape)}")
        if self.pooling == "cls":
            return output[:, 0]
        return output[:, self.num_prefix_tokens:].mean(dim=1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk's feature map ``(B, C, h, w)`` for pixel-space images ``x`` (for a token trunk:
        its patch-token grid)."""
        # the range is not checked here, so that Captum's noise-adding wrappers (NoiseTunnel) work on
        # SimilarityForward; every method and metric checks it on its inputs
        x = check_images(x, dtype=self.mean.dtype, value_range=False)
        return self.layer_map(self.run_trunk(self.normalize(x)), x.shape[2:])

    def embed_features(self, trunk_output: torch.Tensor) -> torch.Tensor:
        """Head applied to the pooled trunk output: ``(B,C,h,w)`` or ``(B,N,C) -> (B,D)``."""
        return self.head(self.pool(trunk_output))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings ``(B, D)`` of pixel-space images ``x`` (the range is not checked, as in :meth:`features`)."""
        x = check_images(x, dtype=self.mean.dtype, value_range=False)
        return self.forward_normalized(self.normalize(x))

    def forward_normalized(self, x_n: torch.Tensor) -> torch.Tensor:
        """Embeddings of images already in the model's input space (gradient methods work there)."""
        return self.embed_features(self.run_trunk(x_n))

    def similarity(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """Cosine similarity ``(B,)`` between the embeddings of two image batches."""
        return cosine(self(x1), self(x2))

    def layer_names(self) -> list[str]:
        """Dot paths of the trunk's sub-modules, usable as ``layer=`` by the CAM and
        feature-visualisation methods (e.g. ``"layer4"``, ``"layer3.1.conv2"``; for a ViT
        ``"blocks.11"``, ``"blocks.11.attn"``, ``"norm"``, whose tokens become the patch grid)."""
        return [name for name, _ in self.trunk.named_modules() if name]

    @property
    def default_cam_layer(self) -> str | None:
        """The layer the CAM methods use when none is given (``None``: the trunk output).

        For a class-token ViT the final tokens' patch positions do not reach the embedding (the
        class token is read after a per-token norm), so CAMs use the input of the last block's
        attention, ``blocks.{L-1}.norm1`` (as ViT Grad-CAM implementations do); with mean pooling
        the trunk output is used, as for CNNs.
        """
        if self.pooling != "cls":
            return None
        names = set(self.layer_names())
        blocks = [int(n.split(".")[1]) for n in names if re.fullmatch(r"blocks\.\d+", n)]
        if blocks and f"blocks.{max(blocks)}.norm1" in names:
            return f"blocks.{max(blocks)}.norm1"
        return f"blocks.{max(blocks)}" if blocks else None

    @classmethod
    def from_timm(cls, model: nn.Module | str, **kwargs: Any) -> SSLModel:
        """Wrap a timm model (an instance, or a name built with random weights) in one line.

        Args:
            model: a timm model instance, or a timm model name (built with random weights; nothing is
                downloaded, pass ``weights`` for a local file).
            **kwargs: ``pooling`` (``"cls"``/``"mean"`` for a ViT, default from its ``global_pool``),
                ``head``, ``weights`` (a state dict or its path), ``mean``, ``std``, ``input_size``,
                ``name``, and ``timm.create_model`` arguments (e.g. ``depth=2``): see
                :func:`ssl_widgets.models.adapters.timm_parts`.

        Returns:
            The wrapped model in eval mode. A ViT keeps timm's layer names (``blocks.11``,
            ``blocks.11.attn``, ``norm``) and accepts any input size that is a multiple of its patch size.

        Examples:
            >>> model = SSLModel.from_timm("vit_tiny_patch16_224", depth=2)
            >>> model.pooling, model.patch_size, model.default_cam_layer
            ('cls', 16, 'blocks.1.norm1')
            >>> model(torch.rand(1, 3, 64, 96)).shape
            torch.Size([1, 192])
            >>> SSLModel.from_timm("resnet18")(torch.rand(1, 3, 64, 64)).shape
            torch.Size([1, 512])
        """
        return cls(**timm_parts(model, **kwargs)).eval()

    @classmethod
    def from_torchvision(cls, model: nn.Module | str, **kwargs: Any) -> SSLModel:
        """Wrap a torchvision ResNet or VisionTransformer (an instance, or a name built with random weights).

        Args:
            model: e.g. ``torchvision.models.resnet50()`` or ``"vit_b_16"``.
            **kwargs: ``head``, ``weights``, ``mean``, ``std``, ``name``: see
                :func:`ssl_widgets.models.adapters.torchvision_parts`.

        Returns:
            The wrapped model in eval mode: a ResNet keeps torchvision's layer names (``layer4``...) and
            the incremental occlusion engine; a ViT pools its class token.

        Examples:
            >>> SSLModel.from_torchvision("resnet18")(torch.rand(1, 3, 64, 64)).shape
            torch.Size([1, 512])
        """
        return cls(**torchvision_parts(model, **kwargs)).eval()

    @classmethod
    def from_transformers(cls, model: nn.Module, **kwargs: Any) -> SSLModel:
        """Wrap a Hugging Face ``Dinov2Model``, ``Dinov2WithRegistersModel`` or ``ViTModel``: see
        :func:`ssl_widgets.models.from_transformers`."""
        parts = transformers_parts(model, **kwargs)
        meta = parts.pop("meta")
        wrapped = cls(**parts)
        wrapped.meta = meta
        return wrapped.eval()

    def get_layer(self, name: str) -> nn.Module:
        """The trunk sub-module at dot path ``name``; a clear ``ValueError`` if there is none."""
        modules = dict(self.trunk.named_modules())
        if name not in modules or not name:
            top = [n for n in self.layer_names() if "." not in n]
            raise ValueError(f"unknown layer {name!r} for model {self.name!r}; top-level layers are {top}")
        return modules[name]

    def extra_repr(self) -> str:
        extra = f", pooling={self.pooling!r}, patch_size={self.patch_size}" if self.is_token_model else ""
        return f"name={self.name!r}, input_size={self.input_size}, normalized={self.normalized}{extra}"


def from_transformers(model: nn.Module, *, position_rule: PositionRule | None = None,
                      mean: Sequence[float] | None = IMAGENET_MEAN, std: Sequence[float] | None = IMAGENET_STD,
                      input_size: int = 224, name: str | None = None) -> SSLModel:
    """Wrap a transformers ``Dinov2Model``, ``Dinov2WithRegistersModel`` or ``ViTModel`` (DINO weights).

    Args:
        model: the transformers model (or a task model built on one, e.g. ``Dinov2ForImageClassification``;
            its classifier is dropped).
        position_rule: how position embeddings are resampled for other sizes; default: the transformers
            model's own (:data:`~ssl_widgets.models.position_rules.HF_RULE`, or ``REGISTERS_RULE`` for the
            register models). ``DINO_RULE`` gives facebookresearch/dino(v2)'s numerics.
        mean: input normalisation mean (the model cards' image processors use ImageNet's).
        std: input normalisation standard deviation (ImageNet's, likewise).
        input_size: the side images are shown at (the image processors crop 224).
        name: display name (default: the config's ``_name_or_path`` or the class name).

    Returns:
        An :class:`SSLModel` pooling the class token, with timm's layer names (``blocks.N``,
        ``blocks.N.attn``, ``norm``) and ``meta`` naming the source and the position rule.

    Examples:
        >>> from transformers import Dinov2Config, Dinov2Model
        >>> config = Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, image_size=32,
        ...                       patch_size=8)
        >>> model = from_transformers(Dinov2Model(config).eval(), input_size=32)
        >>> model(torch.rand(1, 3, 32, 48)).shape, model.num_prefix_tokens
        (torch.Size([1, 16]), 1)
    """
    return SSLModel.from_transformers(model, position_rule=position_rule, mean=mean, std=std,
                                      input_size=input_size, name=name)
