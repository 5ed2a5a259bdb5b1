"""Captum's conventions: SimilarityForward under batch expansion, (3, h, w) windows, Captum-shaped maps in metrics."""
from __future__ import annotations

import pytest
import torch
from captum.attr import IntegratedGradients, NoiseTunnel, Saliency

from helpers import arange_image, small_resnet
from ssl_widgets.attr import SimilarityForward


def _pairs():
    model = small_resnet()
    inputs = torch.cat([arange_image(1, 32, 32), arange_image(1, 32, 32, offset=5)])
    refs = torch.cat([arange_image(1, 32, 32, offset=3), arange_image(1, 32, 32, offset=11)])
    return model, inputs, refs


def test_noise_tunnel_at_zero_noise_equals_saliency_with_two_references():
    model, inputs, refs = _pairs()
    forward = SimilarityForward(model, refs)
    plain = Saliency(forward).attribute(inputs)
    smooth = NoiseTunnel(Saliency(forward)).attribute(inputs, nt_type="smoothgrad", nt_samples=4, stdevs=0.0)
    # equal up to float rounding only: the 8-row batch of the tunnel and the 2-row batch of plain
    # Saliency run the convolutions with different blockings (sums in another order)
    torch.testing.assert_close(smooth, plain, atol=1e-6, rtol=1e-5)
    # and Saliency pairs row by row: each map is the single-reference one
    for b in range(2):
        single = Saliency(SimilarityForward(model, refs[b:b + 1])).attribute(inputs[b:b + 1])
        torch.testing.assert_close(plain[b:b + 1], single, atol=1e-6, rtol=1e-5)


def test_integrated_gradients_with_two_references_tiles_them():
    model, inputs, refs = _pairs()
    kwargs = {"baselines": inputs * 0, "n_steps": 8, "internal_batch_size": 16}
    batch = IntegratedGradients(SimilarityForward(model, refs, expansion="repeat")).attribute(inputs, **kwargs)
    wrong = IntegratedGradients(SimilarityForward(model, refs)).attribute(inputs, **kwargs)
    for b in range(2):
        single = IntegratedGradients(SimilarityForward(model, refs[b:b + 1])).attribute(
            inputs[b:b + 1], baselines=inputs[b:b + 1] * 0, n_steps=8)
        torch.testing.assert_close(batch[b:b + 1], single, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(wrong, batch, atol=1e-4)  # the layouts differ: the option matters


def test_reference_embedding_argument_is_exact_under_any_composition():
    model, inputs, refs = _pairs()
    forward = SimilarityForward(model, refs)
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(0)  # NoiseTunnel draws from the global RNG; with stdevs=0 nothing random remains
        composed = NoiseTunnel(IntegratedGradients(forward)).attribute(
            inputs, nt_samples=2, stdevs=0.0, baselines=inputs * 0, n_steps=4,
            additional_forward_args=(forward.reference_embedding,))
    finally:
        torch.random.set_rng_state(generator_state)
    for b in range(2):
        single = IntegratedGradients(SimilarityForward(model, refs[b:b + 1])).attribute(
            inputs[b:b + 1], baselines=inputs[b:b + 1] * 0, n_steps=4)
        torch.testing.assert_close(composed[b:b + 1], single, atol=1e-6, rtol=1e-5)


def test_similarity_forward_bad_input():
    model, inputs, refs = _pairs()
    with pytest.raises(ValueError, match="expansion"):
        SimilarityForward(model, refs, expansion="tile")
    forward = SimilarityForward(model, refs)
    with pytest.raises(ValueError, match="cannot be paired with 2 references"):
        forward(torch.cat([inputs, inputs[:1]]))
    with pytest.raises(ValueError, match="one row per input"):
        forward(inputs, forward.reference_embedding[:1])


def _occlusion_case():
    from ssl_widgets.attr import ConditionalOcclusion

    model = small_resnet()
    x1, x2 = arange_image(1, 32, 32), arange_image(1, 32, 32, offset=3)
    return ConditionalOcclusion(model), (x1, x2)


def test_occlusion_accepts_captums_window_spelling():
    method, pair = _occlusion_case()
    plain = method.attribute(pair, sliding_window_shapes=(8, 8), strides=4, grid=True)
    captum = method.attribute(pair, sliding_window_shapes=(3, 8, 8), strides=(3, 4, 4), grid=True)
    as_int = method.attribute(pair, sliding_window_shapes=8, strides=(1, 4, 4), grid=True)
    for k in range(2):
        assert torch.equal(captum[k], plain[k]) and torch.equal(as_int[k], plain[k])
    assert captum.meta["sliding_window_shapes"] == (8, 8)


@pytest.mark.parametrize("window,match", [((1, 8, 8), "covers 1 channel"), ((4, 8, 8), "covers 4 channel"),
                                          ((3, 8), None), ((3, 8, 8, 8), None), ((3.0, 8, 8), "ints")])
def test_occlusion_window_errors(window, match):
    method, pair = _occlusion_case()
    with pytest.raises((ValueError, TypeError), match=match):
        method.attribute(pair, sliding_window_shapes=window, strides=4)


def test_metrics_accept_captum_shaped_attributions():
    from ssl_widgets.metrics import average_drop_increase, insertion_deletion

    model = small_resnet()
    x1, x2 = arange_image(2, 32, 32), arange_image(2, 32, 32, offset=3)
    rgb = (torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).view(2, 3, 32, 32) * 0.013).sin()
    summed = rgb.sum(1)
    small = summed[:, ::4, ::4].contiguous()
    for metric, kwargs in ((insertion_deletion, {"step": 64}), (average_drop_increase, {})):
        reference = metric(model, x1, x2, summed, summed, **kwargs)
        captum = metric(model, x1, x2, rgb, rgb, **kwargs)
        single = metric(model, x1, x2, small[:, None], small[:, None], **kwargs)
        expected_single = metric(model, x1, x2, small, small, **kwargs)
        for field in ("score", "curve", "drop", "increase"):
            if getattr(reference, field) is not None:
                assert torch.equal(getattr(captum, field), getattr(reference, field)), field
                assert torch.equal(getattr(single, field), getattr(expected_single, field)), field
    with pytest.raises(ValueError, match=r"\(B, 3, h, w\) with B=2; got \(2, 2, 32, 32\)"):
        insertion_deletion(model, x1, x2, rgb[:, :2])
