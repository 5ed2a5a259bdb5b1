"""The face of the occlusion wing: :class:`CopyEvaluator`, embeddings of copies of a few images that differ
only inside boxes.

Occlusion evaluates thousands of copies of an image that differ from it only inside a window. The
evaluator runs them on a private inference copy of the trunk (traced with ``torch.fx``, BatchNorm
folded into the convolutions, channels-last; the user's model is never modified: :mod:`.fold`) and,
where the trunk's graph allows, incrementally: each node recomputes only the region the window
changes (:class:`~.graph.GraphIncremental`; overlap-tile evaluation, cf. Nakandala et al., SIGMOD
2019). Nodes the engine does not know are recomputed in full from there on, so results always equal
a full forward pass up to float rounding. On CPU the late stages' 3x3 convolutions run by Winograd's
F(4x4, 3x3) or F(7x7, 3x3) algorithm (:mod:`.winograd`), batches are shared by two worker threads
(:mod:`.workers`), and an optional :class:`~.store.ViewEmbeddingStore` reuses an unchanged image's
copies across calls.

``precision="fast"`` runs the copy in bfloat16 on CPU or float16 on CUDA (not exact).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from ...core import PAPER_INPUT_SIZE
from ...models.state import check_model
from ...models.wrapper import SSLModel
from .._model_state import has_forward_hooks
from .copies import evaluate_copies
from .fold import private_trunk
from .graph import GraphIncremental
from .regions import Region, box_crops
from .store import ViewEmbeddingStore
from .tokens import TokenTrunk, require_token_trunk, token_trunk
from .winograd import workspace
from .workers import pipeline_workers

__all__ = ["CopyEvaluator", "default_batch", "fast_dtype", "incremental_engine"]


def fast_dtype(device: torch.device | str) -> torch.dtype:
    """The reduced precision of ``precision="fast"``: float16 on CUDA, bfloat16 elsewhere."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.bfloat16


def default_batch(device: torch.device, perturbations_per_eval: int | None, pixels: int = PAPER_INPUT_SIZE ** 2) -> int:
    """``perturbations_per_eval``, or the batch that ran fastest per copy when it is ``None``: on CPU
    16 copies of 224 x 224 (larger batches leave the caches) and 128 of 112 x 112, interpolated as
    ``16 * (224 * 224 / pixels) ** 1.5`` between 8 and 128; 128 on GPU."""
    if perturbations_per_eval is not None:
        return perturbations_per_eval
    if torch.device(device).type == "cuda":
        return 128
    return int(min(128, max(8, round(16 * (PAPER_INPUT_SIZE ** 2 / max(pixels, 1)) ** 1.5))))


def incremental_engine(trunk: nn.Module, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
                       channels_last: bool = True) -> GraphIncremental | None:
    """The incremental engine on a private BN-folded copy of ``trunk``, or ``None`` if ``torch.fx`` cannot trace it,
    the graph has not one input, or the trunk has forward hooks (a folded copy cannot run them as the trunk does).

    Examples:
        >>> from ssl_widgets.models.architectures import tiny_resnet18_trunk
        >>> engine = incremental_engine(tiny_resnet18_trunk(8).eval())
        >>> [n for n, kind in engine.plan.items() if kind == "fallback"]  # planned on the first prepare
        []
    """
    if has_forward_hooks(trunk):
        return None
    module, traced = private_trunk(trunk, device, dtype, channels_last)
    if not traced:
        return None
    try:
        return GraphIncremental(module)
    except ValueError:
        return None


class CopyEvaluator:
    """Evaluates a model on perturbed copies of images, fast and exactly (the engine of the occlusion methods).

    Pass one to :class:`~ssl_widgets.attr.ConditionalOcclusion`, :class:`~ssl_widgets.attr.ContextAgnosticOcclusion`
    or :class:`~ssl_widgets.attr.JointOcclusion` (``evaluator=``); each builds a default one otherwise. A
    caller that explains many pairs with one model (the Explorer) keeps one evaluator and its store.

    Args:
        model: the model (its trunk is copied, never modified; a trunk with a custom method or with forward
            hooks is run itself, by exact full forward passes; a timm Vision Transformer runs token by token,
            exactly: each copy recomputes only the patch embeddings its box touches and, with class-token
            pooling, only the class token in the last block (:mod:`.tokens`); other token trunks by full
            forward passes).
        incremental: recompute only what each box changes where the trunk's graph allows it (exact).
        workers: CPU worker threads sharing the batches: ``"auto"`` (two where
            :func:`~.workers.supported` and at least two torch threads), or an int (1: one after the other).
        winograd: run the eligible late 3x3 convolutions by Winograd's algorithm (CPU, within ~1e-5).
        store: a :class:`~ssl_widgets.attr.ViewEmbeddingStore` to reuse an unchanged image's copies
            across calls (``None``: nothing is kept between calls).

    Examples:
        >>> from ssl_widgets.models.zoo import build_tiny_model
        >>> from ssl_widgets.attr import ConditionalOcclusion
        >>> model = build_tiny_model({"width": 8, "head_dims": [32, 16], "input_size": 32}).eval()
        >>> evaluator = CopyEvaluator(model, workers=1)
        >>> x1, x2 = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
        >>> m1, m2 = ConditionalOcclusion(model, evaluator=evaluator).attribute((x1, x2), 16, 8)
        >>> with evaluator.session() as session:  # the engine itself: embeddings of box-perturbed copies
        ...     state, z = session.prepare(model.normalize(x1))
        ...     out = session.embed(state, torch.zeros(1, 3, 8, 8), torch.tensor([4]), torch.tensor([6]),
        ...                         torch.tensor([0]))
        >>> y = model.normalize(x1).clone(); y[:, :, 4:12, 6:14] = 0
        >>> torch.allclose(out, model.forward_normalized(y), atol=1e-5)
        True
    """

    def __init__(self, model: SSLModel, *, incremental: bool = True, workers: int | str = "auto",
                 winograd: bool = True, store: ViewEmbeddingStore | None = None) -> None:
        self.model = check_model(model)
        if workers != "auto" and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise ValueError(f"workers must be 'auto' or an int >= 1, got {workers!r}")
        if store is not None and not isinstance(store, ViewEmbeddingStore):
            raise TypeError(f"store must be a ViewEmbeddingStore or None, got {type(store).__name__}")
        self.incremental, self.workers, self.winograd, self.store = bool(incremental), workers, bool(winograd), store

    def __repr__(self) -> str:
        return (f"CopyEvaluator(incremental={self.incremental}, workers={self.workers!r}, winograd={self.winograd}, "
                f"store={'yes' if self.store is not None else None})")

    @contextlib.contextmanager
    def session(self, *, incremental: bool = True, channels_last: bool = True, precision: str = "exact",
                drop_tokens: bool = False) -> Iterator[Session]:
        """One call's evaluation: builds (or reuses) the private trunk copy and holds the Winograd buffers.

        Args:
            incremental: this call may run incrementally (and the evaluator allows it).
            channels_last: run the private trunk copy in channels-last memory format.
            precision: ``"exact"`` (float32) or ``"fast"`` (bfloat16 on CPU, float16 on CUDA).
            drop_tokens: remove the tokens of a copy's non-finite patches instead of evaluating them (a Vision
                Transformer :mod:`.tokens` supports; ``ValueError`` otherwise).

        Returns:
            A context manager giving the :class:`Session`; buffers are dropped when it closes.
        """
        if precision not in ("exact", "fast"):
            raise ValueError(f"precision must be 'exact' or 'fast', got {precision!r}")
        with torch.no_grad(), workspace(self.winograd):
            yield Session(self, incremental and self.incremental, channels_last, precision, drop_tokens)


class Session:
    """The evaluation of one call (see :meth:`CopyEvaluator.session`): :meth:`prepare` the base images once,
    then :meth:`embed` copies by their boxes' content, :meth:`embed_boxes` full copies, or :meth:`evaluate`
    the window groups of both views of a pair."""

    def __init__(self, evaluator: CopyEvaluator, incremental: bool, channels_last: bool, precision: str,
                 drop_tokens: bool = False) -> None:
        self.evaluator = evaluator
        model = self.model = evaluator.model
        device = model.device
        self.dtype = torch.float32 if precision == "exact" else fast_dtype(device)
        self.format = torch.channels_last if channels_last else torch.contiguous_format
        self.engine: GraphIncremental | None = None
        self.tokens: TokenTrunk | None = None
        if drop_tokens:
            require_token_trunk(model)
        if model.is_token_model or model.trunk_method is not None or has_forward_hooks(model.trunk):
            # a token trunk (ViT) mixes every patch in every block, and its output is not the module's
            # forward; a trunk with forward hooks (user code a folded copy cannot reproduce): exact full
            # forward passes through the model's own trunk, in float32, or token by token (.tokens)
            self.dtype, self.format = torch.float32, torch.contiguous_format
            self.trunk: Callable[[torch.Tensor], torch.Tensor] = model.run_trunk
            if incremental or drop_tokens:
                self.tokens = token_trunk(model, recompute_all=not incremental, drop=drop_tokens)
            return
        if incremental:
            self.engine = incremental_engine(model.trunk, device, self.dtype, channels_last)
        self.trunk = self.engine.gm if self.engine is not None else \
            private_trunk(model.trunk, device, self.dtype, channels_last)[0]

    @property
    def incremental(self) -> bool:
        """Whether the copies are evaluated incrementally (by the graph engine, or token by token reusing the
        base's patch embeddings)."""
        return self.engine is not None or (self.tokens is not None and not self.tokens.recompute_all)

    def workers(self, per_eval: int) -> int:
        """Worker threads for batches of ``per_eval`` copies."""
        return min(pipeline_workers(self.model.device, self.evaluator.workers), per_eval)

    def _embed(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.model.embed_features(fmap.float())

    def prepare(self, bases_n: torch.Tensor) -> tuple[dict, torch.Tensor]:
        """Run the base images (model input space, ``(n,3,H,W)``) once: ``(state, embeddings (n, D))``."""
        bases = bases_n.to(self.dtype).contiguous(memory_format=self.format)
        if self.engine is not None:
            cache = self.engine.prepare(bases)
            return {"cache": cache, "bases": bases}, self._embed(cache["output"])
        if self.tokens is not None:
            state = self.tokens.prepare(bases)
            z = self.tokens.embed_bases(state, self._embed) if self.tokens.drop else self._embed(self.trunk(bases))
            return state, z
        return {"bases": bases}, self._embed(self.trunk(bases))

    def embed(self, state: dict, local: torch.Tensor, y0: torch.Tensor, x0: torch.Tensor,
              bid: torch.Tensor) -> torch.Tensor:
        """Embeddings ``(B, D)`` of copies of base ``bid[b]`` whose box at ``(y0[b], x0[b])`` holds ``local[b]``."""
        local = local.to(self.dtype)
        y0, x0, bid = y0.cpu(), x0.cpu(), bid.cpu()
        if self.engine is not None:
            fmap = self.engine.run(state["cache"], local, y0, x0, bid)
        elif self.tokens is not None:
            return self.tokens.embed(state, local, y0, x0, bid, self._embed)
        else:
            region = Region(local, y0, x0, bid, state["bases"], (2, 3))
            fmap = self.trunk(region.full().contiguous(memory_format=self.format))
        return self._embed(fmap)

    def embed_boxes(self, state: dict, images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Embeddings of full ``images`` ``(B,3,H,W)`` that equal the (single) prepared base outside ``boxes``
        ``(B, 4)`` ``(y0, x0, y1, x1)``."""
        local, y0, x0 = box_crops(images, boxes)
        return self.embed(state, local, y0, x0, torch.zeros_like(y0))

    def evaluate(self, images: list[torch.Tensor], bases_of: Callable, items_of: Callable, window: tuple[int, int],
                 per_eval: int, bar: Any, tag: str, first: list[torch.Tensor] | None = None,
                 on_first: Callable | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Embeddings of every view's perturbed copies and of the two images (see :func:`.copies.evaluate_copies`)."""
        return evaluate_copies(self, images, bases_of, items_of, window, per_eval, bar, tag, first, on_first)
