"""Training loop of the shipped models (SimCLR, Barlow Twins, SimSiam; DINO in :mod:`.dino`), resumable and seeded."""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..data.augment import (
    BARLOW_VIEW1,
    BARLOW_VIEW2,
    SIMCLR_AUGMENT,
    AugmentConfig,
    augment_batch,
)
from ..models.zoo import build_tiny_model, save_tiny_checkpoint
from .common import HeldoutMonitor, load_dataset, run_epochs
from .dino import train_dino
from .losses import barlow_twins_loss, nt_xent, simsiam_loss

__all__ = ["LARS", "TrainConfig", "train"]

METHODS = ("simclr", "barlow-twins", "simsiam", "dino")


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored in the checkpoint and the model card).

    ``None`` fields take the method's default (see ``__post_init__``). The DINO fields are used by
    ``method="dino"`` only (:mod:`ssl_widgets.train.dino`).
    """

    method: str
    data: str
    out: str
    epochs: int = 200
    batch_size: int = 256
    lr: float | None = None
    weight_decay: float | None = None
    warmup_epochs: int = 10
    image_size: int = 112
    source_size: int = 144
    width: int = 32
    min_scale: float | None = None
    holdout_every: int = 5
    temperature: float = 0.2
    lambd: float = 0.0051
    seed: int = 0
    device: str = "cpu"
    time_budget_min: float | None = None
    checkpoint_every: int = 10
    head_dims: list[int] = field(default_factory=list)
    last_bn: bool | None = None
    predictor_dims: list[int] = field(default_factory=list)
    blur_p: list[float] = field(default_factory=list)
    solarize_p: list[float] = field(default_factory=list)
    eval_every: int = 10
    eval_views: int = 5
    eval_seed: int = 1
    amp: bool | None = None
    channels_last: bool | None = None
    # DINO (ViT) only
    patch_size: int = 8
    embed_dim: int = 192
    depth: int = 6
    num_heads: int = 3
    out_dim: int = 4096
    local_crops: int = 6
    local_size: int = 48
    local_min_scale: float = 0.05
    student_temp: float = 0.1
    teacher_temp: float = 0.07
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: int = 30
    momentum_teacher: float = 0.996
    weight_decay_end: float = 0.4
    clip_grad: float = 3.0
    drop_path: float = 0.1
    freeze_last_layer: int = 1
    global_size: int | None = None
    init_from: str | None = None
    distill_from: str | None = None
    distill_weight: float = 1.0
    distill_temp: float = 0.1
    distill_queue: int = 2048

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {METHODS}")
        for name, least in (("epochs", 1), ("batch_size", 1), ("image_size", 1), ("source_size", 1), ("width", 1),
                            ("holdout_every", 2), ("checkpoint_every", 1), ("warmup_epochs", 0), ("eval_every", 0),
                            ("eval_views", 1), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
        defaults = {"simclr": ([512, 128], 0.4, 1e-4, 0.2), "barlow-twins": ([1024, 1024, 1024], 0.3, 1e-4, 0.2),
                    "simsiam": ([1024, 1024, 1024], 0.05, 1e-4, 0.2), "dino": ([], 5e-4, 0.04, 0.25)}
        dims, base_lr, wd, scale = defaults[self.method]
        self.head_dims = [int(d) for d in self.head_dims] or dims
        if self.method == "simsiam" and not self.predictor_dims:
            self.predictor_dims = [max(1, self.head_dims[-1] // 4), self.head_dims[-1]]
        if self.method != "simsiam" and self.predictor_dims:
            raise ValueError("predictor_dims is for method 'simsiam' only")
        if self.last_bn is None:
            self.last_bn = self.method in ("barlow-twins", "simsiam")
        if self.lr is None:
            self.lr = base_lr * self.batch_size / 256
        if self.weight_decay is None:
            self.weight_decay = wd
        if self.min_scale is None:
            self.min_scale = scale
        for name in ("blur_p", "solarize_p"):
            values = [float(v) for v in getattr(self, name)]
            if values and (len(values) != 2 or not all(0 <= v <= 1 for v in values)):
                raise ValueError(f"{name} must be two probabilities (view 1, view 2), got {values}")
            setattr(self, name, values)
        if not 0 < self.min_scale <= 1:
            raise ValueError(f"min_scale must be in (0, 1], got {self.min_scale}")
        if self.method != "dino" and (self.init_from or self.distill_from):
            raise ValueError("init_from and distill_from are for method 'dino' only")
        if self.method == "dino" and self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")

    def use_amp(self) -> bool:
        """bfloat16 autocast: on by default on CUDA (``amp`` forces it on or off, also on the CPU)."""
        return torch.device(self.device).type == "cuda" if self.amp is None else bool(self.amp)

    def use_channels_last(self) -> bool:
        """channels-last memory format: on by default on CUDA."""
        return torch.device(self.device).type == "cuda" if self.channels_last is None else bool(self.channels_last)


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise trust ratios (You et al. 2017), as SimCLR / Barlow Twins use.

    Biases and BatchNorm parameters (1-D tensors) get neither weight decay nor adaptation.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 1e-4, eta: float = 0.02):
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "eta": eta})

    @torch.no_grad()
    def step(self, closure=None):
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


def _views(cfg: TrainConfig) -> tuple[AugmentConfig, AugmentConfig]:
    if cfg.method in ("simclr", "simsiam"):
        pair = (SIMCLR_AUGMENT, SIMCLR_AUGMENT)
    else:
        pair = (BARLOW_VIEW1, BARLOW_VIEW2)
    views = []
    for i, view in enumerate(pair):
        changes: dict[str, Any] = {"scale": (cfg.min_scale, 1.0)}
        if cfg.blur_p:
            changes["blur_p"] = cfg.blur_p[i]
        if cfg.solarize_p:
            changes["solarize_p"] = cfg.solarize_p[i]
        views.append(AugmentConfig(**{**asdict(view), **changes}))
    return views[0], views[1]


def _lr_at(cfg: TrainConfig, step: int, steps_per_epoch: int, total_epochs: int) -> float:
    warm = cfg.warmup_epochs * steps_per_epoch
    total = total_epochs * steps_per_epoch
    if step < warm:
        return cfg.lr * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class _CNNRunner:
    """One tiny ResNet trained with SimCLR, Barlow Twins or SimSiam (see :func:`run_epochs`)."""

    def __init__(self, cfg: TrainConfig, images: torch.Tensor, device: torch.device) -> None:
        self.cfg, self.images, self.device = cfg, images, device
        self.arch: dict[str, Any] = {"width": cfg.width, "head_dims": cfg.head_dims, "input_size": cfg.image_size,
                                     "normalized": True}
        if cfg.last_bn:
            self.arch["last_bn"] = True
        if cfg.predictor_dims:
            self.arch["predictor_dims"] = cfg.predictor_dims
        self.model = build_tiny_model(self.arch, name="tiny-" + cfg.method).to(device)
        self.channels_last = cfg.use_channels_last()
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if cfg.method == "simsiam":  # SGD; the predictor keeps a fixed learning rate (SimSiam's fix_pred_lr)
            predictor = list(self.model.head[1].parameters())
            ids = {id(p) for p in predictor}
            rest = [p for p in self.model.parameters() if id(p) not in ids]
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(
                [{"params": rest, "fix_lr": False}, {"params": predictor, "fix_lr": True}],
                lr=float(cfg.lr), momentum=0.9, weight_decay=float(cfg.weight_decay))
        else:
            self.optimizer = LARS(self.model.parameters(), lr=float(cfg.lr), weight_decay=float(cfg.weight_decay))
        self.generator = torch.Generator().manual_seed(cfg.seed)  # CPU: draws indices and augmentation parameters
        self.views = _views(cfg)
        self.steps_per_epoch = max(1, len(images) // cfg.batch_size)
        self.amp = cfg.use_amp()

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        x = self.model.normalize(x)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def epoch(self, index: int, total: int) -> float:
        cfg, model = self.cfg, self.model
        model.train()
        order = torch.randperm(len(self.images), generator=self.generator)
        losses = []
        for b in range(self.steps_per_epoch):
            batch = self.images[order[b * cfg.batch_size:(b + 1) * cfg.batch_size].to(self.device)]
            x = torch.cat([augment_batch(batch, cfg.image_size, view, self.generator) for view in self.views])
            lr = _lr_at(cfg, index * self.steps_per_epoch + b, self.steps_per_epoch, total)
            for group in self.optimizer.param_groups:
                group["lr"] = float(cfg.lr) if group.get("fix_lr") else lr
            with self._autocast():
                pooled = model.trunk(self._input(x)).mean(dim=(2, 3))
                if cfg.method == "simsiam":
                    z = model.head[0](pooled)
                    p = model.head[1](z)
                else:
                    z = model.head(pooled)
            z1, z2 = z.float().chunk(2)
            if cfg.method == "simclr":
                loss = nt_xent(z1, z2, cfg.temperature)
            elif cfg.method == "barlow-twins":
                loss = barlow_twins_loss(z1, z2, cfg.lambd)
            else:
                p1, p2 = p.float().chunk(2)
                loss = simsiam_loss(p1, p2, z1, z2)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            losses.append(loss.detach())
        return float(torch.stack(losses).mean())

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``model(x)`` (the shipped embedding) in eval mode, on the training device."""
        self.model.eval()
        try:
            with self._autocast():
                return self.model.head(self.model.trunk(self._input(x)).mean(dim=(2, 3))).float()
        finally:
            self.model.train()

    def state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state()}

    def load(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])

    def save_weights(self, path: Any, meta: dict[str, Any]) -> None:
        save_tiny_checkpoint(self.model, self.arch, path, meta=meta)


def train(cfg: TrainConfig, resume: bool = True, show_progress: bool = True,
          max_epochs_this_run: int | None = None) -> dict[str, Any]:
    """Train a shipped-model architecture with ``cfg.method``; write ``cfg.out`` (fp16 weights).

    A resumable checkpoint ``<out>.ckpt`` (tensors and plain types only: model, optimiser, RNG,
    epoch, held-out curve) is written every ``checkpoint_every`` epochs and loaded with
    ``torch.load(weights_only=True)``; with ``resume=True`` an existing one is continued (a changed
    ``cfg.epochs`` extends or shortens the run). ``max_epochs_this_run`` stops early after that
    many epochs (with a checkpoint), for training in several sittings. Every ``eval_every`` epochs
    (and at the last one) the held-out retrieval top-1 (query seed ``eval_seed``) is measured and
    ``cfg.out`` keeps the best weights; ``eval_every=0`` keeps the final ones. A non-finite loss or
    weight stops the run with status ``"diverged"`` and writes no weights of the diverged epoch.

    Returns:
        A summary dict (status ``"done"``, ``"paused"`` or ``"diverged"``, epochs, final loss, seconds,
        image counts, held-out curve, chosen epoch).
    """
    started = time.time()
    if cfg.method == "dino":
        return train_dino(cfg, resume=resume, show_progress=show_progress, max_epochs_this_run=max_epochs_this_run)
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes
    images, train_files, held = load_dataset(cfg)
    runner = _CNNRunner(cfg, images.to(device), device)
    monitor = HeldoutMonitor(held, cfg.image_size, device, cfg.eval_views, cfg.eval_seed) if cfg.eval_every else None
    info = {"train_images": len(train_files), "heldout_images": len(held), "arch": runner.arch,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)}
    return run_epochs(cfg, runner, monitor, started=started, resume=resume, show_progress=show_progress,
                      max_epochs_this_run=max_epochs_this_run, info=info)
