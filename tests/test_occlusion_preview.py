"""A coarse first occlusion frame from inside the refined call (``on_partial=``, ssl_widgets.attr._occlusion_engine.preview)."""
import threading

import pytest
import torch
from helpers import arange_image

from ssl_widgets.attr import ConditionalOcclusion, ContextAgnosticOcclusion, CopyEvaluator, ViewEmbeddingStore
from ssl_widgets.attr._occlusion_engine import coarse_indices, preview_stride
from ssl_widgets.attr._occlusion_engine.evaluator import Session
from ssl_widgets.attr.engine import Cancelled
from ssl_widgets.attr.occlusion import window_grid
from ssl_widgets.widgets import Explorer

@pytest.fixture
def embedded(monkeypatch):
    """The number of perturbed copies embedded so far (a one-item list), counted in every thread."""
    count, lock = [0], threading.Lock()
    embed = Session.embed

    def counting(self, state, local, *args):
        out = embed(self, state, local, *args)
        with lock:  # the batches run in worker threads
            count[0] += local.shape[0]
        return out

    monkeypatch.setattr(Session, "embed", counting)
    return count


def pair():
    return arange_image(1, 32, 32), arange_image(1, 32, 32, offset=5.0)


def recorder(embedded=None):
    """A preview callback recording each frame, its thread and the copies embedded when it came."""
    frames = []

    def record(frame):
        frames.append((frame, threading.current_thread(), None if embedded is None else embedded[0]))
    return frames, record


@pytest.mark.parametrize("cls, per_window", [(ConditionalOcclusion, 1), (ContextAgnosticOcclusion, 2)])
@pytest.mark.parametrize("threads", [1, 2])
def test_the_preview_equals_a_coarse_call_and_comes_before_the_other_windows(tiny_model, embedded, cls, per_window, threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x1, x2 = pair()
        frames, record = recorder(embedded)
        refined = cls(tiny_model).attribute((x1, x2), 12, 4, grid=True, perturbations_per_eval=8, on_partial=record,
                                            partial_strides=8)
        total = embedded[0]
        coarse = cls(tiny_model).attribute((x1, x2), 12, 8, grid=True)
        plain = cls(tiny_model).attribute((x1, x2), 12, 4, grid=True, perturbations_per_eval=8)
    finally:
        torch.set_num_threads(before)
    assert total == 2 * 36 * per_window  # 6 x 6 windows of 12 px at stride 4 on 32 px: the 3 x 3 coarse ones once
    assert len(frames) == 1
    frame, thread, seen = frames[0]
    assert thread is threading.current_thread()
    assert seen < total  # the coarse windows' copies (2 x 9 per window kind) led the batches
    assert frame.meta["strides"] == (8, 8) and frame.meta["method"] == cls.method_name
    for view in (0, 1):
        assert frame[view].shape == coarse[view].shape == (1, 3, 3)
        torch.testing.assert_close(frame[view], coarse[view], atol=1e-5, rtol=0)
        torch.testing.assert_close(refined[view], plain[view], atol=1e-5, rtol=0)
        torch.testing.assert_close(refined[view][:, ::2, ::2], coarse[view], atol=1e-5, rtol=0)
    torch.testing.assert_close(frame.similarity, refined.similarity)


def test_image_size_maps_for_the_preview_as_for_the_call(tiny_model):
    x1, x2 = pair()
    frames, record = recorder()
    ConditionalOcclusion(tiny_model).attribute((x1, x2), 12, 4, on_partial=record)  # the default: preview_stride
    assert preview_stride(12, [32], multiple_of=4) == 8
    coarse = ConditionalOcclusion(tiny_model).attribute((x1, x2), 12, 4 * 2)
    assert [tuple(m.shape) for m in frames[0][0]] == [(1, 32, 32), (1, 32, 32)]
    torch.testing.assert_close(frames[0][0][0], coarse[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("coarse, batch", [(6, 1), (8, 2)])
def test_a_grid_not_among_the_windows_or_several_pairs_get_a_separate_coarse_call(tiny_model, embedded, coarse, batch):
    x1, x2 = (torch.cat([x, x.flip(-1)])[:batch] for x in pair())
    frames, record = recorder(embedded)
    refined = ConditionalOcclusion(tiny_model).attribute((x1, x2), 12, 4, grid=True, on_partial=record,
                                                         partial_strides=coarse)
    n_coarse = ((32 - 12) // coarse + 1) ** 2
    assert len(frames) == 1 and frames[0][2] == 2 * batch * n_coarse  # before any refined copy
    assert embedded[0] == 2 * batch * (n_coarse + 36)
    separate = ConditionalOcclusion(tiny_model).attribute((x1, x2), 12, coarse, grid=True)
    for view in (0, 1):
        torch.testing.assert_close(frames[0][0][view], separate[view], atol=1e-6, rtol=0)
    assert refined[0].shape == (batch, 6, 6)


def test_a_reused_view_still_gives_the_preview(tiny_model, embedded):
    x1, x2 = pair()
    x3 = arange_image(1, 32, 32, offset=9.0)
    frames, record = recorder(embedded)
    occlusion = ConditionalOcclusion(tiny_model, evaluator=CopyEvaluator(tiny_model, store=ViewEmbeddingStore()))
    occlusion.attribute((x1, x2), 12, 4, grid=True, on_partial=record, partial_strides=8)
    embedded[0] = 0
    occlusion.attribute((x1, x3), 12, 4, grid=True, on_partial=record, partial_strides=8)  # view 1's copies reused
    assert embedded[0] == 36
    occlusion.attribute((x1, x3), 12, 4, grid=True, on_partial=record, partial_strides=8)  # both reused: none
    assert embedded[0] == 36
    fresh = ConditionalOcclusion(tiny_model).attribute((x1, x3), 12, 8, grid=True)
    assert len(frames) == 3 and frames[1][2] == 9  # view 2's coarse copies first
    for frame in (frames[1][0], frames[2][0]):
        for view in (0, 1):
            torch.testing.assert_close(frame[view], fresh[view], atol=1e-5, rtol=0)


def test_progress_reaches_its_total_with_the_preview(tiny_model, two_threads):
    x1, x2 = pair()
    reports = []
    ConditionalOcclusion(tiny_model).attribute((x1, x2), 12, 4, perturbations_per_eval=10,
                                               on_progress=lambda *at: reports.append(at), on_partial=lambda frame: None)
    assert reports[-1] == (-(-72 // 10),) * 2
    assert all(a[0] <= b[0] for a, b in zip(reports, reports[1:]))


def test_a_preview_callback_that_raises_ends_the_call_and_restores_the_model(tiny_model, two_threads):
    x1, x2 = pair()
    tiny_model.train()

    def cancel(frame):
        raise Cancelled("stop")

    with pytest.raises(Cancelled):
        ConditionalOcclusion(tiny_model).attribute((x1, x2), 12, 4, perturbations_per_eval=8, on_partial=cancel,
                                                   partial_strides=8)
    assert all(m.training for m in tiny_model.modules())
    assert [t for t in threading.enumerate() if t.name.startswith("ssl_widgets-batch")] == []


def test_bad_partial_arguments_are_named(tiny_model):
    x1, x2 = pair()
    with pytest.raises(TypeError, match="on_partial"):
        ConditionalOcclusion(tiny_model).attribute((x1, x2), 12, 4, on_partial="not callable")
    with pytest.raises(ValueError, match="partial_strides"):
        ConditionalOcclusion(tiny_model).attribute((x1, x2), 12, 4, on_partial=print, partial_strides=0)

def test_preview_strides_and_coarse_positions():
    assert preview_stride(28, [112, 112], multiple_of=4) == 28
    assert preview_stride(32, [112, 112], multiple_of=8) == 16  # 20 tiles 112 but is no multiple of 8
    assert preview_stride(30, [112], multiple_of=7) == 21  # neither 21 nor 28 tiles 112: the smallest
    for window, stride in [(28, 4), (32, 8), (30, 7), (64, 8), (22, 3)]:
        coarse = preview_stride(window, [112, 96], multiple_of=stride)
        assert coarse % stride == 0 and window // 2 <= coarse <= window
    corners = window_grid((32, 20), (12, 8), (4, 2))
    index = coarse_indices(corners, (4, 2), (8, 6))
    assert torch.equal(corners[index], window_grid((32, 20), (12, 8), (8, 6)))
    assert coarse_indices(corners, (4, 2), (8, 5)) is None
    with pytest.raises(ValueError, match="multiple_of"):
        preview_stride(28, [112], multiple_of=0)


def test_the_explorer_previews_from_the_refined_call(embedded):
    e = Explorer(threaded=False, display_size=64, method="grad-cam")
    controls = e.method_controls[0]
    controls.patch.value = 56
    controls.stride.value = 14  # 5 x 5 windows per image at 112 px; preview at stride 56 (2 x 2)
    shown = []
    e.status.observe(lambda change: shown.append((change["new"], e.maps[0].clone() if e.maps[0] is not None
                                                  else None)), names="value")
    embedded[0] = 0
    e.method_tabs.selected_index = 0
    previews = [m for s, m in shown if "coarse" in s]
    assert [s for s, _ in shown if "coarse" in s] == ["conditional-occlusion (coarse preview, refining ...)"]
    assert e.status.value == "conditional-occlusion" and embedded[0] == 2 * 25  # the coarse windows once
    x1, x2 = e.current_pair()
    coarse = ConditionalOcclusion(e._model()).attribute((x1, x2), 56, 56)
    fresh = ConditionalOcclusion(e._model()).attribute((x1, x2), 56, 14)
    torch.testing.assert_close(previews[0], coarse[0][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(e.maps[0], fresh[0][0], atol=1e-5, rtol=0)
