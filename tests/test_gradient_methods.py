"""CAMs, Input x Gradient, SmoothGrad, Averaged Transforms, guided back-propagation."""
import pytest
import torch
import torch.nn.functional as F
from helpers import TwoLayer, arange_image, cos, mean_color_model, small_resnet

from ssl_widgets.attr import (
    AveragedTransforms,
    InteractionCAM,
    PairGradCAM,
    PairInputXGradient,
    PairSmoothGrad,
    cam_variants,
    guided_relus,
)
from ssl_widgets.models import SSLModel

# saved at import, before any guided method ran: guided backprop must never replace them (process-wide)
ORIGINAL_F_RELU = F.relu
ORIGINAL_TORCH_RELU = torch.relu


def assert_relus_restored(model):
    assert F.relu is ORIGINAL_F_RELU and torch.nn.functional.relu is ORIGINAL_F_RELU
    assert torch.relu is ORIGINAL_TORCH_RELU
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_grad_cam_by_hand():
    """Identity trunk, no head: z = mean(A), so dS/dA = (dS/dz) / (h*w) at every position."""
    model = mean_color_model()
    x1, x2 = arange_image(1, 2, 2), arange_image(1, 2, 2, offset=4)
    z1, z2 = x1.mean((2, 3))[0], x2.mean((2, 3))[0]
    n1, n2 = z1.norm(), z2.norm()
    s = (z1 @ z2) / (n1 * n2)
    d1 = z2 / (n1 * n2) - s * z1 / n1 ** 2  # dS/dz1
    d2 = z1 / (n1 * n2) - s * z2 / n2 ** 2
    expected1 = (x1[0] * (d1 / 4).clamp(min=0).view(3, 1, 1)).sum(0)
    expected2 = (x2[0] * (d2 / 4).clamp(min=0).view(3, 1, 1)).sum(0)
    result = PairGradCAM(model).attribute((x1, x2))
    torch.testing.assert_close(result[0][0], expected1)
    torch.testing.assert_close(result[1][0], expected2)
    assert float(result.similarity) == pytest.approx(float(s), rel=1e-6)


def slow_cams(model, x1, x2):
    """Section 3 as plain code: one pass per variant, pooling by explicit loops over positions."""
    out = {}
    for name in ["grad-cam", "interaction-cam", "interaction-cam:max", "interaction-cam:attention",
                 "interaction-cam:max+gi", "interaction-cam:attention+gi"]:
        a1 = model.trunk(model.normalize(x1)).detach().requires_grad_(True)
        a2 = model.trunk(model.normalize(x2)).detach().requires_grad_(True)
        s = cos(model.head(a1.mean((2, 3))), model.head(a2.mean((2, 3))))
        g1, g2 = torch.autograd.grad(s.sum(), [a1, a2])
        A1, A2, G1, G2 = a1[0].detach(), a2[0].detach(), g1[0], g2[0]
        c, h, w = A1.shape
        if name == "grad-cam":
            weights = torch.ones(c)
        else:
            pooling = name.split(":")[1].split("+")[0] if ":" in name else "mean"

            def pool(a, h=h, w=w, pooling=pooling):
                positions = [a[:, i, j] for i in range(h) for j in range(w)]
                if pooling == "mean":
                    return sum(positions) / len(positions)
                if pooling == "max":
                    return torch.stack(positions).max(0).values
                q = sum(positions) / len(positions)
                scores = torch.softmax(torch.stack([q @ p for p in positions]), 0)
                return sum(sc * p for sc, p in zip(scores, positions))

            weights = pool(A1) * pool(A2)
            if name.endswith("+gi"):
                m = torch.zeros(c, c)
                for i in range(h):
                    for j in range(w):
                        m += torch.outer(G1[:, i, j], G2[:, i, j])
                G1 = m.max(1).values.view(c, 1, 1).expand(c, h, w)
                G2 = m.max(0).values.view(c, 1, 1).expand(c, h, w)
        out[name] = [sum(weights[k] * A[k] * G[k].clamp(min=0) for k in range(c)) for A, G in ((A1, G1), (A2, G2))]
    return out


def test_all_cam_variants_match_slow_code_and_share_one_pass():
    model = small_resnet(maxpool=False)
    x1, x2 = arange_image(1, 64, 64), arange_image(1, 64, 64, offset=3)
    calls = []
    handle = model.trunk.register_forward_hook(lambda *_: calls.append(1))
    fast = cam_variants(model, (x1, x2), ["grad-cam", "interaction-cam", "interaction-cam:max", "interaction-cam:attention",
                                          "interaction-cam:max+gi", "interaction-cam:attention+gi"])
    handle.remove()
    assert len(calls) == 1  # one forward of the concatenated pair for every variant
    expected = slow_cams(model, x1, x2)
    for name, maps in expected.items():
        torch.testing.assert_close(fast[name][0][0], maps[0], atol=1e-7, rtol=1e-4, msg=name)
        torch.testing.assert_close(fast[name][1][0], maps[1], atol=1e-7, rtol=1e-4, msg=name)
    direct = InteractionCAM(model).attribute((x1, x2), pooling="attention", gradient_interaction=True)
    torch.testing.assert_close(direct[0], fast["interaction-cam:attention+gi"][0])


def test_cam_at_a_named_layer_and_bad_layers():
    model = small_resnet(maxpool=False)
    x1, x2 = arange_image(1, 64, 64), arange_image(1, 64, 64, offset=3)
    maps = PairGradCAM(model, "layer3").attribute((x1, x2))
    assert maps[0].shape == (1, 8, 8)  # stride 8 without the max-pool
    assert torch.isfinite(maps[0]).all() and float(maps[0].abs().sum()) > 0
    with pytest.raises(ValueError, match="unknown layer 'layer7'"):
        PairGradCAM(model, "layer7")
    with pytest.raises(ValueError, match="unknown pooling 'median'"):
        InteractionCAM(model).attribute((x1, x2), pooling="median")


def test_gradient_interaction_needs_equal_grids():
    model = small_resnet(maxpool=False)
    x1, x2 = arange_image(1, 64, 64), arange_image(1, 32, 32)
    with pytest.raises(ValueError, match="equal size"):
        InteractionCAM(model).attribute((x1, x2), gradient_interaction=True)
    assert InteractionCAM(model).attribute((x1, x2))[1].shape == (1, 2, 2)


def test_simsiam_style_cam_head():
    model = small_resnet(maxpool=False)
    model.cam_head = model.head[:1]  # a stand-in for "predictor only"
    x1, x2 = arange_image(1, 64, 64), arange_image(1, 64, 64, offset=3)
    paper = PairGradCAM(model).attribute((x1, x2))
    full = PairGradCAM(model).attribute((x1, x2), head="model")
    assert not torch.allclose(paper[0], full[0])
    torch.testing.assert_close(full.similarity, model.similarity(x1, x2).detach())


@pytest.mark.parametrize("functional", [False, True])
def test_guided_backprop_rectifies_every_relu(functional):
    trunk = TwoLayer(functional)
    model = SSLModel(trunk, None, input_size=2).eval()
    x1, x2 = arange_image(1, 2, 2), arange_image(1, 2, 2, offset=8)
    w1 = trunk.conv1.weight.view(3, 3)
    w2 = trunk.conv2.weight.view(2, 3)

    def by_hand(x, other, guided):
        # z = relu(W2 relu(W1 x)) + 0.1 per pixel, embedding = mean over the 4 pixels
        pixels = x[0].reshape(3, 4)
        hidden = w1 @ pixels
        h = hidden.clamp(min=0)
        out = w2 @ h
        z = out.clamp(min=0).mean(1) + 0.1
        zo = other
        s = (z @ zo) / (z.norm() * zo.norm())
        dz = zo / (z.norm() * zo.norm()) - s * z / z.norm() ** 2
        g_out = dz.view(2, 1).expand(2, 4) / 4
        g_out = (g_out.clamp(min=0) if guided else g_out) * (out > 0)
        g_h = w2.t() @ g_out
        g_h = (g_h.clamp(min=0) if guided else g_h) * (hidden > 0)
        g_x = (w1.t() @ g_h).view(1, 3, 2, 2)
        return (x * g_x).abs().amax(1)

    z2 = model(x2)[0].detach()
    z1 = model(x1)[0].detach()
    for guided in (False, True):
        result = PairInputXGradient(model).attribute((x1, x2), guided=guided)
        torch.testing.assert_close(result[0], by_hand(x1, z2, guided), atol=1e-7, rtol=1e-5)
        torch.testing.assert_close(result[1], by_hand(x2, z1, guided), atol=1e-7, rtol=1e-5)
        # the swap is undone after each call: F.relu, torch.relu and the modules' forward are the originals
        assert_relus_restored(model)


class Boom(torch.nn.Module):
    def forward(self, x):
        raise RuntimeError("boom inside the model")


@pytest.mark.parametrize("cls", [PairInputXGradient, PairSmoothGrad, AveragedTransforms])
def test_guided_methods_restore_the_relus_after_success_and_after_raising(cls):
    trunk = TwoLayer(functional=True)
    model = SSLModel(trunk, None, input_size=2).eval()
    x1, x2 = arange_image(1, 2, 2), arange_image(1, 2, 2, offset=8)
    plain = PairInputXGradient(model).attribute((x1, x2))
    kwargs = {"n_samples": 2} if cls is PairSmoothGrad else {}
    cls(model).attribute((x1, x2), guided=True, **kwargs)
    assert_relus_restored(model)
    # a leak would make this later plain gradient guided
    torch.testing.assert_close(PairInputXGradient(model).attribute((x1, x2))[0], plain[0])
    model.head = torch.nn.Sequential(Boom())
    with pytest.raises(RuntimeError, match="boom inside the model"):
        cls(model).attribute((x1, x2), guided=True, **kwargs)
    assert_relus_restored(model)


def guided_gradient_of_relu() -> float:
    """The gradient of ``-relu(x)`` at ``x = 1``: -1 plain, 0 guided (a negative gradient is stopped)."""
    x = torch.ones(1, requires_grad=True)
    (grad,) = torch.autograd.grad(-torch.relu(x).sum(), [x])
    return float(grad)


def test_guided_relus_restores_on_error_and_patches_nothing_process_wide():
    model = small_resnet()
    with pytest.raises(RuntimeError, match="boom"), guided_relus(model):
        assert guided_gradient_of_relu() == 0.0  # guided in this thread
        assert F.relu is ORIGINAL_F_RELU and torch.relu is ORIGINAL_TORCH_RELU  # nothing swapped
        raise RuntimeError("boom")
    assert_relus_restored(model)
    assert guided_gradient_of_relu() == -1.0


def test_input_x_gradient_in_input_space_and_blur():
    model = small_resnet()
    x1, x2 = arange_image(1, 32, 32), arange_image(1, 32, 32, offset=5)
    a = model.normalize(x1).detach().requires_grad_(True)
    b = model.normalize(x2).detach().requires_grad_(True)
    s = cos(model.forward_normalized(a), model.forward_normalized(b))
    g1, g2 = torch.autograd.grad(s.sum(), [a, b])
    result = PairInputXGradient(model).attribute((x1, x2))
    torch.testing.assert_close(result[0], (a * g1).abs().amax(1).detach(), atol=1e-8, rtol=1e-4)
    torch.testing.assert_close(result[1], (b * g2).abs().amax(1).detach(), atol=1e-8, rtol=1e-4)
    blurred = PairInputXGradient(model).attribute((x1, x2), blur=True)
    for k in range(2):
        torch.testing.assert_close(blurred[k], gaussian_11x11_sigma5(result[k]), atol=1e-8, rtol=1e-4)


def gaussian_11x11_sigma5(maps):
    """The paper's map smoothing written out: a 2-D 11x11 Gaussian (sigma 5) after reflect padding of 5."""
    offsets = torch.arange(-5, 6, dtype=maps.dtype)
    kernel = torch.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * 5.0 ** 2))
    padded = F.pad(maps[:, None], (5, 5, 5, 5), mode="reflect")
    return F.conv2d(padded, (kernel / kernel.sum())[None, None])[:, 0]


def test_blurred_maps_are_the_papers_gaussian():
    """blur=True of every gradient method: the reference above, which turns a pixel into the 11x11 Gaussian."""
    point = torch.zeros(1, 20, 20)
    point[0, 9, 10] = 1.0
    offsets = torch.arange(-5, 6, dtype=torch.float32)
    kernel = torch.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / 50.0)
    torch.testing.assert_close(gaussian_11x11_sigma5(point)[0, 4:15, 5:16], kernel / kernel.sum(), atol=1e-7, rtol=1e-5)
    model = small_resnet()
    x1, x2 = arange_image(1, 32, 32), arange_image(1, 32, 32, offset=5)
    kwargs = {"n_samples": 2, "generator": torch.Generator().manual_seed(0)}
    plain = PairSmoothGrad(model).attribute((x1, x2), **kwargs)
    kwargs["generator"] = torch.Generator().manual_seed(0)
    blurred = PairSmoothGrad(model).attribute((x1, x2), blur=True, **kwargs)
    torch.testing.assert_close(blurred[1], gaussian_11x11_sigma5(plain[1]), atol=1e-8, rtol=1e-4)
    x_t = (x1 * 0.5 + 0.3).clamp(0, 1)
    plain = AveragedTransforms(model).attribute((x1, x_t), steps=3)
    blurred = AveragedTransforms(model).attribute((x1, x_t), steps=3, blur=True)
    torch.testing.assert_close(blurred[0], gaussian_11x11_sigma5(plain[0]), atol=1e-8, rtol=1e-4)


def test_smoothgrad_matches_slow_loop():
    model = small_resnet()
    x1, x2 = arange_image(1, 32, 32), arange_image(1, 32, 32, offset=5)
    x1_n, x2_n = model.normalize(x1), model.normalize(x2)
    sigma = 0.15 / float(x1_n.max() - x1_n.min())
    g = torch.Generator().manual_seed(4)
    total1, total2 = torch.zeros_like(x1_n), torch.zeros_like(x2_n)
    for _ in range(6):
        eps = torch.randn(x1_n.shape, generator=g) * sigma
        a, b = (x1_n + eps).requires_grad_(True), (x2_n + eps).requires_grad_(True)
        s = cos(model.forward_normalized(a), model.forward_normalized(b))
        d1, d2 = torch.autograd.grad(s.sum(), [a, b])
        total1, total2 = total1 + d1, total2 + d2
    expected = ((x1_n * total1 / 6).abs().amax(1), (x2_n * total2 / 6).abs().amax(1))
    for per_eval in (1, 4):
        result = PairSmoothGrad(model).attribute((x1, x2), n_samples=6, generator=torch.Generator().manual_seed(4),
                                                 perturbations_per_eval=per_eval)
        torch.testing.assert_close(result[0], expected[0].detach(), atol=1e-8, rtol=1e-4)
        torch.testing.assert_close(result[1], expected[1].detach(), atol=1e-8, rtol=1e-4)


@pytest.mark.parametrize("shared_noise, sigma_from_range", [(False, "divide"), (True, "multiply"), (False, "multiply")])
def test_smoothgrad_options_match_slow_loop(shared_noise, sigma_from_range):
    """shared_noise=False: each image gets its own draws (all of image 1's, then image 2's, per batch of samples);
    sigma_from_range="multiply": sigma = stdev * (max - min) of the normalised image instead of stdev / (max - min)."""
    model = small_resnet()
    x1, x2 = arange_image(1, 16, 16), arange_image(1, 16, 16, offset=5)
    x1_n, x2_n = model.normalize(x1), model.normalize(x2)
    spread = float(x1_n.max() - x1_n.min())  # sigma comes from image 1's range, for both images' noise
    sigma = 0.3 * spread if sigma_from_range == "multiply" else 0.3 / spread
    g = torch.Generator().manual_seed(2)
    noise1 = [torch.randn(x1_n.shape, generator=g) * sigma for _ in range(4)]
    noise2 = noise1 if shared_noise else [torch.randn(x2_n.shape, generator=g) * sigma for _ in range(4)]
    total1, total2 = torch.zeros_like(x1_n), torch.zeros_like(x2_n)
    for e1, e2 in zip(noise1, noise2):
        a, b = (x1_n + e1).requires_grad_(True), (x2_n + e2).requires_grad_(True)
        d1, d2 = torch.autograd.grad(cos(model.forward_normalized(a), model.forward_normalized(b)).sum(), [a, b])
        total1, total2 = total1 + d1, total2 + d2
    result = PairSmoothGrad(model).attribute((x1, x2), n_samples=4, stdev=0.3, perturbations_per_eval=4,
                                             generator=torch.Generator().manual_seed(2), shared_noise=shared_noise,
                                             sigma_from_range=sigma_from_range)
    torch.testing.assert_close(result[0], (x1_n * total1 / 4).abs().amax(1).detach(), atol=1e-8, rtol=1e-4)
    torch.testing.assert_close(result[1], (x2_n * total2 / 4).abs().amax(1).detach(), atol=1e-8, rtol=1e-4)
    default = PairSmoothGrad(model).attribute((x1, x2), n_samples=4, stdev=0.3, generator=torch.Generator().manual_seed(2))
    assert not torch.allclose(result[0], default[0])
    if not shared_noise:  # independent noise also takes images of different sizes
        assert PairSmoothGrad(model).attribute((x1, arange_image(1, 24, 24)), n_samples=2,
                                               shared_noise=False)[1].shape == (1, 24, 24)
    with pytest.raises(ValueError, match="sigma_from_range must be 'divide' or 'multiply'"):
        PairSmoothGrad(model).attribute((x1, x2), n_samples=2, sigma_from_range="add")
    with pytest.raises(ValueError, match="shared_noise needs x1 and x2 of the same shape"):
        PairSmoothGrad(model).attribute((x1, arange_image(1, 24, 24)), n_samples=2)


def test_averaged_transforms_matches_batch_one_loop():
    model = small_resnet().double()
    x = arange_image(1, 32, 32).double()
    x_t = (x * 0.5 + 0.3).clamp(0, 1)
    x_n, t_n = model.normalize(x), model.normalize(x_t)
    lambdas = [1.0 - m / 5 for m in range(5)]
    path = [lam * x_n + (1 - lam) * t_n for lam in lambdas]
    g1, g2 = torch.zeros_like(x_n), torch.zeros_like(x_n)
    for m in range(1, 5):
        a, b = path[0].clone().requires_grad_(True), path[m].clone().requires_grad_(True)
        s = cos(model.forward_normalized(a), model.forward_normalized(b))
        d1, d2 = torch.autograd.grad(s.sum(), [a, b])
        g1, g2 = g1 + d1 / 4, g2 + d2 / 4
    result = AveragedTransforms(model).attribute((x, x_t), steps=5)
    torch.testing.assert_close(result[0], (x_n * g1).abs().amax(1).detach(), atol=1e-12, rtol=1e-9)
    torch.testing.assert_close(result[1], (path[-1] * g2).abs().amax(1).detach(), atol=1e-12, rtol=1e-9)


def test_averaged_transforms_noise_is_seeded_and_spares_the_ends():
    model = small_resnet()
    x = arange_image(1, 32, 32)
    x_t = (x * 0.5 + 0.3).clamp(0, 1)
    a = AveragedTransforms(model).attribute((x, x_t), steps=5, noise=True,
                                                generator=torch.Generator().manual_seed(0))
    b = AveragedTransforms(model).attribute((x, x_t), steps=5, noise=True,
                                                generator=torch.Generator().manual_seed(0))
    c = AveragedTransforms(model).attribute((x, x_t), steps=5, noise=False)
    torch.testing.assert_close(a[0], b[0])
    assert not torch.allclose(a[0], c[0])
    # a loop: noise of sigma 0.15 / range(x_n) on the interior points only; x (the start) and the last point
    # (which also multiplies the second map) stay clean
    steps = 5
    x_n, t_n = model.normalize(x), model.normalize(x_t)
    sigma = 0.15 / float(x_n.max() - x_n.min())
    eps = torch.randn((1, steps - 1, *x.shape[1:]), generator=torch.Generator().manual_seed(0))[0] * sigma
    lambdas = [1.0 - m / steps for m in range(1, steps)]
    points = [lam * x_n[0] + (1 - lam) * t_n[0] + (eps[m] if m < steps - 2 else 0) for m, lam in enumerate(lambdas)]
    g1, g2 = torch.zeros_like(x_n), torch.zeros_like(x_n)
    for point in points:
        start, other = x_n.clone().requires_grad_(True), point[None].clone().requires_grad_(True)
        d1, d2 = torch.autograd.grad(cos(model.forward_normalized(start), model.forward_normalized(other)).sum(),
                                     [start, other])
        g1, g2 = g1 + d1 / (steps - 1), g2 + d2 / (steps - 1)
    torch.testing.assert_close(a[0], (x_n * g1).abs().amax(1).detach(), atol=1e-7, rtol=1e-4)
    torch.testing.assert_close(a[1], (points[-1][None] * g2).abs().amax(1).detach(), atol=1e-7, rtol=1e-4)
    with pytest.raises(ValueError, match="same shape"):
        AveragedTransforms(model).attribute((x, arange_image(1, 16, 16)))
    with pytest.raises(ValueError, match="steps must be >= 2"):
        AveragedTransforms(model).attribute((x, x_t), steps=1)
