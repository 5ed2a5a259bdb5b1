"""Resuming an evaluation never mixes records of other settings (issue #33 item 7, issue #34).

Two parametrised tests, derived from the structures themselves so that a new field is covered:

* every field of :class:`EvaluationSettings` (read with ``dataclasses.fields``) is stored in each
  record, and a record whose value of that field differs (a generic perturbation per type, no
  table) makes the resume refuse with :class:`SettingsMismatch` naming the field;
* every real change of a run's inputs (each :class:`EvaluationConfig` field, which a completeness
  check holds to the dataclass, plus the weight file retrained in place and images added or
  rewritten in the folder) makes the resume either refuse naming the field that changed, or give
  exactly the records of a fresh run with the new inputs: never a mix of old and new.

The first run (a 32 px ResNet of width 4, 3 images, 2 pairs, Grad-CAM) is shared by the cases.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_widgets.evaluate import EvaluationConfig, evaluate
from ssl_widgets.evaluate.settings import EvaluationSettings, SettingsMismatch
from ssl_widgets.models.zoo import build_tiny_model, save_tiny_checkpoint

SETTINGS_FIELDS = [f.name for f in dataclasses.fields(EvaluationSettings)]
#: fields of EvaluationConfig that change where or how a run reports, never a record's numbers
RUN_ONLY = {"out": "the folder itself (another --out is a new run)", "show_progress": "the progress bar only"}
#: records are compared within this tolerance; resumed and fresh runs of the same inputs agree to 0.0 (measured)
TOLERANCE = 1e-6


def write_images(folder: Path, count: int, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray((rng.random((40, 48, 3)) * 255).astype(np.uint8)).save(folder / f"im{seed}_{i}.png")


def write_weights(path: Path, seed: int, input_size: int = 32) -> None:
    """A tiny shipped-format file; the weights depend on ``seed`` only (not on ``input_size``)."""
    arch = {"width": 4, "head_dims": [16, 8], "input_size": input_size}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_tiny_model(arch)
    save_tiny_checkpoint(model, arch, path)




def read_records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


class Run(NamedTuple):
    data: Path
    weights: Path
    out: Path


def config(run: Run, **changes: Any) -> EvaluationConfig:
    base = {"data": str(run.data), "model": "tiny-simclr", "weights": str(run.weights), "methods": ["grad-cam"],
            "pairs": 2, "seed": 0, "out": str(run.out), "step": 256, "sensitivity_samples": 1, "show_progress": False}
    return EvaluationConfig(**{**base, **changes})


def first_run(root: Path) -> Run:
    run = Run(root / "data", root / "weights.pt", root / "out")
    write_images(run.data, 3, seed=0)
    write_weights(run.weights, seed=0)
    evaluate(config(run))
    return run


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: the fastest for a 32 px width-4 model (two threads on a busy machine took 8x longer)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def shared(tmp_path_factory, one_thread) -> Run:
    """The first run, shared by the cases that leave its data and weights untouched (they copy its --out)."""
    return first_run(tmp_path_factory.mktemp("resume"))


def copy_of(run: Run, tmp_path: Path) -> Run:
    out = tmp_path / "out"
    shutil.copytree(run.out, out)
    return run._replace(out=out)


def names_field(message: str, field: str) -> bool:
    return re.search(rf"[(;] ?{field}: ", message) is not None


# -- every recorded field refuses a resume (generic: no table of fields) ---------------------------

def perturbed(value: Any) -> Any:
    """Another value of the same kind (fails for a kind of value no field had so far: add it here)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "-other"
    if value is None:
        return "other"
    raise TypeError(f"no perturbation for a settings value of type {type(value).__name__}: add one to perturbed()")


def test_every_settings_field_is_recorded(shared):
    for record in read_records(shared.out):
        assert list(record["settings"]) == SETTINGS_FIELDS
    assert {"weights_sha256", "data_files", "image_size", "weights", "data", "model"} <= set(SETTINGS_FIELDS)


@pytest.mark.parametrize("field", SETTINGS_FIELDS)
def test_records_of_another_value_of_any_settings_field_are_refused(shared, tmp_path, field):
    run = copy_of(shared, tmp_path)
    records = read_records(run.out)
    for record in records:
        original = record["settings"][field]
        record["settings"][field] = perturbed(original)
        assert record["settings"][field] != original
    written = "".join(json.dumps(r) + "\n" for r in records)
    (run.out / "results.jsonl").write_text(written)
    with pytest.raises(SettingsMismatch) as refused:
        evaluate(config(run))
    assert names_field(str(refused.value), field), str(refused.value)
    assert [name for name in SETTINGS_FIELDS if names_field(str(refused.value), name)] == [field]
    assert (run.out / "results.jsonl").read_text() == written
    assert not any(path.stat().st_size for path in (run.out / "partial").glob("*.jsonl"))


# -- every real change of the inputs refuses or recomputes, never mixes ----------------------------

class Change(NamedTuple):
    """How to change a run's inputs (may edit the data folder or weight file in place) -> config changes."""

    apply: Callable[[Run, Path], dict[str, Any]]
    refused_field: str | None  # the field the SettingsMismatch names; None: resuming recomputes what changed
    in_place: bool = False  # edits the first run's files: the case makes its own first run


def other_folder(run: Run, tmp_path: Path) -> dict[str, Any]:
    shutil.copytree(run.data, tmp_path / "same-images-elsewhere")  # copy2: same names, sizes and mtimes
    return {"data": str(tmp_path / "same-images-elsewhere")}


def other_weight_file(run: Run, tmp_path: Path) -> dict[str, Any]:
    write_weights(tmp_path / "other.pt", seed=1)
    return {"weights": str(tmp_path / "other.pt")}


def retrained_in_place(run: Run, tmp_path: Path) -> dict[str, Any]:
    write_weights(run.weights, seed=1)
    return {}


def other_input_size_in_place(run: Run, tmp_path: Path) -> dict[str, Any]:
    write_weights(run.weights, seed=0, input_size=40)  # the same tensors, another input size
    return {}


def image_added(run: Run, tmp_path: Path) -> dict[str, Any]:
    write_images(run.data, 1, seed=7)
    return {}


def image_rewritten_in_place(run: Run, tmp_path: Path) -> dict[str, Any]:
    victim = sorted(run.data.iterdir())[0]
    before = victim.stat()
    rng = np.random.default_rng(11)
    Image.fromarray((rng.random((40, 48, 3)) * 255).astype(np.uint8)).save(victim)
    os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))  # a clock that did not move is no excuse
    return {}


def fixed(**changes: Any) -> Callable[[Run, Path], dict[str, Any]]:
    return lambda run, tmp_path: changes


#: one entry per EvaluationConfig field (outside RUN_ONLY), checked by test_every_config_field_has_a_change
CONFIG_CHANGES = {
    "data": Change(other_folder, "data"),
    "model": Change(fixed(model="tiny-barlow-twins"), "model"),
    "methods": Change(fixed(methods=["input-x-gradient"]), None),
    "pairs": Change(fixed(pairs=3), None),
    "seed": Change(fixed(seed=1), "seed"),
    "weights": Change(other_weight_file, "weights"),
    "transform": Change(fixed(transform="combine"), "transform"),
    "step": Change(fixed(step=128), "step"),
    "sensitivity_samples": Change(fixed(sensitivity_samples=2), "sensitivity_samples"),
    "strict": Change(fixed(strict=True), None),
}
CONTENT_CHANGES = {
    "weights retrained in place": Change(retrained_in_place, "weights_sha256", in_place=True),
    "weights of another input size in place": Change(other_input_size_in_place, "image_size", in_place=True),
    "image added to the folder": Change(image_added, "data_files", in_place=True),
    "image rewritten in place": Change(image_rewritten_in_place, "data_files", in_place=True),
}
CHANGES = {**CONFIG_CHANGES, **CONTENT_CHANGES}


def test_every_config_field_has_a_change():
    fields = {f.name for f in dataclasses.fields(EvaluationConfig)}
    assert set(CONFIG_CHANGES) | set(RUN_ONLY) == fields, "add the new EvaluationConfig field to CONFIG_CHANGES"


def assert_same_records(resumed: Any, fresh: Any, where: str = "records") -> None:
    """Equal structure and strings; numbers within TOLERANCE (``seconds``, the timing, is left out)."""
    if isinstance(fresh, dict):
        assert set(resumed) - {"seconds"} == set(fresh) - {"seconds"}, where
        for key in set(fresh) - {"seconds"}:
            assert_same_records(resumed[key], fresh[key], f"{where}.{key}")
    elif isinstance(fresh, list):
        assert len(resumed) == len(fresh), where
        for i, (a, b) in enumerate(zip(resumed, fresh)):
            assert_same_records(a, b, f"{where}[{i}]")
    elif isinstance(fresh, float):
        assert resumed == pytest.approx(fresh, abs=TOLERANCE), where
    else:
        assert resumed == fresh, where


@pytest.mark.parametrize("name", list(CHANGES))
def test_a_changed_input_refuses_or_recomputes_never_mixes(shared, tmp_path, name):
    change = CHANGES[name]
    run = first_run(tmp_path / "own") if change.in_place else copy_of(shared, tmp_path)
    before = (run.out / "results.jsonl").read_text()
    changed = config(run, **change.apply(run, tmp_path))
    if change.refused_field is not None:
        with pytest.raises(SettingsMismatch) as refused:
            evaluate(changed)
        assert names_field(str(refused.value), change.refused_field), str(refused.value)
        assert (run.out / "results.jsonl").read_text() == before  # nothing recomputed into it, nothing mixed
        return
    evaluate(changed)
    fresh = tmp_path / "fresh"
    evaluate(dataclasses.replace(changed, out=str(fresh)))
    assert_same_records(read_records(run.out), read_records(fresh))
