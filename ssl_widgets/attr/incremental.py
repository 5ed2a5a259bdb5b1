"""Exact incremental inference for occlusion: recompute only what a window changes.

When an image differs from a base image only inside a box, each layer's output differs from the
base activation only inside the box's image through that layer (its receptive field, divided by
the stride). Eval-mode BatchNorm and ReLU are per-pixel, so the perturbed activation equals the
base activation outside that region, and the region itself can be recomputed exactly from a crop
of the layer's input ("overlap-tile" evaluation, cf. Nakandala et al., SIGMOD 2019).

This module does that per ResNet block for trunks with torchvision's layout (``conv1``, ``bn1``,
``relu``, ``maxpool``, ``layer1..4`` of ``BasicBlock`` / ``Bottleneck``): for a batch of
perturbed images it gathers each image's crop (with the halo the block needs), runs the block on
the crops only, and pastes the result into the cached base activation. Results equal a full
forward pass up to floating-point rounding. Other trunks fall back to full recomputation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

__all__ = ["IncrementalTrunk", "Footprint"]


@dataclass(frozen=True)
class Footprint:
    """Effective kernel, stride and padding of a stack of layers along one axis."""

    kernel: int
    stride: int
    padding: int

    def then(self, other: "Footprint") -> "Footprint":
        """The footprint of ``self`` followed by ``other``."""
        return Footprint(self.kernel + (other.kernel - 1) * self.stride, self.stride * other.stride,
                         self.padding + other.padding * self.stride)


def _footprint(layer: nn.Module) -> Footprint | None:
    if isinstance(layer, (nn.Conv2d, nn.MaxPool2d)):
        def single(v):
            return v if isinstance(v, int) else (v[0] if len(set(v)) == 1 else None)
        k, s, p = single(layer.kernel_size), single(layer.stride), single(layer.padding)
        d = single(layer.dilation)
        if None in (k, s, p) or d != 1 or isinstance(p, str):
            return None
        if isinstance(layer, nn.Conv2d) and layer.padding_mode != "zeros":
            return None
        if isinstance(layer, nn.MaxPool2d) and layer.ceil_mode:
            return None
        return Footprint(k, s, p)
    if isinstance(layer, nn.Identity):
        return Footprint(1, 1, 0)
    return None


def _compose(layers: list[nn.Module]) -> Footprint | None:
    total = Footprint(1, 1, 0)
    for layer in layers:
        fp = _footprint(layer)
        if fp is None:
            return None
        total = total.then(fp)
    return total


@dataclass
class _Unit:
    run: Callable[[torch.Tensor], torch.Tensor]
    footprint: Footprint


def _gather(x: torch.Tensor, y0: torch.Tensor, x0: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Per-item crops ``x[b, :, y0[b]:y0[b]+h, x0[b]:x0[b]+w]`` as one ``(B,C,h,w)`` tensor."""
    arange = torch.arange(max(h, w), device=x.device)
    rows = (y0[:, None] + arange[:h])[:, :, None]
    cols = (x0[:, None] + arange[:w])[:, None, :]
    batch = torch.arange(x.shape[0], device=x.device)[:, None, None]
    return x.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def _scatter(dst: torch.Tensor, src: torch.Tensor, y0: torch.Tensor, x0: torch.Tensor) -> None:
    """Write ``src[b]`` into ``dst[b, :, y0[b]:, x0[b]:]`` (in place)."""
    h, w = src.shape[2], src.shape[3]
    arange = torch.arange(max(h, w), device=dst.device)
    rows = (y0[:, None] + arange[:h])[:, :, None]
    cols = (x0[:, None] + arange[:w])[:, None, :]
    batch = torch.arange(dst.shape[0], device=dst.device)[:, None, None]
    dst.permute(0, 2, 3, 1)[batch, rows, cols] = src.permute(0, 2, 3, 1)


class IncrementalTrunk:
    """Incremental evaluation of a ResNet-style trunk for images that differ from a base image in a box.

    Build with :meth:`from_trunk` (``None`` when the trunk's layout is not supported), call
    :meth:`prepare` once per base image, then :meth:`__call__` for batches of perturbed images.

    Examples:
        >>> from ssl_widgets.models.architectures import tiny_resnet18_trunk
        >>> trunk = tiny_resnet18_trunk(8).eval()
        >>> inc = IncrementalTrunk.from_trunk(trunk)
        >>> base = torch.rand(1, 3, 64, 64)
        >>> cache = inc.prepare(base)
        >>> x = base.repeat(2, 1, 1, 1); x[:, :, 8:24, 8:24] = 0
        >>> boxes = torch.tensor([[8, 8, 24, 24], [8, 8, 24, 24]])
        >>> torch.allclose(inc(x, boxes, cache), trunk(x), atol=1e-5)
        True
    """

    def __init__(self, units: list[_Unit]) -> None:
        self.units = units

    @classmethod
    def from_trunk(cls, trunk: nn.Module) -> "IncrementalTrunk | None":
        """Units (stem, then each residual block) of a torchvision-layout ResNet trunk, or ``None``."""
        names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
        if not all(hasattr(trunk, n) for n in names):
            return None
        stem_fp = _compose([trunk.conv1, trunk.maxpool])
        if stem_fp is None or not isinstance(trunk.bn1, nn.BatchNorm2d):
            return None
        units = [_Unit(lambda x, t=trunk: t.maxpool(t.relu(t.bn1(t.conv1(x)))), stem_fp)]
        for stage in (trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4):
            for block in stage:
                if type(block) is Bottleneck:
                    fp = _compose([block.conv1, block.conv2, block.conv3])
                elif type(block) is BasicBlock:
                    fp = _compose([block.conv1, block.conv2])
                else:
                    return None
                if fp is None:
                    return None
                units.append(_Unit(block, fp))
        # the forward must be exactly these units in order (a subclass may add layers)
        forward = type(trunk).forward
        if getattr(forward, "__qualname__", "").split(".")[0] not in ("ResNetTrunk",):
            return None
        return cls(units)

    def supports(self, height: int, width: int) -> bool:
        """Whether every unit's input size is divisible by its stride (needed for aligned crops)."""
        h, w = height, width
        for unit in self.units:
            fp = unit.footprint
            if h % fp.stride or w % fp.stride:
                return False
            h, w = h // fp.stride, w // fp.stride
        return True

    @torch.no_grad()
    def prepare(self, base: torch.Tensor) -> list[torch.Tensor]:
        """Cache the base image's activation at every unit boundary (input first)."""
        acts = [base]
        for unit in self.units:
            acts.append(unit.run(acts[-1]))
        return acts

    @staticmethod
    def _axis(lo: torch.Tensor, hi: torch.Tensor, size_in: int, size_out: int, fp: Footprint):
        """Output region and input crop along one axis for dirty input interval ``[lo, hi)``."""
        k, s, p = fp.kernel, fp.stride, fp.padding
        o0 = torch.div(lo + p - k + 1 + s - 1, s, rounding_mode="floor").clamp(min=0)
        o1 = (torch.div(hi - 1 + p, s, rounding_mode="floor") + 1).clamp(max=size_out)
        out_len = int((o1 - o0).max())
        o0 = o0.clamp(max=size_out - out_len)
        need0 = (o0 * s - p).clamp(min=0)
        need1 = ((o0 + out_len - 1) * s - p + k).clamp(max=size_in)
        c0 = torch.div(need0, s, rounding_mode="floor") * s
        crop_len = int((need1 - c0).max())
        crop_len = min(size_in, -(-crop_len // s) * s)
        c0 = c0.clamp(max=size_in - crop_len)
        return o0, out_len, c0, crop_len

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, boxes: torch.Tensor, cache: list[torch.Tensor]) -> torch.Tensor:
        """The trunk output for ``images`` that equal ``cache[0]`` outside ``boxes``.

        Args:
            images: ``(B,3,H,W)`` perturbed images in the trunk's input space.
            boxes: ``(B,4)`` long tensor ``(y0, x0, y1, x1)``: where each image may differ from the base.
            cache: :meth:`prepare`'s output for the base image.

        Returns:
            The trunk's feature map ``(B,C,h,w)``.
        """
        x = images
        y0, x0, y1, x1 = (boxes[:, i].to(images.device) for i in range(4))
        for unit, base_out in zip(self.units, cache[1:]):
            fp = unit.footprint
            (_, _, h_in, w_in), (_, _, h_out, w_out) = x.shape, base_out.shape
            oy, ly, cy, cly = self._axis(y0, y1, h_in, h_out, fp)
            ox, lx, cx, clx = self._axis(x0, x1, w_in, w_out, fp)
            if cly == h_in and clx == w_in:
                out = unit.run(x)
                out_local = None
            else:
                out_local = unit.run(_gather(x, cy, cx, cly, clx))
                jy, jx = oy - torch.div(cy, fp.stride, rounding_mode="floor"), ox - torch.div(cx, fp.stride, rounding_mode="floor")
                region = _gather(out_local, jy, jx, ly, lx)
                out = base_out.expand(x.shape[0], -1, -1, -1).clone(memory_format=torch.channels_last
                                                                     if x.is_contiguous(memory_format=torch.channels_last)
                                                                     else torch.contiguous_format)
                _scatter(out, region, oy, ox)
            x = out
            y0, y1, x0, x1 = oy, oy + ly, ox, ox + lx
        return x
