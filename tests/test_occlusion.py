"""Conditional, context-agnostic and pairwise occlusion, and the incremental engine."""
import pytest
import torch
from helpers import arange_image, cos, mean_color_model, run_on_boxes, small_resnet
from torchvision.models.resnet import BasicBlock, Bottleneck

from ssl_widgets.attr import (
    ConditionalOcclusion,
    ContextAgnosticOcclusion,
    PairwiseOcclusion,
    upsample,
)
from ssl_widgets.attr._occlusion_engine.evaluator import incremental_engine
from ssl_widgets.data.augment import random_erasing_boxes
from ssl_widgets.models import SSLModel


def slow_conditional(model, x1, x2, window, stride, fill):
    """A plain loop written from methods.md section 2.1."""
    base = cos(model(x1), model(x2))
    n_h = (x1.shape[2] - window) // stride + 1
    n_w = (x1.shape[3] - window) // stride + 1
    h1, h2 = torch.zeros(n_h, n_w), torch.zeros(n_h, n_w)
    for i in range(n_h):
        for j in range(n_w):
            o1, o2 = x1.clone(), x2.clone()
            ys, xs = slice(i * stride, i * stride + window), slice(j * stride, j * stride + window)
            full = fill.dim() == 4 and fill.shape[2:] == x1.shape[2:]  # a per-pixel baseline image
            o1[:, :, ys, xs] = fill[:, :, ys, xs] if full else fill
            o2[:, :, ys, xs] = fill[:, :, ys, xs] if full else fill
            h1[i, j] = base - cos(model(o1), model(x2))
            h2[i, j] = base - cos(model(x1), model(o2))
    return h1, h2


def test_conditional_occlusion_by_hand():
    """Embedding = channel means: occluding the top-left 2x2 of a 4x4 image removes those pixels' colour."""
    model = mean_color_model()
    x1 = torch.zeros(1, 3, 4, 4)
    x1[:, 0, :2, :2] = 1.0  # a red top-left corner
    x1[:, 2] = 0.5  # blue everywhere
    x2 = torch.zeros(1, 3, 4, 4)
    x2[:, 0] = 1.0  # all red
    result = ConditionalOcclusion(model).attribute((x1, x2), sliding_window_shapes=2, strides=2, grid=True)
    # f(x1) = (0.25, 0, 0.5), f(x2) = (1, 0, 0): base = 0.25 / sqrt(0.3125)
    base = 0.25 / 0.3125 ** 0.5
    assert float(result.similarity) == pytest.approx(base, rel=1e-6)
    # occluding the red corner leaves (0, 0, 0.375): cos 0 -> drop = base
    assert float(result[0][0, 0, 0]) == pytest.approx(base, rel=1e-6)
    # occluding another quarter leaves (0.25, 0, 0.375): cos = 0.25 / sqrt(0.203125)
    assert float(result[0][0, 1, 1]) == pytest.approx(base - 0.25 / 0.203125 ** 0.5, rel=1e-6)
    # x2 is uniform red: any quarter occluded keeps f(x2) parallel, no drop
    torch.testing.assert_close(result[1], torch.zeros(1, 2, 2), atol=1e-6, rtol=0)


@pytest.mark.parametrize("normalized", [True, False])
def test_conditional_occlusion_matches_slow_loop(normalized):
    model = small_resnet(normalized=normalized)
    x1, x2 = arange_image(1, 32, 32), arange_image(1, 32, 32, offset=5)
    fill = model.fill_value.view(1, 3, 1, 1)
    expected = slow_conditional(model, x1, x2, 12, 4, fill)
    for incremental in (True, False):
        result = ConditionalOcclusion(model).attribute((x1, x2), sliding_window_shapes=12, strides=4, grid=True,
                                                       perturbations_per_eval=7, incremental=incremental)
        torch.testing.assert_close(result[0][0], expected[0], atol=2e-6, rtol=1e-4)
        torch.testing.assert_close(result[1][0], expected[1], atol=2e-6, rtol=1e-4)


def test_neutral_fill_and_custom_baseline():
    model = small_resnet(normalized=True)  # mean (0.4, 0.5, 0.6): the neutral fill is this colour in pixel space
    x1, x2 = arange_image(1, 32, 32), arange_image(1, 32, 32, offset=3)
    neutral = ConditionalOcclusion(model).attribute((x1, x2), 16, 16, grid=True)
    expected = slow_conditional(model, x1, x2, 16, 16, torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1))
    torch.testing.assert_close(neutral[0][0], expected[0], atol=2e-6, rtol=1e-4)
    torch.testing.assert_close(neutral[1][0], expected[1], atol=2e-6, rtol=1e-4)
    grey = ConditionalOcclusion(model).attribute((x1, x2), 16, 16, baselines=0.3, grid=True)
    expected = slow_conditional(model, x1, x2, 16, 16, torch.full((1, 3, 1, 1), 0.3))
    torch.testing.assert_close(grey[0][0], expected[0], atol=2e-6, rtol=1e-4)
    assert not torch.allclose(grey[0], neutral[0])


def test_tensor_baselines_three_values_and_an_image():
    model = small_resnet(normalized=True)
    x1, x2 = arange_image(1, 32, 32), arange_image(1, 32, 32, offset=3)
    colour = torch.tensor([0.1, 0.7, 0.2])
    result = ConditionalOcclusion(model).attribute((x1, x2), 16, 8, baselines=colour, grid=True)
    expected = slow_conditional(model, x1, x2, 16, 8, colour.view(1, 3, 1, 1))
    torch.testing.assert_close(result[0][0], expected[0], atol=2e-6, rtol=1e-4)
    image = arange_image(1, 32, 32, offset=9).flip(-1)  # a baseline that differs pixel by pixel
    result = ConditionalOcclusion(model).attribute((x1, x2), 16, 8, baselines=image, grid=True)
    expected = slow_conditional(model, x1, x2, 16, 8, image)
    torch.testing.assert_close(result[0][0], expected[0], atol=2e-6, rtol=1e-4)
    torch.testing.assert_close(result[1][0], expected[1], atol=2e-6, rtol=1e-4)
    with pytest.raises(ValueError, match="do not broadcast"):
        ConditionalOcclusion(model).attribute((x1, x2), 16, 8, baselines=torch.zeros(1, 3, 5, 5))


def test_pixel_map_is_mean_of_covering_windows():
    model = small_resnet()
    x1, x2 = arange_image(1, 32, 32), arange_image(1, 32, 32, offset=2)
    method = ConditionalOcclusion(model)
    grid = method.attribute((x1, x2), 16, 8, grid=True)[0][0]
    pixels = method.attribute((x1, x2), 16, 8, grid=False)[0][0]
    assert pixels.shape == (32, 32)
    for y, x in [(0, 0), (10, 20), (31, 31), (15, 8)]:
        covering = [grid[i, j] for i in range(3) for j in range(3)
                    if i * 8 <= y < i * 8 + 16 and j * 8 <= x < j * 8 + 16]
        assert float(pixels[y, x]) == pytest.approx(float(torch.stack(covering).mean()), abs=1e-6)


def test_context_agnostic_matches_slow_loop():
    model = small_resnet()
    x1, x2 = arange_image(1, 32, 32), arange_image(1, 32, 32, offset=7)
    fill = model.fill_value.view(1, 3, 1, 1)
    z1, z2 = model(x1), model(x2)
    expected = [torch.zeros(3, 3), torch.zeros(3, 3)]
    for i in range(3):
        for j in range(3):
            for k, (x, other) in enumerate(((x1, z2), (x2, z1))):
                removed = x.clone()
                removed[:, :, i * 8:i * 8 + 16, j * 8:j * 8 + 16] = fill
                alone = fill.expand_as(x).clone()
                alone[:, :, i * 8:i * 8 + 16, j * 8:j * 8 + 16] = x[:, :, i * 8:i * 8 + 16, j * 8:j * 8 + 16]
                expected[k][i, j] = cos(model(alone) - model(removed), other)
    for incremental in (True, False):
        result = ContextAgnosticOcclusion(model).attribute((x1, x2), 16, 8, grid=True, incremental=incremental)
        torch.testing.assert_close(result[0][0], expected[0], atol=2e-6, rtol=1e-4)
        torch.testing.assert_close(result[1][0], expected[1], atol=2e-6, rtol=1e-4)


@pytest.mark.parametrize("block, maxpool, size", [(BasicBlock, True, 64), (BasicBlock, False, 32), (Bottleneck, True, 64)])
def test_incremental_engine_equals_full_forward(block, maxpool, size):
    model = small_resnet(block=block, maxpool=maxpool)
    trunk = model.trunk
    engine = incremental_engine(trunk)
    assert engine is not None
    base = arange_image(1, size, size)
    cache = engine.prepare(base)
    g = torch.Generator().manual_seed(0)
    boxes, images = [], base.repeat(6, 1, 1, 1)
    for k in range(6):
        h, w = int(torch.randint(1, size // 2, (1,), generator=g)), int(torch.randint(1, size // 2, (1,), generator=g))
        y, x = int(torch.randint(0, size - h + 1, (1,), generator=g)), int(torch.randint(0, size - w + 1, (1,), generator=g))
        y, x = (0, 0) if k == 0 else ((size - h, size - w) if k == 1 else (y, x))
        images[k, :, y:y + h, x:x + w] = torch.rand(3, h, w, generator=g)
        boxes.append([y, x, y + h, x + w])
    with torch.no_grad():
        torch.testing.assert_close(run_on_boxes(engine, images, torch.tensor(boxes), cache), trunk(images), atol=1e-5, rtol=1e-5)
    assert engine.fallback_nodes == []


class _Untraceable(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return self.conv(x) if float(x.mean()) > -1e9 else x  # data-dependent control flow


def test_untraceable_trunk_gets_exact_full_forward_passes():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = SSLModel(_Untraceable(), None, input_size=16).eval()
    assert incremental_engine(model.trunk) is None
    x1, x2 = arange_image(1, 16, 16), arange_image(1, 16, 16, offset=4)
    result = ConditionalOcclusion(model).attribute((x1, x2), 6, 5, grid=True)
    assert result.meta["incremental"] is False
    expected = slow_conditional(model, x1, x2, 6, 5, model.fill_value.view(1, 3, 1, 1))
    torch.testing.assert_close(result[0][0], expected[0], atol=2e-6, rtol=1e-4)


def test_batches_never_exceed_perturbations_per_eval():
    """Memory is bounded by perturbations_per_eval, not by the number of windows."""
    model = small_resnet()
    seen = []
    # a global hook: the methods run a private copy of the trunk, whose modules are not the model's
    handle = torch.nn.modules.module.register_module_forward_pre_hook(
        lambda m, args: seen.append(args[0].shape[0]) if isinstance(m, torch.nn.Conv2d) else None)
    x1, x2 = arange_image(1, 32, 32), arange_image(1, 32, 32, offset=1)
    try:
        for stride in (8, 2):  # 9 windows, then 81 windows
            for incremental in (True, False):
                seen.clear()
                ContextAgnosticOcclusion(model).attribute((x1, x2), 16, stride, perturbations_per_eval=5,
                                                          incremental=incremental)
                assert max(seen) <= 5 and len(seen) > 0
    finally:
        handle.remove()


def test_batch_of_pairs_equals_pairs_one_by_one():
    model = small_resnet()
    x1 = torch.cat([arange_image(1, 32, 32), arange_image(1, 32, 32, offset=9)])
    x2 = torch.cat([arange_image(1, 32, 32, offset=4), arange_image(1, 32, 32, offset=1)])
    both = ConditionalOcclusion(model).attribute((x1, x2), 16, 8)
    for b in range(2):
        single = ConditionalOcclusion(model).attribute((x1[b:b + 1], x2[b:b + 1]), 16, 8)
        torch.testing.assert_close(both[0][b], single[0][0], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(both.similarity[b], single.similarity[0])


def slow_pairwise(model, x1, x2, n, per_eval, seed, scale=(0.1, 0.3), ratio=(1, 1.5)):
    """Section 2.3 as a plain loop, drawing the rectangles in the method's order."""
    g = torch.Generator().manual_seed(seed)
    x1_n, x2_n = model.normalize(x1), model.normalize(x2)
    base = cos(model(x1), model(x2))
    drops, erased1, erased2, first = [], [], [], []
    for start in range(0, n, per_eval):
        count = min(per_eval, n - start)
        b1, f1 = random_erasing_boxes(count, 32, 32, scale, ratio, g)
        b2, f2 = random_erasing_boxes(count, 32, 32, scale, ratio, g)
        for k in range(count):
            e1, e2 = x1_n.clone(), x2_n.clone()
            if f1[k]:
                e1[:, :, b1[k, 0]:b1[k, 2], b1[k, 1]:b1[k, 3]] = 0
            if f2[k]:
                e2[:, :, b2[k, 0]:b2[k, 2], b2[k, 1]:b2[k, 3]] = 0
            z1, z2 = model.forward_normalized(e1), model.forward_normalized(e2)
            drops.append(base - cos(z1, z2))
            first.append(bool(z1.norm() < z2.norm()))
            erased1.append((e1.sum(1) == 0).float()[0])
            erased2.append((e2.sum(1) == 0).float()[0])
    w = torch.softmax(torch.cat(drops), 0)
    a1, a2 = torch.zeros(32, 32), torch.zeros(32, 32)
    for k in range(n):
        if first[k]:
            a1 += w[k] * erased1[k]
        else:
            a2 += w[k] * erased2[k]
    return a1 / (a1.max() + 1e-9), a2 / (a2.max() + 1e-9)


def test_pairwise_occlusion_matches_slow_loop():
    model = small_resnet()
    x1, x2 = arange_image(1, 32, 32), arange_image(1, 32, 32, offset=6)
    result = PairwiseOcclusion(model).attribute((x1, x2), n_samples=20, perturbations_per_eval=8,
                                                generator=torch.Generator().manual_seed(3))
    expected = slow_pairwise(model, x1, x2, 20, 8, 3)
    torch.testing.assert_close(result[0][0], expected[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(result[1][0], expected[1], atol=1e-5, rtol=1e-4)
    assert float(torch.maximum(result[0].max(), result[1].max())) == pytest.approx(1.0, abs=1e-6)


def test_pairwise_occlusion_channel_sum_quirk_and_mask_option():
    """Black pixels count as erased under the paper's rule, not with the mask.

    The embedding is the per-channel mean: image 1 is dark (norm < 0.2) and image 2 bright (norm > 0.6 even with
    a third erased), so every sample credits image 1. Under the paper's rule its black band is erased in every
    sample and gets the whole weight (1 after the max scaling); with the mask only the drawn rectangles count.
    """
    model = mean_color_model()
    x1 = arange_image(1, 32, 32) * 0.05 + 0.05
    x1[:, :, :, :8] = 0.0  # a black band
    x2 = arange_image(1, 32, 32, offset=2) * 0.05 + 0.9
    paper = PairwiseOcclusion(model).attribute((x1, x2), n_samples=30, generator=torch.Generator().manual_seed(0))
    masked = PairwiseOcclusion(model).attribute((x1, x2), n_samples=30, erased_pixels="mask",
                                                generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(paper[0][0, :, :8], torch.ones(32, 8), atol=1e-6, rtol=0)  # every sample, every pixel
    assert float(masked[0][0, :, :8].min()) < 0.9  # the mask credits only where a rectangle fell
    assert float(paper[1].abs().max()) == 0.0 and float(masked[1].abs().max()) == 0.0  # image 2 never credited
    torch.testing.assert_close(paper[0][0, :, 8:], masked[0][0, :, 8:] * float(paper[0][0, :, 8:].max())
                               / float(masked[0][0, :, 8:].max()), atol=1e-5, rtol=1e-4)


def test_occlusion_is_seeded_where_random():
    model = small_resnet()
    x1, x2 = arange_image(1, 32, 32), arange_image(1, 32, 32, offset=6)
    a = PairwiseOcclusion(model).attribute((x1, x2), n_samples=10, generator=torch.Generator().manual_seed(1))
    b = PairwiseOcclusion(model).attribute((x1, x2), n_samples=10, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a[0], b[0])


def test_upsample_puts_cells_on_window_centres():
    grid = torch.zeros(1, 5, 5)  # windows of 8 px, stride 4, on a 24 px image
    grid[0, 1, 2] = 1.0  # the window at (4, 8): centre (7.5, 11.5)
    up = upsample(grid, 24, window=8, stride=4)
    assert up.shape == (1, 24, 24)
    peak = (up[0] == up[0].max()).nonzero().float().mean(0)
    assert peak.tolist() == pytest.approx([7.5, 11.5], abs=0.01)
    plain = upsample(torch.tensor([[[0.0, 1.0]]]), (1, 4))
    torch.testing.assert_close(plain[0, 0], torch.tensor([0.0, 0.25, 0.75, 1.0]))
