"""Grad-CAM adapted to similarity and Interaction-CAM (Sammani et al. 2022, arXiv 2206.09753).

Both use the element-wise form of the paper's code: ``CAM = sum_c w_c * A[c] * ReLU(G[c])`` with
``A`` a layer's activation and ``G = dS/dA`` for ``S = cos(f(x1), f(x2))``. All variants of one
pair come from a single forward and backward pass (:func:`cam_variants`).
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from captum.attr import LayerAttribution

from .._validation import check_autograd_available, check_pair
from ..core import captured_outputs
from ..models.wrapper import SSLModel
from .base import LayerPairMethod
from .spec import MethodSpec, resolve
from .engine import PairAttribution, check_model, cosine, preserved_model_state

__all__ = ["PairGradCAM", "InteractionCAM", "cam_variants", "CAM_VARIANTS", "POOLINGS"]

POOLINGS = ("mean", "max", "attention")
CAM_VARIANTS = ("grad-cam", "interaction-cam", "interaction-cam:max", "interaction-cam:attention",
                "interaction-cam:mean+gi", "interaction-cam:max+gi", "interaction-cam:attention+gi")


def _checked_layer_outputs(model: SSLModel, layer: str, captured: list[tuple[torch.Tensor, int]],
                           forwards: int) -> list[torch.Tensor]:
    """The layer's outputs, refusing the two cases where a hook would give another layer's map.

    * the module ran more than once per forward pass (a re-used module such as torchvision's
      ``layer1.0.relu``): the hook cannot tell which call is meant;
    * its output was changed in place later in the forward (torchvision's ``bn2``/``bn3`` get the
      residual added in place, a ``bn1`` output goes through an in-place ReLU): the captured
      tensor then holds, and gets the gradient of, that later result.
    """
    parent = layer.rpartition(".")[0]
    instead = f"the enclosing block {parent!r}" if parent else "the layer after it"
    dims, kinds = ((3, 4), "(B, C, h, w) feature map or (B, N, C) token sequence") if model.is_token_model \
        else ((4,), "(B, C, h, w) feature map")
    if not captured:
        raise ValueError(f"layer {layer!r} does not output one {kinds} per forward pass: it never runs in the "
                         f"forward pass of {model.name!r}")
    if len(captured) != forwards:
        raise ValueError(
            f"layer {layer!r} of {model.name!r} runs {len(captured) / forwards:g} times per forward pass (a module "
            f"re-used within the forward, such as a block's shared ReLU), so its map would silently be that of "
            f"one call. Choose a layer that runs once, e.g. {instead}"
        )
    outputs = [out for out, _ in captured]
    if not all(isinstance(o, torch.Tensor) and o.dim() in dims for o in outputs):
        raise ValueError(f"layer {layer!r} does not output one {kinds} per forward pass")
    if any(out._version != version for out, version in captured):
        raise ValueError(
            f"the output of layer {layer!r} of {model.name!r} is modified in place later in the forward pass "
            f"(e.g. a residual added in place or an in-place ReLU), so its map would be that of the later result, "
            f"not of this layer. Choose {instead} or a layer whose output is not changed in place"
        )
    return outputs


def _activations_and_gradients(model: SSLModel, x1: torch.Tensor, x2: torch.Tensor, layer: str | None,
                               head: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``A1, A2, G1, G2, S`` from one forward of both images and one backward."""
    if head not in ("paper", "model"):
        raise ValueError(f"head must be 'paper' or 'model', got {head!r}")
    same_size = x1.shape == x2.shape
    # parameters are frozen for the pass; inputs that require grad keep the activations in the graph;
    # channels-last inputs give channels-last convolutions (the model's own weights are never converted)
    x1, x2 = (x.detach().contiguous(memory_format=torch.channels_last).requires_grad_(True) for x in (x1, x2))
    if layer is None:
        layer = model.default_cam_layer  # a class-token ViT: the last block's attention input
    with preserved_model_state(model, requires_grad=False), torch.enable_grad():
        if layer is None:
            embed_head = model.cam_head if (head == "paper" and model.cam_head is not None) else model.head
            batch = torch.cat([x1, x2]) if same_size else None
            if batch is not None:
                acts = model.run_trunk(model.normalize(batch))
                a1, a2 = acts.chunk(2)
            else:
                a1, a2 = model.run_trunk(model.normalize(x1)), model.run_trunk(model.normalize(x2))
            z1, z2 = embed_head(model.pool(a1)), embed_head(model.pool(a2))
            sims = cosine(z1, z2)
            g1, g2 = torch.autograd.grad(sims.sum(), [a1, a2])
            if model.is_token_model:  # mean-pooled ViT: the patch tokens of the trunk output
                a1, g1 = model.layer_map(a1, x1.shape[2:]), model.layer_map(g1, x1.shape[2:])
                a2, g2 = model.layer_map(a2, x2.shape[2:]), model.layer_map(g2, x2.shape[2:])
        else:
            module = model.get_layer(layer)
            def keep(out):  # the version counter reveals a later in-place change
                return out, out._version if isinstance(out, torch.Tensor) else 0

            with captured_outputs(module, keep) as captured:
                if same_size:
                    z1, z2 = model(torch.cat([x1, x2])).chunk(2)
                else:
                    z1 = model(x1)
                    z2 = model(x2)
            kinds = "(B, C, h, w) feature map" + (" or (B, N, C) token sequence" if model.is_token_model else "")
            outputs = _checked_layer_outputs(model, layer, captured, 1 if same_size else 2)
            sims = cosine(z1, z2)
            grads = torch.autograd.grad(sims.sum(), outputs)
            if same_size:
                (a1, a2), (g1, g2) = outputs[0].chunk(2), grads[0].chunk(2)
            else:
                (a1, a2), (g1, g2) = outputs, grads
            try:  # a token layer's patch tokens become the (B, C, h, w) patch grid
                a1, g1 = model.layer_map(a1, x1.shape[2:]), model.layer_map(g1, x1.shape[2:])
                a2, g2 = model.layer_map(a2, x2.shape[2:]), model.layer_map(g2, x2.shape[2:])
            except ValueError as error:
                raise ValueError(f"layer {layer!r} does not output a {kinds}: {error}") from error
    return a1.detach(), a2.detach(), g1.detach(), g2.detach(), sims.detach()


def _pool(a: torch.Tensor, pooling: str) -> torch.Tensor:
    if pooling == "mean":
        return a.mean(dim=(2, 3))
    if pooling == "max":
        return a.amax(dim=(2, 3))
    if pooling == "attention":
        flat = a.flatten(2)  # (B, C, P)
        query = flat.mean(2)  # GAP as the query
        weights = torch.softmax(torch.einsum("bc,bcp->bp", query, flat), dim=1)  # no 1/sqrt(D) scaling
        return torch.einsum("bp,bcp->bc", weights, flat)
    raise ValueError(f"unknown pooling {pooling!r}; choose one of {POOLINGS}")


def _interaction_gradients(g1: torch.Tensor, g2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if g1.shape != g2.shape:
        raise ValueError(
            f"gradient_interaction needs feature maps of equal size in both images, got {tuple(g1.shape)} and {tuple(g2.shape)}"
        )
    m = torch.einsum("bcp,bep->bce", g1.flatten(2), g2.flatten(2))  # G1^T G2 over matching positions
    return m.amax(dim=2)[:, :, None, None], m.amax(dim=1)[:, :, None, None]


def _cam(a: torch.Tensor, g: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    term = a * g.clamp(min=0)
    if weights is not None:
        term = term * weights[:, :, None, None]
    return term.sum(1)


def _variant_maps(a1, a2, g1, g2, pooling: str | None, gradient_interaction: bool):
    if pooling is None:
        return _cam(a1, g1), _cam(a2, g2)
    weights = _pool(a1, pooling) * _pool(a2, pooling)
    if gradient_interaction:
        g1, g2 = _interaction_gradients(g1, g2)
    return _cam(a1, g1, weights), _cam(a2, g2, weights)


def parse_cam_variant(name: str) -> tuple[str | None, bool]:
    """``"interaction-cam:max+gi"`` -> ``("max", True)``; ``"grad-cam"`` -> ``(None, False)``.

    The names are parsed by :func:`ssl_widgets.attr.spec.resolve` (the one parser of method names).

    Examples:
        >>> parse_cam_variant("interaction-cam:attention+gi")
        ('attention', True)
    """
    try:
        spec, settings = resolve(name)
    except ValueError:
        spec, settings = None, {}
    if spec is None or spec.cls not in (PairGradCAM, InteractionCAM):
        raise ValueError(f"unknown CAM variant {name!r}; choose one of {CAM_VARIANTS}")
    return settings.get("pooling"), bool(settings.get("gradient_interaction", False))


def cam_variants(model: SSLModel, inputs: tuple[torch.Tensor, torch.Tensor], variants: Iterable[str] = CAM_VARIANTS,
                 layer: str | None = None, head: str = "paper") -> dict[str, PairAttribution]:
    """Several CAM variants of the same pair from one forward and one backward pass.

    Args:
        model: the :class:`SSLModel`.
        inputs: ``(x1, x2)``.
        variants: names such as ``"grad-cam"``, ``"interaction-cam:max"``, ``"interaction-cam:max+gi"``.
        layer: trunk layer (dot path); ``None`` = the trunk's output (a class-token ViT: its
            ``default_cam_layer``, the last block's ``norm1``). A ViT token layer is read as its
            patch-token grid.
        head: ``"paper"`` uses the model's ``cam_head`` where it has one (SimSiam: the predictor
            alone, as the authors' code); ``"model"`` always uses the model's own head.

    Returns:
        ``{variant: PairAttribution}`` with maps at the layer's resolution.

    Examples:
        >>> maps = cam_variants(model, (x1, x2), ["grad-cam", "interaction-cam:max"])
    """
    check_model(model)
    check_autograd_available("grad-cam / interaction-cam")
    x1, x2 = (x.to(model.device) for x in check_pair(inputs, dtype=model.mean.dtype))
    parsed = {name: parse_cam_variant(name) for name in variants}
    a1, a2, g1, g2, sims = _activations_and_gradients(model, x1, x2, layer, head)
    results = {}
    for name, (pooling, gi) in parsed.items():
        maps = _variant_maps(a1, a2, g1, g2, pooling, gi)
        meta = {"method": name.split(":")[0], "variant": name,
                "layer": layer or model.default_cam_layer or "trunk output", "pooling": pooling,
                "gradient_interaction": gi, "head": head}
        results[name] = PairAttribution(maps, sims, meta)
    return results


class PairGradCAM(LayerPairMethod, LayerAttribution):
    """Grad-CAM adapted to a pair: ``CAM_k = sum_c A_k[c] * ReLU(dS/dA_k[c])`` (element-wise form).

    Args:
        model: the :class:`SSLModel`.
        layer: trunk layer name (see ``model.layer_names()``); ``None`` = the trunk's output.

    Examples:
        >>> m1, m2 = PairGradCAM(model).attribute((x1, x2))
    """

    method_name = "grad-cam"

    def attribute(self, inputs: tuple[torch.Tensor, torch.Tensor], head: str = "paper") -> PairAttribution:
        """CAMs of both images at the layer's resolution.

        Args:
            inputs: ``(x1, x2)``, each ``(B,3,H,W)``.
            head: ``"paper"`` (default) or ``"model"``, see :func:`cam_variants`.

        Returns:
            :class:`PairAttribution` with maps ``(B,h,w)``.
        """
        return cam_variants(self.model, inputs, ["grad-cam"], self.layer_name, head)["grad-cam"]


class InteractionCAM(LayerPairMethod, LayerAttribution):
    """Interaction-CAM: CAMs re-weighted by a channel weight shared by both images.

    ``w = P(A1) * P(A2)`` with ``P`` spatial mean, max, or self-attention pooling; with
    ``gradient_interaction`` the gradients become per-channel maxima of ``G1^T G2``.

    Examples:
        >>> m1, m2 = InteractionCAM(model).attribute((x1, x2), pooling="max")
    """

    method_name = "interaction-cam"

    def attribute(self, inputs: tuple[torch.Tensor, torch.Tensor], pooling: str = "mean",
                  gradient_interaction: bool = False, head: str = "paper") -> PairAttribution:
        """Interaction-CAMs of both images.

        Args:
            inputs: ``(x1, x2)``.
            pooling: ``"mean"``, ``"max"`` or ``"attention"`` (self-attention pooling per image).
            gradient_interaction: use the paper's IntGradMax gradient term (needs equal map sizes).
            head: ``"paper"`` or ``"model"``, see :func:`cam_variants`.

        Returns:
            :class:`PairAttribution` with maps ``(B,h,w)``.
        """
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; choose one of {POOLINGS}")
        name = f"interaction-cam:{pooling}" + ("+gi" if gradient_interaction else "")
        return cam_variants(self.model, inputs, [name], self.layer_name, head)[name]


#: the method records (see :mod:`ssl_widgets.attr.spec`)
SPEC = (
    MethodSpec("grad-cam", PairGradCAM, summary="Grad-CAM of the similarity at a layer", layer="constructor",
               order=40),
    MethodSpec("interaction-cam", InteractionCAM, summary="CAMs re-weighted by a channel weight shared by both images",
               variants=CAM_VARIANTS[1:], layer="constructor", order=50,
               options={**{p: ("pooling", p) for p in POOLINGS}, "gi": ("gradient_interaction", True)},
               fixed={"pooling": "mean", "gradient_interaction": False},
               aliases={"interaction-cam+gi": "interaction-cam:mean+gi"}),
)
