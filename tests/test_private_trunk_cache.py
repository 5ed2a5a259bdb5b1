"""The cached private inference copy of a trunk (traced, BatchNorm folded) that occlusion runs on:
reused while the trunk is unchanged, rebuilt when any value changes (also behind PyTorch's version
counters), correct from several threads at once, and the user's model left as it was."""
import threading

import torch
from helpers import arange_image, cos, randomize_bn
from torch import nn
from torchvision.models.resnet import BasicBlock

from ssl_widgets.attr import ConditionalOcclusion
from ssl_widgets.attr._occlusion_engine.fold import private_trunk
from ssl_widgets.attr._occlusion_engine import preview_stride
from ssl_widgets.models import SSLModel
from ssl_widgets.models.architectures import ResNetTrunk


def small_model(seed=0):
    torch.manual_seed(seed)
    return SSLModel(randomize_bn(ResNetTrunk(BasicBlock, [1, 1, 1, 1], width=4), seed=seed), None,
                    input_size=32).eval()


def slow_grid(model, x1, x2, window=12, stride=10):
    """Conditional occlusion of ``x1`` by a plain loop over the user's own model (no private copy)."""
    fill = model.fill_value.view(1, 3, 1, 1)
    with torch.no_grad():
        base, z2 = cos(model(x1), model(x2)), model(x2)
        n = (x1.shape[2] - window) // stride + 1
        out = torch.zeros(n, n)
        for i in range(n):
            for j in range(n):
                o = x1.clone()
                o[:, :, i * stride:i * stride + window, j * stride:j * stride + window] = fill
                out[i, j] = base - cos(model(o), z2)
    return out


def occlusion_grid(model, x1, x2):
    return ConditionalOcclusion(model).attribute((x1, x2), 12, 10, grid=True)[0][0]


def test_copy_is_reused_and_rebuilt_after_updates_that_bypass_the_version_counter():
    model = small_model()
    x1, x2 = arange_image(1, 32, 32), arange_image(1, 32, 32, offset=5)
    first, traced = private_trunk(model.trunk)
    assert traced and private_trunk(model.trunk)[0] is first  # unchanged: the cached copy
    conv = model.trunk.conv1
    version = conv.weight._version
    with torch.no_grad():
        conv.weight.data.mul_(-1.5)  # an EMA-style update through .data: the version counter stays
    assert conv.weight._version == version
    assert private_trunk(model.trunk)[0] is not first
    torch.testing.assert_close(occlusion_grid(model, x1, x2), slow_grid(model, x1, x2), atol=2e-6, rtol=1e-4)
    # a BatchNorm statistic (a buffer, folded into the copy's convolution) and a replaced parameter
    second = private_trunk(model.trunk)[0]
    model.trunk.bn1.running_mean.data += 0.25
    third = private_trunk(model.trunk)[0]
    assert third is not second
    model.trunk.conv1.weight = nn.Parameter(model.trunk.conv1.weight.detach() * 0.5)
    assert private_trunk(model.trunk)[0] is not third
    torch.testing.assert_close(occlusion_grid(model, x1, x2), slow_grid(model, x1, x2), atol=2e-6, rtol=1e-4)


def test_two_threads_at_once_get_their_own_correct_maps():
    model, other = small_model(0), small_model(1)
    pairs = [(arange_image(1, 32, 32, offset=k), arange_image(1, 32, 32, offset=k + 7)) for k in range(3)]
    jobs = [(model, *pairs[0]), (model, *pairs[1]), (other, *pairs[2]), (other, *pairs[0])]
    expected = [slow_grid(m, a, b) for m, a, b in jobs]
    results, errors = [None] * len(jobs), []
    start = threading.Barrier(len(jobs))

    def work(k):
        try:
            start.wait()
            for _ in range(2):
                results[k] = occlusion_grid(*jobs[k])
        except Exception as error:  # noqa: BLE001  reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for got, want in zip(results, expected):
        torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-4)


def test_occlusion_leaves_the_users_model_as_it_was():
    model = small_model()
    model.train()
    model.trunk.layer1.requires_grad_(False)
    model.trunk.layer2.register_forward_hook(lambda *args: None)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    modules = list(model.modules())
    ConditionalOcclusion(model).attribute((arange_image(1, 32, 32), arange_image(1, 32, 32, offset=3)), 12, 10)
    assert list(model.modules()) == modules and all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == flags and not all(flags) and any(flags)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]) and value.is_contiguous(), key
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.trunk.modules())
    assert len(model.trunk.layer2._forward_hooks) == 1


def test_preview_stride_tiles_the_image():
    assert preview_stride(28, [112, 112]) == 28  # 4 x 4 windows
    assert preview_stride(32, [112, 112]) == 20  # 32 leaves a 16 px margin; 20 tiles 112 exactly
    assert preview_stride(30, [112, 100]) == 15 and preview_stride(7, [20]) == 3  # no exact tiling: window // 2
    for window, sizes in [(28, [112, 112]), (32, [112, 112]), (22, [112, 96]), (64, [224, 224])]:
        stride = preview_stride(window, sizes)
        assert window // 2 <= stride <= window
        assert all((side - window) % stride == 0 for side in sizes) or stride == window // 2


def test_tracing_leaves_modules_running_in_other_threads_alone():
    """``torch.fx`` patches ``nn.Module.__call__`` process-wide while it traces: a module another thread
    runs meanwhile must run normally (not be sent to the tracer)."""
    tracing, finished = threading.Event(), threading.Event()

    class Pausing(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            if isinstance(x, torch.fx.Proxy):  # only while being traced: let the other thread run now
                tracing.set()
                finished.wait(10)
            return self.conv(x)

    seen = []

    def other():
        tracing.wait(10)
        try:
            net = nn.Sequential(nn.Conv2d(3, 2, 1), nn.ReLU())
            seen.append(tuple(net(torch.ones(1, 3, 2, 2)).shape))
        except Exception as error:  # noqa: BLE001  reported by the assertion below
            seen.append(error)
        finished.set()

    thread = threading.Thread(target=other)
    thread.start()
    trunk = Pausing().eval()
    private, traced = private_trunk(trunk)
    thread.join()
    assert seen == [(1, 2, 2, 2)]
    assert traced and isinstance(private, torch.fx.GraphModule)
    x = torch.rand(1, 3, 4, 4)
    torch.testing.assert_close(private(x), trunk(x))
