"""The model zoo's face: :func:`load_model` over the entries of :mod:`~ssl_widgets.models.registry`.

The parts live by job: :mod:`~ssl_widgets.models.registry` (the entries), :mod:`~ssl_widgets.models.builders`
and :mod:`~ssl_widgets.models.dino` (checkpoint -> model), :mod:`~ssl_widgets.models.tiny` (the shipped
models' format) and :mod:`~ssl_widgets.models.download` (torch.hub's cache, checksums).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .checkpoint_file import read_checkpoint, refuse_non_finite
from .download import cached_download, shipped_weights, write_pin
from .hf import load_pretrained
from .registry import ModelSpec, available_models, model_info
from .tiny import TINY_FORMAT, build_tiny_model, save_tiny_checkpoint
from .wrapper import SSLModel

__all__ = ["TINY_FORMAT", "ModelSpec", "available_models", "build_tiny_model", "load_model", "model_info",
           "save_tiny_checkpoint"]


def load_model(name: str, *, weights: str | os.PathLike | None = None,
               device: str | torch.device | None = None, check_finite: bool = True) -> SSLModel:
    """Load a model of the zoo as an :class:`SSLModel` in eval mode.

    Args:
        name: one of :func:`available_models`, or ``"hf:<repo id or folder>"`` for a Hugging Face
            ``Dinov2Model`` / ``Dinov2WithRegistersModel`` / ``ViTModel`` (see :mod:`~ssl_widgets.models.hf`).
        weights: path of a weight file in the published layout; always works offline. Without it,
            shipped models load from the package and published ones from torch.hub's cache
            (downloaded and checksum-verified on first use).
        device: where to put the model (default CPU).
        check_finite: refuse weights holding NaN or infinity (the default); ``False`` loads them anyway.

    Returns:
        The model in ``eval()`` mode with gradients enabled on its parameters. Loading leaves the
        global random number generator as it found it.

    Raises:
        ValueError: unknown ``name``.
        FileNotFoundError: no weights available offline; the message says what to fetch and where to put it.
        CheckpointError: corrupt, truncated, wrong-checksum or wrong-layout file, or non-finite weights.

    Examples:
        >>> model = load_model("tiny-simclr")
        >>> model.input_size
        112
    """
    if isinstance(name, str) and name.startswith("hf:"):
        if weights is not None:
            raise ValueError(f"{name!r}: a Hugging Face model brings its own weights; give a local folder as "
                             f"hf:FOLDER instead of weights=")
        with torch.random.fork_rng(devices=[]):
            model = SSLModel.from_transformers(load_pretrained(name[3:]), name=name[3:])
        if check_finite:
            refuse_non_finite(model, Path(name[3:]))
        return model.to(device) if device is not None else model
    spec = model_info(name)
    pin_after_load = None
    if weights is not None:
        path = Path(weights)
    elif spec.url is None and spec.name.startswith("tiny-"):
        path = shipped_weights(spec)
    else:
        path, pin_after_load = cached_download(spec)
    checkpoint = read_checkpoint(path)
    with torch.random.fork_rng(devices=[]):  # the modules' default initialisation draws from the global RNG
        model = spec.build(checkpoint).float().eval()
    if check_finite:
        refuse_non_finite(model, path)
    if pin_after_load is not None:  # trust on first use, once the file has proved to be a loadable checkpoint
        write_pin(path, pin_after_load)
    if device is not None:
        model = model.to(device)
    return model
