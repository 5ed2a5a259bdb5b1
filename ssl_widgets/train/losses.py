"""The two training objectives of the shipped models."""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["nt_xent", "barlow_twins_loss"]


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
