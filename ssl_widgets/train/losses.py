"""The training objectives of the shipped models: SimCLR, Barlow Twins, SimSiam and DINO."""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["barlow_twins_loss", "dino_loss", "distillation_nce", "nt_xent", "simsiam_loss", "update_center"]


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """SimCLR's normalised-temperature cross entropy over ``2N`` views.

    Each view's positive is the other view of its image; the other ``2N-2`` views are negatives.

    Examples:
        >>> z = torch.randn(4, 8)
        >>> float(nt_xent(z, z, 0.1)) < float(nt_xent(z, torch.randn(4, 8), 0.1))
        True
    """
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    n = z1.shape[0]
    logits = z @ z.t() / temperature
    logits.fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, targets)


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float = 0.0051) -> torch.Tensor:
    """Barlow Twins: push the cross-correlation of batch-standardised embeddings to identity.

    Examples:
        >>> z = torch.randn(16, 8)
        >>> float(barlow_twins_loss(z, z)) < float(barlow_twins_loss(z, torch.randn(16, 8)))
        True
    """
    z1, z2 = z1.float(), z2.float()
    n = z1.shape[0]
    z1 = (z1 - z1.mean(0)) / (z1.std(0, unbiased=False) + 1e-5)
    z2 = (z2 - z2.mean(0)) / (z2.std(0, unbiased=False) + 1e-5)
    c = z1.t() @ z2 / n
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    off_diag = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
    return on_diag + lambd * off_diag


def simsiam_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """SimSiam's symmetric negative cosine similarity with stop-gradient on the projections.

    ``L = -cos(p1, sg(z2)) / 2 - cos(p2, sg(z1)) / 2``, averaged over the batch; ``p`` are the
    predictor outputs and ``z`` the projector outputs of the two views. Its minimum is ``-1``.

    Examples:
        >>> z = torch.randn(4, 8)
        >>> round(float(simsiam_loss(z, z, z, z)), 4)
        -1.0
    """
    def neg_cos(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return -F.cosine_similarity(p.float(), z.detach().float(), dim=1).mean()

    return 0.5 * neg_cos(p1, z2) + 0.5 * neg_cos(p2, z1)


def dino_loss(student_out: torch.Tensor, teacher_out: torch.Tensor, center: torch.Tensor, n_global: int,
              student_temp: float = 0.1, teacher_temp: float = 0.04) -> torch.Tensor:
    """DINO's cross-entropy between the centred, sharpened teacher and the student over crop pairs.

    Args:
        student_out: ``(V * B, K)`` head outputs of all ``V`` crops of the student, crop-major
            (the first ``B`` rows are crop 0 of every image, then crop 1, ...).
        teacher_out: ``(n_global * B, K)`` head outputs of the teacher on the global crops.
        center: ``(1, K)`` running mean of the teacher outputs (subtracted before sharpening).
        n_global: number of global crops (the first crops of ``student_out``).
        student_temp: temperature of the student softmax.
        teacher_temp: temperature of the teacher softmax (small: sharpening).

    Returns:
        The mean over the ``n_global * V - n_global`` pairs of different crops of
        ``-sum_k softmax((t - c) / teacher_temp)_k * log_softmax(s / student_temp)_k``, averaged over images.

    Examples:
        >>> s, t = torch.randn(8, 16), torch.randn(4, 16)
        >>> float(dino_loss(s, t, torch.zeros(1, 16), n_global=2)) > 0
        True
    """
    n_crops = student_out.shape[0] // (teacher_out.shape[0] // n_global)
    student = F.log_softmax(student_out.float() / student_temp, dim=-1).chunk(n_crops)
    teacher = F.softmax((teacher_out.float() - center) / teacher_temp, dim=-1).detach().chunk(n_global)
    total, terms = student_out.new_zeros((), dtype=torch.float32), 0
    for iq, q in enumerate(teacher):
        for v, s in enumerate(student):
            if v == iq:
                continue
            total = total + (-q * s).sum(dim=-1).mean()
            terms += 1
    return total / terms


@torch.no_grad()
def update_center(center: torch.Tensor, teacher_out: torch.Tensor, momentum: float = 0.9) -> torch.Tensor:
    """DINO's centre update: an exponential moving average of the batch mean of the teacher outputs (in place)."""
    return center.mul_(momentum).add_(teacher_out.float().mean(0, keepdim=True), alpha=1 - momentum)


def distillation_nce(student: torch.Tensor, teacher: torch.Tensor, n_global: int,
                     queue: torch.Tensor | None = None, temperature: float = 0.1) -> torch.Tensor:
    """Contrastive distillation: every student crop must pick its own image among the teacher's embeddings.

    The student's embedding of crop ``v`` of image ``i`` is scored against the (frozen) teacher's
    embeddings of every image of the batch on each global crop, plus a queue of teacher embeddings
    from earlier batches; the target is image ``i`` (InfoNCE, as CRD and SEED distil a
    self-supervised teacher into a smaller student without labels).

    Args:
        student: ``(V * B, D)`` student embeddings of all ``V`` crops, crop-major (unnormalised).
        teacher: ``(G * B, D)`` teacher embeddings of the ``G`` global crops, crop-major (unnormalised).
        n_global: ``G``.
        queue: ``(Q, D)`` L2-normalised teacher embeddings of earlier batches (extra negatives), or None.
        temperature: softmax temperature.

    Returns:
        The cross-entropy averaged over the ``V * G`` (student crop, teacher crop) pairs and the images.

    Examples:
        >>> t = torch.eye(4)
        >>> float(distillation_nce(torch.cat([t, t]), t, n_global=1, temperature=0.01)) < 1e-3
        True
    """
    student, teacher = F.normalize(student.float(), dim=1), F.normalize(teacher.float(), dim=1).detach()
    batch = teacher.shape[0] // n_global
    labels = torch.arange(batch, device=student.device)
    total, terms = student.new_zeros(()), 0
    for targets in teacher.chunk(n_global):
        bank = targets if queue is None or queue.numel() == 0 else torch.cat([targets, queue.to(targets)])
        for crop in student.chunk(student.shape[0] // batch):
            total = total + F.cross_entropy(crop @ bank.t() / temperature, labels)
            terms += 1
    return total / terms
