"""Principal components of patch features shown as RGB, fitted over both images of a pair."""
from __future__ import annotations

import torch
from captum.attr import Attribution

from .base import PairMethod
from .spec import MethodSpec
from .engine import PairAttribution, cosine

__all__ = ["PatchFeaturePCA", "joint_pca"]


def joint_pca(features: list[torch.Tensor], n_components: int = 3) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Project the rows of several ``(P_i, C)`` feature sets on their joint principal components.

    The components are fitted on all rows together (centred by their joint mean), each sign chosen
    so that the component's largest loading is positive, and each component min-max scaled to
    ``[0, 1]`` over all rows, so values are comparable across the sets.

    Returns:
        ``([(P_i, n_components)], explained_variance_ratio)``.

    Examples:
        >>> f = torch.tensor([[0.0, 0.0], [2.0, 0.0], [4.0, 0.0]])
        >>> joint_pca([f[:2], f[2:]], n_components=1)[0]
        [tensor([[0.0000],
                [0.5000]]), tensor([[1.]])]
    """
    rows = torch.cat(features).double()
    centred = rows - rows.mean(0, keepdim=True)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    k = min(n_components, vh.shape[0])
    comps = vh[:k]
    signs = torch.sign(comps.gather(1, comps.abs().argmax(1, keepdim=True)))
    comps = comps * signs
    proj = centred @ comps.T
    low, high = proj.amin(0, keepdim=True), proj.amax(0, keepdim=True)
    proj = (proj - low) / (high - low).clamp(min=1e-12)
    if k < n_components:  # fewer features than components: pad with zeros
        proj = torch.cat([proj, proj.new_zeros(proj.shape[0], n_components - k)], dim=1)
    var = s.pow(2)
    ratio = var[:k] / var.sum().clamp(min=1e-12)
    return [p.float() for p in proj.split([f.shape[0] for f in features])], ratio.float()


class PatchFeaturePCA(PairMethod, Attribution):
    """The first principal components of a layer's patch features, as RGB images of the patch grid.

    The PCA is fitted over the patch features of *both* images of each pair, so equal colours mean
    similar features in the two images (the corresponding parts light up alike). Works on any
    model with a spatial map (ViT patch tokens, or a CNN's feature map).

    Result type: a :class:`PairAttribution` whose two maps are **RGB images** ``(B, 3, h, w)`` in
    ``[0, 1]`` (component ``k`` in channel ``k``), not ``(B, h, w)`` heat maps; ``.meta`` holds the
    explained variance ratios.

    Examples:
        >>> from ssl_widgets.models import SSLModel
        >>> model = SSLModel.from_timm("vit_tiny_patch16_224", depth=2)
        >>> rgb1, rgb2 = PatchFeaturePCA(model).attribute((torch.rand(1, 3, 32, 32), torch.rand(1, 3, 48, 32)))
        >>> rgb1.shape, rgb2.shape
        (torch.Size([1, 3, 2, 2]), torch.Size([1, 3, 3, 2]))
    """

    method_name = "feature-pca"

    def _features(self, x: torch.Tensor, layer: str | None) -> torch.Tensor:
        if layer is None:
            return self.model.features(x)
        captured: list[torch.Tensor] = []
        handle = self.model.get_layer(layer).register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            self.model(x)
        finally:
            handle.remove()
        return self.model.layer_map(captured[-1], x.shape[2:])

    def attribute(self, inputs: tuple[torch.Tensor, torch.Tensor], layer: str | None = None,
                  n_components: int = 3) -> PairAttribution:
        """RGB maps of both images.

        Args:
            inputs: ``(x1, x2)``.
            layer: layer whose patch features are used (``None`` = the trunk output's patch tokens).
            n_components: components kept (3 for RGB).

        Returns:
            :class:`PairAttribution` with maps ``(B, n_components, h, w)`` in ``[0, 1]``.
        """
        if n_components < 1:
            raise ValueError(f"n_components must be >= 1, got {n_components}")
        x1, x2 = self._inputs(inputs, convert=False)
        with self._preserved(), torch.no_grad():
            f1, f2 = self._features(x1, layer), self._features(x2, layer)
            sims = cosine(self.model(x1), self.model(x2))
        maps1, maps2, ratios = [], [], []
        for b in range(f1.shape[0]):
            rows = [f.flatten(2)[b].T for f in (f1, f2)]
            (p1, p2), ratio = joint_pca(rows, n_components)
            maps1.append(p1.T.reshape(n_components, *f1.shape[2:]))
            maps2.append(p2.T.reshape(n_components, *f2.shape[2:]))
            ratios.append([round(v, 3) for v in ratio.tolist()])
        return self._result((torch.stack(maps1), torch.stack(maps2)), sims, layer=layer or "trunk output",
                            n_components=n_components, explained_variance_ratio=ratios)


#: the method record (see :mod:`ssl_widgets.attr.spec`): RGB maps of a layer's patch features
SPEC = MethodSpec("feature-pca", PatchFeaturePCA, kind="view", summary="principal components of patch features "
                  "as RGB", layer="setting", order=420)
