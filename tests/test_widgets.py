"""Widget logic, headless: ipywidgets fires observe callbacks outside a kernel."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

import ssl_widgets.widgets.explorer as explorer_module
from ssl_widgets.attr import (
    AveragedTransforms,
    ContextAgnosticOcclusion,
    InteractionCAM,
    PairSmoothGrad,
    PairwiseOcclusion,
    PixelInvariance,
    upsample,
)
from ssl_widgets.data import make_view
from ssl_widgets.models import load_model
from ssl_widgets.widgets import (
    AveragedTransformsPanel,
    CAMPanel,
    Explorer,
    GradientPanel,
    OcclusionPanel,
    PairwiseOcclusionPanel,
    PixelInvariancePanel,
)
from ssl_widgets.widgets.magic import parse_magic_line, ssl_explore


@pytest.fixture
def explorer():
    return Explorer(threaded=False, display_size=128, method="interaction-cam:max")  # fast to compute


def png_size(data: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(data)).size


def test_builds_with_the_default_model_and_shows_a_pair(explorer):
    assert explorer.model_select.value == "tiny-simclr"
    x1, x2 = explorer.current_pair()
    model = explorer._model()
    with torch.no_grad():
        expected = float(model.similarity(x1, x2))
    assert explorer.similarity == pytest.approx(expected, abs=1e-5)
    assert "cos similarity" in explorer.similarity_label.value
    assert png_size(explorer.view1.value) == (128, 128)
    assert explorer.maps[0].shape == (112, 112) and explorer.last_error is None


def test_patch_size_and_stride_sliders_change_the_occlusion_map():
    e = Explorer(threaded=False, display_size=64, method="grad-cam")
    controls = e.method_controls[0]
    controls.stride.value = 16  # set while another tab shows: nothing is computed yet
    e.method_tabs.selected_index = 0
    assert e.status.value == "conditional-occlusion"
    before = e.maps[0].clone()
    controls.patch.value = 48
    assert not torch.equal(before, e.maps[0])
    key = e.request_key()
    assert ("sliding_window_shapes", 48) in key[-1]
    controls.stride.value = 24
    assert ("strides", 24) in e.request_key()[-1]
    controls.variant.value = "context-agnostic-occlusion"
    assert e.status.value.startswith("context-agnostic-occlusion")


def test_each_tab_computes_its_method(explorer):
    expected = ["conditional-occlusion", "interaction-cam:max", "averaged-transforms:guided",
                "input-x-gradient:guided", "pairwise-occlusion", "pixel-invariance"]
    explorer.method_controls[5].samples.value = 50
    explorer.method_controls[5].epochs.value = 20
    explorer.method_controls[0].stride.value = 16
    for index, name in enumerate(expected):
        explorer.method_tabs.selected_index = index
        assert explorer.status.value.startswith(name), (index, explorer.status.value)
        assert explorer.last_error is None


def test_cam_controls_and_layer(explorer):
    cam = explorer.method_controls[1]
    cam.variant.value = "grad-cam"
    assert explorer.status.value == "grad-cam"
    cam.variant.value = "attention"
    cam.interaction.value = True
    assert explorer.status.value == "interaction-cam:attention+gi"
    trunk_output = explorer.maps[0].clone()
    explorer.layer_select.value = "layer3"
    assert explorer.request_key()[2] == "layer3"
    # the shown maps are the method's own at that layer, brought to image size
    x1, x2 = explorer.current_pair()
    expected = InteractionCAM(load_model(explorer.model_select.value), "layer3").attribute(
        (x1, x2), pooling="attention", gradient_interaction=True)
    for k in range(2):
        torch.testing.assert_close(explorer.maps[k], upsample(expected[k], (112, 112))[0], atol=1e-6, rtol=1e-4)
    assert not torch.allclose(explorer.maps[0], trunk_output, atol=1e-4)


def test_display_controls_redraw_without_recomputing(explorer, monkeypatch):
    calls = []
    original = explorer_module.explain_pair
    monkeypatch.setattr(explorer_module, "explain_pair", lambda *a, **k: calls.append(1) or original(*a, **k))
    before = explorer.view1.value
    explorer.opacity.value = 0.9
    assert explorer.view1.value != before
    explorer.colormap.value = "viridis"
    assert not calls


def test_views_show_the_image_blended_with_the_upsampled_map():
    """At display size = input size, view 1's pixels are (1 - opacity) * image + opacity * colormap(map), the map
    upsampled bilinearly to the image and scaled to its own min..max."""
    from matplotlib import colormaps

    e = Explorer(threaded=False, display_size=112, method="grad-cam")
    e.opacity.value, e.colormap.value = 0.6, "viridis"
    x1, x2 = e.current_pair()
    for view, x, heat in ((e.view1, x1, e.maps[0]), (e.view2, x2, e.maps[1])):
        shown = np.asarray(Image.open(io.BytesIO(view.value)).convert("RGB"), dtype=np.float64) / 255
        up = torch.nn.functional.interpolate(heat[None, None].float(), size=(112, 112), mode="bilinear",
                                             align_corners=False)[0, 0].numpy()
        norm = (up - up.min()) / (up.max() - up.min())
        expected = 0.4 * x[0].permute(1, 2, 0).numpy() + 0.6 * colormaps["viridis"](norm)[..., :3]
        assert np.abs(shown - expected).max() <= 1 / 255 + 1e-6


def test_results_are_cached(explorer, monkeypatch):
    calls = []
    original = explorer_module.explain_pair
    monkeypatch.setattr(explorer_module, "explain_pair", lambda *a, **k: calls.append(1) or original(*a, **k))
    explorer.method_controls[1].variant.value = "mean"
    explorer.method_controls[1].variant.value = "max"  # back to a cached setting
    assert len(calls) == 1


def test_augmentation_controls_change_view_2(explorer):
    assert explorer.recipe.value == "aug"  # the default: the CLI's view (tests/test_first_hour.py)
    explorer.recipe.value = "custom"  # the sliders below
    _, before = explorer.current_pair()
    similarity = explorer.similarity
    explorer.resample.click()
    assert explorer.seed.value == 1
    _, after = explorer.current_pair()
    assert not torch.equal(before, after) and explorer.similarity != similarity

    def torchvision_view(seed, blur=None):  # the controls' pipeline, written out, after torch.manual_seed(seed)
        from torchvision import transforms as T

        from ssl_widgets.data.images import to_pil

        steps = [T.RandomResizedCrop(112, scale=(0.3, 1.0)), T.RandomHorizontalFlip(0.5),
                 T.ColorJitter(0.4, 0.4, 0.4, 0.1)] + ([T.GaussianBlur(7, sigma=1.0)] if blur else [])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return T.Compose(steps + [T.ToTensor()])(to_pil(explorer.image1_select.value))[None]

    torch.testing.assert_close(before, torchvision_view(0), atol=0, rtol=0)
    torch.testing.assert_close(after, torchvision_view(1), atol=0, rtol=0)
    explorer.blur.value = 1.0
    torch.testing.assert_close(explorer.current_pair()[1], torchvision_view(1, blur=True), atol=0, rtol=0)
    explorer.blur.value = 0.0
    explorer.grayscale.value = True
    _, gray = explorer.current_pair()
    torch.testing.assert_close(gray[:, 0], gray[:, 1])
    explorer.image2_select.value = "coffee"
    _, coffee = explorer.current_pair()
    assert coffee.shape == (1, 3, 112, 112) and explorer.similarity < 0.9


def test_click_shows_the_correspondence_on_the_other_image(explorer):
    explorer.method_tabs.selected_index = 6
    before = explorer.view2.value
    explorer.click(0, {"dataX": 64, "dataY": 40})
    assert explorer.maps[0] is None and explorer.maps[1].shape == (7, 7)
    assert float(explorer.maps[1].max()) <= 1.0 + 1e-6
    assert explorer.view2.value != before and "image 1" in explorer.status.value
    explorer.click(1, {"relativeX": 10, "relativeY": 120, "boundingRectWidth": 128, "boundingRectHeight": 128})
    assert explorer.maps[1] is None and explorer.maps[0].shape == (7, 7)


def peak(heat):
    flat = int(heat.flatten().argmax())
    return divmod(flat, heat.shape[1]), float(heat.flatten()[flat])


def test_click_on_a_cell_of_the_same_image_peaks_at_that_cell():
    """Image 2 = image 1: a click inside cell (r, c) of the 7x7 map gives its maximum, 1, at (r, c)."""
    e = Explorer(threaded=False, display_size=128, method="correspondence",
                 images=("chelsea", "chelsea"))
    x1, x2 = e.current_pair()
    assert torch.equal(x1, x2)
    cell = 112 / 7  # input pixels per feature cell; the display is 128 px for 112 input px
    for view, (r, c) in [(0, (0, 0)), (0, (2, 5)), (1, (6, 6)), (1, (4, 1))]:
        x, y = (c + 0.5) * cell * 128 / 112, (r + 0.3) * cell * 128 / 112  # display coordinates inside the cell
        e.click(view, {"dataX": x, "dataY": y})
        heat = e.maps[1 - view]
        assert e.maps[view] is None and heat.shape == (7, 7) and e.last_error is None
        where, value = peak(heat)
        assert where == (r, c) and value == pytest.approx(1.0, abs=1e-5)
        assert e._box == (view, (int(r * cell), int(c * cell), int((r + 1) * cell), int((c + 1) * cell)))
        # the same point given as relative coordinates of a 256 px wide element lands on the same cell
        e.click(view, {"relativeX": 2 * x, "relativeY": 2 * y, "boundingRectWidth": 256, "boundingRectHeight": 256})
        torch.testing.assert_close(e.maps[1 - view], heat)


@pytest.mark.parametrize("event", [{"dataX": -1, "dataY": 10}, {"dataX": 10, "dataY": 129},
                                   {"relativeX": 300, "relativeY": 5, "boundingRectWidth": 256}])
def test_click_outside_the_image_is_refused(event):
    e = Explorer(threaded=False, display_size=128, method="correspondence",
                 images=("chelsea", "chelsea"))
    e.click(0, {"dataX": 20, "dataY": 20})
    shown = e.maps
    e.click(0, event)
    assert e.last_error is not None and "outside" in e.last_error
    assert e.maps[1] is shown[1]  # the previous map stays


def test_dense_correspondence_by_hand_and_outside_points():
    from helpers import small_resnet

    from ssl_widgets.analysis import dense_correspondence

    model = small_resnet(maxpool=False)  # output stride 16: a 64 px image gives a 4x4 map
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    features = model.features(x)[0].detach()
    for r, c in [(0, 0), (1, 3), (3, 2)]:
        heat = dense_correspondence(model, x, x, (r * 16 + 15, c * 16))
        expected = torch.nn.functional.cosine_similarity(features, features[:, r, c].view(-1, 1, 1), dim=0)
        torch.testing.assert_close(heat, expected, atol=1e-6, rtol=1e-5)
        assert peak(heat) == ((r, c), pytest.approx(1.0, abs=1e-6))
    for point in [(64, 0), (0, 64), (-1, 3), (3, -0.5)]:
        with pytest.raises(ValueError, match="outside the query image of size 64x64"):
            dense_correspondence(model, x, x, point)


def test_errors_show_inside_the_panel(explorer):
    explorer.image1_select.value = "/no/such/image.png"
    assert explorer.last_error is not None and "neither a file nor a sample" in explorer.last_error
    assert "error" in explorer.status.value
    explorer.image1_select.value = "rocket"  # and it recovers
    assert explorer.last_error is None


def test_model_switch_updates_layers_and_similarity(explorer):
    similarity = explorer.similarity
    explorer.model_select.value = "tiny-barlow-twins"
    assert explorer._model().name == "tiny-barlow-twins"
    assert explorer.similarity != similarity
    assert "layer4" in [value for _, value in explorer.layer_select.options]


def test_upload_becomes_image_1(explorer):
    array = (np.arange(64 * 80 * 3) % 251).astype(np.uint8).reshape(64, 80, 3)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    explorer._on_upload({"new": ({"name": "mine.png", "content": memoryview(buffer.getvalue())},)})
    assert explorer.image1_select.value == "upload: mine.png"
    x1, _ = explorer.current_pair()
    assert x1.shape == (1, 3, 112, 112) and explorer.last_error is None


def test_threaded_computation_and_cancel():
    e = Explorer(threaded=True, display_size=64)
    e.wait()
    assert e.maps[0] is not None and e.status.value == "conditional-occlusion"
    e.method_tabs.selected_index = 5
    e.method_controls[5].samples.value = 1000
    e.method_controls[5].epochs.value = 1000
    e.cancel_button.click()
    e.wait()
    assert e.status.value == "cancelled"
    assert all(m.training is False for m in e._model().modules())
    assert all(p.requires_grad for p in e._model().parameters())


def test_sweep_and_curves_use_bqplot(explorer):
    sims = explorer.sweep("grayscale")
    assert sims.shape == (11,) and float(sims[0]) == pytest.approx(1.0, abs=1e-5)
    assert np.asarray(explorer.curves.sweep_lines.y).ravel().tolist() == pytest.approx(sims.tolist())
    explorer.curves.show_curves.value = True
    explorer.method_controls[1].variant.value = "mean"
    ins, dele = explorer.curves.last_curves
    assert len(ins) == len(dele) > 10
    assert len(explorer.curves.curve_lines.y) == 2


def _seeded(seed=0):
    return torch.Generator().manual_seed(seed)


# panel, method it starts on, slider settings, the method's maps computed directly (model, x1, x2, image 1's name)
PANELS = [
    (OcclusionPanel, "context-agnostic-occlusion", {"patch": 16, "stride": 8, "fill": "grey"},
     lambda m, x1, x2, _: ContextAgnosticOcclusion(m).attribute((x1, x2), 16, 8, baselines=0.5)),
    (CAMPanel, "interaction-cam:mean", {},
     lambda m, x1, x2, _: InteractionCAM(m).attribute((x1, x2), pooling="mean")),
    (GradientPanel, "smoothgrad:guided", {"samples": 5},
     lambda m, x1, x2, _: PairSmoothGrad(m).attribute((x1, x2), n_samples=5, guided=True, blur=True,
                                                     generator=_seeded())),
    (AveragedTransformsPanel, "averaged-transforms:guided", {"steps": 3, "transform": "grayscale"},
     lambda m, x1, _, image: AveragedTransforms(m).attribute(
         (x1, make_view(image, "grayscale", 32, seed=0)), steps=3, guided=True, blur=True)),
    (PairwiseOcclusionPanel, "pairwise-occlusion", {"samples": 20, "seed": 3},
     lambda m, x1, x2, _: PairwiseOcclusion(m).attribute((x1, x2), n_samples=20, scale=(0.1, 0.3),
                                                         generator=_seeded(3))),
    (PixelInvariancePanel, "pixel-invariance", {"samples": 50, "epochs": 10, "threshold": 0.3},
     lambda m, x1, _, __: PixelInvariance(m).attribute(x1, n_samples=50, epochs=10, threshold=0.3,
                                                       size=9, generator=_seeded())),  # 64 px at 224, for 32 px
]


@pytest.mark.parametrize("panel, method, sliders, direct", PANELS, ids=[p[0].__name__ for p in PANELS])
def test_single_method_panels_show_the_methods_maps(panel, method, sliders, direct):
    """Each panel has one tab, and the maps it shows are the method's own (same settings and seed) at image size.

    A small 32 px model keeps the panels' first computation (at the default settings) short."""
    from helpers import small_resnet

    model = small_resnet()
    p = panel(model, threaded=False, display_size=64, method=method)
    assert len(p.method_controls) == 1 and p.status.value.startswith(method)
    controls = p.method_controls[0]
    for name, value in sliders.items():
        getattr(controls, name).value = value
    assert p.last_error is None and p.status.value.startswith(method), p.status.value
    x1, x2 = p.current_pair()
    assert x1.shape == (1, 3, 32, 32)
    expected = direct(model, x1, x2, p.image1_select.value)
    if panel is PixelInvariancePanel:  # one map, of image 1
        torch.testing.assert_close(p.maps[0], upsample(expected, (32, 32))[0], atol=1e-6, rtol=1e-4)
        assert p.maps[1] is None
        return
    for k in range(2):
        torch.testing.assert_close(p.maps[k], upsample(expected[k], (32, 32))[0], atol=1e-6, rtol=1e-4)


def test_magic_line():
    args = parse_magic_line("coffee chelsea --model tiny-barlow-twins --method grad-cam")
    assert args.images == ["coffee", "chelsea"] and args.model == "tiny-barlow-twins"
    e = ssl_explore("astronaut --method interaction-cam")
    e.wait()
    assert e.method_tabs.selected_index == 1 and e.image1_select.value == "astronaut"
    with pytest.raises(ValueError, match="at most two images"):
        parse_magic_line("a b c")
    with pytest.raises(ValueError, match="no tab .* 'occlusion'"):
        ssl_explore("--method occlusion")
    with pytest.raises(ValueError, match="no tab .* 'grad-cam'"):
        OcclusionPanel(threaded=False, method="grad-cam")

    class FakeIPython:
        def register_magic_function(self, func, magic_kind, magic_name):
            self.registered = (func, magic_kind, magic_name)

    import ssl_widgets

    ip = FakeIPython()
    ssl_widgets.load_ipython_extension(ip)
    assert ip.registered[1:] == ("line", "ssl_explore")


def test_synthesis_tabs_show_a_message_not_broken_images_before_a_run(explorer):
    titles = [c.title for c in explorer.method_controls]
    md = explorer.method_controls[titles.index("Model difference")]
    fv = explorer.method_controls[titles.index("Feature visualisation")]
    # an empty W.Image renders as a broken-image icon: hidden until its first picture, a message instead
    for image in [*md.outputs.values(), fv.output]:
        assert image.value == b"" and image.layout.visibility == "hidden"
    for tab in (md, fv):
        assert "press run" in tab.placeholder.value and tab.placeholder.layout.display != "none"
        assert tab.placeholder in tab.box.children


def test_feature_visualization_and_model_difference_tabs(explorer):
    from ssl_widgets.widgets import FeatureVisualizationPanel, ModelDifferencePanel

    titles = [c.title for c in explorer.method_controls]
    fv = explorer.method_controls[titles.index("Feature visualisation")]
    explorer.method_tabs.selected_index = titles.index("Feature visualisation")
    assert "press run" in explorer.status.value
    fv.octaves.value, fv.iterations.value = 2, 5
    fv.run_button.click()
    assert explorer.status.value == "Feature visualisation: done" and fv.result.shape == (1, 3, 112, 112)
    assert png_size(fv.output.value) == (224, 224)
    md = explorer.method_controls[titles.index("Model difference")]
    md.iterations.value = 20
    md.run_button.click()
    assert explorer.status.value == "Model difference: done"
    assert set(md.result) == {"stem", "layer1", "layer2"}
    assert all(len(image.value) > 100 and image.layout.visibility == "visible" for image in md.outputs.values())
    assert md.placeholder.layout.display == "none" and fv.output.layout.visibility == "visible"
    panel = ModelDifferencePanel(threaded=False, display_size=64, method="model-difference")
    assert len(panel.method_controls) == 1
    assert len(FeatureVisualizationPanel(threaded=False, display_size=64).method_controls) == 1


def test_correspondence_tab_offers_the_joint_methods(explorer):
    from ssl_widgets.attr import JointGradient

    explorer.method_tabs.selected_index = 6
    controls = explorer._controls()
    controls.joint_method.value = "joint-gradient"
    explorer.click(0, {"dataX": 64, "dataY": 40})
    x1, x2 = explorer.current_pair()
    expected = JointGradient(explorer._model()).attribute((x1, x2), grid=7)
    size = explorer._model().input_size
    point = (40 * size / explorer.display_size, 64 * size / explorer.display_size)
    cell = (int(point[0] * 7 / size), int(point[1] * 7 / size))
    assert explorer.maps[0] is None
    torch.testing.assert_close(explorer.maps[1], expected.over_other(cell))
    controls.joint_method.value = "joint-occlusion"
    explorer.click(1, {"dataX": 10, "dataY": 10})
    assert explorer.maps[1] is None and explorer.maps[0].shape == (7, 7) and explorer.last_error is None
    controls.joint_method.value = "feature-cosine"
