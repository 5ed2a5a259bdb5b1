"""Feature visualisation and model-difference visualisation."""
import pytest
import torch
import torch.nn.functional as F

from ssl_widgets.attr import FeatureVisualization, ModelDifference
from ssl_widgets.attr.synthesis import gaussian_blur_image, partial_forward, total_variation

from helpers import arange_image, small_resnet

SMALL = dict(octaves=3, iterations=6)


def score(model, x, target, layer):
    with torch.no_grad():
        return float(F.cosine_similarity(partial_forward(model, x, layer).flatten(1),
                                         partial_forward(model, target, layer).flatten(1)))


@pytest.mark.parametrize("parametrization", ["pixel", "fourier"])
def test_feature_visualization_raises_the_objective(parametrization):
    model = small_resnet()
    target = arange_image(1, 32, 32)
    g = torch.Generator().manual_seed(0)
    start = torch.rand(target.shape, generator=torch.Generator().manual_seed(0)) * 1e-2
    if parametrization == "fourier":  # a near-zero spectrum renders as mid-grey
        start = torch.full_like(target, 0.5)
    image = FeatureVisualization(model, "layer2").visualize(target, generator=g, parametrization=parametrization,
                                                            **SMALL)
    assert image.shape == (1, 3, 32, 32) and float(image.min()) >= 0 and float(image.max()) <= 1
    before, after = score(model, start, target, "layer2"), score(model, image, target, "layer2")
    assert 1 - after < 0.7 * (1 - before)  # at least 30% of the gap to a perfect match closed


def test_feature_visualization_is_seeded_and_reports_progress():
    model = small_resnet()
    target = arange_image(2, 32, 32)
    steps = []
    a = FeatureVisualization(model, "layer1").visualize(target, mode="feature", generator=torch.Generator().manual_seed(1),
                                                        callback=lambda step, img: steps.append((step, img.shape)),
                                                        callback_every=6, **SMALL)
    b = FeatureVisualization(model, "layer1").visualize(target, mode="feature", generator=torch.Generator().manual_seed(1),
                                                        **SMALL)
    c = FeatureVisualization(model, "layer1").visualize(target, mode="feature", generator=torch.Generator().manual_seed(2),
                                                        **SMALL)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    assert [s for s, _ in steps] == [6, 12, 18] and all(shape == (2, 3, 32, 32) for _, shape in steps)


def test_feature_visualization_errors_and_state():
    model = small_resnet()
    model.train()
    with pytest.raises(ValueError, match="unknown layer 'layer9'"):
        FeatureVisualization(model, "layer9")
    with pytest.raises(ValueError, match="mode must be"):
        FeatureVisualization(model, "layer1").visualize(arange_image(1, 32, 32), mode="dream")
    with pytest.raises(TypeError, match="uint8"):
        FeatureVisualization(model, "layer1").visualize(arange_image(1, 32, 32).to(torch.uint8))
    FeatureVisualization(model, "layer1").visualize(arange_image(1, 32, 32), **SMALL)
    assert all(m.training for m in model.modules()) and all(p.requires_grad for p in model.parameters())


def test_model_difference_inversion_gets_closer_to_the_target():
    a, b = small_resnet(seed=0), small_resnet(seed=1, normalized=False)
    x = arange_image(1, 32, 32)
    g = torch.Generator().manual_seed(0)
    result = ModelDifference(a, b).invert(x, layers=["stem", "layer1"], iterations=60, generator=g, lr=1e2,
                                          decay=(False, False))
    assert set(result) == {"stem", "layer1"}
    start = (torch.randn(x.shape, generator=torch.Generator().manual_seed(0)) * 0.1).clamp(0, 1)
    for layer, (img_a, img_b) in result.items():
        assert img_a.shape == x.shape and float(img_a.min()) >= 0 and float(img_b.max()) <= 1
        for model, img in ((a, img_a), (b, img_b)):
            with torch.no_grad():
                target = partial_forward(model, x, layer)
                assert float((partial_forward(model, img, layer) - target).norm()) < \
                    float((partial_forward(model, start, layer) - target).norm())


def test_model_difference_seeded_and_errors():
    a, b = small_resnet(seed=0), small_resnet(seed=1)
    x = arange_image(1, 32, 32)
    kwargs = dict(layers=["layer1"], iterations=5)
    r1 = ModelDifference(a, b).invert(x, generator=torch.Generator().manual_seed(3), **kwargs)
    r2 = ModelDifference(a, b).invert(x, generator=torch.Generator().manual_seed(3), **kwargs)
    torch.testing.assert_close(r1["layer1"][0], r2["layer1"][0])
    with pytest.raises(ValueError, match="unknown layer 'conv9'"):
        ModelDifference(a, b).invert(x, layers=["conv9"])
    with pytest.raises(TypeError, match="SSLModel"):
        ModelDifference(a, torch.nn.Identity())


def test_helpers():
    x = torch.zeros(1, 1, 3, 3)
    x[0, 0, 1, 1] = 1.0
    assert float(total_variation(x)) == pytest.approx(4.0)
    image = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    # sigma 1.5: truncated at 4 sigma (radius 6), reflect padding, one 2-D kernel per channel
    offsets = torch.arange(-6, 7, dtype=torch.float32)
    kernel = torch.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * 1.5 ** 2))
    kernel = (kernel / kernel.sum()).expand(3, 1, 13, 13)
    expected = F.conv2d(F.pad(image, (6, 6, 6, 6), mode="reflect"), kernel, groups=3)
    torch.testing.assert_close(gaussian_blur_image(image, 1.5), expected, atol=1e-6, rtol=1e-5)
    point = torch.zeros(1, 3, 16, 16)
    point[:, 1, 8, 7] = 1.0  # away from the borders: the kernel itself, in that channel only
    blurred = gaussian_blur_image(point, 1.5)
    torch.testing.assert_close(blurred[0, 1, 2:15, 1:14], kernel[0, 0], atol=1e-7, rtol=1e-5)
    assert float(blurred[0, 0].abs().max()) == 0.0 and float(blurred[0, 2].abs().max()) == 0.0
    with pytest.raises(ValueError, match="unknown layer"):
        partial_forward(small_resnet(), arange_image(1, 32, 32), "nope")
