"""The authors' occlusion loops (explain-cl ``occlusion`` / ``occlusion_context_agnositc``), shape for shape.

As the reference code does it: the two base embeddings with autograd on, every occluded copy of
each image stacked first (on the model's device), then batches of 32 with one ``model()`` call per
stack per batch under ``no_grad``; the fill is 0 in the model's input space. The only liberty: the
model here normalises its input inside ``forward``, so the fill is the normalisation mean in pixel
space. Used by ``bench_methods.py`` as the baseline (nothing faster or slower than the real loop).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _cos(a, b):
    return F.cosine_similarity(a, b, dim=-1, eps=1e-8)


def _corners(size, window, stride):
    return [(i, j) for i in range(0, size - window + 1, stride) for j in range(0, size - window + 1, stride)]


def conditional_occlusion(model, x1, x2, window=64, stride=8, batch_size=32):
    """Two ``(n, n)`` grids of drops ``base - cos(f(occluded), f(other))``."""
    fill = model.fill_value.view(3, 1, 1).to(x1.device)
    base = _cos(model(x1), model(x2))  # autograd on, as in the reference
    z1, z2 = model(x1), model(x2)
    corners = _corners(x1.shape[-1], window, stride)
    with torch.no_grad():
        stacks = []
        for x in (x1, x2):
            copies = x.repeat(len(corners), 1, 1, 1)
            for k, (i, j) in enumerate(corners):
                copies[k, :, i:i + window, j:j + window] = fill
            stacks.append(copies)
        h1, h2 = [], []
        for start in range(0, len(corners), batch_size):
            h1.append(base - _cos(model(stacks[0][start:start + batch_size]), z2))
            h2.append(base - _cos(z1, model(stacks[1][start:start + batch_size])))
        n = int(len(corners) ** 0.5)
        return [torch.cat(h1).view(n, n).detach(), torch.cat(h2).view(n, n).detach()]


def context_agnostic_occlusion(model, x1, x2, window=64, stride=8, batch_size=32):
    """Two ``(n, n)`` grids of ``cos(f(patch alone) - f(patch removed), f(other))`` (not min-max normalised)."""
    fill = model.fill_value.view(1, 3, 1, 1).to(x1.device)
    z1, z2 = model(x1), model(x2)
    corners = _corners(x1.shape[-1], window, stride)
    with torch.no_grad():
        stacks = {}
        for name, x in (("1", x1), ("2", x2)):
            removed = x.repeat(len(corners), 1, 1, 1)
            alone = fill.expand_as(x).repeat(len(corners), 1, 1, 1)
            for k, (i, j) in enumerate(corners):
                removed[k, :, i:i + window, j:j + window] = fill[0]
                alone[k, :, i:i + window, j:j + window] = x[0, :, i:i + window, j:j + window]
            stacks["M" + name], stacks["P" + name] = removed, alone
        h1, h2 = [], []
        for s in range(0, len(corners), batch_size):
            part = slice(s, s + batch_size)
            d1 = model(stacks["P1"][part]) - model(stacks["M1"][part])
            d2 = model(stacks["P2"][part]) - model(stacks["M2"][part])
            h1.append(_cos(d1, z2))
            h2.append(_cos(z1, d2))
        n = int(len(corners) ** 0.5)
        return [torch.cat(h1).view(n, n).detach(), torch.cat(h2).view(n, n).detach()]
