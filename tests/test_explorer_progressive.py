"""The explorer draws slow tabs progressively (partial results, then the refined map) with defaults sized to
the model (ssl_widgets.widgets.progressive.explorer_defaults)."""
import pytest
import torch

from ssl_widgets.attr.gradients import PairSmoothGrad
from ssl_widgets.attr.integrated_gradients import PairIntegratedGradients
from ssl_widgets.attr.pairwise_occlusion import PairwiseOcclusion
from ssl_widgets.explain import explain_pair
from ssl_widgets.models.zoo import build_tiny_model
from ssl_widgets.widgets import Explorer
from ssl_widgets.widgets.progressive import explorer_defaults


def tiny(input_size):
    torch.manual_seed(0)  # the same weights whatever ran before
    return build_tiny_model({"width": 8, "head_dims": [32, 16], "input_size": input_size}).eval()


def close(actual, expected):
    """Equal up to float rounding: relative to the map's scale (the maps of these random tiny models are ~1e-3),
    and at least 2e-7 absolute (occlusion maps are differences of cosine similarities near 1, each rounded to
    ~6e-8 in float32; measured up to 6e-8 apart)."""
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=max(1e-6 * float(expected.abs().max()), 2e-7))


def recording(explorer):
    """``(status, maps)`` of every status line the explorer shows from now on."""
    frames = []
    explorer.status.observe(lambda change: frames.append((change["new"], explorer.maps)), names="value")
    return frames


def plain(explorer, name, **settings):
    """``explain_pair`` with the tab's settings, as a script would call it."""
    x1, x2 = explorer.current_pair(name, settings)
    return explain_pair(explorer._model(), name, x1, x2, generator=torch.Generator().manual_seed(0), **settings)


@pytest.mark.parametrize("cls, settings, labels, total", [
    (PairSmoothGrad, {"n_samples": 5}, ["2 of 5 samples", "4 of 5 samples"] * 2, 2 * 3),
    (PairIntegratedGradients, {"n_steps": 5}, ["image 1 of 4", "image 2 of 4", "image 3 of 4"], 4 * 3),
    (PairwiseOcclusion, {"n_samples": 5}, ["2 of 5 pairs", "4 of 5 pairs"] * 2, 2 * 3),
])
def test_partials_and_progress_leave_the_result_as_a_plain_call(cls, settings, labels, total):
    model = tiny(32)
    x1, x2 = torch.rand(2, 1, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    x1, x2 = torch.cat([x1, x2]), torch.cat([x2, x1.flip(-1)])  # two pairs
    seeded = {"generator": torch.Generator().manual_seed(3)} if cls is not PairIntegratedGradients else {}
    plain_result = cls(model).attribute((x1, x2), perturbations_per_eval=2, **settings, **seeded)
    partials, reports = [], []
    seeded = {"generator": torch.Generator().manual_seed(3)} if cls is not PairIntegratedGradients else {}
    result = cls(model).attribute((x1, x2), perturbations_per_eval=2, **settings, **seeded,
                                  on_partial=partials.append, on_progress=lambda *at: reports.append(at))
    for view in (0, 1):
        close(result[view], plain_result[view])  # measured: 0
        assert partials[-1][view].shape == result[view].shape
    assert [p.meta["partial"] for p in partials] == labels
    assert reports[0] == (0, total) and reports[-1] == (total, total)
    assert [d for d, _ in reports] == sorted(d for d, _ in reports)
    for view in (0, 1):
        close(partials[-1][view][0], result[view][0])  # pair 1 is done in the last partial ...
        assert partials[0][view][1].abs().max() == 0  # ... pair 2 not in the first
    assert max(result[view][1].abs().max() for view in (0, 1)) > 0


def slider(explorer, name):
    """The tab's slider of the setting ``name`` (SmoothGrad samples, the integrated gradients' n_steps)."""
    controls = explorer._controls()
    return controls.samples if name == "n_samples" else controls.controls[name]


@pytest.mark.parametrize("method, settings, partial, first", [
    ("smoothgrad:guided", {"n_samples": 24, "blur": True}, ["8 of 24 samples", "16 of 24 samples"], {"n_samples": 8}),
    ("integrated-gradients", {"n_steps": 40}, ["image 1 of 2"], None),
])
def test_a_gradient_tab_draws_partial_results_then_the_refined_map_of_a_plain_call(method, settings, partial, first):
    explorer = Explorer(tiny(32), threaded=False, method=method)
    frames = recording(explorer)
    name = next(k for k in settings if k != "blur")
    slider(explorer, name).value = settings[name]  # a new request
    statuses = [status for status, _ in frames]
    assert statuses == [f"computing {method} ...", *(f"{method} ({p}, refining ...)" for p in partial), method]
    refined = plain(explorer, method, **settings)
    for shown, expected in zip(explorer.maps, refined):
        close(shown, expected[0])  # measured: 0 (the same batches)
    partial_maps = frames[1][1]
    if first is not None:  # SmoothGrad: the running mean after 8 samples is a plain call with 8 (same draws)
        early = plain(explorer, method, **{**settings, **first})
        for shown, expected in zip(partial_maps, early):
            close(shown, expected[0])
        # not yet refined: 8 of 24 samples differ from the mean of 24 far beyond float rounding (1e-6 of the
        # map; measured 1% to 10% of its largest value, blur on, over the weights of seeds 0 to 5)
        assert (partial_maps[0] - explorer.maps[0]).abs().max() > 1e-4 * explorer.maps[0].abs().max()
    else:  # integrated gradients: image 1's map, image 2 not yet
        close(partial_maps[0], refined[0][0])
        assert partial_maps[1] is None


def model_state(model):
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                for m in model.modules())
    return (model.training, [p.requires_grad for p in model.parameters()], hooks,
            [p.detach().clone() for p in model.parameters()])


@pytest.mark.parametrize("method", ["smoothgrad", "integrated-gradients"])
def test_cancel_during_refinement_stops_it_and_leaves_the_model_intact(method):
    model = tiny(32)
    explorer = Explorer(model, threaded=False, method="input-x-gradient")
    before = model_state(model)
    frames = []

    def cancel_at_the_first_partial(change):
        frames.append(change["new"])
        if "refining" in change["new"]:
            explorer.cancel_button.click()

    explorer.status.observe(cancel_at_the_first_partial, names="value")
    explorer.select_method(method)
    assert "refining" in frames[-2] and frames[-1] == "cancelled"
    assert explorer.request_key() not in explorer._cache
    after = model_state(model)
    assert after[:3] == before[:3] and before[0] is False and before[2] == 0
    for p, q in zip(after[3], before[3]):
        assert torch.equal(p, q)


def test_a_large_model_shows_a_quick_first_occlusion_frame_then_the_refined_map():
    explorer = Explorer(tiny(160), threaded=False, method="input-x-gradient")
    occlusion = explorer.method_controls[0]
    assert (occlusion.patch.value, occlusion.stride.value) == (50, 22)  # explorer_defaults(160): 6 x 6 windows
    frames = recording(explorer)
    explorer.select_method("conditional-occlusion")
    statuses = [status for status, _ in frames]
    assert statuses == ["computing conditional-occlusion ...",
                        "conditional-occlusion (first frame: sliding_window_shapes 80, strides 80, refining ...)",
                        "conditional-occlusion (coarse preview, refining ...)",  # 3 x 3 of the refined windows
                        "conditional-occlusion"]
    quick = plain(explorer, "conditional-occlusion", sliding_window_shapes=80, strides=80)
    refined = plain(explorer, "conditional-occlusion", sliding_window_shapes=50, strides=22)
    coarse = plain(explorer, "conditional-occlusion", sliding_window_shapes=50, strides=44)
    for view in (0, 1):
        close(frames[1][1][view], quick[view][0])
        close(frames[2][1][view], coarse[view][0])
        close(explorer.maps[view], refined[view][0])


def test_the_tiny_models_keep_their_defaults():
    defaults = explorer_defaults(112).settings
    occlusion = defaults["conditional-occlusion"]
    assert (occlusion["sliding_window_shapes"], occlusion["strides"], occlusion.get("fill", "pixels")) == (32, 4, "pixels")
    assert (defaults["smoothgrad"], defaults["integrated-gradients"]) == ({"n_samples": 20}, {"n_steps": 50})
    assert (defaults["averaged-transforms"], defaults["pairwise-occlusion"], defaults["pixel-invariance"]) == (
        {"steps": 10}, {"n_samples": 100}, {"n_samples": 300})
    assert not explorer_defaults(112).coarse and not explorer_defaults(112).compute
    tabs = {c.title: c for c in Explorer(threaded=False, method="grad-cam").method_controls}  # tiny-simclr, 112 px
    assert (tabs["Occlusion"].patch.value, tabs["Occlusion"].stride.value) == (32, 4)
    assert (tabs["Gradients"].samples.value, tabs["Pairwise occlusion"].samples.value) == (20, 100)
    assert (tabs["Averaged transforms"].steps.value, tabs["Pixel invariance"].samples.value) == (10, 300)
    assert tabs["Integrated gradients"].request() == ("integrated-gradients", {"n_steps": 50})


@pytest.mark.parametrize("patch", [None, 16, 14])
def test_large_models_get_patch_aligned_windows_and_a_cheap_first_frame(patch):
    plan = explorer_defaults(224, patch)
    occlusion = plan.settings["conditional-occlusion"]
    window, stride = occlusion["sliding_window_shapes"], occlusion["strides"]
    unit = patch or 1
    assert window % unit == 0 and stride % unit == 0 and 48 <= window <= 80  # near the paper's 64
    assert (224 - window) % stride == 0 and stride <= window // 2  # the grid tiles the image, 2+ windows a pixel
    assert ((224 - window) // stride + 1) ** 2 <= 49  # the refined grid: at most 7 x 7 windows
    quick = plan.coarse["conditional-occlusion"]
    assert quick["sliding_window_shapes"] % unit == 0 and ((224 - quick["sliding_window_shapes"])
                                                           // quick["strides"] + 1) ** 2 <= 4
    assert plan.settings["smoothgrad"]["n_samples"] <= 8 and plan.settings["integrated-gradients"]["n_steps"] <= 8
    assert plan.compute["smoothgrad"]["perturbations_per_eval"] < plan.settings["smoothgrad"]["n_samples"]


def test_a_large_model_draws_averaged_transforms_from_a_short_path_first():
    explorer = Explorer(tiny(160), threaded=False, method="averaged-transforms:guided")
    assert explorer._controls().steps.value == 5  # explorer_defaults(160)
    frames = recording(explorer)
    explorer._controls().steps.value = 6
    statuses = [status for status, _ in frames]
    name = "averaged-transforms:guided"
    assert statuses == [f"computing {name} ...", f"{name} (first frame: steps 2, refining ...)", name]
    for view, expected in enumerate(plain(explorer, name, steps=6, blur=True)):
        close(explorer.maps[view], expected[0])
    for view, expected in enumerate(plain(explorer, name, steps=2, blur=True)):
        close(frames[1][1][view], expected[0])
