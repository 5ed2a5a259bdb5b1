"""Loading images as tensors, and the offline sample images."""
from __future__ import annotations

import os
from pathlib import Path
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import functional as TF

__all__ = ["SAMPLE_IMAGES", "ImageLike", "load_image", "sample_image", "to_pil"]

ImageLike = str | os.PathLike | Image.Image | np.ndarray | torch.Tensor


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from skimage import data as skdata

        image = getattr(skdata, name)()
        return image[0] if isinstance(image, tuple) else image  # stereo_motorcycle returns (left, right, disp)

    return load


def _grace_hopper() -> np.ndarray:
    from matplotlib import cbook

    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as image:
        return np.asarray(image.convert("RGB"))


SAMPLE_IMAGES: dict[str, Callable[[], np.ndarray]] = {
    "chelsea": _skimage("chelsea"),
    "coffee": _skimage("coffee"),
    "astronaut": _skimage("astronaut"),
    "rocket": _skimage("rocket"),
    "motorcycle": _skimage("stereo_motorcycle"),
    "grace_hopper": _grace_hopper,
}
"""Offline sample images by name (scikit-image's CC0 / public-domain data and matplotlib's Grace Hopper)."""


def sample_image(name: str) -> Image.Image:
    """A shipped sample image as a PIL RGB image.

    Raises:
        ValueError: unknown name (the message lists the names).
    """
    if name not in SAMPLE_IMAGES:
        raise ValueError(f"unknown sample image {name!r}; available: {', '.join(SAMPLE_IMAGES)}")
    return Image.fromarray(np.ascontiguousarray(SAMPLE_IMAGES[name]())).convert("RGB")


def to_pil(image: ImageLike) -> Image.Image:
    """Any supported image input as a PIL RGB image (names, paths, PIL, HWC arrays, CHW tensors)."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, torch.Tensor):
        tensor = image[0] if image.dim() == 4 else image
        if tensor.dim() != 3 or tensor.shape[0] not in (1, 3):
            raise ValueError(f"an image tensor must be (3,H,W) or (1,3,H,W); got {tuple(image.shape)}")
        if not torch.is_floating_point(tensor):
            tensor = tensor.float() / 255
        return TF.to_pil_image(tensor.clamp(0, 1).cpu()).convert("RGB")
    if isinstance(image, np.ndarray):
        array = image if image.dtype == np.uint8 else (np.clip(image, 0, 1) * 255).astype(np.uint8)
        return Image.fromarray(array).convert("RGB")
    if isinstance(image, (str, os.PathLike)):
        if isinstance(image, str) and image in SAMPLE_IMAGES:
            return sample_image(image)
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(
                f"image {str(image)!r} is neither a file nor a sample name ({', '.join(SAMPLE_IMAGES)})"
            )
        try:
            with Image.open(path) as opened:
                return opened.convert("RGB")
        except Exception as error:
            raise ValueError(f"could not read image file {path}: {error}") from error
    raise TypeError(f"unsupported image type {type(image).__name__}; give a sample name, path, PIL image, array or tensor")


def load_image(image: ImageLike, size: int | None = None, *, center_crop: bool = True) -> torch.Tensor:
    """Load an image as a ``(1, 3, H, W)`` float tensor in ``[0, 1]``.

    Args:
        image: a sample name (``"chelsea"``, ``"coffee"``, ``"astronaut"``, ``"rocket"``,
            ``"motorcycle"``, ``"grace_hopper"``), a file path, a PIL image, an HWC array or a tensor.
        size: if given, resize the short side to ``size * 8/7`` and centre-crop ``size x size``
            (the paper's Resize(256) + CenterCrop(224) at other sizes); with ``center_crop=False``,
            resize to ``size x size`` directly (the "no-shift" transform).

    Returns:
        ``(1, 3, H, W)`` float32 tensor.

    Examples:
        >>> load_image("chelsea", 112).shape
        torch.Size([1, 3, 112, 112])
    """
    pil = to_pil(image)
    if size is not None:
        if center_crop:
            pil = TF.center_crop(TF.resize(pil, round(size * 8 / 7), antialias=True), [size, size])
        else:
            pil = TF.resize(pil, [size, size], antialias=True)
    return TF.to_tensor(pil).unsqueeze(0)
