"""The graph-derived incremental engine: exact on any traced CNN, exact fallbacks, private copies."""
import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from helpers import arange_image, randomize_bn, run_on_boxes
from torch import nn
from torchvision.models.convnext import CNBlockConfig, ConvNeXt
from torchvision.models.resnet import BasicBlock, Bottleneck

from ssl_widgets.attr import ConditionalOcclusion, ContextAgnosticOcclusion, CopyEvaluator
from ssl_widgets.attr._occlusion_engine.fold import fold_batchnorm, private_trunk
from ssl_widgets.attr._occlusion_engine.evaluator import incremental_engine
from ssl_widgets.models import SSLModel
from ssl_widgets.models.architectures import ResNetTrunk


def perturbed_batch(base, n=6, seed=0):
    """Copies of ``base`` with random boxes of random content, two of them at the image corners."""
    g = torch.Generator().manual_seed(seed)
    _, _, hh, ww = base.shape
    images, boxes = base.repeat(n, 1, 1, 1), []
    for k in range(n):
        h = int(torch.randint(1, hh // 2, (1,), generator=g))
        w = int(torch.randint(1, ww // 2, (1,), generator=g))
        y, x = int(torch.randint(0, hh - h + 1, (1,), generator=g)), int(torch.randint(0, ww - w + 1, (1,), generator=g))
        y, x = (0, 0) if k == 0 else ((hh - h, ww - w) if k == 1 else (y, x))
        images[k, :, y:y + h, x:x + w] = torch.rand(3, h, w, generator=g)
        boxes.append([y, x, y + h, x + w])
    return images, torch.tensor(boxes)


def assert_exact(trunk, size=32, fallback=False):
    trunk = trunk.eval()
    engine = incremental_engine(trunk)
    assert engine is not None
    base = arange_image(1, size, size)
    cache = engine.prepare(base)
    images, boxes = perturbed_batch(base)
    with torch.no_grad():
        expected = trunk(images)
        got = run_on_boxes(engine, images, boxes, cache)
    scale = float(expected.abs().max())
    torch.testing.assert_close(got, expected, atol=1e-5 * scale, rtol=1e-5)
    assert bool(engine.fallback_nodes) == fallback, engine.fallback_nodes
    return engine


def torchvision_sequential(arch):
    net = randomize_bn(arch())
    return nn.Sequential(*list(net.children())[:-2]), net


@pytest.mark.parametrize("arch, block, layers", [(torchvision.models.resnet18, BasicBlock, [2, 2, 2, 2]),
                                                 (torchvision.models.resnet50, Bottleneck, [3, 4, 6, 3])])
def test_torchvision_resnets_built_both_ways(arch, block, layers):
    torch.manual_seed(0)
    sequential, net = torchvision_sequential(arch)
    assert_exact(sequential)
    package = ResNetTrunk(block, layers)  # the package's class with the same weights
    state = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    package.load_state_dict(state)
    assert_exact(package)


def test_sequential_trunk_with_assorted_windows():
    """Dilation, groups, even kernels, asymmetric strides and padding, average and max pooling."""
    torch.manual_seed(0)
    trunk = nn.Sequential(
        nn.Conv2d(3, 8, 5, stride=2, padding=2), nn.BatchNorm2d(8), nn.GELU(),
        nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=4), nn.Hardswish(),
        nn.Conv2d(8, 8, (2, 4), stride=(1, 2), padding=(0, 1)), nn.LeakyReLU(0.1),
        nn.AvgPool2d(3, stride=1, padding=1), nn.MaxPool2d(2), nn.Conv2d(8, 6, 1))
    assert_exact(randomize_bn(trunk), size=40)


def test_regions_that_cover_the_whole_map_are_padded_with_each_windows_own_value():
    """Once a box has grown over the whole map, a windowed node pads the copies' values itself (no gather
    from the base): with the window's own padding value (-inf for max pooling, 0 for convolutions) and
    the extra rows and columns a stride that does not divide the map needs."""
    torch.manual_seed(0)
    trunk = nn.Sequential(
        nn.Conv2d(3, 4, 7, padding=3),           # a box anywhere in the 9x9 image changes (almost) every output
        nn.MaxPool2d(3, stride=1, padding=1),    # outputs are negative in places: -inf padding, not 0, is exact
        nn.Conv2d(4, 4, 3, stride=2, padding=1),  # 9 is odd: the last output reads one padded column
        nn.MaxPool2d(2, stride=2, padding=1), nn.Conv2d(4, 2, 3, padding=1))
    trunk[0].bias.data.fill_(-0.6)
    engine = incremental_engine(trunk.eval())
    base = arange_image(1, 9, 9)
    cache = engine.prepare(base)
    images = base.repeat(3, 1, 1, 1)
    boxes = torch.tensor([[3, 3, 6, 6], [0, 0, 9, 9], [1, 2, 8, 6]])
    for k, (y0, x0, y1, x1) in enumerate(boxes.tolist()):
        images[k, :, y0:y1, x0:x1] = -arange_image(1, y1 - y0, x1 - x0, offset=k)[0]
    with torch.no_grad():
        expected, got = trunk(images), run_on_boxes(engine, images, boxes, cache)
        assert float(trunk[:2](images).amin()) < 0  # the max pool sees negative values at the border
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


def test_timm_resnet():
    timm = pytest.importorskip("timm")

    class Features(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net.forward_features(x)

    torch.manual_seed(0)
    assert_exact(randomize_bn(Features(timm.create_model("resnet18", pretrained=False))))


def test_convnext_channel_layernorm_and_layer_scale():
    """torchvision's ConvNeXt: 7x7 depthwise convs, LayerNorm over channels after a permute, Linear on
    channels-last tensors, per-channel layer scale: all local, nothing falls back."""
    torch.manual_seed(0)
    net = ConvNeXt([CNBlockConfig(8, 16, 2), CNBlockConfig(16, None, 1)])
    for module in net.modules():
        if hasattr(module, "layer_scale"):
            module.layer_scale.data.uniform_(0.5, 1.5)
    assert_exact(net.features, size=32)


class SqueezeExcite(nn.Module):
    """A global (image-wide) gate: its output depends on every pixel, so it must fall back."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1, padding_mode="reflect")
        self.conv3 = nn.Conv2d(6, 4, 3, padding=1)

    def forward(self, x):
        h = F.relu(self.conv1(x))
        h = h * torch.sigmoid(h.mean((2, 3), keepdim=True))
        return self.conv3(F.relu(self.conv2(h)))


class ReflectPad(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 4, 3, padding=1, padding_mode="reflect")
        self.conv3 = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return self.conv3(torch.cat([self.conv2(F.relu(self.conv1(x))), x[:, :1].expand(-1, 4, -1, -1)], 1)[:, :4])


@pytest.mark.parametrize("trunk", [SqueezeExcite, ReflectPad])
def test_unsupported_ops_fall_back_exactly(trunk):
    torch.manual_seed(0)
    engine = assert_exact(trunk(), size=24, fallback=True)
    assert engine.fallback_nodes[-1] == "conv3"  # everything after the fallback is recomputed in full


def test_concatenation_of_branches_with_different_halos():
    class Inception(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 5, padding=2)
            self.c = nn.Conv2d(8, 4, 3, padding=1)

        def forward(self, x):
            y = torch.cat([self.a(x), F.relu(self.b(x))], dim=1)
            return self.c(y) + self.a(x) * 0.5

    torch.manual_seed(0)
    assert_exact(Inception(), size=24)


def test_fold_batchnorm_leaves_the_model_alone_and_skips_shared_convs():
    torch.manual_seed(0)
    trunk = randomize_bn(ResNetTrunk(BasicBlock, [1, 1, 1, 1], width=4)).eval()
    before = copy.deepcopy(trunk.state_dict())
    private, traced = private_trunk(trunk)
    assert traced and private is not trunk
    assert not any(isinstance(m, nn.BatchNorm2d) for m in private.modules())
    for key, value in trunk.state_dict().items():
        assert torch.equal(value, before[key]) and value.is_contiguous()
    assert any(isinstance(m, nn.BatchNorm2d) for m in trunk.modules())

    class Shared(nn.Module):  # the conv is used twice: folding would change its other call
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)

        def forward(self, x):
            return self.bn(self.conv(x)) + self.conv(x)

    shared = randomize_bn(Shared()).eval()
    gm = torch.fx.symbolic_trace(copy.deepcopy(shared))
    assert fold_batchnorm(gm) == 0
    x = torch.rand(1, 3, 4, 4)
    torch.testing.assert_close(gm(x), shared(x))


def test_private_copy_is_rebuilt_when_weights_change():
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Conv2d(3, 2, 3)).eval()
    first, _ = private_trunk(trunk)
    assert private_trunk(trunk)[0] is first
    with torch.no_grad():
        trunk[0].weight.mul_(2)
    second, _ = private_trunk(trunk)
    assert second is not first
    x = torch.rand(1, 3, 5, 5)
    torch.testing.assert_close(second(x), trunk(x))


def test_window_evaluator_mixes_bases_in_one_batch():
    torch.manual_seed(0)
    model = SSLModel(randomize_bn(ResNetTrunk(BasicBlock, [1, 1, 1, 1], width=4)), None, input_size=32).eval()
    bases = torch.stack([arange_image(1, 32, 32)[0], arange_image(1, 32, 32, offset=3)[0]])
    for incremental in (True, False):
        for evaluator, switch in ((CopyEvaluator(model, incremental=incremental), True), (CopyEvaluator(model), incremental)):
            with evaluator.session(incremental=switch) as ev:  # the evaluator's or the call's switch
                assert ev.incremental == incremental
                state, z = ev.prepare(bases)
                torch.testing.assert_close(z, model.forward_normalized(bases), atol=1e-5, rtol=1e-5)
                local = torch.rand(3, 3, 7, 9)
                y0, x0, bid = torch.tensor([0, 25, 10]), torch.tensor([23, 0, 11]), torch.tensor([1, 0, 1])
                expected = bases[bid].clone()
                for k in range(3):
                    expected[k, :, y0[k]:y0[k] + 7, x0[k]:x0[k] + 9] = local[k]
                torch.testing.assert_close(ev.embed(state, local, y0, x0, bid), model.forward_normalized(expected),
                                           atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="precision"), CopyEvaluator(model).session(precision="half"):
        pass
    with pytest.raises(ValueError, match="workers"):
        CopyEvaluator(model, workers=0)
    with pytest.raises(TypeError, match="store"):
        CopyEvaluator(model, store={})


def test_fast_precision_is_close_and_reported():
    torch.manual_seed(0)
    model = SSLModel(randomize_bn(ResNetTrunk(BasicBlock, [1, 1, 1, 1], width=4)), None, input_size=32).eval()
    x1, x2 = arange_image(1, 32, 32), arange_image(1, 32, 32, offset=5)
    exact = ConditionalOcclusion(model).attribute((x1, x2), 12, 4, grid=True)
    fast = ConditionalOcclusion(model).attribute((x1, x2), 12, 4, grid=True, precision="fast")
    assert fast.meta["precision"] == "fast" and exact.meta["precision"] == "exact"
    assert not torch.equal(fast[0], exact[0])  # really computed in bfloat16
    for a, b in zip(fast, exact):
        assert float((a - b).abs().max()) < 0.05 * float(b.abs().max()) + 0.02


def test_occlusion_on_images_of_different_sizes():
    torch.manual_seed(0)
    model = SSLModel(randomize_bn(ResNetTrunk(BasicBlock, [1, 1, 1, 1], width=4)), None, input_size=32).eval()
    x1, x2 = arange_image(1, 32, 32), arange_image(1, 24, 32, offset=2)
    inc = ContextAgnosticOcclusion(model).attribute((x1, x2), 12, 6, grid=True)
    full = ContextAgnosticOcclusion(model).attribute((x1, x2), 12, 6, grid=True, incremental=False)
    assert inc[1].shape == (1, 3, 4)
    for a, b in zip(inc, full):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("layout", ["channels-last", "contiguous", "tokens"])
def test_gather_and_paste_match_a_plain_loop(layout):
    """Crops of several bases and pastes into a batch, for every memory layout the engine meets
    (channels-last copies rows of channel values whole; the others index element by element)."""
    from ssl_widgets.attr._occlusion_engine.regions import gather, paste

    src = torch.arange(2 * 5 * 9 * 8, dtype=torch.float32).view(2, 5, 9, 8)
    dims = (2, 3)
    if layout == "channels-last":
        src = src.contiguous(memory_format=torch.channels_last)
    elif layout == "tokens":  # (n, H, W, C) as after a ConvNeXt permute
        src, dims = src.permute(0, 2, 3, 1).contiguous(), (1, 2)
    bid, y0, x0 = torch.tensor([1, 0, 1]), torch.tensor([0, 4, 6]), torch.tensor([5, 0, 2])
    crops = gather(src, bid, y0, x0, 3, 3, dims)
    dst = torch.zeros(3, *src.shape[1:]).contiguous(memory_format=torch.channels_last) \
        if layout == "channels-last" else torch.zeros(3, *src.shape[1:])
    paste(dst, crops, y0, x0, dims)
    expected_dst = torch.zeros_like(dst)
    for b in range(3):
        index = [slice(None)] * 3
        index[dims[0] - 1] = slice(int(y0[b]), int(y0[b]) + 3)
        index[dims[1] - 1] = slice(int(x0[b]), int(x0[b]) + 3)
        crop = src[int(bid[b])][tuple(index)]
        assert torch.equal(crops[b], crop)
        expected_dst[b][tuple(index)] = crop
    assert torch.equal(dst, expected_dst)
