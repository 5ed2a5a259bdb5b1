"""Reading weight files without running code from them.

Every loader of the package reads files through :func:`read_checkpoint`: ``torch.load`` with
``weights_only=True`` (tensors and plain containers only, no pickled code), plus the one class that
real training checkpoints carry beside their tensors: ``argparse.Namespace``, the ``args`` entry of
the checkpoints that DINO's ``main_dino.py`` writes (SimSiam's and MoCo's carry only a string
``arch``; Barlow Twins', DINOv2's and timm's only tensors and numbers). A file that pickles any other
global is refused (the weights-only unpickler imports none of it), with an error that names the globals.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .converters import CheckpointError

__all__ = ["ALLOWED_GLOBALS", "load_strict", "read_checkpoint", "refuse_non_finite"]

#: Classes a checkpoint may contain beside tensors and plain containers (see the module doc).
ALLOWED_GLOBALS: tuple[type, ...] = (argparse.Namespace,)


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _unsafe_globals(path: Path) -> list[str] | None:
    """The globals the file would import, minus the allowed ones (``None`` if torch cannot list them)."""
    lister = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if lister is None:
        return None
    try:
        found = lister(str(path))
    except Exception:  # not a zip checkpoint, or corrupt: reported as such by the caller
        return None
    allowed = {_qualified(cls) for cls in ALLOWED_GLOBALS}
    return [name for name in found if name not in allowed]


def read_checkpoint(path: str | os.PathLike) -> Any:
    """Load a weight file on the CPU without running any code it pickles.

    Args:
        path: the file (``torch.save`` output: a state dict, or a training checkpoint holding some).

    Returns:
        The loaded object (``argparse.Namespace`` entries come back as such).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: the file pickles other globals (named in the message), or it is truncated,
            corrupt or not a PyTorch checkpoint.

    Examples:
        >>> import tempfile, argparse
        >>> path = Path(tempfile.mkdtemp()) / "checkpoint.pth"
        >>> torch.save({"teacher": {"w": torch.ones(1)}, "args": argparse.Namespace(arch="vit_small")}, path)
        >>> read_checkpoint(path)["args"].arch
        'vit_small'
        >>> import collections
        >>> torch.save({"w": collections.OrderedDict(), "f": pickle.PickleError}, path)
        >>> read_checkpoint(path)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ssl_widgets.models.converters.CheckpointError: refused to load ...: it pickles pickle.PickleError, ...
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weight file not found: {path}")
    try:
        allowing = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
        with allowing(list(ALLOWED_GLOBALS)) if allowing else contextlib.nullcontext():
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # the weights-only unpickler imports nothing it refuses
        unsafe = _unsafe_globals(path) if isinstance(error, pickle.UnpicklingError) else None
        if not unsafe and isinstance(error, pickle.UnpicklingError) and "Unsupported global: GLOBAL " in str(error):
            unsafe = [str(error).split("Unsupported global: GLOBAL ", 1)[1].split()[0]]  # a torch that cannot list
        if unsafe:
            raise CheckpointError(
                f"refused to load {path}: it pickles {', '.join(unsafe)}, which loading would import and run. "
                f"Only tensors, plain containers and {', '.join(_qualified(c) for c in ALLOWED_GLOBALS)} (the "
                f"'args' of DINO's training checkpoints) are read. If you trust the file, load it yourself with "
                f"torch.load(path, weights_only=False), save its state dict (torch.save(checkpoint['state_dict'], "
                f"'weights.pth'), say) and pass that file instead."
            ) from error
        raise CheckpointError(f"could not read weight file {path}: it is truncated, corrupt or not a PyTorch "
                              f"checkpoint ({type(error).__name__}: {str(error)[:200]})") from error


def refuse_non_finite(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Raise :class:`CheckpointError` naming the first parameter or buffer of ``model`` holding NaN or infinity."""
    for key, tensor in model.state_dict().items():
        if tensor.is_floating_point():
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                raise CheckpointError(
                    f"the weights in {path} are not finite: {key!r} holds {bad} NaN or infinite value(s) of "
                    f"{tensor.numel()} (e.g. written by a diverged training run); every explanation of this model "
                    f"would be NaN (load_model(..., check_finite=False) loads them anyway)"
                )


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], model_name: str, part: str) -> None:
    """``load_state_dict(strict=True)`` whose errors name the model, the part and the keys."""
    if not isinstance(state, Mapping):
        raise CheckpointError(f"the {part} of {model_name!r}: expected a state dict, found {type(state).__name__}")
    if odd := [f"{k!r} ({type(v).__name__})" for k, v in state.items()
               if not isinstance(k, str) or not isinstance(v, torch.Tensor)]:
        raise CheckpointError(f"checkpoint does not match the {part} of {model_name!r}: entries that are not "
                              f"named tensors: {odd[:3]}")
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or mismatched:
        details = []
        if missing:
            details.append(f"missing {len(missing)} keys (e.g. {missing[:3]})")
        if unexpected:
            details.append(f"unexpected {len(unexpected)} keys (e.g. {unexpected[:3]})")
        if mismatched:
            details.append(f"{len(mismatched)} shape mismatches (e.g. {mismatched[:2]})")
        raise CheckpointError(
            f"checkpoint does not match the {part} of {model_name!r}: " + "; ".join(details)
        )
    module.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)
