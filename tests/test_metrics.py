"""Pair metrics against plain loops written from methods.md section 8, and their semantics."""
import pytest
import torch
import torch.nn.functional as F
from helpers import arange_image, cos, small_resnet
from torchvision.transforms.functional import gaussian_blur

from ssl_widgets._validation import BeyondRangePair
from ssl_widgets.attr import PairInputXGradient
from ssl_widgets.metrics import (
    average_drop_increase,
    insertion_deletion,
    max_sensitivity,
    trapezoid_auc,
)


def slow_curve(model, x1, x2, map1, map2, mode, step):
    """Section 8.1 step by step: one image pair per step, pixels written in a Python loop."""
    x1_n, x2_n = model.normalize(x1)[0], model.normalize(x2)[0]
    h, w = x1.shape[2:]
    order1 = torch.argsort(map1.flatten(), descending=True, stable=True)
    order2 = torch.argsort(map2.flatten(), descending=True, stable=True) if map2 is not None else None
    if mode == "deletion":
        cur1, cur2 = x1_n.clone(), x2_n.clone()
    else:
        cur1 = gaussian_blur(x1_n[None], [11, 11], [5.0, 5.0])[0]
        cur2 = gaussian_blur(x2_n[None], [11, 11], [5.0, 5.0])[0]
    total = -(-h * w // step)
    scores = []
    for t in range(total + 1):
        if t > 0:
            for p in order1[(t - 1) * step:t * step].tolist():
                cur1[:, p // w, p % w] = 0 if mode == "deletion" else x1_n[:, p // w, p % w]
            if order2 is not None:
                for p in order2[(t - 1) * step:t * step].tolist():
                    cur2[:, p // w, p % w] = 0 if mode == "deletion" else x2_n[:, p // w, p % w]
        other = cur2 if order2 is not None else x2_n
        with torch.no_grad():
            scores.append(float(cos(model.forward_normalized(cur1[None]), model.forward_normalized(other[None]))))
    curve = torch.tensor(scores)
    auc = (curve.sum() - curve[0] / 2 - curve[-1] / 2) / total
    return curve, float(auc)


@pytest.mark.parametrize("mode", ["deletion", "insertion"])
@pytest.mark.parametrize("simultaneous", [False, True])
def test_insertion_deletion_matches_slow_loop(mode, simultaneous):
    model = small_resnet()
    x1, x2 = arange_image(1, 16, 16), arange_image(1, 16, 16, offset=5)
    g = torch.Generator().manual_seed(0)
    map1, map2 = torch.rand(1, 16, 16, generator=g), torch.rand(1, 16, 16, generator=g)
    result = insertion_deletion(model, x1, x2, map1, map2 if simultaneous else None, mode=mode, step=10,
                                steps_per_eval=7)
    curve, auc = slow_curve(model, x1, x2, map1[0], map2[0] if simultaneous else None, mode, 10)
    assert result.curve.shape == (1, 27)  # ceil(256 / 10) = 26 steps, 27 scores
    torch.testing.assert_close(result.curve[0], curve, atol=1e-5, rtol=1e-4)
    assert float(result.score[0]) == pytest.approx(auc, abs=1e-5)
    if mode == "deletion":  # the end state is all neutral fill: 0 in input space
        assert float(result.curve[0, 0]) == pytest.approx(float(result.base[0]), abs=1e-5)
    else:  # the end state is the original image
        expected_end = float(result.base[0]) if simultaneous else float(cos(model(x1), model(x2)).detach())
        assert float(result.curve[0, -1]) == pytest.approx(expected_end, abs=1e-5)


def test_conditional_keeps_the_condition_fixed():
    model = small_resnet()
    x1, x2 = arange_image(1, 16, 16), arange_image(1, 16, 16, offset=5)
    m = torch.rand(1, 16, 16, generator=torch.Generator().manual_seed(1))
    conditional = insertion_deletion(model, x1, x2, m, mode="deletion", step=32)
    # deleting everything of x1: the last score is cos(f(fill image), f(x2)) with x2 intact
    fill = model.fill_value.view(1, 3, 1, 1).expand_as(x1)
    assert float(conditional.curve[0, -1]) == pytest.approx(float(cos(model(fill), model(x2)).detach()), abs=1e-5)
    simultaneous = insertion_deletion(model, x1, x2, m, m, mode="deletion", step=32)
    # both images fully deleted: identical fill images, cosine 1
    assert float(simultaneous.curve[0, -1]) == pytest.approx(1.0, abs=1e-5)


def test_perfect_ranking_beats_reversed():
    """On a model that only sees the left half, a map ranking the left half first deletes faster.

    Both maps order the left half the same way; the "bad" one puts the right half (ignored by the
    model) first. Its curve is therefore the good curve delayed by half the pixels, and with
    x2 = x1 (base 1) the AUC differences are exactly half of (end - start) of the curves.
    """
    model = small_resnet()
    x1 = arange_image(1, 16, 16)
    x2 = x1.clone()
    with torch.no_grad():
        original = model.trunk.conv1.weight.clone()
    ramp = torch.linspace(0, 0.1, 256).view(1, 16, 16)
    left, right = torch.zeros(1, 16, 16), torch.zeros(1, 16, 16)
    left[:, :, :8], right[:, :, 8:] = 1.0, 1.0
    good, bad = left + ramp, right + ramp

    class LeftHalf(torch.nn.Module):
        def forward(self, x):
            x = x.clone()
            x[:, :, :, 8:] = 0
            return x

    model.trunk = torch.nn.Sequential(LeftHalf(), model.trunk)
    deletion_good = insertion_deletion(model, x1, x2, good, mode="deletion", step=16)
    deletion_bad = insertion_deletion(model, x1, x2, bad, mode="deletion", step=16)
    insertion_good = insertion_deletion(model, x1, x2, good, mode="insertion", step=16)
    insertion_bad = insertion_deletion(model, x1, x2, bad, mode="insertion", step=16)
    # the bad curves stay flat while the ignored half changes
    torch.testing.assert_close(deletion_bad.curve[0, :9], torch.ones(9), atol=1e-5, rtol=0)
    torch.testing.assert_close(insertion_bad.curve[0, 8:], insertion_good.curve[0, :9], atol=1e-5, rtol=0)
    fill_end = float(deletion_good.curve[0, -1])
    blurred_start = float(insertion_good.curve[0, 0])
    assert fill_end < 0.9999 and blurred_start < 0.9999
    assert float(deletion_good.score) == pytest.approx(float(deletion_bad.score) + (fill_end - 1) / 2, abs=1e-5)
    assert float(insertion_good.score) == pytest.approx(float(insertion_bad.score) + (1 - blurred_start) / 2,
                                                        abs=1e-5)
    assert float(deletion_good.score) < float(deletion_bad.score)
    assert float(insertion_good.score) > float(insertion_bad.score)
    assert torch.equal(model.trunk[1].conv1.weight, original)


def test_trapezoid_auc():
    assert float(trapezoid_auc(torch.tensor([1.0, 1.0, 1.0]))) == pytest.approx(1.0)
    assert float(trapezoid_auc(torch.tensor([0.0, 1.0]))) == pytest.approx(0.5)


def test_average_drop_and_increase_match_the_definition():
    model = small_resnet()
    x1, x2 = arange_image(2, 16, 16), arange_image(2, 16, 16, offset=5)
    g = torch.Generator().manual_seed(2)
    m1, m2 = torch.rand(2, 4, 4, generator=g), torch.rand(2, 4, 4, generator=g)
    for simultaneous in (False, True):
        result = average_drop_increase(model, x1, x2, m1, m2 if simultaneous else None)
        for b in range(2):
            def masked(x, m):
                up = F.interpolate(m[None, None], size=(16, 16), mode="bilinear", align_corners=False)[0]
                e = (up - up.min()) / (up.max() - up.min())
                return model.forward_normalized(e * model.normalize(x))
            base = float(cos(model(x1[b:b + 1]), model(x2[b:b + 1])).detach())
            z2 = masked(x2[b:b + 1], m2[b]) if simultaneous else model(x2[b:b + 1])
            score = float(cos(masked(x1[b:b + 1], m1[b]), z2))
            assert float(result.drop[b]) == pytest.approx(max(0.0, base - score) / base, abs=1e-5)
            assert float(result.increase[b]) == float(score > base)


def test_max_sensitivity_matches_a_loop_and_is_zero_for_a_constant_method():
    model = small_resnet()
    x1, x2 = arange_image(1, 16, 16), arange_image(1, 16, 16, offset=5)
    method = PairInputXGradient(model)
    ms = max_sensitivity(method, (x1, x2), n_samples=3, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    base = method.attribute((x1, x2))
    worst = [0.0, 0.0]
    for _ in range(3):
        u = (torch.rand(x1.shape, generator=g) * 2 - 1) * 0.2 * model.std
        pert = method.attribute(BeyondRangePair((x1 + u, x2 + u)))  # the paper's noise leaves [0, 1] a little
        for k in range(2):
            worst[k] = max(worst[k], float((pert[k] - base[k]).norm() / base[k].norm()))
    assert float(ms[0]) == pytest.approx(sum(worst) / 2, rel=1e-5)

    class Constant:
        model = None

        def attribute(self, inputs):
            return torch.ones(1, 4, 4), torch.ones(1, 4, 4)

    assert float(max_sensitivity(Constant(), (x1, x2), n_samples=2)[0]) == 0.0


def test_metric_errors():
    model = small_resnet()
    x1, x2 = arange_image(1, 16, 16), arange_image(1, 16, 16, offset=5)
    with pytest.raises(ValueError, match="mode must be"):
        insertion_deletion(model, x1, x2, torch.rand(1, 16, 16), mode="both")
    with pytest.raises(ValueError, match="map1 must have shape"):
        insertion_deletion(model, x1, x2, torch.rand(2, 16, 16))
    with pytest.raises(ValueError, match="NaN"):
        average_drop_increase(model, x1, x2, torch.full((1, 4, 4), float("nan")))
    with pytest.raises(TypeError, match="uint8"):
        average_drop_increase(model, x1.to(torch.uint8), x2, torch.rand(1, 4, 4))


def test_metrics_on_a_batch_equal_the_rows_one_by_one():
    model = small_resnet()
    x1, x2 = arange_image(3, 16, 16), arange_image(3, 16, 16, offset=5).flip(0)
    g = torch.Generator().manual_seed(4)
    m1, m2 = torch.rand(3, 16, 16, generator=g), torch.rand(3, 8, 8, generator=g)
    for mode in ("deletion", "insertion"):
        for second in (None, m2):
            both = insertion_deletion(model, x1, x2, m1, second, mode=mode, step=20, steps_per_eval=5)
            for b in range(3):
                row = insertion_deletion(model, x1[b:b + 1], x2[b:b + 1], m1[b:b + 1],
                                         None if second is None else second[b:b + 1], mode=mode, step=20)
                torch.testing.assert_close(both.curve[b], row.curve[0], atol=1e-5, rtol=1e-4)
                torch.testing.assert_close(both.score[b], row.score[0], atol=1e-5, rtol=1e-4)
                torch.testing.assert_close(both.base[b], row.base[0], atol=1e-6, rtol=1e-5)
    both = average_drop_increase(model, x1, x2, m1, m2)
    for b in range(3):
        row = average_drop_increase(model, x1[b:b + 1], x2[b:b + 1], m1[b:b + 1], m2[b:b + 1])
        torch.testing.assert_close(both.drop[b], row.drop[0], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(both.increase[b], row.increase[0])


def test_max_sensitivity_forwards_keyword_arguments():
    """Every attribute call (the base one and each trial) gets the caller's keywords; blur defaults to False."""
    model = small_resnet()
    x1, x2 = arange_image(1, 16, 16), arange_image(1, 16, 16, offset=5)

    class Recording(PairInputXGradient):
        calls = []

        def attribute(self, inputs, guided=False, blur=False):
            self.calls.append({"guided": guided, "blur": blur})
            return super().attribute(inputs, guided=guided, blur=blur)

    method = Recording(model)
    guided = max_sensitivity(method, (x1, x2), n_samples=2, generator=torch.Generator().manual_seed(0), guided=True)
    assert method.calls == [{"guided": True, "blur": False}] * 3
    method.calls.clear()
    max_sensitivity(method, (x1, x2), n_samples=2, blur=True)
    assert method.calls == [{"guided": False, "blur": True}] * 3
    plain = max_sensitivity(method, (x1, x2), n_samples=2, generator=torch.Generator().manual_seed(0))
    assert float(guided[0]) != pytest.approx(float(plain[0]), rel=1e-3)  # the keyword changes the number
    with pytest.raises(TypeError, match="unexpected keyword argument 'pooling'"):
        max_sensitivity(method, (x1, x2), n_samples=1, pooling="max")


def test_only_a_pair_that_says_so_may_leave_the_pixel_range():
    """max-sensitivity's noise leaves [0, 1]: the pair carries its exemption itself (no hidden state), and
    a plain pair with the same values is still refused."""
    model = small_resnet()
    x1, x2 = arange_image(1, 16, 16), arange_image(1, 16, 16, offset=5)
    beyond = (x1 + 0.2, x2 - 0.2)
    with pytest.raises(ValueError, match="outside the pixel range"):
        PairInputXGradient(model).attribute(beyond)
    maps = PairInputXGradient(model).attribute(BeyondRangePair(beyond))
    assert torch.isfinite(maps[0]).all() and maps[0].shape == (1, 16, 16)


def test_one_pass_gives_the_simultaneous_and_both_conditional_results():
    """The evaluation driver's shared pass equals three separate calls (measured difference 0.0; bound 1e-6)."""
    from ssl_widgets.metrics.insertion_deletion import simultaneous_and_conditional

    model = small_resnet()
    x1, x2 = arange_image(2, 16, 16), arange_image(2, 16, 16, offset=5).flip(0)
    g = torch.Generator().manual_seed(6)
    m1, m2 = torch.rand(2, 16, 16, generator=g), torch.rand(2, 8, 8, generator=g)
    for mode in ("deletion", "insertion"):
        shared = simultaneous_and_conditional(model, x1, x2, m1, m2, mode=mode, step=20, steps_per_eval=5)
        separate = (insertion_deletion(model, x1, x2, m1, m2, mode=mode, step=20),
                    insertion_deletion(model, x1, x2, m1, mode=mode, step=20),
                    insertion_deletion(model, x2, x1, m2, mode=mode, step=20))
        for one, other in zip(shared, separate, strict=True):
            for field in ("curve", "score", "base"):
                torch.testing.assert_close(getattr(one, field), getattr(other, field), atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="map2 is required"):
        simultaneous_and_conditional(model, x1, x2, m1, None)
