"""API-level behaviour of every method: bad inputs, model state, Captum interoperability, CLI."""
import re

import pytest
import torch
from captum.attr import IntegratedGradients
from captum.metrics import sensitivity_max
from helpers import arange_image, small_resnet

from ssl_widgets.attr import (
    METHOD_NAMES,
    AveragedTransforms,
    ConditionalOcclusion,
    ContextAgnosticOcclusion,
    InteractionCAM,
    PairAttribution,
    PairGradCAM,
    PairInputXGradient,
    PairSmoothGrad,
    PairwiseOcclusion,
    PixelInvariance,
    SimilarityForward,
    get_method,
)
from ssl_widgets.attr.pixel_invariance import nmf
from ssl_widgets.attr.spec import all_specs

# every pair method of the registry with its record's quick settings (a new method is tested here unlisted)
# (on a small CNN; the records of Vision-Transformer-only methods are tested below on a tiny ViT)
PAIR_METHODS = [(spec.cls, {**spec.fixed, **spec.default_settings(32), **spec.quick})
                for spec in all_specs() if spec.kind == "pair" and "cnn" in spec.architectures]
IDS = [cls.__name__ for cls, _ in PAIR_METHODS]
VIT_ONLY_PAIR_SPECS = [spec for spec in all_specs() if spec.kind == "pair" and "cnn" not in spec.architectures]


@pytest.fixture
def pair():
    return arange_image(2, 32, 32), arange_image(2, 32, 32, offset=3)


@pytest.mark.parametrize("cls, kwargs", PAIR_METHODS, ids=IDS)
def test_result_type_and_shapes(cls, kwargs, pair):
    model = small_resnet()
    result = cls(model).attribute(pair, **kwargs)
    assert isinstance(result, PairAttribution) and isinstance(result, tuple) and len(result) == 2
    m1, m2 = result
    assert m1.dim() == 3 and m1.shape[0] == 2 and m2.shape[0] == 2
    assert result.similarity.shape == (2,)
    torch.testing.assert_close(result.similarity, model.similarity(*pair).detach(), atol=1e-5, rtol=1e-5)
    assert isinstance(result.meta, dict) and result.meta
    assert torch.isfinite(m1).all() and torch.isfinite(m2).all()


@pytest.mark.parametrize("spec", VIT_ONLY_PAIR_SPECS, ids=[spec.name for spec in VIT_ONLY_PAIR_SPECS])
def test_vit_only_pair_methods_give_a_pair_attribution_and_refuse_a_cnn_by_name(spec):
    from test_vit_methods import vit_model

    model = vit_model(0)
    x1, x2 = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)).split(1)
    modes = {name: m.training for name, m in model.named_modules()}
    result = spec.cls(model).attribute((x1, x2), **{**spec.fixed, **spec.default_settings(16), **spec.quick})
    assert isinstance(result, PairAttribution) and len(result) == 2
    assert result[0].dim() == 3 and result[0].shape[0] == 1 and torch.isfinite(result[0]).all()
    torch.testing.assert_close(result.similarity, model.similarity(x1, x2).detach(), atol=1e-5, rtol=1e-5)
    assert {name: m.training for name, m in model.named_modules()} == modes
    with pytest.raises(ValueError, match=spec.name):
        spec.cls(small_resnet()).attribute((arange_image(1, 32, 32),) * 2)


BAD = [
    ((torch.zeros(3, 32, 32), torch.zeros(1, 3, 32, 32)), ValueError, "got 3 dimensions"),
    ((torch.zeros(1, 4, 32, 32), torch.zeros(1, 4, 32, 32)), ValueError, "3 \\(RGB\\) channels"),
    ((torch.zeros(1, 3, 32, 32, dtype=torch.uint8),) * 2, TypeError, "uint8"),
    ((torch.full((1, 3, 32, 32), float("nan")), torch.zeros(1, 3, 32, 32)), ValueError, "NaN"),
    ((torch.zeros(2, 3, 32, 32), torch.zeros(1, 3, 32, 32)), ValueError, "batch size mismatch"),
    (torch.zeros(1, 3, 32, 32), TypeError, "pair"),
]


@pytest.mark.parametrize("cls, kwargs", PAIR_METHODS, ids=IDS)
@pytest.mark.parametrize("inputs, error, message", BAD, ids=["rank", "channels", "uint8", "nan", "batch", "single"])
def test_bad_inputs(cls, kwargs, inputs, error, message):
    model = small_resnet()
    with pytest.raises(error, match=message):
        cls(model).attribute(inputs, **kwargs)


@pytest.mark.parametrize("cls", [ConditionalOcclusion, ContextAgnosticOcclusion])
def test_window_errors(cls, pair):
    model = small_resnet()
    with pytest.raises(ValueError, match="larger than the image"):
        cls(model).attribute(pair, sliding_window_shapes=40, strides=8)
    with pytest.raises(ValueError, match="stride .* is larger than the window"):
        cls(model).attribute(pair, sliding_window_shapes=8, strides=16)
    with pytest.raises(ValueError, match="must be positive"):
        cls(model).attribute(pair, sliding_window_shapes=8, strides=0)
    with pytest.raises(ValueError, match="perturbations_per_eval must be >= 1"):
        cls(model).attribute(pair, sliding_window_shapes=16, strides=16, perturbations_per_eval=0)


def test_non_model_is_rejected():
    with pytest.raises(TypeError, match="SSLModel"):
        ConditionalOcclusion(torch.nn.Linear(3, 3))


class Boom(torch.nn.Module):
    def forward(self, x):
        raise RuntimeError("boom inside the model")


@pytest.mark.parametrize("cls, kwargs", PAIR_METHODS, ids=IDS)
def test_model_state_restored_when_a_method_raises(cls, kwargs, pair):
    model = small_resnet()
    model.train()
    model.trunk.layer1.eval()
    first = next(model.parameters())
    first.requires_grad_(False)
    hook = model.trunk.register_forward_hook(lambda *_: None)
    modes = {name: m.training for name, m in model.named_modules()}
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    hooks_before = {name: len(m._forward_hooks) for name, m in model.named_modules()}
    formats = {name: p.is_contiguous() for name, p in model.named_parameters()}
    model.head.append(Boom())
    with pytest.raises(RuntimeError, match="boom inside the model"):
        cls(model).attribute(pair, **kwargs)
    del model.head[-1]
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    assert {name: len(m._forward_hooks) for name, m in model.named_modules()} == hooks_before
    assert {name: p.is_contiguous() for name, p in model.named_parameters()} == formats
    hook.remove()


@pytest.mark.parametrize("cls, kwargs", PAIR_METHODS, ids=IDS)
def test_model_state_restored_after_success(cls, kwargs, pair):
    model = small_resnet()
    model.train()
    cls(model).attribute(pair, **kwargs)
    assert all(m.training for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())
    assert all(p.is_contiguous() for p in model.parameters())


def test_similarity_forward_with_captum_integrated_gradients():
    model = small_resnet()
    x1, x2 = arange_image(1, 32, 32), arange_image(1, 32, 32, offset=3)
    forward = SimilarityForward(model, x2)
    torch.testing.assert_close(forward(x1), model.similarity(x1, x2).detach())
    baseline = torch.full_like(x1, 0.5)
    attributions, _delta = IntegratedGradients(forward).attribute(x1, baselines=baseline, n_steps=200,
                                                                 return_convergence_delta=True)
    # completeness: the attributions add up to f(x1) - f(baseline)
    expected = float((forward(x1) - forward(baseline)).detach())
    assert float(attributions.sum()) == pytest.approx(expected, abs=2e-3)


def test_captum_sensitivity_max_accepts_pair_methods():
    model = small_resnet()
    x1, x2 = arange_image(1, 32, 32), arange_image(1, 32, 32, offset=3)
    method = PairInputXGradient(model)
    sens = sensitivity_max(method.attribute, (x1, x2), perturb_radius=0.02, n_perturb_samples=3)
    assert sens.shape == (1,) and float(sens) >= 0


def test_pixel_invariance_shape_range_seed_and_threshold():
    model = small_resnet()
    x = arange_image(2, 32, 32)
    kwargs = {"n_samples": 40, "size": 16, "epochs": 30}
    a = PixelInvariance(model).attribute(x, generator=torch.Generator().manual_seed(0), **kwargs)
    b = PixelInvariance(model).attribute(x, generator=torch.Generator().manual_seed(0), **kwargs)
    assert a.shape == (2, 16, 16) and float(a.min()) >= 0 and float(a.max()) <= 1
    torch.testing.assert_close(a, b)
    sharp = PixelInvariance(model).attribute(x, generator=torch.Generator().manual_seed(0), blur=False, **kwargs)
    nonzero = sharp[sharp > 0]
    assert float(nonzero.min()) >= 0.5 and float(sharp.max()) == pytest.approx(1.0)
    with_nmf = PixelInvariance(model).attribute(x[:1], nmf_components=3, generator=torch.Generator().manual_seed(0),
                                                **kwargs)
    assert with_nmf.shape == (1, 16, 16)
    with pytest.raises(TypeError, match="uint8"):
        PixelInvariance(model).attribute(x.to(torch.uint8))


class HalfImage(torch.nn.Module):
    """Crops the left or the right half: a trunk input the rest of the model can never see."""

    def __init__(self, side):
        super().__init__()
        self.side = side

    def forward(self, x):
        half = x.shape[3] // 2
        return x[:, :, :, :half] if self.side == "left" else x[:, :, :, half:]


@pytest.mark.parametrize("side", ["left", "right"])
def test_pixel_invariance_map_lies_on_the_half_the_model_sees(side, monkeypatch):
    """Erasing the unseen half never changes the similarity: the surrogate's map must sit on the seen half.

    Colour jitter acts on the whole image alike (it cannot tell the halves apart and, on a tiny random
    model, drowns the erasing signal), so it is switched off here; grayscale and erasing stay.
    """
    from ssl_widgets.attr import pixel_invariance

    monkeypatch.setattr(pixel_invariance, "color_jitter", lambda views, config, generator: views)
    model = small_resnet(seed=0)
    model.trunk = torch.nn.Sequential(HalfImage(side), model.trunk)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    kwargs = {"n_samples": 400, "size": 8, "epochs": 500, "blur": False}
    plain = PixelInvariance(model).attribute(x, generator=torch.Generator().manual_seed(0), **kwargs)
    with_nmf = PixelInvariance(model).attribute(x, nmf_components=3, generator=torch.Generator().manual_seed(0),
                                                **kwargs)
    seen, unseen = (slice(0, 4), slice(4, 8)) if side == "left" else (slice(4, 8), slice(0, 4))
    for heat in (plain, with_nmf):
        assert float(heat.max()) == pytest.approx(1.0) and float(heat.min()) >= 0
        assert float(heat[0, :, seen].sum()) > 1.0
        assert float(heat[0, :, unseen].sum()) <= 0.2 * float(heat[0, :, seen].sum())
    # the NMF target changes the fit (a different map), not where the model looks
    assert not torch.allclose(plain, with_nmf)


def test_nmf_reconstructs_a_nonnegative_low_rank_matrix():
    g = torch.Generator().manual_seed(0)
    w, h = torch.rand(30, 3, generator=g), torch.rand(3, 20, generator=g)
    data = w @ h
    w_fit = nmf(data, 3, iterations=2000, generator=g)
    h_fit = torch.linalg.lstsq(w_fit, data).solution
    assert float((w_fit @ h_fit - data).norm() / data.norm()) < 0.05
    assert float(w_fit.min()) >= 0


from ssl_widgets.attr.integrated_gradients import PairIntegratedGradients  # noqa: E402
from ssl_widgets.attr import (  # noqa: E402
    BiLRP,
    JOINT_METHOD_NAMES,
    VIT_METHOD_NAMES,
    AttentionGradientRelevance,
    AttentionRollout,
    ClassTokenAttention,
    JointGradient,
    JointOcclusion,
    PatchFeaturePCA,
)

# every name the registry knew when this was written, with the exact class and attribute settings it must
# give (a method added later is checked by its own test file and tests/test_method_records.py)
REGISTRY = {
    "conditional-occlusion": (ConditionalOcclusion, {}),
    "context-agnostic-occlusion": (ContextAgnosticOcclusion, {}),
    "pairwise-occlusion": (PairwiseOcclusion, {}),
    "grad-cam": (PairGradCAM, {}),
    "interaction-cam": (InteractionCAM, {"pooling": "mean", "gradient_interaction": False}),
    "interaction-cam:max": (InteractionCAM, {"pooling": "max", "gradient_interaction": False}),
    "interaction-cam:attention": (InteractionCAM, {"pooling": "attention", "gradient_interaction": False}),
    "interaction-cam:max+gi": (InteractionCAM, {"pooling": "max", "gradient_interaction": True}),
    "interaction-cam:attention+gi": (InteractionCAM, {"pooling": "attention", "gradient_interaction": True}),
    "averaged-transforms": (AveragedTransforms, {}),
    "averaged-transforms:guided": (AveragedTransforms, {"guided": True}),
    "averaged-transforms:noise": (AveragedTransforms, {"noise": True}),
    "averaged-transforms:guided+noise": (AveragedTransforms, {"guided": True, "noise": True}),
    "input-x-gradient": (PairInputXGradient, {}),
    "input-x-gradient:guided": (PairInputXGradient, {"guided": True}),
    "smoothgrad": (PairSmoothGrad, {}),
    "smoothgrad:guided": (PairSmoothGrad, {"guided": True}),
    "integrated-gradients": (PairIntegratedGradients, {}),
    "attention-relevance": (AttentionGradientRelevance, {}),
    "interaction-cam:mean+gi": (InteractionCAM, {"pooling": "mean", "gradient_interaction": True}),
    "pixel-invariance": (PixelInvariance, {}),
    "joint-gradient": (JointGradient, {}),
    "joint-occlusion": (JointOcclusion, {}),
    "bilrp": (BiLRP, {}),
    # ViT-native views (VIT_METHOD_NAMES)
    "cls-attention": (ClassTokenAttention, {}),
    "attention-rollout": (AttentionRollout, {}),
    "feature-pca": (PatchFeaturePCA, {}),
}


def test_registry_lists_every_known_name_once():
    known = METHOD_NAMES + VIT_METHOD_NAMES
    assert set(REGISTRY) <= set(known) and len(set(known)) == len(known)
    assert {"cls-attention", "attention-rollout", "feature-pca"} <= set(VIT_METHOD_NAMES)
    assert {"joint-gradient", "joint-occlusion", "bilrp"} <= set(JOINT_METHOD_NAMES) <= set(METHOD_NAMES)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_method_name_gives_its_exact_class_and_settings(name):
    cls, settings = get_method(name)
    expected_cls, expected_settings = REGISTRY[name]
    assert cls is expected_cls
    assert settings == expected_settings


@pytest.mark.parametrize("name", ["smoothgrad:noise", "occlusion", "interaction-cam:median", "grad-cam:max",
                                  "input-x-gradient:guided+noise", "interaction-cam:max+guided", ""])
def test_unknown_method_names_are_refused(name):
    with pytest.raises(ValueError, match=re.escape(f"unknown method {name!r}; known methods: conditional-occlusion")):
        get_method(name)


def test_cli_explain_writes_a_figure(tmp_path, capsys):
    from ssl_widgets.cli import main

    out = tmp_path / "fig.png"
    assert main(["explain", "chelsea", "--method", "interaction-cam:max", "--model", "tiny-simclr",
                 "--out", str(out)]) == 0
    assert out.stat().st_size > 10_000 and out.read_bytes()[:4] == b"\x89PNG"
    assert "cos similarity" in capsys.readouterr().out
    assert main(["explain", "chelsea", "--method", "nope", "--out", str(out)]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err


def test_cli_similarity_and_models(capsys):
    from ssl_widgets.cli import main

    assert main(["similarity", "coffee", "--models", "tiny-simclr,tiny-barlow-twins"]) == 0
    out = capsys.readouterr().out
    assert "tiny-simclr" in out and "tiny-barlow-twins" in out
    assert main(["models"]) == 0
    assert "CC-BY-NC 4.0" in capsys.readouterr().out


# -- state restoration beyond the pair methods: pixel invariance, model difference, the analysis functions ---------
def _state(model):
    """Mode, requires_grad, every kind of hook and the memory format of each module / parameter."""
    return ({name: m.training for name, m in model.named_modules()},
            {name: p.requires_grad for name, p in model.named_parameters()},
            {name: (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
             for name, m in model.named_modules()},
            {name: (p.is_contiguous(), p.is_contiguous(memory_format=torch.channels_last))
             for name, p in model.named_parameters() if p.dim() == 4})


def _run_pixel_invariance(model, x):
    return PixelInvariance(model).attribute(x, n_samples=8, size=8, epochs=2, generator=torch.Generator().manual_seed(0))


def _run_model_difference(model, x):
    from ssl_widgets.attr import ModelDifference

    return ModelDifference(model, small_resnet(seed=1)).invert(x, layers=["layer1"], iterations=2)


def _run_correspondence(model, x):
    from ssl_widgets.analysis import dense_correspondence

    return dense_correspondence(model, x, x, (5.0, 7.0), layer="layer3")


def _run_sweep(model, x):
    from ssl_widgets.analysis import similarity_sweep

    return similarity_sweep(model, x, "grayscale", strengths=(0.0, 0.5))


STATEFUL = [_run_pixel_invariance, _run_model_difference, _run_correspondence, _run_sweep]


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels-last"])
@pytest.mark.parametrize("run", STATEFUL, ids=lambda f: f.__name__[5:])
def test_model_state_restored_by_the_other_functions(run, channels_last):
    """After success and after the model raises: the same modes (a mix), flags (one frozen), hooks and memory format
    (a channels-last model stays channels-last, a contiguous one contiguous)."""
    model = small_resnet()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    model.trunk.layer2.eval()
    model.trunk.conv1.weight.requires_grad_(False)
    own = model.trunk.layer4.register_forward_hook(lambda *_: None)
    x = arange_image(1, 32, 32)
    before = _state(model)
    run(model, x)
    assert _state(model) == before

    def boom(*_):
        raise RuntimeError("boom inside the model")

    failing = model.trunk.layer1.register_forward_pre_hook(boom)
    before = _state(model)
    with pytest.raises(RuntimeError, match="boom inside the model"):
        run(model, x)
    assert _state(model) == before
    failing.remove()
    own.remove()


@pytest.mark.parametrize("cls, kwargs", PAIR_METHODS, ids=IDS)
def test_pair_methods_keep_a_channels_last_model_channels_last(cls, kwargs, pair):
    model = small_resnet().to(memory_format=torch.channels_last)
    before = _state(model)
    cls(model).attribute(pair, **kwargs)
    assert _state(model) == before
    assert model.trunk.conv1.weight.is_contiguous(memory_format=torch.channels_last)
