"""Fast, exact evaluation of a model on copies of a few images that differ only inside boxes.

Occlusion evaluates thousands of copies of an image that differ from it only inside a window.
:class:`WindowEvaluator` does that on a private inference copy of the trunk (traced with
``torch.fx``, BatchNorm folded into the convolutions, channels-last; the user's model is never
modified) and, where the trunk's graph allows, incrementally: each node recomputes only the region
the window changes (:class:`~ssl_widgets.attr._graph_incremental.GraphIncremental`; overlap-tile
evaluation, cf. Nakandala et al., SIGMOD 2019). Nodes the engine does not know are recomputed in
full from there on, so results always equal a full forward pass up to float rounding. On CPU, the
late stages' 3x3 convolutions (at least 128 channels, at most 14x14 outputs) run by Winograd's
F(4x4, 3x3) or F(7x7, 3x3) algorithm (:mod:`~ssl_widgets.attr._winograd`), a quarter to a fifth of
the multiplications, with differences from the direct kernel of typically 6e-6 (F(4x4)) and 5e-5
(F(7x7)) of the activations' largest magnitude; on the shipped model's occlusion maps that is at
most a few 1e-6.

``precision="fast"`` runs the copy in bfloat16 on CPU or float16 on CUDA (not exact; see the README
for the measured difference).
"""
from __future__ import annotations

import torch
from torch import fx, nn

from ..models.wrapper import SSLModel
from ._fold import private_trunk
from ._model_state import has_forward_hooks
from ._graph_incremental import GraphIncremental
from ._regions import Region, gather

__all__ = ["IncrementalTrunk", "WindowEvaluator", "fast_dtype"]


def fast_dtype(device: torch.device | str) -> torch.dtype:
    """The reduced precision of ``precision="fast"``: float16 on CUDA, bfloat16 elsewhere."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.bfloat16


class IncrementalTrunk:
    """Incremental evaluation of any ``torch.fx``-traceable trunk for images that differ from a base in a box.

    Build with :meth:`from_trunk` (``None`` when the trunk cannot be traced), call :meth:`prepare`
    once per base image (or a batch of bases), then :meth:`__call__` (full perturbed images and their
    boxes) or :meth:`run` (only each box's content).

    Attributes:
        module: the private traced copy that is evaluated.
        fallback_nodes: after :meth:`prepare`, the graph nodes recomputed in full (unsupported ops
            and everything after them that cannot return to a local region).

    Examples:
        >>> from ssl_widgets.models.architectures import tiny_resnet18_trunk
        >>> trunk = tiny_resnet18_trunk(8).eval()
        >>> inc = IncrementalTrunk.from_trunk(trunk)
        >>> base = torch.rand(1, 3, 64, 64)
        >>> cache = inc.prepare(base)
        >>> x = base.repeat(2, 1, 1, 1); x[:, :, 8:24, 8:24] = 0
        >>> boxes = torch.tensor([[8, 8, 24, 24], [8, 8, 24, 24]])
        >>> out, full = inc(x, boxes, cache), trunk(x)
        >>> bool((out - full).abs().max() <= 1e-5 * full.abs().max())  # float rounding (random weights: no BN scaling)
        True
        >>> inc.fallback_nodes
        []
    """

    def __init__(self, module: fx.GraphModule) -> None:
        self.module = module
        self.engine = GraphIncremental(module)

    @classmethod
    def from_trunk(cls, trunk: nn.Module, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
                   channels_last: bool = True) -> IncrementalTrunk | None:
        """The engine on a private BN-folded copy of ``trunk``, or ``None`` if ``torch.fx`` cannot trace it or the
        trunk has forward hooks (a folded copy cannot run them as the trunk does: run the trunk itself)."""
        if has_forward_hooks(trunk):
            return None
        module, traced = private_trunk(trunk, device, dtype, channels_last)
        if not traced:
            return None
        try:
            return cls(module)
        except ValueError:
            return None

    @property
    def fallback_nodes(self) -> list[str]:
        return [n.name for n, kind in self.engine.plan.items() if kind == "fallback"]

    def prepare(self, base: torch.Tensor) -> dict:
        """Cache the base images' ``(n,C,H,W)`` activations (run the full graph once)."""
        return self.engine.prepare(base.to(_dtype(self.module)))

    def run(self, cache: dict, local: torch.Tensor, y0: torch.Tensor, x0: torch.Tensor,
            bid: torch.Tensor | None = None) -> torch.Tensor:
        """The trunk output for copies of base ``bid`` whose box at ``(y0, x0)`` holds ``local``."""
        if bid is None:
            bid = torch.zeros(local.shape[0], dtype=torch.long)
        return self.engine.run(cache, local.to(_dtype(self.module)), y0.cpu(), x0.cpu(), bid.cpu())

    def __call__(self, images: torch.Tensor, boxes: torch.Tensor, cache: dict) -> torch.Tensor:
        """The trunk output for ``images`` that equal the (single) base image outside ``boxes``.

        Args:
            images: ``(B,3,H,W)`` perturbed images in the trunk's input space.
            boxes: ``(B,4)`` ``(y0, x0, y1, x1)``: where each image may differ from the base.
            cache: :meth:`prepare`'s output for one base image.
        """
        boxes = boxes.cpu().long()
        h = int((boxes[:, 2] - boxes[:, 0]).max())
        w = int((boxes[:, 3] - boxes[:, 1]).max())
        y0 = boxes[:, 0].clamp(max=images.shape[2] - h)
        x0 = boxes[:, 1].clamp(max=images.shape[3] - w)
        local = gather(images, torch.arange(images.shape[0]), y0, x0, h, w, (2, 3))
        return self.run(cache, local, y0, x0)


def _dtype(module: nn.Module) -> torch.dtype:
    return next((p.dtype for p in module.parameters()), torch.float32)


class WindowEvaluator:
    """Embeddings of box-perturbed copies of a few base images, with an :class:`SSLModel`'s head.

    Args:
        model: the model (its trunk is copied, never modified; a trunk with forward hooks is run itself, as
            a token trunk is, so that the hooks see what they see in the model's own forward).
        incremental: recompute only what each box changes where the trunk's graph allows it.
        channels_last: run the private trunk copy in channels-last memory format.
        precision: ``"exact"`` (float32) or ``"fast"`` (bfloat16 on CPU, float16 on CUDA).

    Examples:
        >>> from ssl_widgets.models.zoo import build_tiny_model
        >>> model = build_tiny_model({"width": 8, "head_dims": [64, 32], "input_size": 32}).eval()
        >>> ev = WindowEvaluator(model)
        >>> bases = torch.rand(2, 3, 32, 32)
        >>> state, z = ev.prepare(bases)
        >>> patch = torch.zeros(1, 3, 8, 8)
        >>> out = ev.embed(state, patch, torch.tensor([4]), torch.tensor([6]), torch.tensor([1]))
        >>> x = bases[1:].clone(); x[:, :, 4:12, 6:14] = 0
        >>> torch.allclose(out, model.forward_normalized(x), atol=1e-5)
        True
    """

    def __init__(self, model: SSLModel, incremental: bool = True, channels_last: bool = True,
                 precision: str = "exact") -> None:
        if precision not in ("exact", "fast"):
            raise ValueError(f"precision must be 'exact' or 'fast', got {precision!r}")
        self.model = model
        device = model.device
        self.dtype = torch.float32 if precision == "exact" else fast_dtype(device)
        self.format = torch.channels_last if channels_last else torch.contiguous_format
        if model.is_token_model or model.trunk_method is not None or has_forward_hooks(model.trunk):
            # a token trunk (ViT) mixes every patch in every block, and its output is not the module's
            # forward; a trunk with forward hooks (user code a folded copy cannot reproduce): exact full
            # forward passes through the model's own trunk, in float32
            self.dtype, self.format, self.engine = torch.float32, torch.contiguous_format, None
            self.trunk = model.run_trunk
            return
        self.engine = IncrementalTrunk.from_trunk(model.trunk, device, self.dtype, channels_last) if incremental \
            else None
        self.trunk = self.engine.module if self.engine is not None else \
            private_trunk(model.trunk, device, self.dtype, channels_last)[0]

    @property
    def incremental(self) -> bool:
        return self.engine is not None

    def _embed(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.model.embed_features(fmap.float())

    @torch.no_grad()
    def prepare(self, bases_n: torch.Tensor) -> tuple[dict, torch.Tensor]:
        """Run the base images (model input space, ``(n,3,H,W)``) once: ``(state, embeddings (n, D))``."""
        bases = bases_n.to(self.dtype).contiguous(memory_format=self.format)
        if self.engine is not None:
            cache = self.engine.engine.prepare(bases)
            return {"cache": cache, "bases": bases}, self._embed(cache["output"])
        return {"bases": bases}, self._embed(self.trunk(bases))

    @torch.no_grad()
    def embed(self, state: dict, local: torch.Tensor, y0: torch.Tensor, x0: torch.Tensor,
              bid: torch.Tensor) -> torch.Tensor:
        """Embeddings ``(B, D)`` of copies of base ``bid[b]`` whose box at ``(y0[b], x0[b])`` holds ``local[b]``."""
        local = local.to(self.dtype)
        y0, x0, bid = y0.cpu(), x0.cpu(), bid.cpu()
        if self.engine is not None:
            fmap = self.engine.engine.run(state["cache"], local, y0, x0, bid)
        else:
            bases = state["bases"]
            region = Region(local, y0, x0, bid, bases, (2, 3))
            fmap = self.trunk(region.full().contiguous(memory_format=self.format))
        return self._embed(fmap)
