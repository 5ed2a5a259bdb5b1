"""BiLRP (``bilrp``): against an explicit loop over LRP of each embedding dimension, conservation, the random
projection, refusals and the model's state."""
import pytest
import torch
import torch.nn.functional as F
from helpers import arange_image, cos, seeded_init, small_resnet, write_image_folder
from torch import nn

from ssl_widgets.attr import JOINT_METHOD_NAMES, get_method
from ssl_widgets.attr.applicability import not_applicable
from ssl_widgets.attr.bilrp import BiLRP, random_projection
from ssl_widgets.attr.engine import Cancelled
from ssl_widgets.attr.joint import patch_boxes
from ssl_widgets.models import SSLModel


def relu_model():
    """Bias-free conv -> ReLU -> global average pooling -> bias-free linear head (LRP-0 conserves exactly)."""
    trunk = nn.Sequential(seeded_init(nn.Conv2d(3, 6, 3, padding=1, bias=False), 0), nn.ReLU())
    head = seeded_init(nn.Linear(6, 4, bias=False), 1)
    return SSLModel(trunk, head, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3), input_size=8).eval()


def pair(size=8, batch=1):
    g = torch.Generator().manual_seed(3)
    return torch.rand(batch, 3, size, size, generator=g), torch.rand(batch, 3, size, size, generator=g)


def hand_lrp0(model, x, m, grid):
    """LRP-0 of embedding dimension ``m`` of :func:`relu_model`, written out layer by layer, per patch."""
    conv, head = model.trunk[0], model.head.weight.detach()
    xn = model.normalize(x)[0]
    pre = F.conv2d(xn[None], conv.weight.detach(), padding=1)[0]  # (C, H, W)
    act = pre.clamp(min=0)
    pooled = act.mean((1, 2))
    r_pooled = head[m] * pooled  # linear layer: a_c w_mc (sums to z_m)
    totals = act.sum((1, 2))
    r_act = torch.where(totals[:, None, None] > 0, r_pooled[:, None, None] * act / totals.clamp(min=1e-30)[:, None, None],
                        torch.zeros_like(act))  # average pooling: in proportion to the activations
    ratio = torch.where(pre != 0, r_act / torch.where(pre != 0, pre, torch.ones_like(pre)), torch.zeros_like(pre))
    r_input = xn * F.conv_transpose2d(ratio[None], conv.weight.detach(), padding=1)[0]  # conv layer: x_i w_ij R_j / z_j
    pixels = r_input.sum(0)
    return torch.stack([pixels[y0:y1, x0:x1].sum() for y0, x0, y1, x1 in patch_boxes(tuple(x.shape[2:]), grid).tolist()])


def test_bilrp_equals_an_explicit_double_loop_over_lrp0_of_each_dimension():
    model = relu_model()
    x1, x2 = pair()
    grid = (4, 4)
    result = BiLRP(model).attribute((x1, x2), grid=grid, composite="lrp0", batch_size=3)
    with torch.no_grad():
        z1, z2 = model(x1)[0], model(x2)[0]
    expected = torch.zeros(16, 16)
    for m in range(z1.shape[0]):
        r1, r2 = hand_lrp0(model, x1, m, grid), hand_lrp0(model, x2, m, grid)
        assert float(r1.sum()) == pytest.approx(float(z1[m]), abs=1e-5)  # the hand-written rules conserve
        for p in range(16):
            for q in range(16):
                expected[p, q] += r1[p] * r2[q]
    expected /= z1.norm() * z2.norm()
    # measured max |diff| 4e-9 (relevances up to 0.03)
    torch.testing.assert_close(result.relevance[0], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(result.similarity, cos(z1, z2)[None])


def zennit_loop(model, x, composite, grid):
    """Per dimension m, zennit's own Gradient attributor with the output relevance one-hot(m) * z."""
    from zennit.attribution import Gradient

    class Embedding(nn.Module):
        def __init__(self):
            super().__init__()
            self.model, self.pool = model, nn.AdaptiveAvgPool2d(1)

        def forward(self, a):
            return self.model.head(self.pool(self.model.run_trunk(a)).flatten(1))

    xn = model.normalize(x)
    rows = []
    with torch.no_grad():
        dim = model(x).shape[1]
    for m in range(dim):
        one_hot = torch.eye(dim)[m]
        with Gradient(model=Embedding(), composite=composite) as attributor:
            _, relevance = attributor(xn, lambda out, one_hot=one_hot: out * one_hot)
        pixels = relevance[0].sum(0)
        rows.append(torch.stack([pixels[y0:y1, x0:x1].sum()
                                 for y0, x0, y1, x1 in patch_boxes(tuple(x.shape[2:]), grid).tolist()]))
    return torch.stack(rows)


@pytest.fixture(scope="module")
def resnet_case():
    """A small ResNet (BasicBlocks, BatchNorm, an MLP head with BatchNorm: canonizers needed), a 16 px pair and
    its full BiLRP result under the default composite."""
    model = small_resnet()
    x1, x2 = pair(16)
    return model, x1, x2, BiLRP(model).attribute((x1, x2), grid=4, batch_size=4)


def test_bilrp_on_a_resnet_equals_a_loop_over_zennits_attributor_per_dimension(resnet_case):
    from zennit.composites import EpsilonPlusFlat
    from zennit.torchvision import ResNetCanonizer

    model, x1, x2, result = resnet_case
    r1, r2 = (zennit_loop(model, x, EpsilonPlusFlat(canonizers=[ResNetCanonizer()]), (4, 4)) for x in (x1, x2))
    with torch.no_grad():
        norms = model(x1).norm() * model(x2).norm()
    expected = sum(torch.outer(r1[m], r2[m]) for m in range(r1.shape[0])) / norms
    # measured max |diff| 3e-8 (relevances up to 0.15)
    torch.testing.assert_close(result.relevance[0], expected, atol=1e-5, rtol=0)


def test_relevances_sum_to_the_cosine_for_lrp0_on_a_bias_free_relu_net():
    model = relu_model()
    x1, x2 = pair(batch=2)
    result = BiLRP(model).attribute((x1, x2), grid=2, composite="lrp0")
    expected = cos(model(x1), model(x2))
    # measured |sum - cos| 0 to 1.2e-7 (float32 rounding; zennit's default pooling stabiliser 1e-6 gave 2e-6);
    # the reported remainder is that difference
    torch.testing.assert_close(result.relevance.sum((1, 2)), expected, atol=1e-6, rtol=0)
    assert max(abs(r) for r in result.meta["remainder"]) < 1e-6


def test_marginals_plus_the_remainder_give_the_similarity_with_biases():
    model = small_resnet()
    x1, x2 = pair(16, batch=2)
    result = BiLRP(model).attribute((x1, x2), grid=4, composite="epsilon")
    m1, m2 = result.marginals(pixels=False)
    remainder = torch.tensor(result.meta["remainder"])
    torch.testing.assert_close(m1.sum((1, 2)) + remainder, result.similarity, atol=1e-6, rtol=0)
    torch.testing.assert_close(m2.sum((1, 2)) + remainder, result.similarity, atol=1e-6, rtol=0)
    assert remainder.abs().min() > 1e-3  # the BatchNorm shifts (merged into biases) absorb relevance
    assert result.meta["composite"] == "epsilon" and result.meta["directions"] == 6


def test_an_orthogonal_projection_with_k_equal_to_d_reproduces_the_full_result(resnet_case):
    model, x1, x2, full = resnet_case
    seeded = BiLRP(model).attribute((x1, x2), grid=4, projection=6, generator=torch.Generator().manual_seed(5))
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(1)))
    given = BiLRP(model).attribute((x1, x2), grid=4, projection=q)
    scale = float(full.relevance.abs().max())
    for other in (seeded, given):  # measured max |diff| 1.5e-8 of relevances up to 0.15
        torch.testing.assert_close(other.relevance, full.relevance, atol=1e-5 * scale, rtol=0)
    assert seeded.meta["directions"] == 6


def test_a_smaller_projection_is_seeded_and_unbiased_in_its_directions(resnet_case):
    model, x1, x2, _ = resnet_case
    runs = [BiLRP(model).attribute((x1, x2), grid=4, projection=2, generator=torch.Generator().manual_seed(s))
            for s in (7, 7, 8)]
    torch.testing.assert_close(runs[0].relevance, runs[1].relevance, atol=0, rtol=0)
    assert not torch.allclose(runs[0].relevance, runs[2].relevance)
    w = random_projection(2, 6, torch.Generator().manual_seed(0))
    torch.testing.assert_close(w @ w.T, 3 * torch.eye(2), atol=1e-5, rtol=0)  # orthogonal rows of norm sqrt(D/k)


def tiny_vit():
    with torch.random.fork_rng(devices=[]):
        return SSLModel.from_timm("vit_tiny_patch16_224", depth=1, input_size=32)


def test_vision_transformers_are_refused_with_the_reason():
    vit = tiny_vit()
    x1, x2 = pair(32)
    with pytest.raises(ValueError, match=r"does not apply to .*Vision Transformer.*lxt.*timm"):
        BiLRP(vit).attribute((x1, x2), grid=2)
    assert "lxt" in not_applicable("bilrp", vit) and not_applicable("bilrp", small_resnet()) is None


@pytest.mark.parametrize("settings, message", [
    ({"projection": 0}, r"projection must be a number of directions k with 1 <= k <= 4 .* got 0"),
    ({"projection": 5}, r"1 <= k <= 4 \(the embedding's dimensions\), got 5"),
    ({"projection": True}, r"projection must be None, an int k or a \(k, 4\) tensor, got bool"),
    ({"projection": 2.0}, r"got float"),
    ({"projection": torch.eye(3)}, r"projection must be a \(k, 4\) matrix .* got shape \(3, 3\)"),
    ({"projection": torch.full((2, 4), float("nan"))}, r"non-finite"),
    ({"composite": "gamma"}, r"composite must be one of epsilon-plus-flat, .* got 'gamma'"),
    ({"composite": 3}, r"or a zennit Composite, got int"),
    ({"epsilon": 0.0}, r"epsilon must be a positive number, got 0.0"),
    ({"batch_size": 0}, r"batch_size must be a positive int, got 0"),
])
def test_bad_settings_are_refused_by_name(settings, message):
    with pytest.raises(ValueError, match=message):
        BiLRP(relu_model()).attribute(pair(), grid=2, **settings)


def model_state(model):
    return ({n: m.training for n, m in model.named_modules()}, {n: p.requires_grad for n, p in model.named_parameters()},
            {n: p.detach().clone() for n, p in model.state_dict().items()},
            {n: (list(m._forward_hooks), list(m._forward_pre_hooks), list(m._backward_hooks), "forward" in m.__dict__)
             for n, m in model.named_modules()})


def assert_state(model, before):
    after = model_state(model)
    assert after[0] == before[0] and after[1] == before[1] and after[3] == before[3]
    assert after[2].keys() == before[2].keys()
    for name, value in before[2].items():
        assert torch.equal(after[2][name], value), name


@pytest.mark.parametrize("cancel", [False, True])
def test_model_state_hooks_and_parameters_are_restored_even_when_the_method_raises(cancel):
    model = small_resnet().train()
    model.head.requires_grad_(False)
    model.trunk.conv1.register_forward_hook(lambda *_: None)
    before = model_state(model)
    with torch.no_grad():
        embedding = model.eval()(arange_image(1, 16, 16))
    model.train()

    def stop(done, _total):
        if cancel and done >= 1:
            raise Cancelled()

    if cancel:
        with pytest.raises(Cancelled):
            BiLRP(model).attribute(pair(16), grid=2, batch_size=3, on_progress=stop)
    else:
        BiLRP(model).attribute(pair(16), grid=2, batch_size=3, on_progress=stop)
    assert_state(model, before)  # BatchNorm merged back, canonizers' sum modules and forward overrides gone
    assert not any("canonizer" in name for name, _ in model.named_modules())
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(arange_image(1, 16, 16)), embedding, atol=0, rtol=0)


def test_bilrp_is_a_listed_joint_method():
    assert "bilrp" in JOINT_METHOD_NAMES and get_method("bilrp") == (BiLRP, {})


def test_correspondence_benchmark_runs_bilrp_and_says_na_for_a_vit(tmp_path):
    from ssl_widgets.evaluate.correspondence import evaluate_correspondence

    (tmp_path / "images").mkdir()
    write_image_folder(tmp_path / "images", n=1, height=32, width=32)
    table = evaluate_correspondence(str(tmp_path / "images"), small_resnet(), ["joint-gradient", "bilrp"], pairs=1,
                                    grid=4, out=str(tmp_path / "cnn"))
    assert 0.0 <= table["bilrp"]["accuracy"] <= 1.0 and table["bilrp"]["patches"] == table["joint-gradient"]["patches"]
    assert "| bilrp |" in (tmp_path / "cnn" / "correspondence.md").read_text()
    vit = evaluate_correspondence(str(tmp_path / "images"), tiny_vit(), ["joint-gradient", "bilrp"], pairs=1, grid=2,
                                  out=str(tmp_path / "vit"))
    assert vit["bilrp"]["accuracy"] is None and "lxt" in vit["bilrp"]["refused"]
    assert vit["joint-gradient"]["accuracy"] is not None
    text = (tmp_path / "vit" / "correspondence.md").read_text()
    assert "| bilrp | NA |" in text and "NA, bilrp: method 'bilrp' does not apply" in text


def test_the_explorers_correspondence_tab_offers_bilrp_clicks():
    from ssl_widgets.widgets import Explorer

    model = small_resnet()
    e = Explorer(model, threaded=False, display_size=64, method="correspondence", images=("chelsea", "coffee"))
    e._controls().joint_method.value = "bilrp"
    e.click(0, {"dataX": 40, "dataY": 20})
    x1, x2 = e.current_pair()
    expected = BiLRP(model).attribute((x1, x2), grid=7)
    cell = (int(20 / 64 * 7), int(40 / 64 * 7))
    assert e.last_error is None and e.maps[0] is None
    torch.testing.assert_close(e.maps[1], expected.over_other(cell))
