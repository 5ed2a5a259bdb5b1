"""Winograd F(4x4, 3x3) convolution of the incremental engine: exactness, dispatch, buffers, threads."""
from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F

from ssl_widgets.attr import ConditionalOcclusion
from ssl_widgets.attr import _winograd as wg
from ssl_widgets.models import load_model

#: Winograd F(4x4, 3x3) in float32 against the direct convolution, as a fraction of the output's largest
#: magnitude, on random 128-channel inputs: median about 6e-6, largest 1.2e-5 over 150 random draws of
#: the shapes below (so 1e-5 fails about one draw in a hundred). Random inputs are seeded as well.
RANDOM_INPUT_BOUND = 2e-5


def _arange_input(n: int, c: int, h: int, w: int) -> torch.Tensor:
    return (torch.arange(n * c * h * w, dtype=torch.float32).view(n, c, h, w) % 13 - 6) / 6


def _arange_weight(c_out: int, c_in: int) -> torch.Tensor:
    return (torch.arange(c_out * c_in * 9, dtype=torch.float32).view(c_out, c_in, 3, 3) % 7 - 3) / (3 * c_in)


def test_one_tile_matches_a_plain_loop():
    """One 6x6 input, one channel: the 4x4 outputs are the 3x3 correlations, summed by hand."""
    x = torch.arange(36, dtype=torch.float32).view(1, 1, 6, 6)
    w = torch.arange(9, dtype=torch.float32).view(1, 1, 3, 3) - 4
    out = wg.winograd_conv3x3(x, wg.transform_weight(w), torch.tensor([0.5]))
    expected = torch.zeros(4, 4)
    for i in range(4):
        for j in range(4):
            expected[i, j] = sum(float(x[0, 0, i + a, j + b] * w[0, 0, a, b]) for a in range(3) for b in range(3)) + 0.5
    assert out.shape == (1, 1, 4, 4)
    torch.testing.assert_close(out[0, 0], expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("size", [(3, 3), (6, 6), (9, 9), (10, 10), (5, 8), (7, 13), (16, 16)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_equals_direct_convolution(size, with_bias):
    """Any map size (partial last tiles included), with and without bias, against float64."""
    x = _arange_input(3, 5, *size)
    w = _arange_weight(4, 5)
    bias = torch.linspace(-1, 1, 4) if with_bias else None
    out = wg.winograd_conv3x3(x, wg.transform_weight(w), bias)
    exact = F.conv2d(x.double(), w.double(), None if bias is None else bias.double())
    assert out.shape == exact.shape and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert float((out.double() - exact).abs().max()) <= 1e-5 * float(exact.abs().max())


def test_any_memory_layout_and_offset():
    """Channels-last, contiguous and a sliced view (non-zero storage offset) give the same values."""
    base = _arange_input(2, 8, 14, 14)
    w = _arange_weight(6, 8)
    u = wg.transform_weight(w)
    view = base[:, :, 3:12, 2:11]
    exact = F.conv2d(view, w)
    for x in (view, view.contiguous(), view.contiguous(memory_format=torch.channels_last)):
        torch.testing.assert_close(wg.winograd_conv3x3(x, u, None), exact, rtol=0, atol=1e-5)


def _count_winograd(monkeypatch) -> list[int]:
    calls = []
    original = wg.winograd_conv3x3

    def counted(x, u, bias):
        calls.append(x.shape[2])
        return original(x, u, bias)

    monkeypatch.setattr(wg, "winograd_conv3x3", counted)
    return calls


def test_runner_chooses_winograd_only_where_it_applies(monkeypatch):
    calls = _count_winograd(monkeypatch)
    g = torch.Generator().manual_seed(0)
    w = torch.randn(128, 128, 3, 3, generator=g) / 30
    x_small, x_large = torch.randn(2, 128, 9, 9, generator=g), torch.randn(2, 128, 12, 12, generator=g)
    run = wg.conv_runner(w, None, (1, 1), (1, 1), 1)
    exact = F.conv2d(x_small, w)
    assert float((run(x_small) - exact).abs().max()) <= RANDOM_INPUT_BOUND * float(exact.abs().max())
    assert calls == [9]
    torch.testing.assert_close(run(x_large), F.conv2d(x_large, w))  # 10x10 outputs: the direct kernel
    assert calls == [9]
    with pytest.raises(RuntimeError):  # another dtype than the weight's: PyTorch's kernel, and its error
        run(x_small.double())
    assert calls == [9]


@pytest.mark.parametrize("reason, weight, stride, dilation, groups", [
    ("stride 2", torch.randn(128, 128, 3, 3), (2, 2), (1, 1), 1),
    ("dilation", torch.randn(128, 128, 3, 3), (1, 1), (2, 2), 1),
    ("groups", torch.randn(128, 64, 3, 3), (1, 1), (1, 1), 2),
    ("few channels", torch.randn(64, 64, 3, 3), (1, 1), (1, 1), 1),
    ("5x5 kernel", torch.randn(128, 128, 5, 5), (1, 1), (1, 1), 1),
    ("float64", torch.randn(128, 128, 3, 3, dtype=torch.float64), (1, 1), (1, 1), 1),
])
def test_ineligible_convolutions_run_directly(reason, weight, stride, dilation, groups):
    assert not wg.eligible(weight, stride, dilation, groups), reason
    run = wg.conv_runner(weight, None, stride, dilation, groups)
    x = torch.randn(2, weight.shape[1] * groups, 9, 9, dtype=weight.dtype)
    torch.testing.assert_close(run(x), F.conv2d(x, weight, None, stride, 0, dilation, groups))


def test_workspace_reuses_buffers_and_leaves_nothing():
    u, x = wg.transform_weight(_arange_weight(4, 3)), _arange_input(2, 3, 9, 9)
    without = wg.winograd_conv3x3(x, u, None)
    assert getattr(wg._LOCAL, "buffers", None) is None
    with wg.workspace():
        first = wg.winograd_conv3x3(x, u, None)
        held = dict(wg._LOCAL.buffers)
        with wg.workspace():  # nested: the outer buffers stay
            second = wg.winograd_conv3x3(x, u, None)
        assert all(wg._LOCAL.buffers[k] is v for k, v in held.items()) and held
    assert wg._LOCAL.buffers is None
    torch.testing.assert_close(first, without, rtol=0, atol=0)
    torch.testing.assert_close(second, without, rtol=0, atol=0)
    assert first.data_ptr() != second.data_ptr()  # results never live in a reused buffer
    with pytest.raises(RuntimeError), wg.workspace():
        raise RuntimeError("boom")
    assert wg._LOCAL.buffers is None


def test_two_threads_with_their_own_workspaces():
    shapes = [(2, 128, 9, 9), (3, 128, 7, 10)]
    g = torch.Generator().manual_seed(1)
    w = torch.randn(128, 128, 3, 3, generator=g) / 30
    run = wg.conv_runner(w, None, (1, 1), (1, 1), 1)
    inputs = [torch.randn(s, generator=g) for s in shapes]
    results: dict[int, list[torch.Tensor]] = {0: [], 1: []}

    def work(k: int) -> None:
        with wg.workspace():
            for _ in range(5):
                results[k].append(run(inputs[k]))

    threads = [threading.Thread(target=work, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in (0, 1):
        exact = F.conv2d(inputs[k], w)
        for out in results[k]:
            assert float((out - exact).abs().max()) <= RANDOM_INPUT_BOUND * float(exact.abs().max())


def test_occlusion_map_with_winograd_matches_the_direct_kernels(monkeypatch):
    """The shipped model's deep stage runs by Winograd inside occlusion; the map stays within 1e-5."""
    model = load_model("tiny-simclr")
    x1 = _arange_input(1, 3, 112, 112) / 2 + 0.5
    x2 = x1.flip(-1)
    calls = _count_winograd(monkeypatch)
    fast = ConditionalOcclusion(model).attribute((x1, x2), 28, 14)
    assert calls, "the engine did not use the Winograd convolution"
    monkeypatch.setattr(wg, "MIN_CHANNELS", 10 ** 6)  # every convolution on PyTorch's kernel
    calls.clear()
    direct = ConditionalOcclusion(model).attribute((x1, x2), 28, 14)
    assert not calls
    for a, b in zip(fast, direct):
        assert float(b.abs().max()) > 1e-3  # an informative map
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
