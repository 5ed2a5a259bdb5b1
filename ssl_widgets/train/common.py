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

from .retrieval import heldout_views, top1_from_embeddings

__all__ = [
    "EpochPlanner",
    "HeldoutMonitor",
    "UnsafeCheckpointError",
    "cosine",
    "load_training_state",
    "save_training_state",
    "write_json",
]


class UnsafeCheckpointError(RuntimeError):
    """A training checkpoint holds something other than tensors and plain Python types."""


def save_training_state(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write a resumable training state atomically (tensors, numbers, strings, lists, tuples, dicts only)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_training_state(path: str | os.PathLike) -> dict[str, Any]:
    """Read a training checkpoint with ``torch.load(weights_only=True)``: no pickled code is ever run.

    Raises:
        UnsafeCheckpointError: the file holds other objects (e.g. a class instance whose unpickling
            would run code); the message says how to start over.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise UnsafeCheckpointError(
            f"refusing to resume from {path}: it contains objects other than tensors and plain Python types, "
            f"and loading it could run arbitrary code ({str(error).splitlines()[0][:160]}). Delete the file or "
            f"train with --no-resume."
        ) from error
    if not isinstance(state, dict) or "epoch" not in state or "model" not in state:
        raise UnsafeCheckpointError(f"{path} is not a training checkpoint of ssl_widgets.train (no 'epoch'/'model')")
    return state


def cosine(start: float, end: float, progress: float) -> float:
    """Cosine interpolation from ``start`` (progress 0) to ``end`` (progress >= 1)."""
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, progress))))


def write_json(path: str | os.PathLike, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON atomically (the run summary beside the weight file)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


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
    while running, so a killed run still reports its curve).
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
    epoch, budget_stop = start_epoch, False

    def summary(status: str) -> dict[str, Any]:
        return {"method": cfg.method, "status": status, "epochs": total, "epochs_done": epoch,
                "final_loss": history[-1] if history else None, **info,
                "seconds": round(time.time() - started, 1), "stopped_by_time_budget": budget_stop,
                "heldout_curve_seed1": monitor.curve if monitor else None,
                "chosen_epoch": monitor.best_epoch if monitor else epoch,
                "heldout_top1_seed1": round(monitor.best_top1, 4) if monitor else None,
                "config": asdict(cfg), "loss_history": [round(v, 5) for v in history]}

    def stop_at() -> int:
        return total if max_epochs_this_run is None else min(total, start_epoch + max_epochs_this_run)

    while epoch < stop_at():
        history.append(float(runner.epoch(epoch, total)))
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
    done = epoch >= total
    result = summary("done" if done else "paused")
    meta = {k: v for k, v in result.items() if k != "loss_history"}
    if monitor is None or not cfg.eval_every:
        runner.save_weights(out, meta)
    elif out.exists():  # the best weights are on disk: refresh their metadata
        packed = torch.load(out, map_location="cpu", weights_only=True)
        packed["meta"] = meta
        torch.save(packed, out)
    write_json(json_path, result)
    return result
