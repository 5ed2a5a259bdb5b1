"""Pieces shared by the training loops: safe resumable checkpoints, the time budget, and held-out
early stopping (best checkpoint selected by retrieval top-1 on the held-out images)."""
from __future__ import annotations

import json
import math
import os
import pickle
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..data.folder import list_images, load_square, split_holdout
from .retrieval import heldout_views, top1_from_embeddings

__all__ = [
    "EpochPlanner",
    "HeldoutMonitor",
    "UnsafeCheckpointError",
    "cosine",
    "first_non_finite",
    "load_dataset",
    "load_tensors_only",
    "load_training_state",
    "save_training_state",
    "write_json",
]


class UnsafeCheckpointError(RuntimeError, ValueError):
    """A training checkpoint holds something other than tensors and plain Python types.

    Also a ``ValueError`` (a bad input file), so the command lines report it in one line.
    """


def save_training_state(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write a resumable training state atomically (tensors, numbers, strings, lists, tuples, dicts only)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_tensors_only(path: str | os.PathLike, refusal: str, advice: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; a file with pickled objects raises :class:`UnsafeCheckpointError`.

    Args:
        path: the file.
        refusal: how the error message starts (e.g. ``"refusing to resume from FILE"``).
        advice: what the user can do, appended to the message.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise UnsafeCheckpointError(
            f"{refusal}: it contains objects other than tensors and plain Python types, and loading it could run "
            f"arbitrary code ({str(error).splitlines()[0][:160]}). {advice}"
        ) from error


def load_training_state(path: str | os.PathLike) -> dict[str, Any]:
    """Read a training checkpoint with ``torch.load(weights_only=True)``: no pickled code is ever run.

    Raises:
        UnsafeCheckpointError: the file holds other objects (e.g. a class instance whose unpickling
            would run code); the message says how to start over.
    """
    state = load_tensors_only(path, f"refusing to resume from {path}", "Delete the file or train with --no-resume.")
    if not isinstance(state, dict) or "epoch" not in state or "model" not in state:
        raise UnsafeCheckpointError(f"{path} is not a training checkpoint of ssl_widgets.train (no 'epoch'/'model')")
    return state


def cosine(start: float, end: float, progress: float) -> float:
    """Cosine interpolation from ``start`` (progress 0) to ``end`` (progress >= 1)."""
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, progress))))


def _json_ready(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, infinity) replaced by ``None``: JSON has no such numbers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value


def write_json(path: str | os.PathLike, data: dict[str, Any]) -> None:
    """Write ``data`` as valid JSON atomically (the run summary beside the weight file; NaN written as null)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_json_ready(data), indent=1, default=str, allow_nan=False))
    os.replace(tmp, path)


def first_non_finite(tree: Any, prefix: str = "") -> str | None:
    """The name of the first floating-point tensor in ``tree`` (nested dicts, lists) holding NaN or infinity.

    Examples:
        >>> first_non_finite({"model": {"w": torch.ones(2), "b": torch.tensor([0.0, float("nan")])}})
        'model.b'
        >>> first_non_finite({"w": torch.ones(2)}) is None
        True
    """
    if isinstance(tree, torch.Tensor):
        return prefix if tree.is_floating_point() and not bool(torch.isfinite(tree).all()) else None
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else ()
    for key, value in items:
        found = first_non_finite(value, f"{prefix}.{key}" if prefix else str(key))
        if found is not None:
            return found
    return None


class EpochPlanner:
    """Fits the number of epochs into a time budget measured from ``started`` (loading included).

    After epoch 2 the clock of the steady state starts; after epoch 12 the total is set so that
    the run ends within the budget (the learning-rate schedules follow the new total). A hard stop
    (:meth:`over_budget`) catches runs whose later epochs are slower (evaluations, a shared GPU).
    """

    def __init__(self, budget_min: float | None, started: float, total_epochs: int) -> None:
        self.budget_s = budget_min * 60 if budget_min else None
        self.started, self.total, self._warm = started, total_epochs, started

    def after_epoch(self, epoch: int, resumed: bool) -> int:
        """Update and return the planned total after ``epoch`` (1-based) finished."""
        if self.budget_s is None or resumed:
            return self.total
        if epoch == 2:
            self._warm = time.time()
        elif epoch == 12:
            per_epoch = (time.time() - self._warm) / 10
            remaining = self.budget_s - (time.time() - self.started)
            self.total = max(epoch, min(self.total, epoch + int(0.97 * remaining / per_epoch)))
        return self.total

    def over_budget(self) -> bool:
        """Whether the budget is spent (plus 3 %: the planned total normally ends the run first)."""
        return self.budget_s is not None and time.time() - self.started > 1.03 * self.budget_s


class HeldoutMonitor:
    """Held-out retrieval top-1 during training, for early stopping / best-checkpoint selection.

    The protocol of :func:`ssl_widgets.train.retrieval.retrieval_top1` (same query augmentation and
    gallery) with another query seed (default 1; the final test uses 0). The query and gallery
    images are made once and kept on the training device, so an evaluation is two batched forwards.

    Args:
        files: the held-out image files.
        size: model input size.
        device: the training device.
        views_per_image: queries per image.
        seed: the query seed.
    """

    def __init__(self, files: Sequence[Path], size: int, device: torch.device, views_per_image: int = 5,
                 seed: int = 1) -> None:
        gallery, queries = heldout_views(files, size, views_per_image, seed)
        self.gallery, self.queries = gallery.to(device), queries.to(device)
        self.curve: list[tuple[int, float]] = []
        self.best_top1, self.best_epoch = -1.0, 0

    @torch.no_grad()
    def evaluate(self, embed: Callable[[torch.Tensor], torch.Tensor], epoch: int, batch_size: int = 256) -> bool:
        """Record the top-1 of ``embed`` (pixel images -> embeddings) at ``epoch``; True if it is a new best."""
        def run(images: torch.Tensor) -> torch.Tensor:
            return torch.cat([embed(images[i:i + batch_size]).float() for i in range(0, len(images), batch_size)])

        top1 = top1_from_embeddings(run(self.gallery), run(self.queries))
        self.curve.append((epoch, round(top1, 4)))
        if top1 > self.best_top1:
            self.best_top1, self.best_epoch = top1, epoch
            return True
        return False

    def state(self) -> dict[str, Any]:
        """Plain-type state for the training checkpoint."""
        return {"curve": [list(c) for c in self.curve], "best_top1": self.best_top1, "best_epoch": self.best_epoch}

    def load(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state`."""
        self.curve = [(int(e), float(t)) for e, t in state.get("curve", [])]
        self.best_top1, self.best_epoch = float(state.get("best_top1", -1.0)), int(state.get("best_epoch", 0))


def run_epochs(cfg: Any, runner: Any, monitor: HeldoutMonitor | None, *, started: float, resume: bool,
               show_progress: bool, max_epochs_this_run: int | None, info: dict[str, Any]) -> dict[str, Any]:
    """The epoch loop shared by every method: resume, time budget, evaluation, checkpoints, summary.

    ``runner`` provides ``epoch(index, total) -> mean loss``, ``embed(x)``, ``state()``/``load(state)``
    (tensors and plain types) and ``save_weights(path, meta)``. With a ``monitor``, the weights of the
    best held-out evaluation (every ``cfg.eval_every`` epochs and at the last epoch) are the ones
    written to ``cfg.out``; without, the final weights are. ``<out>.json`` holds the summary (also
    while running, so a killed run still reports its curve). An epoch whose mean loss or weights are
    not finite stops the run with status ``"diverged"`` (its reason in ``"diverged"``): neither
    those weights nor a checkpoint of them are written.
    """
    from dataclasses import asdict

    from tqdm.auto import tqdm

    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    ckpt_path, json_path = Path(str(out) + ".ckpt"), Path(str(out) + ".json")
    start_epoch, total, history = 0, cfg.epochs, []
    if resume and ckpt_path.exists():
        state = load_training_state(ckpt_path)
        runner.load(state)
        if "rng_cpu" in state:  # stochastic depth and other global-RNG draws continue as in one sitting
            torch.set_rng_state(state["rng_cpu"])
        if state.get("rng_cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        start_epoch, total, history = int(state["epoch"]), int(state["total_epochs"]), list(state["history"])
        if monitor is not None and "monitor" in state:
            monitor.load(state["monitor"])
        if cfg.epochs != state["config"]["epochs"]:
            total = cfg.epochs
    planner = EpochPlanner(cfg.time_budget_min, started, total)
    bar = tqdm(total=total, initial=start_epoch, desc=f"train {cfg.method}", disable=not show_progress)
    epoch, budget_stop, diverged = start_epoch, False, None

    def summary(status: str) -> dict[str, Any]:
        return {"method": cfg.method, "status": status, "diverged": diverged, "epochs": total, "epochs_done": epoch,
                "final_loss": history[-1] if history else None, **info,
                "seconds": round(time.time() - started, 1), "stopped_by_time_budget": budget_stop,
                "heldout_curve_seed1": monitor.curve if monitor else None,
                "chosen_epoch": monitor.best_epoch if monitor else epoch,
                "heldout_top1_seed1": round(monitor.best_top1, 4) if monitor else None,
                "config": asdict(cfg), "loss_history": [round(v, 5) for v in history]}

    def stop_at() -> int:
        return total if max_epochs_this_run is None else min(total, start_epoch + max_epochs_this_run)

    while epoch < stop_at():
        loss = float(runner.epoch(epoch, total))
        broken = first_non_finite(runner.state())
        if not math.isfinite(loss) or broken is not None:
            diverged = (f"training diverged in epoch {epoch + 1}: "
                        + (f"the mean loss is {loss}" if not math.isfinite(loss) else f"{broken!r} is not finite")
                        + "; stopped without writing the weights of that epoch (try a lower --lr)")
            break
        history.append(loss)
        epoch += 1
        total = planner.after_epoch(epoch, resumed=start_epoch > 0)
        if planner.over_budget() and epoch < total:
            total, budget_stop = epoch, True
        bar.total = total
        bar.update(1)
        bar.set_postfix(loss=f"{history[-1]:.4f}")
        if monitor is not None and cfg.eval_every and (epoch % cfg.eval_every == 0 or epoch == total):
            if monitor.evaluate(runner.embed, epoch):
                runner.save_weights(out, {k: v for k, v in summary("running").items() if k != "loss_history"})
            if show_progress:
                bar.write(f"epoch {epoch}: held-out top-1 (seed 1) {monitor.curve[-1][1]:.4f}"
                          f" (best {monitor.best_top1:.4f} at {monitor.best_epoch})")
            write_json(json_path, summary("running"))
        if epoch % cfg.checkpoint_every == 0 or epoch == stop_at():
            save_training_state(ckpt_path, {
                **runner.state(), "epoch": epoch, "total_epochs": total, "history": history, "config": asdict(cfg),
                "monitor": monitor.state() if monitor else {}, "rng_cpu": torch.get_rng_state(),
                "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []})
    bar.close()
    result = summary("diverged" if diverged else "done" if epoch >= total else "paused")
    meta = {k: v for k, v in result.items() if k != "loss_history"}
    if (monitor is None or not cfg.eval_every) and not diverged:
        runner.save_weights(out, meta)
    elif out.exists():  # the best (or, diverged, earlier) weights are on disk: refresh their metadata
        packed = torch.load(out, map_location="cpu", weights_only=True)
        packed["meta"] = meta
        torch.save(packed, out)
    write_json(json_path, result)
    return result


def load_dataset(cfg: Any) -> tuple[torch.Tensor, list, list]:
    """The training images of ``cfg`` (a ``TrainConfig``: ``data``, ``holdout_every``, ``source_size``) as one ``(N,3,source,source)`` tensor, plus the train and held-out file lists."""
    files = list_images(cfg.data)
    train_files, held = split_holdout(files, cfg.holdout_every)
    if len(train_files) < 2:
        raise ValueError(f"need at least 2 training images under {cfg.data}, found {len(train_files)}")
    images = torch.stack([load_square(f, cfg.source_size) for f in train_files])
    return images, train_files, held
