"""Correspondence benchmark: do joint explanations match the right parts of two views?

Each pair is an image ``x1`` (centre crop) and a second view ``x2`` made from it by a known
geometric transform: a random crop (side 50-90% of the image, any position), resized back to the
full size (a zoom), and a horizontal flip with probability 1/2. The position in ``x2`` of every
pixel of ``x1`` is therefore known. For every patch of ``x1`` whose centre stays inside ``x2``, a
method's strongest match (the arg-max of its row of the pair-to-pair relevance) is a hit when it
lies within one patch (Chebyshev distance <= 1 on the grid) of the cell that contains the true
position. The table reports the hit rate of each method and the rate of a uniformly random guess.

Methods: ``feature-cosine`` (cosine between the trunk's feature vectors resized to the grid, the
explorer's heuristic), ``joint-gradient``, ``joint-occlusion`` and ``bilrp`` (pair-to-pair relevances; ``bilrp``
is run on request only, it is the slowest). A method that does not apply to the model (``bilrp`` on a ViT) is
not run: its row says NA and why.
"""
from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..core import cosine
from ..models.state import preserved_model_state
from ..attr.applicability import not_applicable
from ..attr.bilrp import BiLRP
from ..attr.joint import patch_boxes
from ..attr.joint_gradient import JointGradient
from ..attr.joint_occlusion import JointOcclusion
from ..data import list_images, make_view
from ..models import load_model
from ..models.wrapper import SSLModel

__all__ = [
    "CORRESPONDENCE_METHODS",
    "DEFAULT_CORRESPONDENCE_METHODS",
    "correspondence_hits",
    "correspondence_matrix",
    "evaluate_correspondence",
    "geometric_view",
    "map_points",
]

#: every method the benchmark accepts
CORRESPONDENCE_METHODS: tuple[str, ...] = ("feature-cosine", "joint-gradient", "joint-occlusion", "bilrp")
#: the methods run when none are named (``bilrp``, ~D backward passes per image, only on request)
DEFAULT_CORRESPONDENCE_METHODS: tuple[str, ...] = ("feature-cosine", "joint-gradient", "joint-occlusion")


def geometric_view(x: torch.Tensor, generator: torch.Generator,
                   scale: tuple[float, float] = (0.5, 0.9)) -> tuple[torch.Tensor, dict[str, Any]]:
    """A zoomed (cropped and resized) and possibly flipped view of ``(1,3,S,S)`` images, and its parameters.

    Returns:
        ``(x2, params)`` with ``params = {"top", "left", "side", "flip", "size"}`` (pixels of ``x``).
    """
    size = x.shape[-1]
    fraction = scale[0] + (scale[1] - scale[0]) * float(torch.rand(1, generator=generator))
    side = max(2, round(size * fraction))
    top = int(torch.randint(0, size - side + 1, (1,), generator=generator))
    left = int(torch.randint(0, size - side + 1, (1,), generator=generator))
    flip = bool(torch.rand(1, generator=generator) < 0.5)
    crop = x[:, :, top:top + side, left:left + side]
    x2 = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    if flip:
        x2 = x2.flip(-1)
    return x2, {"top": top, "left": left, "side": side, "flip": flip, "size": size}


def map_points(points: torch.Tensor, params: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions in the view of points ``(N, 2)`` ``(y, x)`` of the original (continuous pixel coordinates).

    Returns:
        ``(mapped (N, 2), inside (N,) bool)``.

    Examples:
        >>> p = {"top": 10, "left": 20, "side": 50, "flip": True, "size": 100}
        >>> map_points(torch.tensor([[35.0, 45.0]]), p)[0].tolist()
        [[50.0, 50.0]]
    """
    zoom = params["size"] / params["side"]
    y = (points[:, 0] - params["top"]) * zoom
    x = (points[:, 1] - params["left"]) * zoom
    if params["flip"]:
        x = params["size"] - x
    inside = (y >= 0) & (y < params["size"]) & (x >= 0) & (x < params["size"])
    return torch.stack([y, x], 1), inside


def _feature_cosine(model: SSLModel, x1: torch.Tensor, x2: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    with preserved_model_state(model, requires_grad=False), torch.no_grad():
        f1, f2 = (F.interpolate(model.features(x), size=grid, mode="bilinear", align_corners=False)[0].flatten(1).T
                  for x in (x1, x2))
    return cosine(f1[:, None, :], f2[None, :, :])


def correspondence_matrix(model: SSLModel, method: str, x1: torch.Tensor, x2: torch.Tensor,
                          grid: tuple[int, int] = (7, 7), generator: torch.Generator | None = None) -> torch.Tensor:
    """The ``(P1, P2)`` score of every patch pair of a ``(1,3,H,W)`` pair under a correspondence method.

    Raises:
        ValueError: unknown method.
    """
    if method == "feature-cosine":
        return _feature_cosine(model, x1, x2, grid)
    if method == "joint-gradient":
        return JointGradient(model).attribute((x1, x2), grid=grid).relevance[0]
    if method == "joint-occlusion":
        return JointOcclusion(model).attribute((x1, x2), grid=grid, generator=generator).relevance[0]
    if method == "bilrp":
        return BiLRP(model).attribute((x1, x2), grid=grid).relevance[0]
    raise ValueError(f"unknown correspondence method {method!r}; choose from {', '.join(CORRESPONDENCE_METHODS)}")


def correspondence_hits(scores: torch.Tensor, params: dict[str, Any], grid: tuple[int, int]) -> dict[str, float]:
    """Hits of the arg-max matches of ``scores`` ``(P1, P2)`` and of a random guess, over the valid patches.

    Returns:
        ``{"hits", "valid", "chance"}``: hit count, number of patches whose centre stays in view 2,
        and the expected hit count of a uniformly random match.
    """
    size = params["size"]
    boxes = patch_boxes((size, size), grid).float()
    centres = torch.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], 1)
    mapped, inside = map_points(centres, params)
    rows, cols = grid
    true_r = (mapped[:, 0] * rows / size).floor().clamp(0, rows - 1)
    true_c = (mapped[:, 1] * cols / size).floor().clamp(0, cols - 1)
    best = scores.argmax(1)
    hit = ((best // cols - true_r).abs() <= 1) & ((best % cols - true_c).abs() <= 1)
    near_r = (torch.minimum(true_r + 1, torch.tensor(rows - 1.0)) - (true_r - 1).clamp(min=0) + 1)
    near_c = (torch.minimum(true_c + 1, torch.tensor(cols - 1.0)) - (true_c - 1).clamp(min=0) + 1)
    return {"hits": float(hit[inside].sum()), "valid": float(inside.sum()),
            "chance": float((near_r * near_c / (rows * cols))[inside].sum())}


def evaluate_correspondence(data: str, model: str | SSLModel, methods: Sequence[str] = DEFAULT_CORRESPONDENCE_METHODS,
                            pairs: int = 24, seed: int = 0, grid: int = 7, out: str | None = None,
                            weights: str | None = None) -> dict[str, dict[str, float]]:
    """Hit rate of each method's strongest match over ``pairs`` geometric pairs from an image folder.

    Args:
        data: image folder (searched recursively); images are cycled if fewer than ``pairs``.
        model: a zoo name or an :class:`SSLModel`.
        methods: correspondence methods (:data:`CORRESPONDENCE_METHODS`); one that does not apply to the model
            is not run (its row: ``{"accuracy": None, "refused": why}``).
        pairs: number of pairs; pair ``k`` uses image ``k`` of a seeded permutation and a seeded transform.
        seed: seeds the image order and the transforms.
        grid: patches per side.
        out: folder for ``correspondence.jsonl`` (one record per pair and method) and ``correspondence.md``.
        weights: weight file for a zoo name.

    Returns:
        ``{method: {"accuracy", "chance", "patches", "seconds"}}`` (``{"accuracy": None, "refused"}`` for a
        method that does not apply).

    Examples:
        Two shipped sample images written to a folder (``ssl-widgets samples --out DIR`` does the same
        from the command line), one pair, the cheapest method:

        >>> import tempfile
        >>> from pathlib import Path
        >>> from ssl_widgets.data import sample_image
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     for name in ("chelsea", "coffee"):
        ...         sample_image(name).save(Path(folder) / f"{name}.png")
        ...     table = evaluate_correspondence(folder, "tiny-simclr", methods=["feature-cosine"], pairs=1)
        >>> sorted(table["feature-cosine"])
        ['accuracy', 'chance', 'patches', 'seconds']
        >>> 0.0 <= table["feature-cosine"]["accuracy"] <= 1.0
        True
    """
    for name in methods:
        if name not in CORRESPONDENCE_METHODS:
            raise ValueError(f"unknown correspondence method {name!r}; choose from {', '.join(CORRESPONDENCE_METHODS)}")
    net = load_model(model, weights=weights) if isinstance(model, str) else model
    refused = {m: why for m in methods if m != "feature-cosine" and (why := not_applicable(m, net))}
    methods = [m for m in methods if m not in refused]
    files = list_images(data)
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed)).tolist()
    g = (grid, grid)
    totals = {m: {"hits": 0.0, "valid": 0.0, "chance": 0.0, "seconds": 0.0} for m in methods}
    records = []
    for k in range(pairs):
        path = files[order[k % len(files)]]
        x1 = make_view(str(path), "pure", net.input_size, seed=None)
        x2, params = geometric_view(x1, torch.Generator().manual_seed(seed * 1_000_003 + k))
        for name in methods:
            started = time.perf_counter()
            scores = correspondence_matrix(net, name, x1, x2, g, torch.Generator().manual_seed(k))
            seconds = time.perf_counter() - started
            result = correspondence_hits(scores, params, g)
            for key in ("hits", "valid", "chance"):
                totals[name][key] += result[key]
            totals[name]["seconds"] += seconds
            records.append({"pair": k, "image": path.name, "method": name, **params, **result,
                            "seconds": round(seconds, 3)})
    table = {m: {"accuracy": t["hits"] / max(t["valid"], 1), "chance": t["chance"] / max(t["valid"], 1),
                 "patches": t["valid"], "seconds": t["seconds"] / max(pairs, 1)} for m, t in totals.items()}
    table.update({m: {"accuracy": None, "refused": why} for m, why in refused.items()})
    if out is not None:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "correspondence.jsonl", "w") as handle:
            handle.writelines(json.dumps(record) + "\n" for record in records)
        (folder / "correspondence.md").write_text(format_correspondence(table, getattr(net, "name", str(model)),
                                                                        Path(data).name, pairs, grid, seed))
    return table


def format_correspondence(table: dict[str, dict[str, float]], model: str, data: str, pairs: int, grid: int,
                          seed: int) -> str:
    """The Markdown table of :func:`evaluate_correspondence`."""
    lines = [(f"**{model}** on `{data}`: {pairs} pairs (centre crop vs. a zoomed 50-90% crop, flipped with p 1/2; "
              f"seed {seed}), {grid}x{grid} patches; hit = strongest match within one patch of the true position"),
             "", "| method | hit rate | random guess | patches | s / pair |", "|---|---|---|---|---|"]
    notes: list[str] = []
    for name, row in table.items():
        if row.get("accuracy") is None:
            lines.append(f"| {name} | NA | | | |")
            notes.append(f"NA, {name}: {row.get('refused', 'not run')}")
            continue
        lines.append(f"| {name} | {row['accuracy']:.3f} | {row['chance']:.3f} | {int(row['patches'])} | "
                     f"{row['seconds']:.2f} |")
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"
