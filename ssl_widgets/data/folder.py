"""Image folders: listing, the deterministic held-out split, and loading to fixed-size tensors."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms import functional as TF

__all__ = ["IMAGE_SUFFIXES", "list_images", "split_holdout", "load_square"]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def list_images(folder: str | os.PathLike) -> list[Path]:
    """All image files under ``folder`` (recursively), sorted by path.

    Raises:
        FileNotFoundError: the folder does not exist or holds no images.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {root}")
    return files


def split_holdout(files: list[Path], every: int = 5) -> tuple[list[Path], list[Path]]:
    """Deterministic split: every ``every``-th file (index 0, every, 2*every, ...) is held out.

    Returns:
        ``(train_files, heldout_files)``.
    """
    held = [f for i, f in enumerate(files) if i % every == 0]
    train = [f for i, f in enumerate(files) if i % every != 0]
    return train, held


def load_square(path: str | os.PathLike, side: int) -> torch.Tensor:
    """Load an image as ``(3, side, side)`` float in [0,1]: short side resized to ``side``, centre-cropped."""
    with Image.open(path) as image:
        image = image.convert("RGB")
        image = TF.center_crop(TF.resize(image, side, antialias=True), [side, side])
        return TF.to_tensor(image)
