"""Training loop of the shipped models (SimCLR and Barlow Twins), resumable and seeded."""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..data.folder import list_images, load_square, split_holdout
from ..models.zoo import build_tiny_model, save_tiny_checkpoint
from ..data.augment import BARLOW_VIEW1, BARLOW_VIEW2, SIMCLR_AUGMENT, AugmentConfig, augment_batch
from .losses import barlow_twins_loss, nt_xent

__all__ = ["TrainConfig", "LARS", "train"]

METHODS = ("simclr", "barlow-twins")


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored in the checkpoint and the model card)."""

    method: str
    data: str
    out: str
    epochs: int = 200
    batch_size: int = 256
    lr: float | None = None
    weight_decay: float = 1e-4
    warmup_epochs: int = 10
    image_size: int = 112
    source_size: int = 144
    width: int = 32
    min_scale: float = 0.2
    holdout_every: int = 5
    temperature: float = 0.2
    lambd: float = 0.0051
    seed: int = 0
    device: str = "cpu"
    time_budget_min: float | None = None
    checkpoint_every: int = 10
    head_dims: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {METHODS}")
        if not self.head_dims:
            self.head_dims = [512, 128] if self.method == "simclr" else [1024, 1024, 1024]
        if self.lr is None:
            self.lr = (0.4 if self.method == "simclr" else 0.3) * self.batch_size / 256


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise trust ratios (You et al. 2017), as SimCLR / Barlow Twins use.

    Biases and BatchNorm parameters (1-D tensors) get neither weight decay nor adaptation.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 1e-4, eta: float = 0.02):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta))

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if p.ndim > 1:
                    grad = grad.add(p, alpha=group["weight_decay"])
                    p_norm, g_norm = torch.norm(p), torch.norm(grad)
                    trust = torch.where((p_norm > 0) & (g_norm > 0), group["eta"] * p_norm / g_norm,
                                        torch.ones_like(p_norm))
                    grad = grad * trust.clamp(max=1.0)
                state = self.state[p]
                if "momentum" not in state:
                    state["momentum"] = torch.zeros_like(p)
                buf = state["momentum"].mul_(group["momentum"]).add_(grad)
                p.add_(buf, alpha=-group["lr"])


def _load_dataset(cfg: TrainConfig) -> tuple[torch.Tensor, int, int]:
    files = list_images(cfg.data)
    train_files, held = split_holdout(files, cfg.holdout_every)
    images = torch.stack([load_square(f, cfg.source_size) for f in train_files])
    return images, len(train_files), len(held)


def _views(cfg: TrainConfig) -> tuple[AugmentConfig, AugmentConfig]:
    if cfg.method == "simclr":
        view = AugmentConfig(**{**asdict(SIMCLR_AUGMENT), "scale": (cfg.min_scale, 1.0)})
        return view, view
    return (AugmentConfig(**{**asdict(BARLOW_VIEW1), "scale": (cfg.min_scale, 1.0)}),
            AugmentConfig(**{**asdict(BARLOW_VIEW2), "scale": (cfg.min_scale, 1.0)}))


def _lr_at(cfg: TrainConfig, step: int, steps_per_epoch: int, total_epochs: int) -> float:
    warm = cfg.warmup_epochs * steps_per_epoch
    total = total_epochs * steps_per_epoch
    if step < warm:
        return cfg.lr * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train(cfg: TrainConfig, resume: bool = True, show_progress: bool = True,
          max_epochs_this_run: int | None = None) -> dict[str, Any]:
    """Train a shipped-model architecture with ``cfg.method``; write ``cfg.out`` (fp16 weights).

    A resumable checkpoint ``<out>.ckpt`` (model, optimiser, RNG and epoch) is written every
    ``checkpoint_every`` epochs; with ``resume=True`` an existing one is continued (a changed
    ``cfg.epochs`` extends or shortens the run). ``max_epochs_this_run`` stops early after that
    many epochs (with a checkpoint), for training in several sittings.

    Returns:
        A summary dict (epochs run, final loss, seconds, image counts).
    """
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    arch = {"width": cfg.width, "head_dims": cfg.head_dims, "input_size": cfg.image_size, "normalized": True}
    name = "tiny-" + cfg.method
    model = build_tiny_model(arch, name=name).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = LARS(model.parameters(), lr=float(cfg.lr), weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(cfg.seed)
    images, n_train, n_held = _load_dataset(cfg)
    images = images.to(device)
    steps_per_epoch = max(1, n_train // cfg.batch_size)
    view1, view2 = _views(cfg)
    ckpt_path = Path(str(cfg.out) + ".ckpt")
    ckpt_path.parent.mkdir(parents=True, exist_ok=True)
    start_epoch, total_epochs, history = 0, cfg.epochs, []
    if resume and ckpt_path.exists():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        start_epoch, total_epochs, history = state["epoch"], state["total_epochs"], state["history"]
        if cfg.epochs != state["config"]["epochs"]:
            total_epochs = cfg.epochs
    started = time.time()
    step = start_epoch * steps_per_epoch
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    bar = tqdm(total=total_epochs, initial=start_epoch, desc=f"train {cfg.method}", disable=not show_progress)
    epoch = start_epoch
    warm_time = started
    stop_at = total_epochs if max_epochs_this_run is None else min(total_epochs, start_epoch + max_epochs_this_run)
    while epoch < stop_at:
        model.train()
        order = torch.randperm(n_train, generator=generator)
        losses = []
        for b in range(steps_per_epoch):
            index = order[b * cfg.batch_size:(b + 1) * cfg.batch_size].to(device)
            batch = images[index]
            x1 = augment_batch(batch, cfg.image_size, view1, generator)
            x2 = augment_batch(batch, cfg.image_size, view2, generator)
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(cfg, step, steps_per_epoch, total_epochs)
            with autocast:
                z = model(torch.cat([x1, x2]).contiguous(memory_format=torch.channels_last))
            z1, z2 = z.float().chunk(2)
            loss = nt_xent(z1, z2, cfg.temperature) if cfg.method == "simclr" else barlow_twins_loss(z1, z2, cfg.lambd)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
            step += 1
        epoch += 1
        history.append(float(torch.stack(losses).mean()))
        if cfg.time_budget_min and start_epoch == 0 and epoch in (2, 12):
            # decide the epoch count from the steady-state speed of epochs 3-12 (the first ones warm up)
            if epoch == 2:
                warm_time = time.time()
            else:
                per_epoch = (time.time() - warm_time) / 10
                remaining = cfg.time_budget_min * 60 - (time.time() - started)
                total_epochs = max(epoch, min(total_epochs, epoch + int(remaining / per_epoch)))
                bar.total = total_epochs
        bar.update(1)
        bar.set_postfix(loss=f"{history[-1]:.4f}")
        stop_at = total_epochs if max_epochs_this_run is None else min(total_epochs, start_epoch + max_epochs_this_run)
        if epoch % cfg.checkpoint_every == 0 or epoch in (total_epochs, stop_at):
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "generator": generator.get_state(), "epoch": epoch, "total_epochs": total_epochs,
                        "history": history, "config": asdict(cfg)}, ckpt_path)
    bar.close()
    seconds = time.time() - started
    summary = {"method": cfg.method, "epochs": total_epochs, "final_loss": history[-1] if history else None,
               "train_images": n_train, "heldout_images": n_held, "train_seconds_this_run": round(seconds, 1),
               "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
               "config": asdict(cfg), "loss_history": [round(v, 5) for v in history]}
    model.eval()
    save_tiny_checkpoint(model.float().to("cpu").to(memory_format=torch.contiguous_format), arch, cfg.out,
                         meta={k: v for k, v in summary.items() if k != "loss_history"})
    return summary
