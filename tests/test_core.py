"""ssl_widgets.core: the shared primitives (blur, grayscale, hooks, constants)."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.transforms.functional import gaussian_blur as tv_blur
from torchvision.transforms.functional import rgb_to_grayscale

from ssl_widgets import core
from ssl_widgets.attr import engine
from ssl_widgets.attr.synthesis import gaussian_blur_image
from ssl_widgets.models import state


def _image(c=3, h=20, w=17):
    return (torch.arange(c * h * w, dtype=torch.float32).view(1, c, h, w) * 0.37).sin()


@pytest.mark.parametrize("kernel,sigma", [(11, 5.0), (3, 0.7), (19, 3.0), (1, 1.0)])
def test_blur_is_bit_identical_to_torchvision(kernel, sigma):
    x = _image()
    assert torch.equal(core.gaussian_blur(x, kernel, sigma), tv_blur(x, [kernel, kernel], [sigma, sigma]))


def test_blur_truncated_at_four_sigma_matches_a_plain_loop():
    x, sigma = _image(c=1, h=9, w=9), 1.0
    out = core.gaussian_blur(x, None, sigma)  # radius 4
    pos = torch.arange(-4, 5, dtype=torch.float64)
    k1 = torch.exp(-0.5 * (pos / sigma) ** 2)
    k1 = k1 / k1.sum()
    padded = torch.nn.functional.pad(x.double(), (4, 4, 4, 4), mode="reflect")[0, 0]
    expected = torch.empty(9, 9, dtype=torch.float64)
    for i in range(9):
        for j in range(9):
            expected[i, j] = (padded[i:i + 9, j:j + 9] * k1[:, None] * k1[None, :]).sum()
    torch.testing.assert_close(out[0, 0].double(), expected, atol=1e-6, rtol=0)
    assert torch.equal(gaussian_blur_image(x, sigma), out)


def test_blur_bad_input():
    with pytest.raises(ValueError, match="kernel_size"):
        core.gaussian_blur(_image(), 4, 1.0)
    with pytest.raises(ValueError, match="sigma"):
        core.gaussian_blur(_image(), 3, 0.0)
    with pytest.raises(ValueError, match="float"):
        core.gaussian_blur(torch.zeros(3, 4, 4), 3, 1.0)


def test_grayscale_uses_the_luma_weights():
    x = _image()
    expected = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    torch.testing.assert_close(core.grayscale(x)[:, 0], expected, atol=1e-6, rtol=0)
    # torchvision's 0.2989 differs from BT.601's 0.299 by 1e-4 of the red channel
    assert (core.grayscale(x) - rgb_to_grayscale(x)).abs().max() <= 1.1e-4 * x[:, 0].abs().max()
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        core.grayscale(torch.zeros(1, 1, 2, 2))


def test_hooks_are_removed_even_when_the_block_raises():
    layer = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    grads = []
    with pytest.raises(RuntimeError, match="boom"):
        with core.module_hooks(forward=[(layer[0], lambda m, i, o: None)],
                               backward=[(layer[1], lambda m, gi, go: grads.append(go[0]))]):
            layer(torch.ones(1, 2, requires_grad=True)).sum().backward()
            raise RuntimeError("boom")
    assert len(grads) == 1
    assert not layer[0]._forward_hooks and not layer[1]._backward_hooks
    with pytest.raises(RuntimeError, match="in hook"):
        with core.captured_outputs(layer[0], keep=lambda out: (_ for _ in ()).throw(RuntimeError("in hook"))):
            layer(torch.ones(1, 2))
    assert not layer[0]._forward_hooks


def test_captured_outputs_records_every_forward():
    layer = nn.Linear(2, 3)
    with core.captured_outputs(layer, keep=lambda out: out.shape) as shapes:
        layer(torch.zeros(1, 2))
        layer(torch.zeros(5, 2))
    assert shapes == [torch.Size([1, 3]), torch.Size([5, 3])]


def test_one_home_each_and_the_old_imports_still_work():
    assert engine.cosine is core.cosine
    assert engine.preserved_model_state is state.preserved_model_state
    assert engine.check_model is state.check_model
    assert engine.eval_similarity is state.eval_similarity
    from ssl_widgets.attr.maps import normalize_map, upsample

    assert upsample is core.upsample and normalize_map is core.normalize_map


def test_named_constants_are_the_papers():
    assert (core.PAPER_INPUT_SIZE, core.SEED_MULTIPLIER, core.PAPER_INSERTION_STEP) == (224, 7919, 224)
    assert (core.MAP_BLUR_KERNEL, core.MAP_BLUR_SIGMA, core.COSINE_EPS) == (11, 5.0, 1e-8)
