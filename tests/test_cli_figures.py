"""The command line and the figures: what a newcomer following the README meets."""
import re

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_widgets import plotting
from ssl_widgets.attr import get_method
from ssl_widgets.cli import DEFAULT_METHOD, build_parser, main
from ssl_widgets.data import SAMPLE_IMAGES, make_view
from ssl_widgets.evaluate.cli import _estimate
from ssl_widgets.plotting import image_label, pair_figure


def _image_file(path, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)).save(path)
    return path


def test_a_second_image_is_used_as_given(capsys):
    assert main(["similarity", "chelsea", "chelsea", "--models", "tiny-simclr"]) == 0
    assert "= +1.0000" in capsys.readouterr().out
    assert main(["similarity", "chelsea", "chelsea", "--models", "tiny-simclr", "--augment"]) == 0
    out = capsys.readouterr().out
    assert "aug view" in out and "= +1.0000" not in out


def test_explain_two_images_titles_name_both(tmp_path, monkeypatch, capsys):
    long_dir = tmp_path / "a_rather_long_folder_name" / "and_another_one"
    long_dir.mkdir(parents=True)
    first = _image_file(long_dir / "first_photo.png", 0)
    second = _image_file(long_dir / "second_photo.png", 1)
    seen = {}

    def spy(x1, x2, *args, **kwargs):
        seen.update(x2=x2, fig=pair_figure(x1, x2, *args, **kwargs))
        return seen["fig"]

    monkeypatch.setattr(plotting, "pair_figure", spy)
    out = tmp_path / "fig.png"
    assert main(["explain", str(first), str(second), "--method", "grad-cam", "--out", str(out)]) == 0
    assert Image.open(out).size[0] > 500
    titles = [ax.get_title() for ax in seen["fig"].axes[:4]]
    assert "first_photo.png" in titles[0] and "second_photo.png" in titles[1]
    assert not any("a_rather_long_folder_name" in t for t in titles)
    # used as given: the plain resize and centre crop, no augmentation
    assert torch.equal(seen["x2"], make_view(str(second), "pure", 112, seed=None))


def test_panel_titles_do_not_overlap():
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    long = image_label("/some/dir/" + "very_long_image_file_name_" * 3 + ".jpg")
    fig = pair_figure(x, x, torch.rand(1, 4, 4), torch.rand(1, 4, 4), 0.5, title="conditional-occlusion on m",
                      labels=(long, f"aug view of {long} (seed 0)"))
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    boxes = [ax.title.get_window_extent(renderer) for ax in fig.axes[:4]]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not boxes[i].overlaps(boxes[j]), (i, j)


def test_signed_maps_are_centred_on_zero_and_say_so():
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    signed = torch.arange(16.0).reshape(1, 4, 4) - 4  # -4 .. 11
    positive = torch.arange(16.0).reshape(1, 4, 4)
    fig = pair_figure(x, x, signed, positive, 0.5, title="t", sign_note="red: hiding it lowers the similarity")
    images = [ax.images[-1] for ax in fig.axes[2:4]]
    assert images[0].get_cmap().name == plotting.SIGNED_CMAP and images[0].get_clim() == (-11.0, 11.0)
    assert images[1].get_cmap().name == plotting.POSITIVE_CMAP and images[1].get_clim() == (0.0, 15.0)
    labels = [ax.get_ylabel() for ax in fig.axes[4:]]
    assert any("blue < 0" in label for label in labels) and any("≥ 0" in label for label in labels)
    assert "red: hiding" in fig._suptitle.get_text()
    unsigned = pair_figure(x, x, positive, positive, 0.5, sign_note="red: hiding it lowers the similarity")
    assert "red: hiding" not in unsigned._suptitle.get_text()  # no "blue = negative" where nothing is negative


def test_figures_do_not_touch_the_backend():
    import matplotlib

    before = matplotlib.get_backend()
    x = torch.rand(1, 3, 8, 8)
    fig = pair_figure(x, x, None, None, 0.0)
    assert isinstance(fig, plotting.DisplayFigure)
    assert fig._repr_png_().startswith(b"\x89PNG")
    assert matplotlib.get_backend() == before
    with pytest.raises(ValueError, match="as many maps and titles as images"):
        plotting.maps_figure([x, x], [None], ["a", "b"])


@pytest.mark.parametrize("name", ["interaction-cam+gi", "interaction-cam:mean+gi"])
def test_interaction_cam_gi_names(name, tmp_path):
    assert get_method(name)[1] == {"pooling": "mean", "gradient_interaction": True}
    assert main(["explain", "coffee", "--method", name, "--out", str(tmp_path / "f.png")]) == 0


def test_samples_command(tmp_path, capsys):
    assert main(["samples", "--out", str(tmp_path / "s")]) == 0
    files = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert files == sorted(f"{n}.png" for n in SAMPLE_IMAGES)
    assert Image.open(tmp_path / "s" / "chelsea.png").size == (451, 300)
    assert main(["samples", "coffee", "--out", str(tmp_path / "j"), "--format", "jpg"]) == 0
    assert [p.name for p in (tmp_path / "j").iterdir()] == ["coffee.jpg"]
    assert main(["samples", "dog", "--out", str(tmp_path / "x")]) == 2
    assert "unknown sample image(s) dog" in capsys.readouterr().err


def test_models_table_is_aligned(capsys):
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    starts = {line.index("Apache") if "Apache" in line else line.index("licence") for line in lines
              if "Apache" in line or "licence" in line}
    assert len(starts) == 1 and len(lines) >= 3


def test_explain_help_states_the_default_method():
    text = build_parser()._subparsers._group_actions[0].choices["explain"].format_help()
    assert f"default: {DEFAULT_METHOD}" in re.sub(r"\s+", " ", text)


def test_failed_download_names_both_ways_to_give_a_file(torch_home, monkeypatch):
    from ssl_widgets import load_model

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(FileNotFoundError, match=r"--weights PATH.*weights=PATH"):
        load_model("resnet50-supervised")


def test_evaluate_warns_about_cycling_and_estimates(tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(2):
        _image_file(folder / f"{i}.png", i)
    out = tmp_path / "eval"
    assert main(["evaluate", "--data", str(folder), "--methods", "grad-cam", "--pairs", "3", "--out", str(out),
                 "--step", "4000", "--sensitivity-samples", "1", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "--pairs 3 exceeds the 2 images" in err
    assert "the first pair took" in err and "estimated time for the remaining pairs" in err
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == 3  # the timed first pair is part of the run, not computed twice or dropped


def test_estimate_uses_median_times_of_the_remaining_records(tmp_path):
    rows = [{"pair": 0, "method": "a", "seconds": 2.0}, {"pair": 1, "method": "a", "seconds": 4.0},
            {"pair": 2, "method": "a", "seconds": 30.0}, {"pair": 0, "method": "b", "seconds": 1.0}]
    (tmp_path / "results.jsonl").write_text("\n".join(__import__("json").dumps(r) for r in rows) + "\n")
    # a: median 4 s x 7 remaining pairs; b: 1 s x 9
    assert _estimate(str(tmp_path), ["a", "b"], 10) == pytest.approx(4 * 7 + 1 * 9)
    assert _estimate(str(tmp_path), ["a", "c"], 10) is None


def test_estimate_after_the_first_pair_is_the_time_the_rest_of_the_run_takes(tmp_path, capsys, monkeypatch,
                                                                             two_threads):
    """A fake clock: each method costs a known time per record, and the run's fixed cost (loading, fingerprinting
    the weights and data, writing the table and figure; here 20 s, as for a large model or data folder) is paid
    again by the run after the timed first pair. The estimate printed after the first pair is within 30% of the
    (fake) time the rest takes (it is exact up to the 1 s of rounding); the old one counted the records only (8 s
    of 28 s)."""
    import time

    from ssl_widgets.evaluate import driver

    clock = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    cost = {"grad-cam": 1.0, "input-x-gradient": 3.0}
    loads: list[float] = []
    real_load, real_explain = driver.load_model, driver.explain_pair

    def slow_load(*args, **kwargs):
        loads.append(clock[0])  # the second load starts the run after the estimate
        clock[0] += 20.0
        return real_load(*args, **kwargs)

    def slow_explain(model, name, *args, **kwargs):
        clock[0] += cost[name]
        return real_explain(model, name, *args, **kwargs)

    monkeypatch.setattr(driver, "load_model", slow_load)
    monkeypatch.setattr(driver, "explain_pair", slow_explain)
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        _image_file(folder / f"{i}.png", i)
    assert main(["evaluate", "--data", str(folder), "--methods", ",".join(cost), "--pairs", "3", "--threads", "1",
                 "--out", str(tmp_path / "eval"), "--step", "4000", "--sensitivity-samples", "1",
                 "--no-progress"]) == 0
    estimate = float(re.search(r"remaining pairs: about (\d+) s", capsys.readouterr().err).group(1))
    actual = clock[0] - loads[1]
    assert actual == pytest.approx(20 + 2 * sum(cost.values()))
    assert abs(estimate - actual) <= 0.3 * actual, (estimate, actual)


def test_evaluate_uses_the_load_aware_thread_default(monkeypatch, tmp_path, two_threads):
    """Without --threads, evaluate sets the threads every command uses (one on a busy machine, where torch's 2
    threads were ~10x slower and made the first pair's time a poor guide to the rest), not torch's default."""
    from ssl_widgets import threads
    from ssl_widgets.evaluate import driver

    monkeypatch.setattr(threads, "default_threads", lambda: 1)
    monkeypatch.setattr(driver, "evaluate", lambda cfg: {})
    assert torch.get_num_threads() == 2  # two_threads restores the test's thread count afterwards
    _image_file(tmp_path / "0.png")
    assert main(["evaluate", "--data", str(tmp_path), "--methods", "grad-cam", "--pairs", "1",
                 "--out", str(tmp_path / "eval")]) == 0
    assert torch.get_num_threads() == 1


def test_pair_figure_draws_the_images_and_maps_it_is_given():
    """The pixels drawn are the inputs: each image panel holds the image (H,W,3), each map panel the image and then
    the map itself, stretched over the image's extent; colour bars span the map's range (symmetric when signed)."""
    g = torch.Generator().manual_seed(1)
    x1, x2 = torch.rand(1, 3, 16, 20, generator=g), torch.rand(1, 3, 16, 20, generator=g)
    map1 = torch.arange(20.0).reshape(1, 4, 5) - 7  # signed: -7 .. 12
    map2 = torch.rand(1, 8, 10, generator=g) * 3  # non-negative
    fig = pair_figure(x1, x2, map1, map2, 0.25)
    axes = fig.axes
    for ax, x in ((axes[0], x1), (axes[1], x2), (axes[2], x1), (axes[3], x2)):
        np.testing.assert_allclose(ax.images[0].get_array(), x[0].permute(1, 2, 0).numpy(), atol=1e-7)
        assert ax.images[0].get_extent() == [0, 20, 16, 0]
    for ax, m, limits in ((axes[2], map1, (-12.0, 12.0)), (axes[3], map2, (0.0, float(map2.max())))):
        shown = ax.images[-1]
        np.testing.assert_allclose(shown.get_array(), m[0].numpy(), atol=1e-7)
        assert shown.get_extent() == [0, 20, 16, 0] and shown.get_alpha() == 0.5
        assert shown.get_clim() == pytest.approx(limits)
    bars = axes[4:]
    assert len(bars) == 2
    assert bars[0].get_ylim() == pytest.approx((-12.0, 12.0))  # centred on zero
    assert bars[1].get_ylim() == pytest.approx((0.0, float(map2.max())))
    assert "+0.250" in fig._suptitle.get_text()


def test_maps_figure_and_overlay_draw_their_inputs():
    g = torch.Generator().manual_seed(2)
    images = [torch.rand(1, 3, 8, 8, generator=g) for _ in range(3)]
    maps = [torch.rand(2, 2, generator=g) - 0.7, None, torch.rand(1, 4, 4, generator=g)]
    fig = plotting.maps_figure(images, maps, ["a", "b", "c"], ncols=2)
    panels = [ax for ax in fig.axes if ax.get_title() in ("a", "b", "c")]
    assert [ax.get_title() for ax in panels] == ["a", "b", "c"]
    for ax, x, m in zip(panels, images, maps):
        np.testing.assert_allclose(ax.images[0].get_array(), x[0].permute(1, 2, 0).numpy(), atol=1e-7)
        assert len(ax.images) == (1 if m is None else 2)
        if m is not None:
            np.testing.assert_allclose(ax.images[1].get_array(), m.reshape(m.shape[-2:]).numpy(), atol=1e-7)
    low, high = panels[0].images[1].get_clim()
    assert low == -high == pytest.approx(-float(maps[0].abs().max()))
    # overlay with explicit colour map and limits uses them as given
    ax = plotting.DisplayFigure().subplots()
    shown = plotting.overlay(ax, images[0], maps[2], alpha=0.3, cmap="viridis", vmin=-1.0, vmax=2.0)
    assert shown.get_cmap().name == "viridis" and shown.get_clim() == (-1.0, 2.0) and shown.get_alpha() == 0.3
    assert plotting.overlay(ax, images[0]) is None


def test_unknown_options_are_refused_except_those_passed_on_to_train(capsys):
    with pytest.raises(SystemExit) as refused:
        main(["models", "--bogus"])
    assert refused.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err
    with pytest.raises(SystemExit) as shown:  # train's own --help, not the top-level parser's
        main(["train", "--help"])
    assert shown.value.code == 0 and "--method" in capsys.readouterr().out
