"""Input x Gradient and SmoothGrad for a pair (the paper's gradient baselines), and their shared core.

Gradients are taken in the model's input space (after normalisation), as the paper's code does,
and maps are ``max_c |x * g|``; ``guided=True`` rectifies gradients at every ReLU; ``blur=True``
smooths each map with an 11x11 Gaussian of sigma 5.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from captum.attr import GradientAttribution

from .._validation import check_autograd_available, check_number
from ..core import MAP_BLUR_KERNEL, MAP_BLUR_SIGMA, gaussian_blur
from ..models.wrapper import SSLModel
from .base import PairMethod
from .spec import MethodSpec
from .engine import PairAttribution, check_count, chunks, cosine, eval_similarity, guided_relus, preserved_model_state

__all__ = ["PairInputXGradient", "PairSmoothGrad", "input_times_gradient_map", "blur_maps"]


def blur_maps(maps: torch.Tensor) -> torch.Tensor:
    """The paper's map smoothing: Gaussian 11x11, sigma 5, on each ``(h, w)`` map of ``(B,h,w)``."""
    return gaussian_blur(maps[:, None], MAP_BLUR_KERNEL, MAP_BLUR_SIGMA)[:, 0]


def input_times_gradient_map(x_n: torch.Tensor, grad: torch.Tensor, blur: bool = False) -> torch.Tensor:
    """``max_c |x_n * grad|`` per pixel, ``(B,H,W)``, optionally blurred."""
    maps = (x_n * grad).abs().amax(dim=1)
    return blur_maps(maps) if blur else maps


def pair_gradients(model: SSLModel, x1_n: torch.Tensor, x2_n: torch.Tensor,
                   guided: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``dS/dx1_n, dS/dx2_n, S`` for ``S_b = cos(f(x1_n[b]), f(x2_n[b]))`` in input space (one backward)."""
    check_autograd_available("a gradient method")
    with preserved_model_state(model, requires_grad=False), guided_relus(model, guided), torch.enable_grad():
        a = x1_n.detach().contiguous(memory_format=torch.channels_last).requires_grad_(True)
        b = x2_n.detach().contiguous(memory_format=torch.channels_last).requires_grad_(True)
        sims = cosine(model.forward_normalized(a), model.forward_normalized(b))
        g1, g2 = torch.autograd.grad(sims.sum(), [a, b])
    return g1, g2, sims.detach()


class PairInputXGradient(PairMethod, GradientAttribution):
    """Input x Gradient of the pair similarity: ``map_k = max_c |x_k * dS/dx_k|``.

    Examples:
        >>> m1, m2 = PairInputXGradient(model).attribute((x1, x2), guided=True)
    """

    method_name = "input-x-gradient"

    def attribute(self, inputs: tuple[torch.Tensor, torch.Tensor], guided: bool = False,
                  blur: bool = False) -> PairAttribution:
        """Maps of both images at input size.

        Args:
            inputs: ``(x1, x2)``, each ``(B,3,H,W)``.
            guided: guided back-propagation through every ReLU.
            blur: smooth the maps (Gaussian 11x11, sigma 5).

        Returns:
            :class:`PairAttribution` with maps ``(B,H,W)``.
        """
        check_autograd_available(self.method_name)
        x1, x2 = self._inputs(inputs)
        x1_n, x2_n = self.model.normalize(x1), self.model.normalize(x2)
        g1, g2, sims = pair_gradients(self.model, x1_n, x2_n, guided)
        maps = (input_times_gradient_map(x1_n, g1, blur), input_times_gradient_map(x2_n, g2, blur))
        return self._result(maps, sims, guided=guided, blur=blur)


class PairSmoothGrad(PairMethod, GradientAttribution):
    """SmoothGrad of the pair similarity, batched.

    As the paper's code: each sample adds the *same* noise ``eps ~ N(0, sigma^2)`` to both images
    (in input space) with ``sigma = stdev / (max(x1) - min(x1))`` (a division, unlike SmoothGrad's
    usual ``stdev * range``); gradients are averaged and multiplied by the clean images.
    ``shared_noise=False`` draws independent noise per image; ``sigma_from_range="multiply"`` uses
    the usual SmoothGrad convention.
    """

    method_name = "smoothgrad"

    def attribute(self, inputs: tuple[torch.Tensor, torch.Tensor], n_samples: int = 50, stdev: float = 0.15,
                  guided: bool = False, blur: bool = False, generator: torch.Generator | None = None,
                  perturbations_per_eval: int = 8, shared_noise: bool = True,
                  sigma_from_range: str = "divide", on_progress: Callable[[int, int], None] | None = None,
                  on_partial: Callable[[PairAttribution], None] | None = None) -> PairAttribution:
        """Smoothed Input x Gradient maps of both images.

        Args:
            inputs: ``(x1, x2)`` of equal shape when ``shared_noise``.
            n_samples: noise samples.
            stdev: noise level (see the class docstring for how sigma is derived).
            guided: as :class:`PairInputXGradient`.
            blur: as :class:`PairInputXGradient`.
            generator: seeds the noise (drawn on the CPU, so results match across devices).
            perturbations_per_eval: noisy pairs per forward/backward pass.
            shared_noise: the paper's same-noise-for-both-images behaviour.
            sigma_from_range: ``"divide"`` (paper) or ``"multiply"`` (SmoothGrad's convention).
            on_progress: called ``(done, total)`` after each batch of samples; raising from it (e.g.
                :class:`~ssl_widgets.attr.engine.Cancelled`) stops the call.
            on_partial: called after each batch of samples but the last with the running mean so far: the
                maps of the pairs done and of the current pair (later pairs' maps are zeros), ``.meta``
                ``"samples_done"`` (of the current pair) and ``"partial"`` (e.g. ``"8 of 32 samples"``).
                The result does not depend on it.

        Returns:
            :class:`PairAttribution` with maps ``(B,H,W)``.
        """
        check_autograd_available(self.method_name)
        check_count(n_samples, "n_samples")
        check_count(perturbations_per_eval, "perturbations_per_eval")
        check_number(stdev, "stdev", minimum=0)
        if sigma_from_range not in ("divide", "multiply"):
            raise ValueError("sigma_from_range must be 'divide' or 'multiply'")
        x1, x2 = self._inputs(inputs)
        if shared_noise and x1.shape != x2.shape:
            raise ValueError("shared_noise needs x1 and x2 of the same shape")
        if on_partial is not None and not callable(on_partial):
            raise TypeError(f"on_partial must be callable, got {type(on_partial).__name__}")
        x1_n, x2_n = self.model.normalize(x1), self.model.normalize(x2)
        maps1, maps2, sims = [], [], []
        settings = dict(n_samples=n_samples, stdev=stdev, guided=guided, blur=blur, shared_noise=shared_noise,
                        sigma_from_range=sigma_from_range)
        parts = list(chunks(n_samples, perturbations_per_eval))
        with self._progress(x1.shape[0] * len(parts), False, on_progress=on_progress) as bar:
            for b in range(x1.shape[0]):
                a, c = x1_n[b:b + 1], x2_n[b:b + 1]
                spread = float(a.max() - a.min())
                sigma = stdev / spread if sigma_from_range == "divide" else stdev * spread
                grad1, grad2 = torch.zeros_like(a), torch.zeros_like(c)
                sims.append(eval_similarity(self.model, a, c))
                for part in parts:
                    n = part.stop - part.start
                    # one draw per sample, so the noise does not depend on perturbations_per_eval
                    noise1 = torch.cat([torch.randn(a.shape, generator=generator) for _ in range(n)]).to(a) * sigma
                    noise2 = noise1 if shared_noise else torch.cat(
                        [torch.randn(c.shape, generator=generator) for _ in range(n)]).to(c) * sigma
                    g1, g2, _ = pair_gradients(self.model, a + noise1, c + noise2, guided)
                    grad1 += g1.sum(0, keepdim=True)
                    grad2 += g2.sum(0, keepdim=True)
                    bar.update(1)
                    if on_partial is not None and part.stop < n_samples:
                        running = (input_times_gradient_map(a, grad1 / part.stop, blur),
                                   input_times_gradient_map(c, grad2 / part.stop, blur))
                        on_partial(self._result(
                            [torch.cat(done + [m] + [torch.zeros_like(m)] * (x1.shape[0] - b - 1))
                             for done, m in zip((maps1, maps2), running)],
                            torch.cat(sims + [torch.zeros(x1.shape[0] - b - 1).to(sims[0])]),
                            **settings, samples_done=part.stop, partial=f"{part.stop} of {n_samples} samples"))
                maps1.append(input_times_gradient_map(a, grad1 / n_samples, blur))
                maps2.append(input_times_gradient_map(c, grad2 / n_samples, blur))
        return self._result((torch.cat(maps1), torch.cat(maps2)), torch.cat(sims), **settings)


#: the method records (see :mod:`ssl_widgets.attr.spec`)
SPEC = (
    MethodSpec("input-x-gradient", PairInputXGradient, summary="input x gradient of the similarity",
               variants=("input-x-gradient", "input-x-gradient:guided"), options={"guided": ("guided", True)},
               order=70),
    MethodSpec("smoothgrad", PairSmoothGrad, summary="input x gradient averaged over noisy copies",
               variants=("smoothgrad", "smoothgrad:guided"), options={"guided": ("guided", True)}, slow=True,
               seeded=True, order=80, quick={"n_samples": 2}),
)
