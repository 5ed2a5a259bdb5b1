"""Evaluation driver: methods x metrics over deterministic pairs from an image folder.

Runs in one process, or under ``torchrun`` (pairs sharded across ranks, gloo on CPU and NCCL on
GPU, one GPU per rank); rank 0 gathers and writes ``results.jsonl``, ``table.md`` and
``curves.png``.

Resuming: re-running into the same ``--out`` skips the (pair, method) records already written.
Every record carries the settings that produced its numbers (:class:`~.settings.EvaluationSettings`:
model, weights path and a fingerprint of their values, input size, data folder and a fingerprint of
its file list, seed, view transform, step, sensitivity samples); when the records in ``--out`` were
computed with other settings the run refuses with :class:`SettingsMismatch` (naming the differences)
instead of mixing numbers or retitling old ones. Unreadable image files are skipped with a warning and
counted in the table's caption (``strict=True`` / ``--strict`` fails instead).
"""
from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from ..attr.applicability import check_applicable
from ..attr.spec import listed_names, resolve
from ..core import PAPER_INSERTION_STEP, SEED_MULTIPLIER
from ..data import list_images, make_view
from ..data.images import to_pil
from ..explain import explain_pair
from ..metrics import average_drop_increase, insertion_deletion, max_sensitivity
from ..metrics.insertion_deletion import simultaneous_and_conditional
from ..models import load_model
from .settings import EvaluationSettings, SettingsMismatch, check_settings, files_fingerprint, weights_fingerprint
from .table import duration_text, format_table, plot_curves, summarize

__all__ = ["EvaluationConfig", "SettingsMismatch", "UnreadableImage", "build_pairs", "evaluate", "method_names",
           "record_settings"]


def method_names() -> tuple[str, ...]:
    """The method names the driver evaluates: every listed name of the pair, one-map and joint methods.

    Read from the method records (:mod:`ssl_widgets.attr.spec`); which metrics a method gets is its
    record's ``metrics`` (the others are NA in the table).

    Examples:
        >>> "interaction-cam:max" in method_names(), "cls-attention" in method_names()
        (True, False)
    """
    return listed_names("pair", "single", "joint")


@dataclass
class EvaluationConfig:
    """One evaluation run (the options of ``ssl-widgets evaluate``); bad counts raise ``ValueError`` naming the field."""

    data: str
    model: str
    methods: list[str]
    pairs: int = 100
    seed: int = 0
    out: str = "evaluation"
    weights: str | None = None
    transform: str = "aug"
    step: int | None = None
    sensitivity_samples: int = 10
    show_progress: bool = True
    strict: bool = False

    def __post_init__(self) -> None:
        if not self.methods:
            raise ValueError("methods is empty: give at least one method name")
        minimum = {"pairs": 1, "seed": 0, "step": 1, "sensitivity_samples": 1}
        for name, least in minimum.items():
            value = getattr(self, name)
            if name == "step" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}{' or None' if name == 'step' else ''}, "
                                 f"got {value!r}")


class UnreadableImage(ValueError):
    """An image of the data folder cannot be read (raised only with ``strict``)."""


def record_settings(cfg: EvaluationConfig, model: nn.Module, files: Sequence[Path]) -> EvaluationSettings:
    """The settings of ``cfg``'s records: the run's options plus fingerprints of the loaded ``model`` and the images.

    Args:
        cfg: the run's configuration.
        model: the loaded model (its state dict is fingerprinted, its ``input_size`` recorded).
        files: the images of ``cfg.data`` (their list, sizes and modification times are fingerprinted).
    """
    return EvaluationSettings(
        model=cfg.model, weights=str(Path(cfg.weights).resolve()) if cfg.weights else None,
        weights_sha256=weights_fingerprint(model), image_size=int(model.input_size),
        data=str(Path(cfg.data).resolve()), data_files=files_fingerprint(files, cfg.data), seed=cfg.seed,
        transform=cfg.transform, step=cfg.step or PAPER_INSERTION_STEP, sensitivity_samples=cfg.sensitivity_samples)


def _unreadable(path: Path) -> str | None:
    """Why ``path`` cannot be decoded as an image, or ``None`` if it can."""
    try:
        to_pil(path)
    except (ValueError, OSError) as error:
        return str(error)
    return None


def build_pairs(folder: str, n: int, seed: int) -> list[tuple[int, Path]]:
    """``n`` deterministic ``(pair_index, file)``: a seeded permutation of the folder, cycled if short."""
    return _pairs_of(list_images(folder), n, seed)


def _pairs_of(files: Sequence[Path], n: int, seed: int) -> list[tuple[int, Path]]:
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed)).tolist()
    return [(i, files[order[i % len(files)]]) for i in range(n)]


def _pair_tensors(path: Path, index: int, seed: int, size: int, transform: str):
    x1 = make_view(str(path), "pure", size, seed=None)
    x2 = make_view(str(path), transform, size, seed=seed * 1_000_003 + index)
    return x1, x2


def _metrics_for(model, name: str, x1, x2, result, step: int, sensitivity_samples: int, seed: int) -> tuple[dict, dict]:
    spec, settings = resolve(name)
    m1, m2 = result[0], result[1]
    metrics: dict[str, float | None] = {}
    curves: dict[str, list[float]] = {}
    single = spec.kind == "single"  # one map (the image's own): only the conditional metrics
    # conditional: each image perturbed with the other as the condition, the two directions averaged
    directions = [(x1, x2, m1)] if single else [(x1, x2, m1), (x2, x1, m2)]
    conditional = {}  # the conditional curves of the simultaneous pass (the same perturbed images)
    if "SI" in spec.metrics:  # the symmetric metrics: both images perturbed together
        for kind, key in (("insertion", "SI"), ("deletion", "SD")):
            r, *conditional[kind] = simultaneous_and_conditional(model, x1, x2, m1, m2, mode=kind, step=step)
            metrics[key] = float(r.score[0])
            curves[f"S-{kind}"] = [round(float(v), 5) for v in r.curve[0]]
        r = average_drop_increase(model, x1, x2, m1, m2)
        metrics["SAD"], metrics["SIC"] = float(r.drop[0]), float(r.increase[0])
    else:
        metrics.update(SI=None, SD=None, SAD=None, SIC=None)
    for kind, key in (("insertion", "CI"), ("deletion", "CD")):
        runs = (conditional[kind][:len(directions)] if kind in conditional else
                [insertion_deletion(model, a, b, m, mode=kind, step=step) for a, b, m in directions])
        metrics[key] = sum(float(r.score[0]) for r in runs) / len(runs)
        curves[f"C-{kind}"] = [round(float(v), 5) for v in (sum(r.curve[0] for r in runs) / len(runs))]
    drops = [average_drop_increase(model, a, b, m) for a, b, m in directions]
    metrics["CAD"] = sum(float(r.drop[0]) for r in drops) / len(drops)
    metrics["CIC"] = sum(float(r.increase[0]) for r in drops) / len(drops)
    if "MS" not in spec.metrics:
        metrics["MS"] = None
    else:
        method = spec.build(model)  # default layer for the CAMs
        ms = max_sensitivity(method, (x1, x2), n_samples=sensitivity_samples,
                             generator=torch.Generator().manual_seed(seed), **settings)
        metrics["MS"] = float(ms[0])
    return metrics, curves


def _dist_info() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return world, rank, local


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut off by an interrupted run is recomputed
    return records


def _start_distributed() -> tuple[int, int, torch.device]:
    """World size and rank (one process group under ``torchrun``), and this process's device."""
    world, rank, local = _dist_info()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return world, rank, torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")


def _pending(cfg: EvaluationConfig, out: Path, files: list[Path], run_settings: EvaluationSettings, world: int,
             rank: int) -> tuple[list[tuple[int, Path]], list[tuple[int, Path, str]]]:
    """Resume and shard: every pair of the run, and this rank's (pair, image, method) records not yet done.

    Records of earlier runs (merged or in the rank shards) count as done when their settings match this
    run's (else :class:`SettingsMismatch`); skipped pairs are retried.
    """
    existing = _read_jsonl(out / "results.jsonl")
    for shard in (out / "partial").glob("rank*.jsonl"):
        existing += _read_jsonl(shard)
    check_settings(existing, run_settings, out)
    done = {(r["pair"], r["method"]) for r in existing if "skipped" not in r}
    pairs = _pairs_of(files, cfg.pairs, cfg.seed)
    mine = [(i, p) for i, p in pairs if i % world == rank]
    return pairs, [(i, p, m) for i, p in mine for m in cfg.methods if (i, m) not in done]


def _run_record(cfg: EvaluationConfig, model: nn.Module, device: torch.device, index: int, path: Path, name: str,
                step: int) -> dict[str, Any]:
    """Explain pair ``index`` (image ``path``) with method ``name`` and score it: one results.jsonl record
    (without its ``settings``)."""
    started = time.perf_counter()
    # averaged transforms explain a photometric pair (same geometry), as in the paper
    transform = resolve(name)[0].view_transform or cfg.transform  # Averaged Transforms: "combine"
    x1, x2 = _pair_tensors(path, index, cfg.seed, model.input_size, transform)
    x1, x2 = x1.to(device), x2.to(device)
    generator = torch.Generator().manual_seed(cfg.seed * SEED_MULTIPLIER + index)
    result = explain_pair(model, name, x1, x2, generator=generator)
    metrics, curves = _metrics_for(model, name, x1, x2, result, step, cfg.sensitivity_samples,
                                   cfg.seed * SEED_MULTIPLIER + index)
    return {"pair": index, "image": path.name, "method": name, "similarity": float(result.similarity[0]),
            "metrics": metrics, "curves": curves, "seconds": round(time.perf_counter() - started, 3)}


def _run_shard(cfg: EvaluationConfig, model: nn.Module, device: torch.device, todo: list[tuple[int, Path, str]],
               shard: Path, settings: dict[str, Any], step: int, show: bool) -> None:
    """Append this rank's records to ``shard`` one by one (an interrupted run resumes from them), with the
    bad-image policy (``cfg.strict`` raises :class:`UnreadableImage`, else a ``skipped`` record) and a
    progress bar whose time left is each method's mean record time so far."""
    bar = tqdm(total=len(todo), disable=not show, desc=f"evaluate {cfg.model}")
    unreadable: dict[Path, str | None] = {}
    spent: dict[str, list[float]] = {m: [0.0, 0] for m in cfg.methods}  # seconds, records
    left = {m: sum(name == m for _, _, name in todo) for m in cfg.methods}
    with open(shard, "a") as shard_file:
        for index, path, name in todo:
            if path not in unreadable:
                unreadable[path] = _unreadable(path)
                if unreadable[path] is not None:
                    if cfg.strict:
                        raise UnreadableImage(f"unreadable image in --data: {unreadable[path]} (without --strict it "
                                              f"is skipped and counted in the table's caption)")
                    warnings.warn(f"skipping unreadable image: {unreadable[path]}", stacklevel=3)
            if unreadable[path] is not None:
                record = {"pair": index, "image": path.name, "method": name, "skipped": unreadable[path]}
            else:
                record = _run_record(cfg, model, device, index, path, name, step)
                spent[name][0] += record["seconds"]
                spent[name][1] += 1
            shard_file.write(json.dumps(record | {"settings": settings}) + "\n")
            shard_file.flush()
            left[name] -= 1
            if all(spent[m][1] for m in cfg.methods if left[m]):
                seconds = sum(spent[m][0] / spent[m][1] * left[m] for m in cfg.methods if left[m])
                bar.set_postfix_str(f"about {duration_text(seconds)} left", refresh=False)
            bar.update(1)
    bar.close()


def _merge_and_report(cfg: EvaluationConfig, out: Path, pairs: list[tuple[int, Path]], step: int) -> dict[str, Any]:
    """Merge results.jsonl and the rank shards (in pair order, shards removed), write table.md (skipped
    pairs in its caption) and curves.png; returns the summary."""
    partial_dir = out / "partial"
    records = {(r["pair"], r["method"]): r for r in _read_jsonl(out / "results.jsonl")}
    skipped: dict[str, str] = {}
    for shard in sorted(partial_dir.glob("rank*.jsonl")):
        for r in _read_jsonl(shard):
            if "skipped" in r:
                skipped[r["image"]] = r["skipped"]
            else:
                records[(r["pair"], r["method"])] = r
    wanted = {(i, m) for i, _ in pairs for m in cfg.methods}
    ordered = [records[k] for k in sorted(records) if k in wanted]
    with open(out / "results.jsonl", "w") as handle:
        for record in ordered:
            handle.write(json.dumps(record) + "\n")
    for shard in partial_dir.glob("rank*.jsonl"):
        shard.unlink()
    summary = summarize(ordered, cfg.methods)
    title = (f"**{cfg.model}** on `{Path(cfg.data).name}`: {cfg.pairs} pairs (centre crop + `{cfg.transform}` "
             f"view, seed {cfg.seed}; `combine` view for averaged transforms), {step}-pixel steps; conditional "
             f"metrics average both directions")
    skipped_pairs = sorted({i for i, p in pairs if p.name in skipped and not any((i, m) in records
                                                                              for m in cfg.methods)})
    caption = ""
    if skipped_pairs:
        names = sorted({p.name for i, p in pairs if i in skipped_pairs})
        caption = (f"{len(skipped_pairs)} of {cfg.pairs} pairs skipped: {len(names)} unreadable image"
                   f"{'s' if len(names) > 1 else ''} ({', '.join(names[:10])}{', ...' if len(names) > 10 else ''})")
    (out / "table.md").write_text(format_table(summary, title, caption))
    plot_curves(ordered, cfg.methods, out / "curves.png")
    return summary


def evaluate(cfg: EvaluationConfig) -> dict[str, Any]:
    """Run every method and metric on the configured pairs; returns the summary (rank 0)."""
    world, rank, device = _start_distributed()
    for name in cfg.methods:
        resolve(name)  # fail fast on an unknown name
    model = load_model(cfg.model, weights=cfg.weights, device=device)
    check_applicable(list(cfg.methods), model)  # e.g. a ':guided' variant on a ViT, before any work
    out = Path(cfg.out)
    (out / "partial").mkdir(parents=True, exist_ok=True)
    files = list_images(cfg.data)
    run_settings = record_settings(cfg, model, files)
    pairs, todo = _pending(cfg, out, files, run_settings, world, rank)
    step = cfg.step or PAPER_INSERTION_STEP  # the paper's step (224 steps at 224 px, 56 at the default models' 112 px)
    _run_shard(cfg, model, device, todo, out / "partial" / f"rank{rank}.jsonl", run_settings.as_record(), step,
               show=cfg.show_progress and rank == 0)
    if world > 1:
        dist.barrier()
    summary = _merge_and_report(cfg, out, pairs, step) if rank == 0 else {}
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return summary
