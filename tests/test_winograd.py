"""Winograd F(4x4, 3x3) and F(7x7, 3x3) convolution of the incremental engine: exactness, dispatch,
cached weight transforms, buffers, threads."""
from __future__ import annotations

import gc
import threading
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F

from ssl_widgets.attr import ConditionalOcclusion
from ssl_widgets.attr._occlusion_engine import winograd as wg
from ssl_widgets.models import load_model

#: Winograd in float32 against the direct convolution, as a fraction of the output's largest magnitude, on
#: random 128- and 256-channel inputs of the shapes below (150 seeded draws): F(4x4, 3x3) median 6.6e-6,
#: largest 1.03e-5; F(7x7, 3x3) median 5.1e-5, largest 1.11e-4 (its larger tiles amplify rounding more).
RANDOM_INPUT_BOUND = {4: 2e-5, 7: 2e-4}
#: the same on the arange inputs below (largest 3.4e-6 and 3.4e-5 over the sizes tested)
ARANGE_INPUT_BOUND = {4: 1e-5, 7: 1e-4}


def _arange_input(n: int, c: int, h: int, w: int) -> torch.Tensor:
    return (torch.arange(n * c * h * w, dtype=torch.float32).view(n, c, h, w) % 13 - 6) / 6


def _arange_weight(c_out: int, c_in: int) -> torch.Tensor:
    return (torch.arange(c_out * c_in * 9, dtype=torch.float32).view(c_out, c_in, 3, 3) % 7 - 3) / (3 * c_in)


@pytest.mark.parametrize("tile", wg.TILES)
def test_one_tile_matches_a_plain_loop(tile):
    """One (tile+2)^2 input, one channel: the tile x tile outputs are the 3x3 correlations, summed by hand."""
    side = tile + 2
    x = torch.arange(side * side, dtype=torch.float32).view(1, 1, side, side) / side
    w = torch.arange(9, dtype=torch.float32).view(1, 1, 3, 3) - 4
    out = wg.winograd_conv3x3(x, wg.transform_weight(w, tile), torch.tensor([0.5]))
    expected = torch.zeros(tile, tile)
    for i in range(tile):
        for j in range(tile):
            expected[i, j] = sum(float(x[0, 0, i + a, j + b] * w[0, 0, a, b]) for a in range(3) for b in range(3)) + 0.5
    assert out.shape == (1, 1, tile, tile)
    torch.testing.assert_close(out[0, 0], expected, rtol=0, atol=1e-4)


def test_toom_cook_builds_the_minimal_filter_by_hand():
    """F(2, 3) from the points 0, 1, -1 and infinity: four products give d0 - d2 and d1 - d3 for g = (1, 0, -1),
    and the matrices are the textbook ones up to how the denominators are split."""
    bt, g, at = wg.toom_cook(["0", "1", "-1"], 2)
    assert at.tolist() == [[1, 1, 1, 0], [0, 1, -1, 1]]
    assert bt.tolist() == [[-1, 0, 1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, -1, 0, 1]]
    assert g.tolist() == [[-1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]]
    d = torch.tensor([1.0, 2, 3, 4], dtype=torch.float64)
    assert (at @ ((g @ torch.tensor([1.0, 0, -1], dtype=torch.float64)) * (bt @ d))).tolist() == [-2, -2]


@pytest.mark.parametrize("points, m", [(["0", "1", "-1", "2", "-2"], 4), (wg.F7_POINTS, 7),
                                       (["0", "1/2", "-3"], 2)])
def test_toom_cook_correlates_every_basis_input(points, m):
    """``A^T [(G g) * (B^T d)]`` is the correlation ``sum_k g_k d_(i+k)`` for every unit ``d`` and ``g`` (exact
    rationals: float64 within 1e-9)."""
    bt, g, at = wg.toom_cook(points, m)
    n = m + 2
    for position in range(n):
        for k in range(3):
            y = at @ ((g @ torch.eye(3, dtype=torch.float64)[k]) * (bt @ torch.eye(n, dtype=torch.float64)[position]))
            expected = torch.tensor([float(position == i + k) for i in range(m)], dtype=torch.float64)
            torch.testing.assert_close(y, expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("points, m, message", [(["0", "1", "1"], 2, "distinct"), (["0", "1"], 2, "needs 3"),
                                                ([Fraction(0), Fraction(1, 2)], 4, "needs 5")])
def test_toom_cook_rejects_bad_points(points, m, message):
    with pytest.raises(ValueError, match=message):
        wg.toom_cook(points, m)


@pytest.mark.parametrize("tile", wg.TILES)
@pytest.mark.parametrize("size", [(3, 3), (6, 6), (9, 9), (10, 10), (5, 8), (7, 13), (16, 16), (17, 11)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_equals_direct_convolution(tile, size, with_bias):
    """Any map size (partial last tiles included), with and without bias, against float64."""
    x = _arange_input(3, 5, *size)
    w = _arange_weight(4, 5)
    bias = torch.linspace(-1, 1, 4) if with_bias else None
    out = wg.winograd_conv3x3(x, wg.transform_weight(w, tile), bias)
    exact = F.conv2d(x.double(), w.double(), None if bias is None else bias.double())
    assert out.shape == exact.shape and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert float((out.double() - exact).abs().max()) <= ARANGE_INPUT_BOUND[tile] * float(exact.abs().max())


def test_any_memory_layout_and_offset():
    """Channels-last, contiguous and a sliced view (non-zero storage offset) give the same values."""
    base = _arange_input(2, 8, 14, 14)
    w = _arange_weight(6, 8)
    view = base[:, :, 3:12, 2:11]
    exact = F.conv2d(view, w)
    for tile in wg.TILES:
        u = wg.transform_weight(w, tile)
        for x in (view, view.contiguous(), view.contiguous(memory_format=torch.channels_last)):
            torch.testing.assert_close(wg.winograd_conv3x3(x, u, None), exact, rtol=0, atol=1e-5 * tile)


def _count_winograd(monkeypatch) -> list[tuple[int, int]]:
    """Record each Winograd call as (input side, output tile side)."""
    calls = []
    original = wg.winograd_conv3x3

    def counted(x, u, bias):
        calls.append((x.shape[2], wg.tile_of(u)))
        return original(x, u, bias)

    monkeypatch.setattr(wg, "winograd_conv3x3", counted)
    return calls


@pytest.mark.parametrize("h_out, w_out, expected", [
    (3, 3, None), (4, 4, 4), (5, 5, 7), (7, 7, 7), (8, 8, 4), (7, 8, 4), (9, 9, None), (10, 10, 4),
    (12, 12, 4), (13, 13, 7), (14, 14, 7), (14, 3, 4), (15, 15, None), (15, 2, None), (0, 5, None)])
def test_choose_tile_takes_the_fewest_weighted_products(h_out, w_out, expected):
    """Direct multiply-adds ``9 h w`` against ``PRODUCT_COST (m+2)^2`` per tile, worked out by hand: at 7x7,
    441 direct against 2.5 * 36 * 4 = 360 for F(4x4) and 2.5 * 81 = 202.5 for F(7x7); at 9x9, 729 against
    810 for either; at 12x12, 1296 against 810 for both (a tie goes to the smaller tile); at 14x3, 378
    against 360 (four F(4x4) tiles) and 405 (two F(7x7) tiles); past 14, direct."""
    assert wg.choose_tile(h_out, w_out) == expected


def test_runner_chooses_winograd_only_where_it_applies(monkeypatch):
    calls = _count_winograd(monkeypatch)
    g = torch.Generator().manual_seed(0)
    w = torch.randn(128, 128, 3, 3, generator=g) / 30
    run = wg.conv_runner(w, None, (1, 1), (1, 1), 1)
    for side, tile in ((9, 7), (12, 4), (16, 7), (11, None), (17, None)):  # outputs 7, 10, 14, 9, 15
        x = torch.randn(2, 128, side, side, generator=g)
        exact = F.conv2d(x, w)
        calls.clear()
        out = run(x)
        assert calls == ([] if tile is None else [(side, tile)]), side
        bound = 1e-6 if tile is None else RANDOM_INPUT_BOUND[tile]
        assert float((out - exact).abs().max()) <= bound * float(exact.abs().max())
    calls.clear()
    with pytest.raises(RuntimeError):  # another dtype than the weight's: PyTorch's kernel, and its error
        run(torch.randn(2, 128, 9, 9, dtype=torch.float64))
    assert calls == []


def test_weight_transforms_are_cached_per_weight_and_version(monkeypatch):
    """Runners built again for one weight (one per engine run) transform it once per tile size; a change in
    place transforms it again; the entry goes when the weight does."""
    transforms = []
    original = wg.transform_weight

    def counted(weight, tile=4):
        transforms.append(tile)
        return original(weight, tile)

    monkeypatch.setattr(wg, "transform_weight", counted)
    g = torch.Generator().manual_seed(3)
    w = torch.randn(128, 128, 3, 3, generator=g) / 30
    x7, x14 = torch.randn(1, 128, 9, 9, generator=g), torch.randn(1, 128, 16, 16, generator=g)
    for _ in range(3):
        run = wg.conv_runner(w, None, (1, 1), (1, 1), 1)
        run(x7), run(x14)
    x8 = torch.randn(1, 128, 10, 10, generator=g)
    run(x8)
    assert transforms == [7, 4]
    w.mul_(2)  # in place: the version counter moves
    out = run(x7)
    assert transforms == [7, 4, 7]
    exact = F.conv2d(x7, w)
    assert float((out - exact).abs().max()) <= RANDOM_INPUT_BOUND[7] * float(exact.abs().max())
    assert id(w) in wg._TRANSFORMED
    key = id(w)
    del w, run
    gc.collect()
    assert key not in wg._TRANSFORMED


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
    shapes = [(2, 128, 9, 9), (3, 128, 10, 10)]  # 7x7 outputs by F(7x7), 8x8 by F(4x4)
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
            assert float((out - exact).abs().max()) <= RANDOM_INPUT_BOUND[7] * float(exact.abs().max())


def test_occlusion_map_with_winograd_matches_the_direct_kernels(monkeypatch):
    """The shipped model's two deep stages run by Winograd inside occlusion (F(7x7) on 14x14 and 7x7); the map stays
    within 1e-5 of the direct kernels' (largest seen 2.6e-6, on the chelsea pair at patch 28, stride 4)."""
    model = load_model("tiny-simclr")
    x1 = _arange_input(1, 3, 112, 112) / 2 + 0.5
    x2 = x1.flip(-1)
    calls = _count_winograd(monkeypatch)
    fast = ConditionalOcclusion(model).attribute((x1, x2), 28, 14)
    assert 7 in {tile for _, tile in calls}, "the engine did not use the F(7x7) Winograd convolution"
    monkeypatch.setattr(wg, "MIN_CHANNELS", 10 ** 6)  # every convolution on PyTorch's kernel
    calls.clear()
    direct = ConditionalOcclusion(model).attribute((x1, x2), 28, 14)
    assert not calls
    for a, b in zip(fast, direct):
        assert float(b.abs().max()) > 1e-3  # an informative map
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_inference_tensors_run_and_are_cached():
    """Weights made under ``torch.inference_mode`` keep no version counter: they still run, once transformed."""
    g = torch.Generator().manual_seed(5)
    with torch.inference_mode():
        w = torch.randn(128, 128, 3, 3, generator=g) / 30
        x = torch.randn(2, 128, 9, 9, generator=g)
        run = wg.conv_runner(w, None, (1, 1), (1, 1), 1)
        first, second = run(x), run(x)
        exact = F.conv2d(x, w)
    assert wg._TRANSFORMED[id(w)][1] is None
    assert float((first - exact).abs().max()) <= RANDOM_INPUT_BOUND[7] * float(exact.abs().max())
    assert torch.equal(first, second)


def test_occlusion_under_inference_mode_matches_the_plain_call():
    """A user calling occlusion inside ``torch.inference_mode`` gets the same map (the private trunk copy
    and its Winograd transforms are then inference tensors)."""
    x1 = _arange_input(1, 3, 112, 112) / 2 + 0.5
    x2 = x1.flip(-1)
    with torch.inference_mode():  # first use of this model object: its private copy is built in here
        inside = ConditionalOcclusion(load_model("tiny-simclr")).attribute((x1, x2), 28, 28)
    plain = ConditionalOcclusion(load_model("tiny-simclr")).attribute((x1, x2), 28, 28)
    for a, b in zip(plain, inside):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
