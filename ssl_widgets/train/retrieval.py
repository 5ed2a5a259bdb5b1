"""Quality check of an embedding model: top-1 retrieval of augmented views among held-out images.

For each held-out image, an augmented view (RandomResizedCrop scale 0.3-1, flip, colour jitter
0.4 with p 0.8, grayscale 0.2) is the query; the gallery is the centre crops of all held-out
images; a hit is when the nearest gallery embedding (cosine) is the query's own image.

``python -m ssl_widgets.train.retrieval --data DIR --models tiny-simclr,tiny-barlow-twins``
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T

from .._argtypes import ArgumentParser, positive_int, run_reporting_errors
from ..data.folder import list_images, split_holdout
from ..models import SSLModel, build_tiny_model, load_model

__all__ = ["gallery_transform", "heldout_views", "query_transform", "retrieval_report", "retrieval_top1", "similarity_gap",
           "top1_from_embeddings"]


def query_transform(size: int) -> T.Compose:
    """The augmentation of the quality bar (seed it with ``torch.manual_seed``)."""
    return T.Compose([
        T.RandomResizedCrop(size, scale=(0.3, 1.0)),
        T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(0.2),
        T.ToTensor(),
    ])


def gallery_transform(size: int) -> T.Compose:
    """Resize the short side to ``size * 8/7`` and take the centre crop (the 256/224 convention)."""
    return T.Compose([T.Resize(round(size * 8 / 7)), T.CenterCrop(size), T.ToTensor()])


@torch.no_grad()
def _embed(model: SSLModel, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    out = [model(images[i:i + batch_size].to(model.device)) for i in range(0, len(images), batch_size)]
    return F.normalize(torch.cat(out).float(), dim=1)


def heldout_views(files: Sequence[Path], size: int, views_per_image: int = 5,
                  seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The retrieval test's images: gallery centre crops ``(N,3,s,s)`` and queries ``(views*N,3,s,s)``.

    The queries are drawn view by view (all images for view 0, then view 1, ...) with the global
    RNG seeded by ``seed`` inside :func:`torch.random.fork_rng` (the caller's RNG state is left alone).
    """
    pil = [Image.open(f).convert("RGB") for f in files]
    gallery = torch.stack([gallery_transform(size)(im) for im in pil])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        augment = query_transform(size)
        queries = torch.cat([torch.stack([augment(im) for im in pil]) for _ in range(views_per_image)])
    return gallery, queries


def top1_from_embeddings(gallery: torch.Tensor, queries: torch.Tensor) -> float:
    """Fraction of queries (``views x N`` rows, view-major) whose most cosine-similar gallery row is their own."""
    gallery, queries = F.normalize(gallery.float(), dim=1), F.normalize(queries.float(), dim=1)
    n = gallery.shape[0]
    own = torch.arange(queries.shape[0], device=queries.device) % n
    return float((((queries @ gallery.t()).argmax(1)) == own).float().mean())


def similarity_gap(gallery: torch.Tensor, queries: torch.Tensor) -> dict[str, float]:
    """How clearly positives stand out: cosine of each query with its own image vs with the others.

    Args:
        gallery: ``(N, D)`` embeddings of the centre crops.
        queries: ``(views x N, D)`` embeddings of the augmented views, view-major.

    Returns:
        ``positive`` and ``negative`` (mean cosines), ``gap`` (their difference) and ``separation``
        (the gap in units of the pooled standard deviation, d-prime), so that models whose
        similarities live on different scales compare fairly.

    Examples:
        >>> g = torch.eye(3)
        >>> r = similarity_gap(g, torch.cat([g, g]))
        >>> r["positive"], r["negative"], r["gap"]
        (1.0, 0.0, 1.0)
    """
    gallery, queries = F.normalize(gallery.float(), dim=1), F.normalize(queries.float(), dim=1)
    cos = queries @ gallery.t()
    own = torch.arange(queries.shape[0], device=queries.device) % gallery.shape[0]
    is_own = torch.zeros_like(cos, dtype=torch.bool)
    is_own[torch.arange(queries.shape[0]), own] = True
    positive, negative = cos[is_own], cos[~is_own]
    pooled = float(((positive.var(unbiased=False) + negative.var(unbiased=False)) / 2).sqrt())
    gap = float(positive.mean() - negative.mean())
    return {"positive": round(float(positive.mean()), 4), "negative": round(float(negative.mean()), 4),
            "gap": round(gap, 4), "separation": round(gap / pooled, 3) if pooled > 0 else float("inf")}


def retrieval_report(model: SSLModel, files: Sequence[Path], views_per_image: int = 5, seed: int = 0) -> dict:
    """Top-1 retrieval (:func:`retrieval_top1`) and the positive/negative gap (:func:`similarity_gap`) at once."""
    gallery, queries = heldout_views(files, model.input_size, views_per_image, seed)
    was_training = model.training
    model.eval()
    try:
        g, q = _embed(model, gallery), _embed(model, queries)
    finally:
        model.train(was_training)
    return {"top1": round(top1_from_embeddings(g, q), 4), **similarity_gap(g, q)}


def retrieval_top1(model: SSLModel, files: Sequence[Path], views_per_image: int = 5, seed: int = 0) -> float:
    """Fraction of augmented queries whose nearest centre crop is their own image.

    Args:
        model: the model to evaluate (eval mode is set and restored).
        files: held-out image files (the gallery and the query sources).
        views_per_image: augmented queries per image.
        seed: seeds the query augmentations.

    Returns:
        Top-1 accuracy in ``[0, 1]``.
    """
    gallery, queries = heldout_views(files, model.input_size, views_per_image, seed)
    was_training = model.training
    model.eval()
    try:
        return top1_from_embeddings(_embed(model, gallery), _embed(model, queries))
    finally:
        model.train(was_training)


def main(argv: list[str] | None = None) -> int:
    """``python -m ssl_widgets.train.retrieval``: a user error is one line on stderr and exit status 2."""
    prog = "python -m ssl_widgets.train.retrieval"
    parser = ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="image folder (the held-out split is every 5th file)")
    parser.add_argument("--models", default="tiny-simclr,tiny-barlow-twins,tiny-simsiam,tiny-dino-vit")
    parser.add_argument("--weights", default=None, help="weight file (with a single model)")
    parser.add_argument("--views", type=positive_int, default=5)
    parser.add_argument("--holdout-every", type=positive_int, default=5)
    return run_reporting_errors(prog, _run, parser.parse_args(argv))


def _run(args: argparse.Namespace) -> int:
    _, held = split_holdout(list_images(args.data), args.holdout_every)
    results = {}
    for name in args.models.split(","):
        model = load_model(name, weights=args.weights)
        torch.manual_seed(0)
        random_model = build_tiny_model(getattr(model, "meta", {}).get("arch", {}) or _arch_of(model), name + "-random")
        trained = retrieval_report(model, held, args.views)
        results[name] = {
            "heldout_images": len(held),
            "queries": len(held) * args.views,
            "top1_trained": trained.pop("top1"),
            "top1_random_weights": round(retrieval_top1(random_model.eval(), held, args.views), 4),
            "similarity_gap": trained,
        }
        print(json.dumps({name: results[name]}), flush=True)
    return 0


def _arch_of(model: SSLModel) -> dict:
    linear = [m for m in model.head.modules() if isinstance(m, torch.nn.Linear)]
    return {"width": model.trunk.conv1.out_channels, "head_dims": [m.out_features for m in linear],
            "input_size": model.input_size, "normalized": model.normalized}


if __name__ == "__main__":
    sys.exit(main())
