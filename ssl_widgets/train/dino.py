"""DINO training of the shipped tiny ViT (``python -m ssl_widgets.train --method dino``).

The recipe of Caron et al. (2021) at a small scale: a student and a teacher (exponential moving
average of the student, momentum cosine from ``momentum_teacher`` to 1), a DINO head (3-layer MLP,
bottleneck 256, weight-normalised last layer), centring and sharpening of the teacher (temperature
warm-up), multi-crop (2 global crops at ``image_size`` px, scale ``(min_scale, 1)``, and
``local_crops`` local crops at ``local_size`` px, scale ``(local_min_scale, min_scale)``), AdamW
with learning-rate warm-up and cosine decay, weight decay cosine from ``weight_decay`` to
``weight_decay_end``, per-parameter gradient clipping, and the last layer frozen for the first
``freeze_last_layer`` epochs. The embedding that the held-out evaluation and the shipped file use
is the teacher backbone's class token after its final norm.

Two options continue and strengthen a run where compute is short (the second ``tiny-dino-vit`` was
made this way, on a CPU): ``init_from`` starts student and teacher from a tiny-ViT weight file
(backbone and DINO head), and ``distill_from`` adds a contrastive distillation term
(:func:`~ssl_widgets.train.losses.distillation_nce`, as CRD and SEED distil a self-supervised teacher
without labels): a linear projection of the student's class token, on every crop, must pick its own
image among a frozen self-supervised model's embeddings of the global crops (this batch plus a queue
of earlier ones). ``global_size`` trains the student on the global crops resized to fewer tokens,
while the frozen model sees them at ``image_size``; the evaluation and the shipped model stay at
``image_size``.
"""
from __future__ import annotations

import copy
import time
from dataclasses import asdict
from typing import Any

import torch

from ..data.augment import BARLOW_VIEW1, BARLOW_VIEW2, AugmentConfig, augment_batch
from ..models.tiny_vit import DINOHead, build_tiny_vit_backbone, dino_head_state_dict
from ..models.wrapper import IMAGENET_MEAN, IMAGENET_STD
from ..models.download import shipped_weights
from ..models.registry import available_models, model_info
from ..models.tiny import TINY_FORMAT
from .common import HeldoutMonitor, cosine, load_dataset, load_tensors_only, run_epochs
from .losses import dino_loss, distillation_nce, update_center

__all__ = ["train_dino", "vit_arch"]


def vit_arch(cfg: Any) -> dict[str, Any]:
    """The ``arch`` dict of the shipped ViT file for a :class:`~ssl_widgets.train.TrainConfig`."""
    return {"type": "vit", "patch_size": cfg.patch_size, "embed_dim": cfg.embed_dim, "depth": cfg.depth,
            "num_heads": cfg.num_heads, "input_size": cfg.image_size, "normalized": True, "pooling": "cls"}


def _crop_configs(cfg: Any) -> tuple[AugmentConfig, AugmentConfig, AugmentConfig]:
    """DINO's augmentations: global view 1 always blurred, view 2 rarely blurred and solarised, locals blur 0.5."""
    global1 = AugmentConfig(**{**asdict(BARLOW_VIEW1), "scale": (cfg.min_scale, 1.0)})
    global2 = AugmentConfig(**{**asdict(BARLOW_VIEW2), "scale": (cfg.min_scale, 1.0)})
    local = AugmentConfig(**{**asdict(BARLOW_VIEW1), "blur_p": 0.5, "scale": (cfg.local_min_scale, cfg.min_scale)})
    return global1, global2, local


class _DINORunner:
    """Student and teacher ViTs with DINO heads (see :func:`ssl_widgets.train.common.run_epochs`)."""

    def __init__(self, cfg: Any, images: torch.Tensor, device: torch.device) -> None:
        self.cfg, self.images, self.device = cfg, images, device
        self.arch = vit_arch(cfg)
        self.student = build_tiny_vit_backbone(self.arch, drop_path_rate=cfg.drop_path).to(device)
        self.student_head = DINOHead(cfg.embed_dim, cfg.out_dim).to(device)
        if cfg.init_from:
            self._init_from(cfg.init_from)
        self.teacher = build_tiny_vit_backbone(self.arch).to(device)
        self.teacher_head = copy.deepcopy(self.student_head)
        self.teacher.load_state_dict(self.student.state_dict())
        for p in list(self.teacher.parameters()) + list(self.teacher_head.parameters()):
            p.requires_grad_(False)
        self.center = torch.zeros(1, cfg.out_dim, device=device)
        self.distiller, self.projector, self.queue = None, None, torch.zeros(0, 1, device=device)
        if cfg.distill_from:
            self._setup_distillation(cfg.distill_from)
        trained = [m for m in (self.student, self.student_head, self.projector) if m is not None]
        params = [p for m in trained for p in m.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        self.optimizer = torch.optim.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}],
                                           lr=float(cfg.lr), weight_decay=float(cfg.weight_decay))
        self.generator = torch.Generator().manual_seed(cfg.seed)  # CPU: draws indices and augmentation parameters
        self.crops = _crop_configs(cfg)
        self.steps_per_epoch = max(1, len(images) // cfg.batch_size)
        self.amp = cfg.use_amp()
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
        self._pairs = list(zip(self.student.parameters(), self.teacher.parameters())) + \
            list(zip(self.student_head.parameters(), self.teacher_head.parameters()))

    def _init_from(self, path: str) -> None:
        """Student backbone and head from a shipped tiny-ViT file (its teacher), e.g. to continue a run."""
        source = shipped_weights(model_info(path)) if path in available_models() else path
        packed = load_tensors_only(source, f"refusing --init-from {path}", "Give a tiny ViT weight file written by "
                                   "python -m ssl_widgets.train --method dino.")
        if not isinstance(packed, dict) or "trunk" not in packed or "dino_head" not in packed:
            raise ValueError(f"--init-from {path}: not a tiny ViT weight file with 'trunk' and 'dino_head'")
        try:
            self.student.load_state_dict({k: v.float() for k, v in packed["trunk"].items()})
            self.student_head.load_state_dict({k: v.float() for k, v in packed["dino_head"].items()})
        except (RuntimeError, AttributeError) as error:  # other shapes or keys, or values that are not tensors
            raise ValueError(f"--init-from {path}: its weights do not fit this ViT (--patch-size, --embed-dim, "
                             f"--depth, --num-heads, --out-dim): {str(error).splitlines()[0][:200]}") from error

    def _setup_distillation(self, name: str) -> None:
        """A frozen self-supervised model whose embeddings the student's class token is distilled towards."""
        from ..models import load_model

        self.distiller = load_model(name, device=self.device).eval()
        for p in self.distiller.parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            dim = self.distiller(torch.rand(2, 3, self.cfg.image_size, self.cfg.image_size, device=self.device)).shape[1]
        self.projector = torch.nn.Linear(self.cfg.embed_dim, dim).to(self.device)
        self.queue = torch.zeros(0, dim, device=self.device)

    def _distillation(self, tokens: torch.Tensor, globals_: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            targets = self.distiller(globals_).float()
        loss = distillation_nce(self.projector(tokens.float()), targets, 2, self.queue, self.cfg.distill_temp)
        fresh = torch.nn.functional.normalize(targets, dim=1)
        self.queue = torch.cat([fresh, self.queue])[: self.cfg.distill_queue]
        return loss

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def _cls(self, backbone: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return backbone.forward_features((x - self.mean) / self.std)[:, 0]

    def _schedules(self, step: int, epoch: int, total_epochs: int) -> tuple[float, float, float, float]:
        cfg = self.cfg
        total = max(1, total_epochs * self.steps_per_epoch)
        warm = cfg.warmup_epochs * self.steps_per_epoch
        if step < warm:
            lr = float(cfg.lr) * (step + 1) / warm
        else:
            lr = cosine(float(cfg.lr), 1e-6, (step - warm) / max(1, total - warm))
        wd = cosine(cfg.weight_decay, cfg.weight_decay_end, step / total)
        momentum = cosine(cfg.momentum_teacher, 1.0, step / total)
        if epoch < cfg.warmup_teacher_temp_epochs:
            temp = cfg.warmup_teacher_temp + (cfg.teacher_temp - cfg.warmup_teacher_temp) * epoch / max(
                1, cfg.warmup_teacher_temp_epochs)
        else:
            temp = cfg.teacher_temp
        return lr, wd, momentum, temp

    def epoch(self, index: int, total: int) -> float:
        cfg = self.cfg
        self.student.train()
        self.student_head.train()
        order = torch.randperm(len(self.images), generator=self.generator)
        global1, global2, local = self.crops
        losses = []
        for b in range(self.steps_per_epoch):
            batch = self.images[order[b * cfg.batch_size:(b + 1) * cfg.batch_size].to(self.device)]
            lr, wd, momentum, temp = self._schedules(index * self.steps_per_epoch + b, index, total)
            self.optimizer.param_groups[0]["lr"], self.optimizer.param_groups[0]["weight_decay"] = lr, wd
            self.optimizer.param_groups[1]["lr"] = lr
            full = torch.cat([augment_batch(batch, cfg.image_size, global1, self.generator),
                              augment_batch(batch, cfg.image_size, global2, self.generator)])
            globals_ = full
            if cfg.global_size and cfg.global_size != cfg.image_size:
                globals_ = torch.nn.functional.interpolate(full, size=(cfg.global_size,) * 2, mode="bilinear",
                                                           antialias=True, align_corners=False)
            locals_ = [augment_batch(batch, cfg.local_size, local, self.generator) for _ in range(cfg.local_crops)]
            with self._autocast():
                with torch.no_grad():
                    teacher_out = self.teacher_head(self._cls(self.teacher, globals_))
                tokens = [self._cls(self.student, globals_)]
                if locals_:
                    tokens.append(self._cls(self.student, torch.cat(locals_)))
                student_out = self.student_head(torch.cat(tokens))
            loss = dino_loss(student_out.float(), teacher_out.float(), self.center, 2, cfg.student_temp, temp)
            if self.distiller is not None:
                loss = loss + cfg.distill_weight * self._distillation(torch.cat(tokens), full)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self._clip_and_freeze(index)
            self.optimizer.step()
            with torch.no_grad():
                for ps, pt in self._pairs:
                    pt.mul_(momentum).add_(ps.detach(), alpha=1 - momentum)
            update_center(self.center, teacher_out.float())
            losses.append(loss.detach())
        return float(torch.stack(losses).mean())

    def _clip_and_freeze(self, epoch: int) -> None:
        """DINO's per-parameter gradient clipping; no update of the last layer while it is frozen."""
        if self.cfg.clip_grad:
            for module in (m for m in (self.student, self.student_head, self.projector) if m is not None):
                for p in module.parameters():
                    if p.grad is not None:
                        scale = (self.cfg.clip_grad / (p.grad.detach().norm() + 1e-6)).clamp(max=1.0)
                        p.grad.mul_(scale)
        if epoch < self.cfg.freeze_last_layer:
            for p in self.student_head.last_layer.parameters():
                p.grad = None

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's class token after the final norm (the shipped embedding)."""
        with self._autocast():
            return self._cls(self.teacher, x).float()

    def state(self) -> dict[str, Any]:
        return {"model": self.student.state_dict(), "student_head": self.student_head.state_dict(),
                "teacher": self.teacher.state_dict(), "teacher_head": self.teacher_head.state_dict(),
                "center": self.center, "optimizer": self.optimizer.state_dict(), "queue": self.queue,
                "projector": self.projector.state_dict() if self.projector is not None else {},
                "generator": self.generator.get_state()}

    def load(self, state: dict[str, Any]) -> None:
        self.student.load_state_dict(state["model"])
        self.student_head.load_state_dict(state["student_head"])
        self.teacher.load_state_dict(state["teacher"])
        self.teacher_head.load_state_dict(state["teacher_head"])
        self.center.copy_(state["center"])
        if self.projector is not None:
            self.projector.load_state_dict(state["projector"])
            self.queue = state["queue"].to(self.device)
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])

    def save_weights(self, path: Any, meta: dict[str, Any]) -> None:
        """The shipped format: teacher backbone (fp16) as ``trunk``, the teacher's DINO head as ``dino_head``."""
        trunk = {k: v.half().detach().cpu().contiguous().clone() if v.is_floating_point() else v.cpu().clone()
                 for k, v in self.teacher.state_dict().items()}
        torch.save({"format": TINY_FORMAT, "arch": dict(self.arch), "trunk": trunk, "head": {},
                    "dino_head": dino_head_state_dict(self.teacher_head), "meta": dict(meta)}, path)


def train_dino(cfg: Any, resume: bool = True, show_progress: bool = True,
               max_epochs_this_run: int | None = None) -> dict[str, Any]:
    """Train the tiny ViT with DINO; see :func:`ssl_widgets.train.train` for files, resume and early stopping."""
    started = time.time()
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    images, train_files, held = load_dataset(cfg)
    runner = _DINORunner(cfg, images.to(device), device)
    monitor = HeldoutMonitor(held, cfg.image_size, device, cfg.eval_views, cfg.eval_seed) if cfg.eval_every else None
    n_params = sum(p.numel() for p in runner.teacher.parameters())
    info = {"train_images": len(train_files), "heldout_images": len(held), "arch": runner.arch,
            "backbone_parameters": n_params,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)}
    return run_epochs(cfg, runner, monitor, started=started, resume=resume, show_progress=show_progress,
                      max_epochs_this_run=max_epochs_this_run, info=info)
