"""The method specification (ssl_widgets.attr.spec): every name's exact record, the one name parser, the
template bases, and a method added as one file (integrated-gradients) reaching every front end."""
import importlib
import inspect
import json
import pickle
import re

import pytest
import torch
from captum.attr import IntegratedGradients
from helpers import arange_image, small_resnet

from ssl_widgets.attr import (
    BiLRP,
    JOINT_METHOD_NAMES,
    METHOD_NAMES,
    PAIR_METHOD_NAMES,
    VIT_METHOD_NAMES,
    AttentionGradientRelevance,
    AttentionRollout,
    AveragedTransforms,
    ClassTokenAttention,
    ConditionalOcclusion,
    ContextAgnosticOcclusion,
    InteractionCAM,
    JointGradient,
    JointOcclusion,
    PairAttribution,
    PairGradCAM,
    PairInputXGradient,
    PairSmoothGrad,
    PairwiseOcclusion,
    PatchFeaturePCA,
    PixelInvariance,
    get_method,
)
from ssl_widgets.attr.base import LayerPairMethod, ModelMethod, PairMethod
from ssl_widgets.attr.integrated_gradients import PairIntegratedGradients
from ssl_widgets.attr.pixel_invariance import InvarianceMaps
from ssl_widgets.attr.spec import ALL_METRICS, MethodSpec, all_specs, listed_names, resolve, spec_for

NO_MS = tuple(m for m in ALL_METRICS if m != "MS")
CAM = "interaction-cam"
# every name the package knows (listed names and aliases): class, settings, kind, layer, seeded, metrics,
# architectures, second-view transform
TABLE = {
    "conditional-occlusion": (ConditionalOcclusion, {}, "pair", None, False, NO_MS, ("cnn", "vit"), None),
    "context-agnostic-occlusion": (ContextAgnosticOcclusion, {}, "pair", None, False, NO_MS, ("cnn", "vit"), None),
    "pairwise-occlusion": (PairwiseOcclusion, {}, "pair", None, True, NO_MS, ("cnn", "vit"), None),
    "grad-cam": (PairGradCAM, {}, "pair", "constructor", False, ALL_METRICS, ("cnn", "vit"), None),
    CAM: (InteractionCAM, {"pooling": "mean", "gradient_interaction": False}, "pair", "constructor", False,
          ALL_METRICS, ("cnn", "vit"), None),
    f"{CAM}:max": (InteractionCAM, {"pooling": "max", "gradient_interaction": False}, "pair", "constructor", False,
                   ALL_METRICS, ("cnn", "vit"), None),
    f"{CAM}:attention": (InteractionCAM, {"pooling": "attention", "gradient_interaction": False}, "pair",
                         "constructor", False, ALL_METRICS, ("cnn", "vit"), None),
    f"{CAM}:mean+gi": (InteractionCAM, {"pooling": "mean", "gradient_interaction": True}, "pair", "constructor",
                       False, ALL_METRICS, ("cnn", "vit"), None),
    f"{CAM}:max+gi": (InteractionCAM, {"pooling": "max", "gradient_interaction": True}, "pair", "constructor", False,
                      ALL_METRICS, ("cnn", "vit"), None),
    f"{CAM}:attention+gi": (InteractionCAM, {"pooling": "attention", "gradient_interaction": True}, "pair",
                            "constructor", False, ALL_METRICS, ("cnn", "vit"), None),
    f"{CAM}+gi": (InteractionCAM, {"pooling": "mean", "gradient_interaction": True}, "pair", "constructor", False,
                  ALL_METRICS, ("cnn", "vit"), None),  # alias
    "averaged-transforms": (AveragedTransforms, {}, "pair", None, True, ALL_METRICS, ("cnn", "vit"), "combine"),
    "averaged-transforms:guided": (AveragedTransforms, {"guided": True}, "pair", None, True, ALL_METRICS,
                                   ("cnn", "vit"), "combine"),
    "averaged-transforms:noise": (AveragedTransforms, {"noise": True}, "pair", None, True, ALL_METRICS,
                                  ("cnn", "vit"), "combine"),
    "averaged-transforms:guided+noise": (AveragedTransforms, {"guided": True, "noise": True}, "pair", None, True,
                                         ALL_METRICS, ("cnn", "vit"), "combine"),
    "input-x-gradient": (PairInputXGradient, {}, "pair", None, False, ALL_METRICS, ("cnn", "vit"), None),
    "input-x-gradient:guided": (PairInputXGradient, {"guided": True}, "pair", None, False, ALL_METRICS,
                                ("cnn", "vit"), None),
    "smoothgrad": (PairSmoothGrad, {}, "pair", None, True, ALL_METRICS, ("cnn", "vit"), None),
    "smoothgrad:guided": (PairSmoothGrad, {"guided": True}, "pair", None, True, ALL_METRICS, ("cnn", "vit"), None),
    "integrated-gradients": (PairIntegratedGradients, {}, "pair", None, False, ALL_METRICS, ("cnn", "vit"), None),
    "attention-relevance": (AttentionGradientRelevance, {}, "pair", None, False, ALL_METRICS, ("vit",), None),
    "pixel-invariance": (PixelInvariance, {}, "single", None, True, ("CI", "CD", "CAD", "CIC"), ("cnn", "vit"),
                         None),
    "joint-gradient": (JointGradient, {}, "joint", None, False, ALL_METRICS, ("cnn", "vit"), None),
    "joint-occlusion": (JointOcclusion, {}, "joint", None, True, ALL_METRICS, ("cnn", "vit"), None),
    "bilrp": (BiLRP, {}, "joint", None, True, ALL_METRICS, ("cnn",), None),
    "cls-attention": (ClassTokenAttention, {}, "view", None, False, ALL_METRICS, ("vit",), None),
    "attention-rollout": (AttentionRollout, {}, "view", None, False, ALL_METRICS, ("vit",), None),
    "feature-pca": (PatchFeaturePCA, {}, "view", "setting", False, ALL_METRICS, ("cnn", "vit"), None),
}


def test_the_lists_hold_every_listed_name_once_in_order():
    assert METHOD_NAMES == PAIR_METHOD_NAMES + listed_names("single") + JOINT_METHOD_NAMES
    assert VIT_METHOD_NAMES == listed_names("view")
    listed = [n for n in TABLE if n != f"{CAM}+gi"]
    assert set(listed) <= set(METHOD_NAMES + VIT_METHOD_NAMES)  # a method added later is listed too
    assert len(set(METHOD_NAMES + VIT_METHOD_NAMES)) == len(METHOD_NAMES + VIT_METHOD_NAMES)
    assert PAIR_METHOD_NAMES[:4] == ("conditional-occlusion", "context-agnostic-occlusion", "pairwise-occlusion",
                                     "grad-cam")
    orders = [spec_for(name).order for name in PAIR_METHOD_NAMES]
    assert orders == sorted(orders)  # the records' order: a new method (default order) goes at the end


@pytest.mark.parametrize("name", list(TABLE))
def test_every_name_gives_its_exact_record(name):
    cls, settings, kind, layer, seeded, metrics, architectures, view = TABLE[name]
    assert get_method(name) == (cls, settings)
    spec, parsed = resolve(name)
    assert (spec.cls, parsed, spec.kind, spec.layer, spec.seeded, spec.metrics, spec.architectures,
            spec.view_transform) == (cls, settings, kind, layer, seeded, metrics, architectures, view)
    assert spec_for(name) is spec and spec.needs_layer == (layer is not None)


@pytest.mark.parametrize("spec", all_specs(), ids=lambda s: s.name)
def test_each_record_matches_its_class(spec):
    """The records say what the classes do: options, settings, seeding and the layer are real parameters."""
    attribute = inspect.signature(spec.cls.attribute).parameters
    init = inspect.signature(spec.cls.__init__).parameters
    assert spec.seeded == ("generator" in attribute)
    assert ("layer" in init) == (spec.layer == "constructor")
    assert ("layer" in attribute) == (spec.layer == "setting")
    for key, _ in spec.options.values():
        assert key in attribute, f"{spec.name}: option sets unknown {key!r}"
    for key in (*(s.name for s in spec.settings), *spec.fixed):
        assert key in attribute, f"{spec.name}: setting {key!r} is not an attribute parameter"
    for variant in spec.variants:
        assert resolve(variant)[0] is spec
    declared = importlib.import_module(spec.cls.__module__).SPEC  # the record sits beside its class
    assert spec in (declared if isinstance(declared, tuple) else (declared,))


def test_default_settings_scale_with_the_input_size():
    assert spec_for("conditional-occlusion").default_settings(224) == {"sliding_window_shapes": 64, "strides": 8,
                                                                       "fill": "pixels"}
    assert spec_for("conditional-occlusion").default_settings(32) == {"sliding_window_shapes": 9, "strides": 1,
                                                                      "fill": "pixels"}
    assert spec_for("pixel-invariance").default_settings(56) == {"size": 16, "n_samples": 500, "epochs": 300}
    assert spec_for("pixel-invariance").default_settings(16) == {"size": 8, "n_samples": 500, "epochs": 300}
    assert spec_for("grad-cam").default_settings(112) == {}


@pytest.mark.parametrize("name", ["averaged-transforms:noise+guided", f"{CAM}:gi+max"])
def test_options_in_any_order(name):
    assert resolve(name)[1] in ({"noise": True, "guided": True}, {"gradient_interaction": True, "pooling": "max"})


@pytest.mark.parametrize("name", ["grad-cam:max", f"{CAM}:max+mean", "averaged-transforms:guided+guided",
                                  f"{CAM}:max+guided", "smoothgrad:noise", "integrated-gradients:guided",
                                  "interaction-cam+max", "nope", ""])
def test_bad_names_are_refused_with_the_known_names(name):
    with pytest.raises(ValueError, match=re.escape(f"unknown method {name!r}; known methods: conditional-occlusion")):
        resolve(name)
    with pytest.raises(TypeError, match="must be a string"):
        resolve(None)


def test_a_bad_record_is_refused():
    with pytest.raises(ValueError, match="kind must be one of"):
        MethodSpec("x", PairInputXGradient, kind="other")
    with pytest.raises(ValueError, match="unknown metrics"):
        MethodSpec("x", PairInputXGradient, metrics=("XX",))
    assert MethodSpec("x", PairInputXGradient).variants == ("x",)


# -- the template bases ---------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [ConditionalOcclusion, ContextAgnosticOcclusion, PairwiseOcclusion, PairGradCAM,
                                 InteractionCAM, AveragedTransforms, PairInputXGradient, PairSmoothGrad,
                                 PairIntegratedGradients, PatchFeaturePCA, ClassTokenAttention, AttentionRollout])
def test_pair_methods_share_the_template(cls):
    assert issubclass(cls, PairMethod)
    if cls not in (ClassTokenAttention, AttentionRollout):  # these two find the attention blocks first
        own = [c for c in cls.__mro__ if c.__module__.startswith("ssl_widgets.attr.")
               and c not in (ModelMethod, PairMethod, LayerPairMethod)]
        # the template's __init__ is not repeated; the occlusion methods' only adds the evaluator= they are given
        assert all("__init__" not in vars(c) or list(inspect.signature(vars(c)["__init__"]).parameters)
                   == ["self", "model", "evaluator"] for c in own), "the template's __init__ is not repeated"
    if cls in (PairGradCAM, InteractionCAM):
        assert issubclass(cls, LayerPairMethod)
    assert spec_for(cls.method_name).cls is cls  # the meta name is the record's name
    with pytest.raises(TypeError, match="expected an ssl_widgets.models.SSLModel"):
        cls(torch.nn.Linear(2, 2))


def test_pair_results_carry_the_record_name():
    model = small_resnet()
    x1, x2 = arange_image(1, 32, 32), arange_image(1, 32, 32, offset=5)
    for name in ("grad-cam", "input-x-gradient:guided", "averaged-transforms"):
        spec, settings = resolve(name)
        result = spec.build(model).attribute((x1, x2), **settings)
        assert isinstance(result, PairAttribution) and result.meta["method"] == spec.name


def test_pixel_invariance_returns_documented_maps_that_act_as_the_tensor(tmp_path):
    assert issubclass(PixelInvariance, ModelMethod) and "__init__" not in vars(PixelInvariance)
    model = small_resnet()
    x = arange_image(2, 32, 32)
    heat = PixelInvariance(model).attribute(x, n_samples=8, epochs=2, size=8,
                                            generator=torch.Generator().manual_seed(0))
    assert isinstance(heat, InvarianceMaps) and isinstance(heat, torch.Tensor)
    assert heat.shape == (2, 8, 8) and heat.meta["method"] == "pixel-invariance" and heat.meta["size"] == 8
    first, second = heat  # unpacks over the batch like the plain tensor
    assert type(first) is torch.Tensor and torch.equal(first, heat.as_subclass(torch.Tensor)[0])
    assert type(heat * 2) is torch.Tensor and not heat.requires_grad
    assert torch.equal(pickle.loads(pickle.dumps(heat)), heat)
    torch.save(heat, tmp_path / "h.pt")
    assert torch.equal(torch.load(tmp_path / "h.pt"), heat)  # a plain tensor on disk: weights_only loads it


# -- a method added as one file reaches every front end ------------------------------------------

def slow_ig(model, x, other, steps):
    """IG by hand (left Riemann sum): (x - x') * mean over a=i/n of dS/dx at x' + a (x - x')."""
    fill = torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1).expand_as(x)  # the model's mean: 0 in its input space
    total = torch.zeros_like(x)
    with torch.no_grad():
        z2 = model(other)
    for i in range(steps):
        point = (fill + i / steps * (x - fill)).requires_grad_(True)
        s = torch.nn.functional.cosine_similarity(model(point), z2, dim=-1).sum()
        total += torch.autograd.grad(s, point)[0]
    return ((x - fill) * total / steps).abs().amax(dim=1)


def test_integrated_gradients_against_a_slow_loop():
    model = small_resnet()
    x1, x2 = arange_image(2, 32, 32), arange_image(2, 32, 32, offset=7)
    result = PairIntegratedGradients(model).attribute((x1, x2), n_steps=6, method="riemann_left",
                                                      perturbations_per_eval=4)
    assert isinstance(result, PairAttribution) and result[0].shape == (2, 32, 32)
    for b in range(2):
        torch.testing.assert_close(result[0][b:b + 1], slow_ig(model, x1[b:b + 1], x2[b:b + 1], 6))
        torch.testing.assert_close(result[1][b:b + 1], slow_ig(model, x2[b:b + 1], x1[b:b + 1], 6))
    with torch.no_grad():
        expected = torch.nn.functional.cosine_similarity(model(x1), model(x2), dim=-1)
    torch.testing.assert_close(result.similarity, expected)
    assert result.meta == {"method": "integrated-gradients", "n_steps": 6, "baselines": "neutral",
                           "approximation": "riemann_left"}


def test_integrated_gradients_bad_input_and_state(monkeypatch):
    model = small_resnet().train()
    x = arange_image(1, 32, 32)
    flags = [p.requires_grad for p in model.parameters()]
    with pytest.raises(ValueError, match="n_steps must be >= 1"):
        PairIntegratedGradients(model).attribute((x, x), n_steps=0)
    with pytest.raises(ValueError, match="batch size mismatch"):
        PairIntegratedGradients(model).attribute((x, arange_image(2, 32, 32)))
    with pytest.raises(ValueError, match="method must be one of"):
        PairIntegratedGradients(model).attribute((x, x), n_steps=2, method="no-such-rule")
    hooks = {name: dict(m._forward_hooks) for name, m in model.named_modules()}

    def fail(*args, **kwargs):
        assert not model.training and not any(p.requires_grad for p in model.parameters())  # inside the call
        raise RuntimeError("stopped inside the integral")

    monkeypatch.setattr(IntegratedGradients, "attribute", fail)
    with pytest.raises(RuntimeError, match="stopped inside"):
        PairIntegratedGradients(model).attribute((x, x), n_steps=2)
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    assert {name: dict(m._forward_hooks) for name, m in model.named_modules()} == hooks


def test_a_new_method_reaches_the_cli_explain_driver_and_registry(image_folder, tmp_path, capsys, monkeypatch):
    from ssl_widgets.cli import build_parser, main, method_names
    from ssl_widgets.evaluate import EvaluationConfig, evaluate
    from ssl_widgets.evaluate.driver import method_names as driver_names

    attribute = PairIntegratedGradients.attribute
    called = []

    def four_steps(self, inputs, n_steps=50, **kwargs):  # which paths reach the method, not the integral's accuracy
        called.append(n_steps)
        return attribute(self, inputs, n_steps=4, **kwargs)

    monkeypatch.setattr(PairIntegratedGradients, "attribute", four_steps)
    name = "integrated-gradients"
    assert name in listed_names("pair") and name in PAIR_METHOD_NAMES and name in METHOD_NAMES
    assert get_method(name) == (PairIntegratedGradients, {})
    assert name in method_names() and name in driver_names()
    help_text = build_parser()._subparsers._group_actions[0].choices["explain"].format_help()
    assert name in re.sub(r"\s+", " ", help_text)
    out = tmp_path / "ig.png"
    assert main(["explain", "chelsea", "--method", name, "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG" and f"{name} on tiny-simclr" in capsys.readouterr().out
    evaluate(EvaluationConfig(data=str(image_folder), model="tiny-simclr", methods=[name], pairs=1, out=str(tmp_path / "e"),
                              step=448, sensitivity_samples=1, show_progress=False))
    (record,) = [json.loads(line) for line in (tmp_path / "e" / "results.jsonl").read_text().splitlines()]
    assert record["method"] == name and all(isinstance(record["metrics"][k], float) for k in ("SI", "CD", "MS"))
    assert len(called) == 4  # the method ran for the figure, the driver's maps, max-sensitivity's base and sample


def test_a_new_method_gets_an_explorer_tab_from_its_record():
    """The explorer builds a tab from the record of a method that has no hand-made tab: its sliders are the
    record's settings, and the map shown is the method's own."""
    from ssl_widgets.explain import explain_pair
    from ssl_widgets.widgets import Explorer
    from ssl_widgets.widgets.controls import SpecControls

    from ssl_widgets.widgets.controls import TAB_METHODS

    explorer = Explorer(threaded=False, display_size=64, method="grad-cam")
    tabs = {c.names[0]: (i, c) for i, c in enumerate(explorer.method_controls) if isinstance(c, SpecControls)}
    hand_made = {name for tab in TAB_METHODS for name in tab.names}
    without = {s.name for s in all_specs() if s.kind in ("pair", "single", "view") and s.name not in hand_made}
    assert set(tabs) == without and {"integrated-gradients", "attention-rollout", "attention-relevance"} <= without
    index, controls = tabs["integrated-gradients"]
    assert explorer.method_tabs.get_title(index) == "Integrated gradients"
    assert (controls.controls["n_steps"].min, controls.controls["n_steps"].max) == (4, 200)
    controls.controls["n_steps"].value = 4
    explorer.method_tabs.selected_index = index
    assert explorer.status.value.startswith("integrated-gradients") and explorer.last_error is None
    x1, x2 = explorer.current_pair()
    direct = explain_pair(explorer._model(), "integrated-gradients", x1, x2, n_steps=4)
    m1, m2 = direct
    assert torch.equal(explorer.maps[0], m1[0]) and torch.equal(explorer.maps[1], m2[0])
    explorer.select_method("attention-rollout")  # a ViT view on the CNN: the panel says it does not apply
    assert "Vision Transformer" in explorer.status.value, explorer.status.value
