"""BiLRP: the similarity of a pair explained on pairs of patches with LRP rules (Eberle et al., TPAMI 2022).

"Building and Interpreting Deep Similarity Models" explains a dot-product similarity
``y = <phi(x1), phi(x2)> = sum_m phi_m(x1) phi_m(x2)`` by composing first-order LRP explanations of the
embedding's dimensions: ``R[p, q] = sum_m LRP_m(x1)[p] * LRP_m(x2)[q]``, where ``LRP_m(x)`` is the LRP
explanation of output dimension ``m`` (its relevances sum to ``phi_m(x)`` when the rules conserve).
The LRP rules are those of ``zennit`` (the LRP library of the method's authors' group), applied with
canonizers that merge BatchNorm into the preceding layer and give ResNet blocks' additions a rule.
Pixel relevances are summed over the channels and over each patch of the grid, the output form of
``joint-gradient`` (of which BiLRP with LRP-0 on a bias-free ReLU network is the same result).

How normalisation enters: the package's similarity is the cosine ``<u1, u2>`` of ``u = z / ||z||``. As LRP
treats normalisation layers, the norms are constants: ``LRP_m(u) = LRP_m(z) / ||z||``. The explained
quantity is then exactly the dot product of the normalised embeddings, and
``sum_pq R[p, q] = sum_m (sum_p LRP_m(x1)[p]) (sum_q LRP_m(x2)[q]) / (||z1|| ||z2||)``.

Conservation: with LRP-0 (``composite="lrp0"``, epsilon -> 0) on a network of bias-free linear/conv layers,
ReLUs and average pooling, ``sum_p LRP_m(x)[p] = z_m`` and so ``sum_pq R[p, q]`` equals the cosine similarity.
Biases (BatchNorm shifts merged into biases included), epsilon stabilisers, rules such as z+ or flat that do
not pass relevance to biases, and (with ``projection=k < D``) the random-projection estimate leave a
remainder; ``meta["remainder"]`` reports ``similarity - sum_pq R[p, q]`` per pair, so the marginals plus the
remainder give the similarity.

Cost bound (the paper's random projection): instead of the ``D`` embedding dimensions, ``k`` random directions
``h = W z`` are explained, ``R[p, q] = sum_j LRP(h_j)(x1)[p] LRP(h_j)(x2)[q]``. ``W`` has orthonormal rows
scaled by ``sqrt(D / k)`` (a seeded uniformly random ``k``-frame), so ``E[W^T W] = I``: the result is an unbiased
estimate of the full one, and ``k = D`` (an orthogonal ``W``) reproduces it exactly, since the LRP rules are
linear in the relevance they start from.

Vision Transformers are refused: LRP through attention needs the AttnLRP rules of ``lxt``, whose version 2.1
patches torchvision's and Hugging Face's attention modules but not timm's (which every ViT of this package
is built on).
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
from captum.attr import GradientAttribution
from torch import nn

from .._validation import check_autograd_available, check_pair
from ..models.wrapper import SSLModel
from .base import ModelMethod
from .engine import cosine, preserved_model_state, progress
from .joint import JointAttribution, check_grid, pool_to_patches
from .spec import MethodSpec

__all__ = ["BiLRP", "COMPOSITES", "VIT_REFUSAL", "random_projection"]

#: the composites offered by name (``composite=`` also takes a ``zennit`` ``Composite``)
COMPOSITES: tuple[str, ...] = ("epsilon-plus-flat", "epsilon-plus", "epsilon-alpha2-beta1",
                               "epsilon-alpha2-beta1-flat", "epsilon", "lrp0")
#: why a Vision Transformer is refused
VIT_REFUSAL = ("LRP through attention needs AttnLRP rules (the lxt package); lxt 2.1 patches torchvision's and "
               "Hugging Face's attention modules, not timm's, on which this package's ViTs are built; use "
               "joint-gradient (gradient x input, BiLRP's epsilon -> 0 case on bias-free ReLU networks) or "
               "joint-occlusion")


def _zennit() -> Any:
    try:
        with warnings.catch_warnings():  # zennit's import scripts a function: torch warns, with its own path
            warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
            import zennit.composites
            import zennit.torchvision
    except ImportError as error:  # pragma: no cover - zennit is a dependency of the package
        raise ImportError("the bilrp method needs the LRP library zennit: pip install zennit") from error
    return zennit


def _composite(name: str, epsilon: float) -> Any:
    """A fresh zennit composite of a name of :data:`COMPOSITES`, with BatchNorm merging and ResNet canonizers."""
    zennit = _zennit()
    composites, canonizers = zennit.composites, [zennit.torchvision.ResNetCanonizer()]
    if name in ("epsilon", "lrp0"):
        from zennit.rules import Epsilon
        from zennit.types import Linear

        small = epsilon if name == "epsilon" else 1e-12  # LRP-0: no stabiliser worth the name (pooling's too)
        return composites.LayerMapComposite(composites.layer_map_base(small) + [(Linear, Epsilon(epsilon=small))],
                                            canonizers=canonizers)
    cls = {"epsilon-plus-flat": composites.EpsilonPlusFlat, "epsilon-plus": composites.EpsilonPlus,
           "epsilon-alpha2-beta1": composites.EpsilonAlpha2Beta1,
           "epsilon-alpha2-beta1-flat": composites.EpsilonAlpha2Beta1Flat}[name]
    return cls(epsilon=epsilon, canonizers=canonizers)


def random_projection(k: int, dim: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A ``(k, dim)`` random projection with orthonormal rows scaled by ``sqrt(dim / k)`` (``E[W^T W] = I``).

    Args:
        k: directions, ``1 <= k <= dim``.
        dim: embedding dimensions.
        generator: seeds the draw (the same generator state gives the same matrix).

    Examples:
        >>> w = random_projection(4, 4, torch.Generator().manual_seed(0))
        >>> bool(torch.allclose(w.T @ w, torch.eye(4), atol=1e-5))
        True
    """
    gaussian = torch.randn(dim, k, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    q = q * torch.sign(torch.diagonal(r))[None, :]  # the Haar-distributed frame (QR's sign convention removed)
    return (q.T * math.sqrt(dim / k)).float()


class _PooledEmbedding(nn.Module):
    """The model's embedding with its global average pooling as a module, so that the LRP rule of average
    pooling (relevance in proportion to the activations) applies there instead of a uniform gradient."""

    def __init__(self, model: SSLModel) -> None:
        super().__init__()
        self.model = model
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x_n: torch.Tensor) -> torch.Tensor:
        return self.model.head(self.pool(self.model.run_trunk(x_n)).flatten(1))


def lrp_relevance(embedding: nn.Module, x_n: torch.Tensor, directions: torch.Tensor, grid: tuple[int, int],
                  batch_size: int, bar: Any = None) -> torch.Tensor:
    """Patch relevance ``(B, k, P)`` of ``h_j = <directions_j, z>`` for each image, with the rules registered on
    ``embedding``: one backward pass per chunk of ``batch_size`` directions, on copies of the image.

    The backward pass starts from the LRP-0 relevance of ``z_m`` for ``h_j`` (``directions[j, m] * z_m``), the
    relevance the registered rules then carry down to the pixels (summed over channels and patches).
    """
    out = []
    for image in x_n:
        parts = []
        for start in range(0, directions.shape[0], batch_size):
            chunk = directions[start:start + batch_size]
            a = image[None].expand(chunk.shape[0], *image.shape).clone().requires_grad_(True)
            z = embedding(a)
            (relevance,) = torch.autograd.grad(z, a, chunk.to(z.dtype) * z.detach())
            parts.append(pool_to_patches(relevance.sum(1), grid))
            if bar is not None:
                bar.update(1)
        out.append(torch.cat(parts))
    return torch.stack(out)


class BiLRP(ModelMethod, GradientAttribution):
    """BiLRP (Eberle et al., TPAMI 2022): ``R[p, q] = sum_m LRP_m(x1)[p] LRP_m(x2)[q] / (||z1|| ||z2||)``.

    See the module docstring for the normalisation, conservation (``meta["remainder"]``) and the random projection.
    Convolutional networks only (ViTs are refused: :data:`VIT_REFUSAL`).

    Examples:
        >>> from ssl_widgets.models.wrapper import SSLModel
        >>> trunk = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1, bias=False), torch.nn.ReLU())
        >>> model = SSLModel(trunk, input_size=8).eval()
        >>> x1, x2 = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8)
        >>> result = BiLRP(model).attribute((x1, x2), grid=2, composite="lrp0")
        >>> result.shape
        torch.Size([1, 4, 4])
        >>> bool(torch.allclose(result.relevance.sum((1, 2)), result.similarity, atol=1e-5))
        True
    """

    method_name = "bilrp"

    def attribute(self, inputs: tuple[torch.Tensor, torch.Tensor], grid: int | tuple[int, int] = 7,
                  composite: Any = "epsilon-plus-flat", epsilon: float = 1e-6,
                  projection: int | torch.Tensor | None = None, generator: torch.Generator | None = None,
                  batch_size: int = 32, show_progress: bool = False,
                  on_progress: Callable[[int, int], None] | None = None) -> JointAttribution:
        """Pair-to-pair LRP relevance of the two images' patches.

        Args:
            inputs: ``(x1, x2)``, each ``(B,3,H,W)`` in ``[0,1]``.
            grid: patches per side (int) or ``(rows, cols)``, used for both images.
            composite: the LRP rules: a name of :data:`COMPOSITES` (zennit's ``EpsilonPlusFlat`` etc.; ``"epsilon"``:
                LRP-epsilon on every conv/linear layer, ``"lrp0"``: LRP-0) or a ``zennit`` ``Composite`` (its
                own canonizers; registered on a module holding the model and its average pooling).
            epsilon: the epsilon of the epsilon rules (named composites).
            projection: ``None`` (explain all ``D`` dimensions), an int ``k`` (``k`` random directions,
                :func:`random_projection`, drawn with ``generator``) or a ``(k, D)`` tensor of directions.
            generator: seeds the random projection.
            batch_size: directions per backward pass (copies of an image in one batch; bounds the memory).
            show_progress: tqdm progress bar.
            on_progress: called ``(done, total)`` as the work advances; raising from it (e.g.
                :class:`~ssl_widgets.attr.engine.Cancelled`) stops the call.

        Returns:
            :class:`JointAttribution` ``(B, rows*cols, rows*cols)``; ``.marginals()`` gives the two maps and
            ``meta["remainder"]`` the similarity minus the sum of all relevances, per pair.

        Raises:
            ValueError: a Vision Transformer, an unknown composite, a bad ``projection``, ``epsilon`` or
                ``batch_size``, bad images or grid.
        """
        check_autograd_available(self.method_name)
        model = self.model
        if model.is_token_model:
            raise ValueError(f"method 'bilrp' does not apply to model {model.name!r} (a Vision Transformer): "
                             + VIT_REFUSAL)
        x1, x2 = (x.to(model.device) for x in check_pair(inputs))
        g1, g2 = check_grid(grid, tuple(x1.shape[2:])), check_grid(grid, tuple(x2.shape[2:]))
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if isinstance(composite, str):
            if composite not in COMPOSITES:
                raise ValueError(f"composite must be one of {', '.join(COMPOSITES)} or a zennit Composite, "
                                 f"got {composite!r}")
            if not isinstance(epsilon, (int, float)) or isinstance(epsilon, bool) or not 0 < epsilon < math.inf:
                raise ValueError(f"epsilon must be a positive number, got {epsilon!r}")
            rules = _composite(composite, float(epsilon))
        elif hasattr(composite, "context") and hasattr(composite, "register"):
            rules = composite
        else:
            raise ValueError(f"composite must be one of {', '.join(COMPOSITES)} or a zennit Composite, "
                             f"got {type(composite).__name__}")
        with preserved_model_state(model, requires_grad=False):
            with torch.no_grad():
                z1, z2 = model.forward_normalized(model.normalize(x1)), model.forward_normalized(model.normalize(x2))
            directions = self._directions(projection, z1.shape[1], generator).to(z1)
            steps = (x1.shape[0] + x2.shape[0]) * -(-directions.shape[0] // batch_size)
            embedding = _PooledEmbedding(model)
            with progress(steps, show_progress, self.method_name, on_progress) as bar, torch.enable_grad(), \
                    rules.context(embedding):
                r1 = lrp_relevance(embedding, model.normalize(x1), directions, g1, batch_size, bar)
                r2 = lrp_relevance(embedding, model.normalize(x2), directions, g2, batch_size, bar)
        norms = z1.norm(dim=1).clamp(min=1e-8) * z2.norm(dim=1).clamp(min=1e-8)
        relevance = torch.einsum("bki,bkj->bij", r1, r2) / norms[:, None, None]
        similarity = cosine(z1, z2)
        meta = {"method": self.method_name, "grid1": g1, "grid2": g2, "size1": tuple(x1.shape[2:]),
                "size2": tuple(x2.shape[2:]), "batch_size": batch_size,
                "composite": composite if isinstance(composite, str) else type(composite).__name__,
                "epsilon": epsilon, "directions": int(directions.shape[0]),
                "remainder": (similarity - relevance.sum((1, 2))).tolist()}
        return JointAttribution(relevance, similarity, meta)

    @staticmethod
    def _directions(projection: int | torch.Tensor | None, dim: int,
                    generator: torch.Generator | None) -> torch.Tensor:
        """The ``(k, D)`` directions explained: the identity, a random projection or the given matrix."""
        if projection is None:
            return torch.eye(dim)
        if isinstance(projection, torch.Tensor):
            if projection.dim() != 2 or projection.shape[1] != dim or projection.shape[0] < 1:
                raise ValueError(f"projection must be a (k, {dim}) matrix for this {dim}-dimensional embedding, "
                                 f"got shape {tuple(projection.shape)}")
            if not torch.isfinite(projection).all():
                raise ValueError("projection has non-finite entries")
            return projection.detach().float()
        if isinstance(projection, int) and not isinstance(projection, bool):
            if not 1 <= projection <= dim:
                raise ValueError(f"projection must be a number of directions k with 1 <= k <= {dim} (the embedding's "
                                 f"dimensions), got {projection}")
            return random_projection(projection, dim, generator)
        raise ValueError(f"projection must be None, an int k or a (k, {dim}) tensor, got {type(projection).__name__}")


#: the method record (see :mod:`ssl_widgets.attr.spec`)
SPEC = MethodSpec("bilrp", BiLRP, kind="joint", summary="BiLRP: pair-to-pair LRP relevance of patches (zennit rules; "
                  "CNNs)", slow=True, seeded=True, architectures=("cnn",), vit_only_reason=VIT_REFUSAL,
                  sign_note="negative relevance: the pair of patches lowers the similarity", order=320)
