"""Joint explanations: bilinear gradient decomposition, joint occlusion, views and the benchmark."""
import itertools

import pytest
import torch
import torch.nn.functional as F
from helpers import arange_image, cos, mean_color_model, seeded_init, small_resnet
from torch import nn

from ssl_widgets.attr import JointAttribution, JointGradient, JointOcclusion, get_method
from ssl_widgets.attr.engine import Cancelled
from ssl_widgets.attr.joint import patch_boxes, patch_index
from ssl_widgets.models import SSLModel


def linear_model(normalized=True):
    """A bias-free conv and a bias-free linear head: the embedding is linear in the model's input."""
    trunk = seeded_init(nn.Conv2d(3, 5, 3, padding=1, bias=False), 0)
    head = seeded_init(nn.Linear(5, 4, bias=False), 1)
    kwargs = {"mean": (0.4, 0.5, 0.6), "std": (0.2, 0.25, 0.3)} if normalized else {}
    return SSLModel(trunk, head, input_size=12, **kwargs).eval()


def occlude(x, box, fill):
    y0, x0, y1, x1 = box
    out = x.clone()
    out[:, :, y0:y1, x0:x1] = fill
    return out


# -- JointGradient -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("normalized", [True, False])
@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_bilinear_decomposition_sums_to_cosine_for_linear_model(normalized, mode):
    model = linear_model(normalized)
    x1, x2 = arange_image(2, 12, 12), arange_image(2, 12, 12, offset=4)
    result = JointGradient(model).attribute((x1, x2), grid=(3, 4), mode=mode, batch_size=3)
    assert result.shape == (2, 12, 12)
    assert result.meta["grid1"] == (3, 4) and result.meta["size2"] == (12, 12)
    expected = cos(model(x1), model(x2))
    torch.testing.assert_close(result.similarity, expected)
    torch.testing.assert_close(result.relevance.sum((1, 2)), expected, atol=1e-5, rtol=1e-5)


def slow_joint_gradient(model, x1, x2, grid):
    """One backward per embedding dimension, pixels summed per patch by explicit boxes."""
    rel = []
    for x in (x1, x2):
        a = model.normalize(x).detach().requires_grad_(True)
        z = model.forward_normalized(a)[0]
        rows = []
        for k in range(z.shape[0]):
            (g,) = torch.autograd.grad(z[k], a, retain_graph=True)
            gx = (g * a.detach())[0].sum(0)
            rows.append(torch.stack([gx[y0:y1, c0:c1].sum() for y0, c0, y1, c1 in patch_boxes(x.shape[2:], grid).tolist()]))
        rel.append(torch.stack(rows) / z.detach().norm())
    return rel[0].T @ rel[1]


def test_joint_gradient_matches_a_slow_loop_on_a_resnet():
    model = small_resnet()
    x1, x2 = arange_image(1, 32, 32), arange_image(1, 32, 32, offset=5)
    expected = slow_joint_gradient(model, x1, x2, (3, 3))
    for mode in ("forward", "reverse", "auto"):
        result = JointGradient(model).attribute((x1, x2), grid=3, mode=mode, batch_size=4)
        torch.testing.assert_close(result.relevance[0], expected, atol=1e-6, rtol=1e-4)


def test_joint_gradient_by_hand_for_mean_colour_embedding():
    """z = channel means: R_i(z_k) = sum of channel k over patch i / (H*W)."""
    model = mean_color_model()
    x1, x2 = arange_image(1, 4, 4), arange_image(1, 4, 4, offset=7)
    result = JointGradient(model).attribute((x1, x2), grid=2)
    r1 = x1[0].reshape(3, 2, 2, 2, 2).sum((2, 4)).reshape(3, 4) / 16 / x1.mean((2, 3)).norm()
    r2 = x2[0].reshape(3, 2, 2, 2, 2).sum((2, 4)).reshape(3, 4) / 16 / x2.mean((2, 3)).norm()
    torch.testing.assert_close(result.relevance[0], r1.T @ r2)
    # a linear embedding: exact conservation
    torch.testing.assert_close(result.relevance.sum(), result.similarity[0])


# -- JointOcclusion ------------------------------------------------------------------------------------------------
def slow_joint_occlusion(model, x1, x2, grid, fill):
    boxes = patch_boxes(x1.shape[2:], grid).tolist()
    s = cos(model(x1), model(x2))
    out = torch.zeros(len(boxes), len(boxes))
    for i, bi in enumerate(boxes):
        for j, bj in enumerate(boxes):
            o1, o2 = occlude(x1, bi, fill), occlude(x2, bj, fill)
            out[i, j] = s - cos(model(o1), model(x2)) - cos(model(x1), model(o2)) + cos(model(o1), model(o2))
    return out


@pytest.mark.parametrize("incremental", [True, False])
def test_joint_occlusion_equals_slow_loop(incremental):
    model = small_resnet()
    x1, x2 = arange_image(1, 32, 32), arange_image(1, 32, 32, offset=3)
    with torch.no_grad():
        expected = slow_joint_occlusion(model, x1, x2, (2, 4), model.fill_value.view(1, 3, 1, 1))
    result = JointOcclusion(model).attribute((x1, x2), grid=(2, 4), perturbations_per_eval=3, incremental=incremental)
    assert result.shape == (1, 8, 8)
    torch.testing.assert_close(result.relevance[0], expected, atol=2e-6, rtol=1e-4)
    grey = JointOcclusion(model).attribute((x1, x2), grid=(2, 4), baselines=0.3)
    with torch.no_grad():
        expected_grey = slow_joint_occlusion(model, x1, x2, (2, 4), 0.3)
    torch.testing.assert_close(grey.relevance[0], expected_grey, atol=2e-6, rtol=1e-4)


def context_averaged_slow(model, x1, x2, grid, p, fill):
    """Average of s(S1,S2) - s(S1+i,S2) - s(S1,S2+j) + s(S1+i,S2+j) over independent random contexts."""
    boxes = patch_boxes(x1.shape[2:], grid).tolist()
    n = len(boxes)

    def masked(x, filled):
        out = x.clone()
        for k in filled:
            out = occlude(out, boxes[k], fill)
        return out

    def s(f1, f2):
        return float(cos(model(masked(x1, f1)), model(masked(x2, f2))))

    out = torch.zeros(n, n)
    for i, j in itertools.product(range(n), range(n)):
        others1, others2 = [k for k in range(n) if k != i], [k for k in range(n) if k != j]
        total = 0.0
        for bits1 in itertools.product([0, 1], repeat=n - 1):
            c1 = {k for k, b in zip(others1, bits1) if b}
            w1 = p ** len(c1) * (1 - p) ** (n - 1 - len(c1))
            for bits2 in itertools.product([0, 1], repeat=n - 1):
                c2 = {k for k, b in zip(others2, bits2) if b}
                w2 = p ** len(c2) * (1 - p) ** (n - 1 - len(c2))
                total += w1 * w2 * (s(c1, c2) - s(c1 | {i}, c2) - s(c1, c2 | {j}) + s(c1 | {i}, c2 | {j}))
        out[i, j] = total
    return out


def test_context_averaged_interaction_exhaustive_equals_slow_loop():
    model = mean_color_model()
    x1, x2 = arange_image(1, 4, 4), arange_image(1, 4, 4, offset=6)
    with torch.no_grad():
        expected = context_averaged_slow(model, x1, x2, (1, 3), 0.3, 0.0)
    result = JointOcclusion(model).attribute((x1, x2), grid=(1, 3), context_probability=0.3)
    assert result.meta["estimator"] == "exhaustive"
    torch.testing.assert_close(result.relevance[0], expected, atol=1e-6, rtol=1e-5)


def test_sampling_estimator_converges_to_exhaustive_values():
    model = small_resnet()
    x1, x2 = arange_image(1, 32, 32), arange_image(1, 32, 32, offset=3)
    method = JointOcclusion(model)
    exact = method.attribute((x1, x2), grid=(2, 3), context_probability=0.5).relevance
    errors = []
    for n in (16, 256, 4096):
        sampled = method.attribute((x1, x2), grid=(2, 3), context_probability=0.5, n_samples=n,
                                   perturbations_per_eval=512, generator=torch.Generator().manual_seed(1))
        assert sampled.meta["estimator"] == f"sampled ({n} masks)"
        errors.append(float((sampled.relevance - exact).abs().max()))
    scale = float(exact.abs().max())
    assert errors[2] < errors[1] < errors[0]
    assert errors[2] < 0.05 * scale
    again = method.attribute((x1, x2), grid=(2, 3), context_probability=0.5, n_samples=16,
                             generator=torch.Generator().manual_seed(1))
    assert float((again.relevance - exact).abs().max()) == errors[0]  # seeded


# -- result type ---------------------------------------------------------------------------------------------------
def test_marginals_views_and_top_matches():
    model = small_resnet()
    x1, x2 = arange_image(1, 32, 32), arange_image(1, 32, 32, offset=3)
    result = JointOcclusion(model).attribute((x1, x2), grid=4)
    m1, m2 = result.marginals(pixels=False)
    torch.testing.assert_close(m1, result.relevance.sum(2).view(1, 4, 4))
    torch.testing.assert_close(m2, result.relevance.sum(1).view(1, 4, 4))
    p1, p2 = result.marginals()
    assert p1.shape == (1, 32, 32) and p2.shape == (1, 32, 32)
    assert torch.equal(result.over_other((1, 2)), result.relevance[0, 6].view(4, 4))
    assert torch.equal(result.over_other(5, image=2), result.relevance[0, :, 5].view(4, 4))
    top = result.top_matches(3)
    assert top[0][2] == float(result.relevance.max()) and top[0][2] >= top[1][2] >= top[2][2]
    assert result.relevance[0, top[1][0], top[1][1]] == top[1][2]
    with pytest.raises(ValueError, match="outside the 4x4 grid"):
        result.over_other((4, 0))
    with pytest.raises(ValueError, match="image must be 1 or 2"):
        result.over_other(0, image=3)
    with pytest.raises(ValueError, match="does not fit grids"):
        JointAttribution(torch.zeros(1, 3, 4), torch.zeros(1), {"grid1": (2, 2), "grid2": (2, 2)})


def test_patch_index_covers_uneven_grids():
    index = patch_index((7, 5), (3, 2))
    assert index.max() == 5 and set(index.flatten().tolist()) == set(range(6))
    boxes = patch_boxes((7, 5), (3, 2))
    for k, (y0, x0, y1, x1) in enumerate(boxes.tolist()):
        assert bool((index[y0:y1, x0:x1] == k).all())
    assert int(sum((b[2] - b[0]) * (b[3] - b[1]) for b in boxes.tolist())) == 35


# -- errors and state ----------------------------------------------------------------------------------------------
def test_bad_inputs_raise_clear_errors():
    model = small_resnet()
    x = arange_image(1, 32, 32)
    with pytest.raises(TypeError, match="SSLModel"):
        JointGradient(nn.Identity())
    with pytest.raises(ValueError, match="grid must be positive"):
        JointGradient(model).attribute((x, x), grid=0)
    with pytest.raises(ValueError, match="more cells than the image"):
        JointOcclusion(model).attribute((x, x), grid=(40, 2))
    with pytest.raises(TypeError, match="grid must be an int or a pair"):
        JointGradient(model).attribute((x, x), grid="7")
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        JointGradient(model).attribute((x, x), grid=2, batch_size=0)
    with pytest.raises(ValueError, match="mode must be"):
        JointGradient(model).attribute((x, x), grid=2, mode="sideways")
    with pytest.raises(ValueError, match="context_probability must be in"):
        JointOcclusion(model).attribute((x, x), grid=2, context_probability=1.0)
    with pytest.raises(ValueError, match="n_samples must be"):
        JointOcclusion(model).attribute((x, x), grid=2, context_probability=0.5, n_samples=1)
    with pytest.raises(ValueError, match="give n_samples"):
        JointOcclusion(model).attribute((x, x), grid=7, context_probability=0.5)
    with pytest.raises(ValueError, match="perturbations_per_eval"):
        JointOcclusion(model).attribute((x, x), grid=2, perturbations_per_eval=0)
    with pytest.raises((ValueError, TypeError)):
        JointOcclusion(model).attribute((x, x[:, :2]), grid=2)


@pytest.mark.parametrize("cls", [JointGradient, JointOcclusion])
def test_state_restored_after_success_and_cancel(cls):
    model = small_resnet().train()
    model.head[0].weight.requires_grad_(False)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    x1, x2 = arange_image(1, 32, 32), arange_image(1, 32, 32, offset=2)
    cls(model).attribute((x1, x2), grid=2)
    assert model.training and all(m.training for m in model.modules())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    calls = []

    def cancel(done, total):
        calls.append((done, total))
        if done >= 1:
            raise Cancelled()

    with pytest.raises(Cancelled):
        cls(model).attribute((x1, x2), grid=2, on_progress=cancel, **({"batch_size": 1} if cls is JointGradient
                                                                       else {"perturbations_per_eval": 1}))
    assert calls[0][0] == 0 and calls[-1][0] == 1
    assert model.training and {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(not m._forward_hooks for m in model.modules())


def test_registry_names():
    assert get_method("joint-gradient") == (JointGradient, {})
    assert get_method("joint-occlusion") == (JointOcclusion, {})


# -- views, CLI and the correspondence benchmark ------------------------------------------------------------------
def test_top_matches_figure_and_cli(tmp_path, capsys):
    from matplotlib.figure import Figure

    from ssl_widgets.cli import main
    from ssl_widgets.plotting_joint import top_matches_figure

    model = small_resnet()
    x1, x2 = arange_image(1, 32, 32), arange_image(1, 32, 32, offset=3)
    result = JointOcclusion(model).attribute((x1, x2), grid=4)
    fig = top_matches_figure(x1, x2, result, k=5, title="t")
    assert isinstance(fig, Figure)
    lines = [line for line in fig.axes[0].lines if line.get_linestyle() == "-"]
    assert len(lines) == 5
    out = tmp_path / "joint.png"
    assert main(["explain", "chelsea", "--method", "joint-gradient", "--model", "tiny-simclr", "--grid", "4",
                 "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG" and "wrote" in capsys.readouterr().out


def test_geometric_view_mapping_is_exact():
    from ssl_widgets.evaluate.correspondence import (
        correspondence_hits,
        geometric_view,
        map_points,
    )

    x = torch.rand(1, 3, 28, 28)
    x2, params = geometric_view(x, torch.Generator().manual_seed(3))
    assert x2.shape == x.shape
    # an oracle that matches every patch to the cell of its true position scores 100%
    grid = (7, 7)
    boxes = patch_boxes((28, 28), grid).float()
    centres = torch.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], 1)
    mapped, inside = map_points(centres, params)
    true = (mapped[:, 0] * 7 / 28).floor().clamp(0, 6) * 7 + (mapped[:, 1] * 7 / 28).floor().clamp(0, 6)
    oracle = F.one_hot(true.long(), 49).float()
    result = correspondence_hits(oracle, params, grid)
    assert result["hits"] == result["valid"] == float(inside.sum()) > 0
    assert 0 < result["chance"] < result["valid"]
    # the mapping itself: a bright dot moves where map_points says
    dot = torch.zeros(1, 3, 28, 28)
    dot[:, :, 10:12, 14:16] = 1
    moved, p = geometric_view(dot, torch.Generator().manual_seed(3))
    points, ok = map_points(torch.tensor([[11.0, 15.0]]), p)
    y, x_ = points[0].tolist()
    peak = moved[0, 0].argmax()
    assert bool(ok) and abs(int(peak) // 28 - y) <= 2 and abs(int(peak) % 28 - x_) <= 2


def test_correspondence_benchmark_on_a_folder(tmp_path):
    from PIL import Image

    from ssl_widgets.evaluate.cli import main

    for k in range(2):
        array = (arange_image(1, 32, 32, offset=k)[0].permute(1, 2, 0).numpy() * 255).astype("uint8")
        Image.fromarray(array).save(tmp_path / f"img{k}.png")
    assert main(["--task", "correspondence", "--data", str(tmp_path), "--model", "tiny-simclr", "--pairs", "2",
                 "--grid", "4", "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    table = (tmp_path / "out" / "correspondence.md").read_text()
    for name in ("feature-cosine", "joint-gradient", "joint-occlusion"):
        assert f"| {name} |" in table
    assert len((tmp_path / "out" / "correspondence.jsonl").read_text().splitlines()) == 6
