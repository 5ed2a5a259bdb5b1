"""Averaged Transforms (Sammani et al. 2022): gradients averaged along a photometric path."""
from __future__ import annotations

import torch
from captum.attr import GradientAttribution

from .._validation import check_autograd_available, check_number
from .base import PairMethod
from .spec import MethodSpec
from .engine import PairAttribution, cosine, eval_similarity, guided_relus
from .gradients import input_times_gradient_map

__all__ = ["AveragedTransforms", "path_coefficients"]


def path_coefficients(steps: int) -> list[float]:
    """``l = 1.0, 1 - 1/steps, ..., 1/steps``: the paper's path never reaches 0.

    Examples:
        >>> path_coefficients(4)
        [1.0, 0.75, 0.5, 0.25]
    """
    if steps < 2:
        raise ValueError(f"steps must be >= 2, got {steps}")
    return [1.0 - m / steps for m in range(steps)]


class AveragedTransforms(PairMethod, GradientAttribution):
    """Averaged Transforms: gradients of ``cos(f(x), f(x^l))`` along ``x^l = l*x + (1-l)*x_t``.

    For each path point after the first, ``S_m = cos(f(x^1), f(x^{l_m}))``; ``g1`` is the mean of
    ``dS_m/dx^1`` and ``g2`` the mean of ``dS_m/dx^{l_m}``; map 1 is ``max_c |x^1 * g1|`` and map 2
    is ``max_c |x^{l_last} * g2|`` (the paper's choice: gradients of every path point times the
    last one). All path points go through the model in one batched forward and one backward.
    ``noise=True`` adds Gaussian noise of sigma ``0.15 / (max(x) - min(x))`` to the interior points.

    Examples:
        >>> x1, x2 = ssl_widgets.make_pair("chelsea", "combine", 112)
        >>> m1, m2 = AveragedTransforms(model).attribute((x1, x2), guided=True)
    """

    method_name = "averaged-transforms"

    def attribute(self, inputs: tuple[torch.Tensor, torch.Tensor], steps: int = 10, guided: bool = False,
                  noise: bool = False, blur: bool = False, generator: torch.Generator | None = None,
                  noise_stdev: float = 0.15) -> PairAttribution:
        """Maps for ``x`` and for the last path point.

        Args:
            inputs: ``(x, x_t)``: an image and a photometric transform of it (same geometry and shape).
            steps: path points (10 gives l = 1.0, 0.9, ..., 0.1).
            guided: guided back-propagation through every ReLU.
            noise: noise on the interior path points (the "(N)" variants).
            blur: smooth the maps (Gaussian 11x11, sigma 5).
            generator: seeds the noise.
            noise_stdev: the 0.15 of the noise sigma.

        Returns:
            :class:`PairAttribution` with maps ``(B,H,W)``; ``.similarity`` is ``cos(f(x), f(x_t))``.
        """
        check_autograd_available(self.method_name)
        check_number(noise_stdev, "noise_stdev", minimum=0)
        x, x_t = self._inputs(inputs, ("x", "x_t"))
        if x.shape != x_t.shape:
            raise ValueError(f"x and x_t must have the same shape (a photometric transform), got {tuple(x.shape)} "
                             f"and {tuple(x_t.shape)}")
        coeffs = path_coefficients(steps)
        model = self.model
        x_n, t_n = model.normalize(x), model.normalize(x_t)
        batch, rest = x.shape[0], x.shape[1:]
        lam = torch.tensor(coeffs[1:], device=x.device, dtype=x.dtype).view(1, -1, 1, 1, 1)
        path = lam * x_n[:, None] + (1 - lam) * t_n[:, None]  # (B, steps-1, C, H, W)
        if noise:
            spread = (x_n.flatten(1).amax(1) - x_n.flatten(1).amin(1)).view(-1, 1, 1, 1, 1)
            eps = torch.randn(path.shape, generator=generator).to(path) * (noise_stdev / spread)
            eps[:, -1] = 0  # the last point stays clean; the first (x itself) is not in `path`
            path = path + eps
        with self._preserved(), guided_relus(model, guided), torch.enable_grad():
            start = x_n.detach().contiguous(memory_format=torch.channels_last).requires_grad_(True)
            points = path.reshape(-1, *rest).detach().contiguous(memory_format=torch.channels_last).requires_grad_(True)
            z = model.forward_normalized(torch.cat([start, points]))
            z0, zp = z[:batch], z[batch:].view(batch, steps - 1, -1)
            sims = cosine(z0[:, None].expand_as(zp), zp)  # (B, steps-1)
            g_start, g_points = torch.autograd.grad(sims.sum(), [start, points])
        g1 = g_start / (steps - 1)
        g2 = g_points.view(batch, steps - 1, *rest).mean(1)
        last = path[:, -1]
        maps = (input_times_gradient_map(x_n, g1, blur), input_times_gradient_map(last, g2, blur))
        similarity = eval_similarity(model, x_n, t_n)
        return self._result(maps, similarity, steps=steps, guided=guided, noise=noise, blur=blur)


#: the method record (see :mod:`ssl_widgets.attr.spec`): the second view is a photometric transform
SPEC = MethodSpec("averaged-transforms", AveragedTransforms, summary="gradients averaged along a photometric path",
                  variants=("averaged-transforms", "averaged-transforms:guided", "averaged-transforms:noise",
                            "averaged-transforms:guided+noise"),
                  options={"guided": ("guided", True), "noise": ("noise", True)}, seeded=True,
                  view_transform="combine", order=60, quick={"steps": 3})
