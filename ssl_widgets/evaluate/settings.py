"""The settings an evaluation record was computed with, and the resume check that compares them.

A record of ``results.jsonl`` is keyed by ``(pair, method)``; everything else that changes its
numbers is an :class:`EvaluationSettings` field, stored in the record. Paths are not enough: a
weight file retrained in place or an image folder with files added, removed or replaced keeps its
path, so the settings also hold content fingerprints of the loaded weights and of the folder's file
list. Resuming into an ``--out`` whose records hold other settings raises :class:`SettingsMismatch`
naming every differing field.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["EvaluationSettings", "SettingsMismatch", "check_settings", "files_fingerprint", "weights_fingerprint"]

#: hex digits of a SHA-256 kept in a fingerprint (64 bits: no accidental collision in practice)
_DIGITS = 16


class SettingsMismatch(ValueError):
    """The output folder holds records computed with other settings than this run's."""


@dataclass(frozen=True)
class EvaluationSettings:
    """Everything besides the ``(pair, method)`` key that changes an evaluation record's numbers.

    Attributes:
        model: the zoo name.
        weights: the resolved ``--weights`` path, or ``None`` for the zoo's own file.
        weights_sha256: :func:`weights_fingerprint` of the loaded model (catches a file retrained in place).
        image_size: the model's input size.
        data: the resolved image folder.
        data_files: :func:`files_fingerprint` of its images (catches images added, removed or replaced).
        seed: the pair seed.
        transform: view transform of the second image.
        step: pixels per insertion/deletion step.
        sensitivity_samples: max-sensitivity samples.
    """

    model: str
    weights: str | None
    weights_sha256: str
    image_size: int
    data: str
    data_files: str
    seed: int
    transform: str
    step: int
    sensitivity_samples: int

    def as_record(self) -> dict[str, Any]:
        """The plain dict stored in each record (JSON-ready)."""
        return asdict(self)


def weights_fingerprint(model: nn.Module) -> str:
    """SHA-256 (first 16 hex digits) of ``model``'s state dict: names, dtypes, shapes and values.

    Examples:
        >>> weights_fingerprint(model) == weights_fingerprint(model)
        True
    """
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        data = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{data.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes())
    return "sha256:" + digest.hexdigest()[:_DIGITS]


def files_fingerprint(files: Sequence[Path], root: str | Path) -> str:
    """``"<n> files, sha256:<digest>"`` of the sorted paths under ``root`` with their sizes and mtimes.

    A file added, removed, renamed or rewritten (new size or modification time) changes it; reading
    the images themselves is not needed, so it stays cheap for large folders.
    """
    digest = hashlib.sha256()
    for path in sorted(files):
        stat = path.stat()
        digest.update(f"{path.relative_to(root).as_posix()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return f"{len(files)} files, sha256:{digest.hexdigest()[:_DIGITS]}"


def check_settings(records: Iterable[dict], settings: EvaluationSettings, out: Path) -> None:
    """Refuse to resume from records that other settings produced.

    Raises:
        SettingsMismatch: naming each differing field, its recorded value(s) and this run's.
    """
    mine = settings.as_record()
    differences: dict[str, set[str]] = {}
    for record in records:
        theirs = record.get("settings")
        if theirs is None:
            differences.setdefault("settings", set()).add("none recorded (written by an older version)")
            continue
        for key in sorted(set(mine) | set(theirs)):
            if theirs.get(key) != mine.get(key):
                differences.setdefault(key, set()).add(
                    repr(theirs[key]) if key in theirs else "not recorded (an older version)")
    if differences:
        detail = "; ".join(f"{key}: {' / '.join(sorted(values))} in the records, {mine.get(key)!r} now"
                           if key != "settings" else f"settings: {next(iter(values))}"
                           for key, values in differences.items())
        raise SettingsMismatch(
            f"{out} holds results computed with other settings ({detail}); resuming would mix their numbers with "
            f"this run's. Choose another --out, or delete {out / 'results.jsonl'} and {out / 'partial'} to start over"
        )
