"""The occlusion wing: everything that makes the occlusion methods fast, behind one face.

::

    ConditionalOcclusion / ContextAgnosticOcclusion / JointOcclusion   (which copies, which values)
                 |  evaluator=CopyEvaluator(model, incremental=, workers=, winograd=, store=)
                 v
    evaluator.py  CopyEvaluator -> Session (one call: private trunk copy, Winograd buffers)
      copies.py   a pair's copies in shared batches, the preview's copies first, the view store
      fold.py     private traced copy of the trunk, BatchNorm folded (cached by state_token)
      graph.py    GraphIncremental: each node recomputes only the box a window changes (regions.py)
      tokens.py   TokenTrunk: a timm ViT's copies token by token (touched patches only; fill="drop-tokens")
      winograd.py F(4x4, 3x3) / F(7x7, 3x3) for the late 3x3 convolutions (CPU)
      workers.py  two CPU worker threads, each limiting its own OpenMP/MKL threads (supported())
      store.py    ViewEmbeddingStore: an unchanged image's copies reused across calls
      preview.py  the coarse grid a preview (on_partial=) takes from the refined one

Nothing here is imported by a method module except this face; every cache follows
:func:`~ssl_widgets.attr._model_state.state_token`.
"""
from .evaluator import CopyEvaluator, default_batch
from .preview import coarse_indices, preview_stride
from .store import ViewEmbeddingStore
from .tokens import check_drop_tokens

__all__ = ["CopyEvaluator", "ViewEmbeddingStore", "check_drop_tokens", "coarse_indices", "default_batch",
           "preview_stride"]
