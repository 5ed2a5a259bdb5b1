"""The explorer, the evaluation driver and the correspondence benchmark with the shipped ViT (tiny-dino-vit)."""
import threading
import time

import pytest
import torch

from ssl_widgets.attr.engine import progress
from ssl_widgets.cli import main as cli_main
from ssl_widgets.evaluate import EvaluationConfig, evaluate
from ssl_widgets.evaluate.correspondence import evaluate_correspondence
from ssl_widgets.explain import explain_pair
from ssl_widgets.widgets import Explorer

VIT = "tiny-dino-vit"


def tab(explorer, title):
    titles = [c.title for c in explorer.method_controls]
    return titles.index(title), explorer.method_controls[titles.index(title)]


def peak(heat):
    flat = int(heat.argmax())
    return (flat // heat.shape[1], flat % heat.shape[1]), float(heat.max())


@pytest.fixture(scope="module")
def vit_explorer():
    return Explorer(VIT, threaded=False, display_size=128, method="grad-cam")


def test_every_tab_works_or_says_it_does_not_apply(vit_explorer):
    e = vit_explorer
    settings = {"Occlusion": {"stride": 16}, "Pairwise occlusion": {"samples": 10},
                "Pixel invariance": {"samples": 50, "epochs": 10}}
    for title, values in settings.items():
        for attr, value in values.items():
            getattr(tab(e, title)[1], attr).value = value  # set while another tab shows
    expected = {"Occlusion": "conditional-occlusion", "Interaction-CAM": "grad-cam",
                "Pairwise occlusion": "pairwise-occlusion", "Pixel invariance": "pixel-invariance",
                "Attention": "cls-attention", "Feature PCA": "feature-pca", "Correspondence": "click a point"}
    for title, status in expected.items():
        e.method_tabs.selected_index = tab(e, title)[0]
        assert e.status.value.startswith(status), (title, e.status.value)
        assert e.last_error is None, (title, e.last_error)
    # the guided variants (default on) do not apply to a GELU network: the panel says so, nothing breaks
    for title, base in (("Averaged transforms", "averaged-transforms"), ("Gradients", "input-x-gradient")):
        index, controls = tab(e, title)
        e.method_tabs.selected_index = index
        assert "does not apply" in e.status.value and f"'{base}:guided'" in e.status.value
        assert "Vision Transformer" in e.status.value and "GELU" in e.status.value
        assert e.maps == (None, None) and e.last_error is None and e.view1.value
        controls.guided.value = False
        assert e.status.value.startswith(base) and e.last_error is None and e.maps[0].shape == (112, 112)


def test_the_occlusion_tab_offers_the_vit_native_occlusion_on_a_vit_only(vit_explorer):
    e = vit_explorer
    index, controls = tab(e, "Occlusion")
    assert "drop-tokens" in [value for _, value in controls.fill.options]
    assert e._model().patch_size == 8
    controls.patch.value, controls.stride.value = 32, 16  # whole 8-px patches
    controls.fill.value = "drop-tokens"
    e.method_tabs.selected_index = index
    assert e.last_error is None and e.status.value.startswith("conditional-occlusion")
    x1, x2 = e.current_pair()
    expected = explain_pair(e._model(), "conditional-occlusion", x1, x2, sliding_window_shapes=32, strides=16,
                            fill="drop-tokens")
    grey = explain_pair(e._model(), "conditional-occlusion", x1, x2, sliding_window_shapes=32, strides=16)
    assert torch.allclose(e.maps[0], expected[0][0], atol=1e-5)  # measured: equal to float rounding
    assert not torch.allclose(e.maps[0], grey[0][0], atol=1e-3)  # another explanation than the grey fill
    controls.stride.value = 12  # windows off the patch grid: the panel says why, nothing breaks
    assert "multiples of the patch size 8" in (e.last_error or "")
    controls.fill.value, controls.stride.value = "neutral", 16
    assert e.last_error is None
    cnn = Explorer("tiny-simclr", threaded=False, method="grad-cam")
    assert "drop-tokens" not in [value for _, value in tab(cnn, "Occlusion")[1].fill.options]


def test_attention_tab_lists_blocks_and_heads_and_shows_the_class_token_attention(vit_explorer):
    e = vit_explorer
    model = e._model()
    index, controls = tab(e, "Attention")
    depth, heads = len(model.trunk.blocks), model.trunk.blocks[0].attn.num_heads
    assert [label for label, _ in controls.block.options] == ["last"] + [f"blocks.{i}" for i in range(depth)]
    assert [v for _, v in controls.head.options] == ["mean"] + list(range(heads))
    e.method_tabs.selected_index = index
    controls.block.value, controls.head.value = 0, 1
    x1, x2 = e.current_pair()
    expected = explain_pair(model, "cls-attention", x1, x2, block=0, head=1)
    assert e.status.value == "cls-attention" and e.last_error is None
    torch.testing.assert_close(e.maps[0], expected[0][0])
    torch.testing.assert_close(e.maps[1], expected[1][0])
    controls.head.value = "mean"
    mean = explain_pair(model, "cls-attention", x1, x2, block=0, head=None)
    torch.testing.assert_close(e.maps[0], mean[0][0])
    assert not torch.allclose(mean[0][0], expected[0][0])


def cyan_pixels(png: bytes) -> int:
    import io

    import numpy as np
    from PIL import Image

    return int((np.array(Image.open(io.BytesIO(png)).convert("RGB")) == (0, 255, 255)).all(-1).sum())


def test_attention_tab_threshold_shows_dinos_mask_with_its_outline(vit_explorer):
    e = vit_explorer
    index, controls = tab(e, "Attention")
    e.method_tabs.selected_index = index
    controls.block.value, controls.head.value, controls.threshold.value = -1, "mean", 0.0
    assert cyan_pixels(e.view1.value) == 0 and dict(e.request_key()[-1])["threshold"] is None
    controls.threshold.value = 0.6
    x1, x2 = e.current_pair()
    expected = explain_pair(e._model(), "cls-attention", x1, x2, block=-1, head=None, threshold=0.6)
    assert e.last_error is None
    torch.testing.assert_close(e.maps[0], expected[0][0])
    torch.testing.assert_close(e.maps[1], expected[1][0])
    assert cyan_pixels(e.view1.value) > 0 and cyan_pixels(e.view2.value) > 0  # the mask's outline
    controls.threshold.value = 0.0
    assert cyan_pixels(e.view1.value) == 0


def test_pca_tab_draws_rgb_maps_of_both_images_at_the_chosen_layer(vit_explorer):
    e = vit_explorer
    index, _ = tab(e, "Feature PCA")
    e.method_tabs.selected_index = index
    e.layer_select.value = "blocks.1"
    x1, x2 = e.current_pair()
    expected = explain_pair(e._model(), "feature-pca", x1, x2, layer="blocks.1")
    assert e.last_error is None and e.maps[0].shape == (3, 112, 112) and e.maps[1].shape == (3, 112, 112)
    torch.testing.assert_close(e.maps[0], expected[0][0])
    from ssl_widgets.widgets.rendering import overlay_png

    assert e.view1.value == overlay_png(x1, expected[0][0], alpha=e.opacity.value, cmap=e.colormap.value,
                                        display_size=128)
    e.layer_select.value = ""


def test_layer_choice_shows_token_layers_and_drives_the_cam(vit_explorer):
    e = vit_explorer
    values = [v for _, v in e.layer_select.options]
    depth = len(e._model().trunk.blocks)
    assert {f"blocks.{i}" for i in range(depth)} | {"norm", f"blocks.{depth - 1}.attn"} <= set(values)
    assert not any(v.startswith("layer") for v in values)
    index, controls = tab(e, "Interaction-CAM")
    e.method_tabs.selected_index = index
    e.layer_select.value = "blocks.0"
    x1, x2 = e.current_pair()
    expected = explain_pair(e._model(), controls.request()[0], x1, x2, layer="blocks.0")
    torch.testing.assert_close(e.maps[0], expected[0][0])
    e.layer_select.value = ""


def test_cnn_attention_tab_refuses_and_pca_works():
    e = Explorer("tiny-simclr", threaded=False, display_size=64, method="cls-attention")
    assert "does not apply" in e.status.value and "'cls-attention'" in e.status.value
    assert "convolutional network" in e.status.value and e.last_error is None and e.maps == (None, None)
    assert tab(e, "Attention")[1].head.options == (("mean of heads", "mean"),)
    e.select_method("feature-pca")
    assert e.last_error is None and e.maps[0].shape == (3, 112, 112)
    e.model_select.value = VIT  # the attention choices follow the model
    assert len(tab(e, "Attention")[1].block.options) == len(e._model().trunk.blocks) + 1


def test_click_on_a_token_cell_of_the_same_image_peaks_at_that_cell():
    e = Explorer(VIT, threaded=False, display_size=128, method="correspondence", images=("chelsea", "chelsea"))
    x1, x2 = e.current_pair()
    assert torch.equal(x1, x2)
    grid = 112 // 8
    cell = 112 / grid
    for view, (r, c) in [(0, (0, 0)), (0, (3, 11)), (1, (13, 13)), (1, (7, 2))]:
        x, y = (c + 0.5) * cell * 128 / 112, (r + 0.4) * cell * 128 / 112
        e.click(view, {"dataX": x, "dataY": y})
        heat = e.maps[1 - view]
        assert e.last_error is None and heat.shape == (grid, grid)
        where, value = peak(heat)
        assert where == (r, c) and value == pytest.approx(1.0, abs=1e-5)


def test_joint_click_runs_in_the_worker_with_progress():
    from ssl_widgets.attr import JointGradient

    e = Explorer(VIT, threaded=True, display_size=128, method="correspondence")
    e.wait()
    flags = [m.fused_attn for m in e._model().modules() if hasattr(m, "fused_attn")]
    assert flags and all(flags)  # timm's default; JointGradient switches it off for its forward-mode pass
    e._controls().joint_method.value = "joint-gradient"
    e.wait()
    e.click(0, {"dataX": 64, "dataY": 40})
    worker = e.jobs.worker
    assert worker is not None and worker is not threading.current_thread()
    e.wait()
    x1, x2 = e.current_pair()
    expected = JointGradient(e._model()).attribute((x1, x2), grid=7)
    cell = (int(40 / 128 * 7), int(64 / 128 * 7))
    torch.testing.assert_close(e.maps[1], expected.over_other(cell))
    assert e.last_error is None and e.progress.value == e.progress.max >= 1 and e.cancel_button.disabled
    assert [m.fused_attn for m in e._model().modules() if hasattr(m, "fused_attn")] == flags


def test_joint_click_can_be_cancelled(monkeypatch):
    e = Explorer(VIT, threaded=True, display_size=64, method="correspondence")
    e.wait()
    started = threading.Event()

    def slow(*_args, on_progress=None, **_kwargs):
        with progress(500, False, "slow", on_progress) as bar:  # the job's on_progress cancels it
            for _ in range(500):
                started.set()
                time.sleep(0.01)
                bar.update(1)
        raise AssertionError("not cancelled")

    monkeypatch.setattr(e, "_joint_heat", slow)
    e._controls().joint_method.value = "joint-occlusion"
    e.wait()
    e.click(1, {"dataX": 10, "dataY": 10})
    assert started.wait(30) and not e.cancel_button.disabled
    e.cancel_button.click()
    e.wait()
    assert e.status.value == "cancelled" and e.last_error is None and e.cancel_button.disabled


def test_driver_runs_the_vit(image_folder, tmp_path, monkeypatch):
    from ssl_widgets.evaluate import driver

    def coarse(model, name, *args, **kwargs):  # tiny settings: occlusion with a 16 px stride, 8-step curves
        extra = {"strides": 16} if name == "conditional-occlusion" else {}
        return explain_pair(model, name, *args, **kwargs, **extra)

    monkeypatch.setattr(driver, "explain_pair", coarse)
    cfg = EvaluationConfig(data=str(image_folder), model=VIT, pairs=1, seed=0, out=str(tmp_path / "vit"),
                           methods=["conditional-occlusion", "grad-cam", "interaction-cam"], step=1568,
                           sensitivity_samples=1, show_progress=False)
    summary = evaluate(cfg)
    table = (tmp_path / "vit" / "table.md").read_text()
    for name in cfg.methods:
        assert f"| {name} |" in table
    lines = (tmp_path / "vit" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 3 and summary  # 1 pair x 3 methods


@pytest.mark.parametrize(("model", "method", "arch"), [(VIT, "input-x-gradient:guided", "Vision Transformer"),
                                                       ("tiny-simclr", "cls-attention", "convolutional network")])
def test_methods_that_do_not_apply_are_refused(image_folder, tmp_path, capsys, model, method, arch):
    cfg = EvaluationConfig(data=str(image_folder), model=model, pairs=1, out=str(tmp_path / "x"),
                           methods=["grad-cam", method], show_progress=False)
    with pytest.raises(ValueError, match=f"method '{method}' does not apply to model '{model}' \\(a {arch}\\)"):
        evaluate(cfg)
    assert not (tmp_path / "x" / "results.jsonl").exists()
    code = cli_main(["explain", "chelsea", "--model", model, "--method", method, "--out", str(tmp_path / "f.png")])
    err = capsys.readouterr().err
    assert code == 2 and f"'{method}' does not apply" in err and arch in err
    assert not (tmp_path / "f.png").exists()


def test_correspondence_benchmark_on_the_token_grid(image_folder, tmp_path):
    table = evaluate_correspondence(str(image_folder), VIT, ["feature-cosine"], pairs=2, grid=7, out=str(tmp_path))
    rate = table["feature-cosine"]
    assert 0.0 <= rate["accuracy"] <= 1.0 and rate["patches"] > 0


def test_joint_occlusion_on_the_vit_equals_direct_forwards():
    """Joint occlusion on a token trunk (full forwards): the interaction of patch i and patch j by hand."""
    from ssl_widgets.attr import JointOcclusion
    from ssl_widgets.attr.joint import patch_index
    from ssl_widgets.models import load_model

    model = load_model(VIT)
    torch.manual_seed(0)
    x1, x2 = torch.rand(1, 3, 112, 112), torch.rand(1, 3, 112, 112)
    result = JointOcclusion(model).attribute((x1, x2), grid=2, baselines=0.0)
    index = patch_index((112, 112), (2, 2), x1.device)

    def sim(a, b):
        with torch.no_grad():
            return float(torch.nn.functional.cosine_similarity(model(a), model(b)))

    def fill(x, i):
        return x * (index != i).to(x.dtype)

    for i, j in [(0, 0), (1, 3), (2, 1)]:
        expected = sim(x1, x2) - sim(fill(x1, i), x2) - sim(x1, fill(x2, j)) + sim(fill(x1, i), fill(x2, j))
        assert float(result.relevance[0, i, j]) == pytest.approx(expected, abs=1e-5)
