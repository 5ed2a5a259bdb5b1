"""Plain re-implementations of the paper's loop structure (methods.md sections 2, 3, 6, 11).

These are the speed baselines of ``bench_methods.py``: every occluded copy through the whole
network in batches of 32 (with all copies stacked first, as the reference does), batch-1 loops for
averaged transforms and SmoothGrad, and one forward+backward per CAM variant. They follow the
spec's pseudocode, not the package's engine, so they double as an independent check of the maps.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ssl_widgets.models import SSLModel


def _cos(a, b):
    return F.cosine_similarity(a, b, dim=-1, eps=1e-8)


def reference_conditional_occlusion(model: SSLModel, x1, x2, window=64, stride=8, batch_size=32):
    fill = model.fill_value.view(1, 3, 1, 1)
    base = _cos(model(x1), model(x2))  # with autograd on, as the reference
    z1, z2 = model(x1), model(x2)
    size = x1.shape[-1]
    corners = [(i, j) for i in range(0, size - window + 1, stride) for j in range(0, size - window + 1, stride)]
    maps = []
    with torch.no_grad():
        stacks = []
        for x in (x1, x2):
            copies = x.repeat(len(corners), 1, 1, 1)
            for k, (i, j) in enumerate(corners):
                copies[k, :, i:i + window, j:j + window] = fill[0]
            stacks.append(copies)
        h1, h2 = [], []
        for start in range(0, len(corners), batch_size):
            h1.append(base - _cos(model(stacks[0][start:start + batch_size]), z2))
            h2.append(base - _cos(z1, model(stacks[1][start:start + batch_size])))
        n = int(len(corners) ** 0.5)
        maps = [torch.cat(h1).view(n, n), torch.cat(h2).view(n, n)]
    return maps


def reference_context_agnostic_occlusion(model: SSLModel, x1, x2, window=64, stride=8, batch_size=32):
    fill = model.fill_value.view(1, 3, 1, 1)
    z1, z2 = model(x1), model(x2)
    size = x1.shape[-1]
    corners = [(i, j) for i in range(0, size - window + 1, stride) for j in range(0, size - window + 1, stride)]
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
    return [torch.cat(h1).view(n, n), torch.cat(h2).view(n, n)]


def reference_cams(model: SSLModel, x1, x2):
    """Grad-CAM and three Interaction-CAMs, each from its own forward and backward (batch 1)."""
    out = {}
    for variant in ("grad-cam", "mean", "max", "attention"):
        a1 = model.trunk(model.normalize(x1))
        a2 = model.trunk(model.normalize(x2))
        a1.retain_grad()
        a2.retain_grad()
        s = _cos(model.head(a1.mean((2, 3))), model.head(a2.mean((2, 3))))
        model.zero_grad()
        s.sum().backward()
        A1, A2, G1, G2 = a1.detach()[0], a2.detach()[0], a1.grad[0], a2.grad[0]
        if variant == "grad-cam":
            w = torch.ones(A1.shape[0])
        else:
            def pool(a):
                if variant == "mean":
                    return a.mean((1, 2))
                if variant == "max":
                    return a.amax((1, 2))
                flat = a.flatten(1)
                att = torch.softmax(flat.mean(1) @ flat, 0)
                return flat @ att
            w = pool(A1) * pool(A2)
        out[variant] = [(w[:, None, None] * A * G.clamp(min=0)).sum(0) for A, G in ((A1, G1), (A2, G2))]
    return out


def reference_averaged_transforms(model: SSLModel, x, x_t, steps=10):
    x_n, t_n = model.normalize(x), model.normalize(x_t)
    path = [l * x_n + (1 - l) * t_n for l in [1.0 - m / steps for m in range(steps)]]
    g1, g2 = torch.zeros_like(x_n), torch.zeros_like(x_n)
    for m in range(1, steps):
        a = path[0].clone().requires_grad_(True)
        b = path[m].clone().requires_grad_(True)
        s = _cos(model.forward_normalized(a), model.forward_normalized(b))
        s.sum().backward()
        g1 += a.grad
        g2 += b.grad
    g1, g2 = g1 / (steps - 1), g2 / (steps - 1)
    return [(path[0] * g1).abs().amax(1), (path[-1] * g2).abs().amax(1)]


def reference_smoothgrad(model: SSLModel, x1, x2, n_samples=50, stdev=0.15, generator=None):
    x1_n, x2_n = model.normalize(x1), model.normalize(x2)
    sigma = stdev / float(x1_n.max() - x1_n.min())
    g1, g2 = torch.zeros_like(x1_n), torch.zeros_like(x2_n)
    for _ in range(n_samples):
        eps = torch.randn(x1_n.shape, generator=generator) * sigma
        a = (x1_n + eps).requires_grad_(True)
        b = (x2_n + eps).requires_grad_(True)
        _cos(model.forward_normalized(a), model.forward_normalized(b)).sum().backward()
        g1 += a.grad
        g2 += b.grad
    return [(x1_n * g1 / n_samples).abs().amax(1), (x2_n * g2 / n_samples).abs().amax(1)]
