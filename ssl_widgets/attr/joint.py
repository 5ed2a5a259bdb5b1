"""Joint (pair-to-pair) explanations: the result type and the patch grid they share.

A joint explanation assigns a relevance ``R[b, i, j]`` to every pair of a patch ``i`` of image 1
and a patch ``j`` of image 2 ("which part of image 1 is matched to which part of image 2").
:class:`JointAttribution` holds that ``(B, h1*w1, h2*w2)`` tensor with the grid sizes in ``.meta``
and gives the two ordinary maps (row and column sums) as a :class:`PairAttribution`, so every
metric and view of the package applies to them.
"""
from __future__ import annotations

from typing import Any

import torch

from .engine import PairAttribution
from .maps import upsample

__all__ = ["JointAttribution", "check_grid", "patch_boxes", "patch_index", "pool_to_patches"]


def check_grid(grid: object, image_size: tuple[int, int]) -> tuple[int, int]:
    """``grid`` (an int or a pair) as ``(rows, cols)``, checked against the image size.

    Raises:
        TypeError: not an int or a pair of ints.
        ValueError: non-positive, or more cells than pixels along a side.
    """
    pair = (grid, grid) if isinstance(grid, int) and not isinstance(grid, bool) else grid
    if (not isinstance(pair, (tuple, list)) or len(pair) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair)):
        raise TypeError(f"grid must be an int or a pair of ints (rows, cols), got {grid!r}")
    rows, cols = int(pair[0]), int(pair[1])
    if rows < 1 or cols < 1:
        raise ValueError(f"grid must be positive, got {grid!r}")
    if rows > image_size[0] or cols > image_size[1]:
        raise ValueError(f"grid {rows}x{cols} has more cells than the image {image_size[0]}x{image_size[1]} has pixels")
    return rows, cols


def _edges(size: int, n: int) -> list[int]:
    return [round(k * size / n) for k in range(n + 1)]


def patch_index(image_size: tuple[int, int], grid: tuple[int, int], device: torch.device | None = None) -> torch.Tensor:
    """``(H, W)`` long tensor: the row-major patch number of every pixel.

    Patch edges are at ``round(k * H / rows)`` (equal patches when the grid divides the image).

    Examples:
        >>> patch_index((4, 4), (2, 2))[:, :3]
        tensor([[0, 0, 1],
                [0, 0, 1],
                [2, 2, 3],
                [2, 2, 3]])
    """
    (h, w), (rows, cols) = image_size, grid
    row_of = torch.bucketize(torch.arange(h), torch.tensor(_edges(h, rows)[1:-1]), right=True)
    col_of = torch.bucketize(torch.arange(w), torch.tensor(_edges(w, cols)[1:-1]), right=True)
    return (row_of[:, None] * cols + col_of[None, :]).to(device)


def patch_boxes(image_size: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
    """``(rows*cols, 4)`` long tensor of patch boxes ``(y0, x0, y1, x1)``, row-major.

    Examples:
        >>> patch_boxes((4, 6), (2, 3))[4].tolist()
        [2, 2, 4, 4]
    """
    ys, xs = _edges(image_size[0], grid[0]), _edges(image_size[1], grid[1])
    return torch.tensor([[ys[r], xs[c], ys[r + 1], xs[c + 1]] for r in range(grid[0]) for c in range(grid[1])])


def pool_to_patches(values: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Sum ``(..., H, W)`` pixel values over each patch: ``(..., rows*cols)`` (sums are conserved).

    Examples:
        >>> pool_to_patches(torch.ones(1, 4, 4), (2, 2))
        tensor([[4., 4., 4., 4.]])
    """
    h, w = values.shape[-2:]
    index = patch_index((h, w), grid, values.device).flatten()
    flat = values.reshape(-1, h * w)
    out = flat.new_zeros(flat.shape[0], grid[0] * grid[1]).index_add_(1, index, flat)
    return out.view(*values.shape[:-2], grid[0] * grid[1])


class JointAttribution:
    """Pair-to-pair relevance ``(B, h1*w1, h2*w2)`` of two images' patches.

    Attributes:
        relevance: the ``(B, h1*w1, h2*w2)`` tensor (patch ``i`` of image 1 is row ``i``, row-major).
        similarity: cosine similarity ``(B,)`` of the unperturbed pair.
        meta: the method name and settings, with ``grid1`` / ``grid2`` (``(rows, cols)``) and
            ``size1`` / ``size2`` (image sizes in pixels).

    Examples:
        >>> r = JointAttribution(torch.arange(8.).view(1, 2, 4), torch.tensor([0.5]),
        ...                      {"method": "x", "grid1": (1, 2), "grid2": (2, 2), "size1": (4, 8), "size2": (4, 4)})
        >>> r.shape
        torch.Size([1, 2, 4])
        >>> m1, m2 = r.marginals(pixels=False)
        >>> m1.tolist(), m2.tolist()
        ([[[6.0, 22.0]]], [[[4.0, 6.0], [8.0, 10.0]]])
        >>> r.top_matches(2)
        [(1, 3, 7.0), (1, 2, 6.0)]
    """

    def __init__(self, relevance: torch.Tensor, similarity: torch.Tensor, meta: dict[str, Any]) -> None:
        g1, g2 = meta["grid1"], meta["grid2"]
        if relevance.dim() != 3 or relevance.shape[1:] != (g1[0] * g1[1], g2[0] * g2[1]):
            raise ValueError(f"relevance of shape {tuple(relevance.shape)} does not fit grids {g1} and {g2}")
        self.relevance = relevance
        self.similarity = similarity
        self.meta = dict(meta)

    @property
    def shape(self) -> torch.Size:
        """``(B, h1*w1, h2*w2)``."""
        return self.relevance.shape

    def __getitem__(self, index):
        return self.relevance[index]

    def __repr__(self) -> str:
        return (f"JointAttribution(relevance={tuple(self.relevance.shape)}, similarity={self.similarity.tolist()}, "
                f"meta={self.meta})")

    def matrix(self, b: int = 0) -> torch.Tensor:
        """The relevance of item ``b`` as ``(h1, w1, h2, w2)``."""
        (r1, c1), (r2, c2) = self.meta["grid1"], self.meta["grid2"]
        return self.relevance[b].reshape(r1, c1, r2, c2)

    def marginals(self, pixels: bool = True) -> PairAttribution:
        """The two ordinary maps: row sums (image 1) and column sums (image 2).

        Args:
            pixels: bring the ``(B, h, w)`` grids to image size (bilinear, cell-centred) so
                every metric and view of the package applies; ``False`` keeps the grids.

        Returns:
            :class:`PairAttribution` with the same ``.similarity`` and ``.meta``.
        """
        (r1, c1), (r2, c2) = self.meta["grid1"], self.meta["grid2"]
        m1 = self.relevance.sum(2).view(-1, r1, c1)
        m2 = self.relevance.sum(1).view(-1, r2, c2)
        if pixels:
            m1, m2 = upsample(m1, tuple(self.meta["size1"])), upsample(m2, tuple(self.meta["size2"]))
        return PairAttribution((m1, m2), self.similarity, {**self.meta, "marginals": True})

    def over_other(self, cell: int | tuple[int, int], image: int = 1, b: int = 0) -> torch.Tensor:
        """The relevance of one cell of ``image`` (1 or 2) paired with every cell of the other: ``(h, w)``.

        ``cell`` is a row-major index or ``(row, col)``.

        Raises:
            ValueError: ``image`` not 1 or 2, or the cell outside the grid.
        """
        if image not in (1, 2):
            raise ValueError(f"image must be 1 or 2, got {image!r}")
        rows, cols = self.meta["grid1" if image == 1 else "grid2"]
        index = cell[0] * cols + cell[1] if isinstance(cell, tuple) else int(cell)
        if isinstance(cell, tuple) and not (0 <= cell[0] < rows and 0 <= cell[1] < cols) or not 0 <= index < rows * cols:
            raise ValueError(f"cell {cell!r} is outside the {rows}x{cols} grid of image {image}")
        other = self.meta["grid2" if image == 1 else "grid1"]
        values = self.relevance[b, index] if image == 1 else self.relevance[b, :, index]
        return values.reshape(other)

    def top_matches(self, k: int = 10, b: int = 0) -> list[tuple[int, int, float]]:
        """The ``k`` most relevant pairs ``(i, j, value)`` of item ``b``, strongest first."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        flat = self.relevance[b].flatten()
        values, order = flat.topk(min(k, flat.numel()))
        n2 = self.relevance.shape[2]
        return [(int(o) // n2, int(o) % n2, float(v)) for v, o in zip(values, order)]

    def best_match(self, b: int = 0) -> torch.Tensor:
        """For each cell of image 1, the row-major index of its most relevant cell of image 2: ``(h1*w1,)``."""
        return self.relevance[b].argmax(1)
